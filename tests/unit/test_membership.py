"""Live membership: rendezvous ownership of the fetch list over the live Vista hosts."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter

import fakeredis
import pytest

from skyline.vista import config, constants, membership, telemetry
from skyline.vista.agent.presence import Presence
from tests.unit.test_config import problems_of, prom, settings

METRICS = [f"vista.m{i:04d}" for i in range(3000)]
HOSTS = ("vista-a", "vista-b", "vista-c")


def owners(members: tuple[str, ...]) -> dict[str, str | None]:
    return {m: membership.owner(m, members) for m in METRICS}


def test_every_metric_has_exactly_one_owner_and_the_shares_are_even() -> None:
    shares = Counter(owners(HOSTS).values())
    assert set(shares) == set(HOSTS)
    assert sum(shares.values()) == len(METRICS)
    assert all(900 <= n <= 1100 for n in shares.values()), shares


def test_owner_depends_on_names_only_not_order_or_run() -> None:
    assert owners(HOSTS) == owners(HOSTS[::-1])
    # Fixed values: a hash that changed between Python runs or versions would split the fetch
    # list differently on two hosts (PYTHONHASHSEED must not matter).
    assert membership.weight("vista-a", "vista.m0000") == 0xA9FEF361E7367F74
    assert membership.owner("", []) is None


def test_a_dead_host_s_metrics_move_and_no_other_metric_does() -> None:
    before = owners(HOSTS)
    after = owners(("vista-a", "vista-c"))
    moved = {m for m in METRICS if before[m] != after[m]}
    assert moved == {m for m in METRICS if before[m] == "vista-b"}
    # ... spread over both survivors, not piled onto one.
    assert all(n > 300 for n in Counter(after[m] for m in moved).values())


def test_a_host_that_joins_takes_its_share_from_every_host_and_nothing_else_moves() -> None:
    before = owners(HOSTS)
    after = owners((*HOSTS, "vista-d"))
    moved = {m for m in METRICS if before[m] != after[m]}
    assert all(after[m] == "vista-d" for m in moved)
    assert 600 <= len(moved) <= 900
    assert set(Counter(before[m] for m in moved)) == set(HOSTS)


def test_owned_counts_this_host_alive_and_shards_override_membership() -> None:
    entries = tuple(prom(f"m{i:03d}") for i in range(60))
    alone = config.validate(settings(VISTA_FETCH_METRICS=entries, VISTA_HOSTNAME="vista-a"))
    # Not yet in the live list (its first heartbeat is not visible): still fetches, alone.
    assert membership.fetch_list(alone, ()) == alone.fetch_metrics
    parts = [
        {e.metric for e in membership.owned(alone.fetch_metrics, HOSTS, host)} for host in HOSTS
    ]
    assert sorted(m for part in parts for m in part) == sorted(
        e.metric for e in alone.fetch_metrics
    )
    pinned = config.validate(
        settings(VISTA_FETCH_METRICS=entries, VISTA_SHARDS=HOSTS, VISTA_HOSTNAME="vista-a")
    )
    assert membership.fetch_list(pinned, ("vista-a",)) == pinned.shard_metrics
    assert pinned.shard_metrics != pinned.fetch_metrics


def test_member_ttl_setting() -> None:
    assert config.validate(settings()).member_ttl == 30.0
    assert config.validate(settings(VISTA_MEMBER_TTL=6)).member_ttl == 6.0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"VISTA_MEMBER_TTL": 1}, "VISTA_MEMBER_TTL: got 1, expected a number >= 3"),
        ({"VISTA_MEMBER_TTL": "30"}, "VISTA_MEMBER_TTL: got '30', expected a number >= 3"),
        ({"VISTA_HOSTNAME": "vista a"}, "VISTA_HOSTNAME: got 'vista a', expected a host name"),
    ],
)
def test_bad_membership_settings_are_reported(values: dict[str, object], message: str) -> None:
    caught = problems_of(settings(**values))
    assert any(p.startswith(message) for p in caught.problems), caught.problems


def test_the_member_beat_returns_what_the_key_held_and_tokens_name_their_agent() -> None:
    client = fakeredis.FakeRedis()
    first = membership.instance_token(41)
    assert membership.heartbeat(client, "h", 30, first) is None
    assert membership.heartbeat(client, "h", 30, "second") == first
    assert client.smembers(constants.MEMBERS_KEY) == {b"h"}
    assert 0 < client.pttl(membership.member_key("h")) <= 30_000
    assert membership.OtherAgent.of(first) == membership.OtherAgent("41", socket.gethostname())
    assert membership.OtherAgent.of("1234") == membership.OtherAgent(
        "1234", "an unknown machine (an older Vista)"
    )  # an older Vista's member key holds its pid only
    assert membership.instance_token(41) != first


def test_two_agents_with_one_hostname_are_told_and_a_restart_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeRedis()
    conf = config.validate(settings(VISTA_HOSTNAME="twin"))
    counted = telemetry.DUPLICATE_HOSTNAME._value.get()
    a, b = Presence(101, conf, client), Presence(202, conf, client)
    with caplog.at_level(logging.ERROR, "skyline.vista.agent"):
        a.member_heartbeat(True, force=True)
        b.member_heartbeat(True, force=True)  # its first beat: a predecessor, no alarm
        assert not caplog.records
        a.member_heartbeat(True, force=True)  # finds b's token
        a.member_heartbeat(True, force=True)  # b did not write since: nothing more
        b.member_heartbeat(True, force=True)  # finds a's token
        a.member_heartbeat(True, force=True)  # finds b's again: counted, not logged again
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "VISTA_HOSTNAME 'twin' (pid 202 on " in lines[0]
    assert "VISTA_HOSTNAME 'twin' (pid 101 on " in lines[1]
    assert lines[0].endswith("give each host its own VISTA_HOSTNAME")
    assert telemetry.DUPLICATE_HOSTNAME._value.get() == counted + 3
    raw = membership.duplicate_records(client)["twin"]
    line = membership.duplicate_line("twin", raw, time.time() + 5)
    assert line is not None and line.startswith(
        f"WARNING: another agent uses VISTA_HOSTNAME 'twin' (pid 202 on {socket.gethostname()}), "
        "last seen 5"
    ), line
    assert 0 < client.ttl(constants.DUPLICATE_HOSTS_KEY) <= membership.DUPLICATE_TTL
    assert membership.duplicate_line("twin", None, 0) is None

    # A restart: the new agent's first beat finds its predecessor's token; no alarm after.
    caplog.clear()
    c = Presence(303, conf, client)
    with caplog.at_level(logging.ERROR, "skyline.vista.agent"):
        for _ in range(3):
            c.member_heartbeat(True, force=True)
    assert not caplog.records


def test_shard_agents_with_one_hostname_are_told_through_the_claim_key_not_as_members(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = fakeredis.FakeRedis()
    conf = config.validate(settings(VISTA_HOSTNAME="twin", VISTA_SHARDS=("twin", "other")))
    a, b = Presence(101, conf, client), Presence(202, conf, client)
    with caplog.at_level(logging.ERROR, "skyline.vista.agent"):
        a.member_heartbeat(False, force=True)
        b.member_heartbeat(False, force=True)
        a.member_heartbeat(False, force=True)  # finds b's token in the claim key
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "VISTA_HOSTNAME 'twin' (pid 202 on " in lines[0], lines
    assert client.get(membership.claim_key("twin")) == a.token.encode()
    assert client.exists(membership.member_key("twin")) == 0
    assert membership.live_members(client) == ()
    assert set(membership.duplicate_records(client)) == {"twin"}
    a.leave()
    assert client.exists(membership.claim_key("twin")) == 0


def test_status_lists_every_duplicate_record_whatever_its_own_hostname() -> None:
    client = fakeredis.FakeRedis()
    for host in ("b-host", "a-host"):
        membership.record_duplicate(client, host, membership.OtherAgent("7", "m"))
    client.hset(constants.DUPLICATE_HOSTS_KEY, "broken", "not json")
    stale = {"pid": "8", "machine": "m", "seen": time.time() - membership.DUPLICATE_TTL - 1}
    client.hset(constants.DUPLICATE_HOSTS_KEY, "stale-host", json.dumps(stale))
    records = membership.duplicate_records(client)
    assert set(records) == {"a-host", "b-host", "broken", "stale-host"}
    lines = membership.duplicate_lines(records, time.time())
    assert [line.split("'")[1] for line in lines] == ["a-host", "b-host"]
    assert all(line.startswith("WARNING: another agent uses VISTA_HOSTNAME") for line in lines)
    assert membership.duplicate_records(fakeredis.FakeRedis()) == {}
