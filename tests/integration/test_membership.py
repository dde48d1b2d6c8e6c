"""Several Vista hosts on one Redis share the fetch list by live membership.

Three ``vista run`` daemons (VISTA_HOSTNAME vista-a, vista-b, vista-c) on one real redis-server
fetch 12 series from a real Prometheus into a real carbon-cache, through a recording proxy in
front of carbon's pickle port (tests/carbon_proxy.py), so a point sent twice is seen on the wire
even though whisper keeps one value per slot. Mid-run vista-b is SIGKILLed (agent and workers,
as when its machine dies): the others take its metrics over within VISTA_MEMBER_TTL + one fetch
cycle. Later it starts again and takes its share back. Every 10 s slot of every metric, from
its first point to the end, must be in whisper with its exact value, and sent exactly once.

The series are ``vector(time() + i)`` (tests/ha_helpers.py): Prometheus evaluates them for any
past time, so the value of every slot is known (``ts + i``) and a gap could only be Vista's.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import redis

from skyline.vista import config as config_module
from skyline.vista import constants, membership, redisconn
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.testing.servers import (
    LOOPBACK,
    CarbonServer,
    PrometheusServer,
    RedisServer,
    free_port,
)
from tests.conftest import PrometheusFactory, RedisFactory
from tests.support.carbon_proxy import PickleRecorder
from tests.support.daemon import VistaHarness, wait_for
from tests.support.ha import caught_up, check_delivered, closed_slot, vector_entries
from tests.support.rig import Rig
from tests.support.settings import make_config

STEP = 10
COUNT = 12
HOSTS = ("vista-a", "vista-b", "vista-c")
TTL = 3
TICK = 10  # the fetcher's cycle: the smallest frequency (10 s)
VICTIM = "vista-b"
NEW_POINTS = re.compile(r"cycle: \d+ due, [1-9]\d* with new points")


MEMBERS_LINE = re.compile(r"live Vista hosts: ([^;]+); this host \((\S+)\) fetches (\d+)")


def last_view(log: str) -> tuple[str, str, int] | None:
    """(live hosts, this host, metrics it fetches) as the host last logged them."""
    found = MEMBERS_LINE.findall(log)
    return None if not found else (found[-1][0], found[-1][1], int(found[-1][2]))


def views_are(
    harnesses: dict[str, VistaHarness], logs: dict[str, Path], want: dict[str, tuple[str, int]]
) -> bool | None:
    """Each host in ``want`` last logged (live hosts, its share) as given."""
    for host, (live, share) in want.items():
        if last_view(harnesses[host].log(logs[host])) != (live, host, share):
            return None
    return True


@pytest.mark.slow
def test_three_hosts_share_the_fetch_list_and_survive_a_sigkill(
    tmp_path: Path,
    tmp_prometheus: PrometheusFactory,
    tmp_redis: RedisFactory,
    carbon_server: CarbonServer,
    recorder: PickleRecorder,
    metric_prefix: str,
) -> None:
    prom = tmp_prometheus()
    redis_server = tmp_redis()
    names, entries = vector_entries(prom.url, metric_prefix, COUNT, STEP)
    owner = {m: membership.owner(m, HOSTS) for m in names}
    victims = {m for m, host in owner.items() if host == VICTIM}
    assert 0 < len(victims) < COUNT and set(owner.values()) == set(HOSTS)
    harnesses = {
        host: VistaHarness(
            tmp_path / host,
            {
                "VISTA_ENABLED": True,
                "VISTA_VERBOSE_LOGGING": True,
                "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
                "VISTA_SINK": "graphite",
                "CARBON_HOST": LOOPBACK,
                "CARBON_PORT": carbon_server.line_port,
                "CARBON_PICKLE_PORT": recorder.port,
                "VISTA_WORKER_PROCESSES": 1,
                "VISTA_WORKER_LEASE": 5,
                "VISTA_HOSTNAME": host,
                "VISTA_MEMBER_TTL": TTL,
                "VISTA_FETCHER_PROCESS_MAX_RUNTIME": 5,  # fetch leases of 5 + 15 s
                "VISTA_FETCH_METRICS": entries,
            },
        )
        for host in HOSTS
    }
    client = redis_server.client()
    logs = {host: tmp_path / f"{host}.stderr" for host in HOSTS}
    try:
        agents = {host: h.run_foreground(logs[host])[1] for host, h in harnesses.items()}
        for host, h in harnesses.items():
            h.wait_workers(agents[host], 1)

        shares = {h: (", ".join(HOSTS), sum(1 for m in names if owner[m] == h)) for h in HOSTS}
        shared = functools.partial(views_are, harnesses, logs, shares)
        wait_for(shared, 40, "the three hosts to share the fetch list")
        status = harnesses["vista-a"].cli("status")
        assert (
            f"live Vista hosts: vista-a, vista-b, vista-c; this host (vista-a) fetches "
            f"{shares['vista-a'][1]} of {COUNT} metric(s)" in status.stdout
        ), str(status)
        check = harnesses["vista-a"].cli("check-config")
        assert "shared with the live Vista hosts on this Redis, as 'vista-a'" in check.stdout
        wait_for(
            lambda: caught_up(recorder, names, time.time(), STEP), 90, "every metric delivered"
        )

        # --- vista-b dies with everything it runs, between two deliveries.
        victim = harnesses[VICTIM]
        tree = victim.tree(agents[VICTIM])
        assert len(tree) >= 2
        wait_for(lambda: quiet(client), 30, "no item in flight")
        for proc in tree:
            proc.kill()
        killed = time.time()
        survivors = [h for host, h in harnesses.items() if host != VICTIM]

        left = {h: sum(1 for m in names if membership.owner(m, ("vista-a", "vista-c")) == h)
                for h in ("vista-a", "vista-c")}  # fmt: skip
        taken_over = functools.partial(
            views_are, harnesses, logs, {h: ("vista-a, vista-c", n) for h, n in left.items()}
        )
        wait_for(taken_over, TTL + TICK + 20, "the survivors to take vista-b's metrics")
        took = time.time()
        # Bounded: the member key expires TTL s after the last heartbeat (at most TTL/3 before
        # the kill), then the next cycle (at most one TICK later) fetches them.
        print(f"vista-b killed; the survivors fetch its metrics {took - killed:.1f} s later")
        assert took - killed <= TTL + TICK + 3, took - killed
        # ... and they really deliver them: a slot that closed after the kill, for each.
        after_kill = closed_slot(killed, STEP) + 60
        wait_for(
            lambda: (
                all(any(s.timestamp >= after_kill for s in recorder.sent(m)) for m in victims)
                or None
            ),
            150,
            "vista-b's metrics delivered by the survivors",
        )
        assert all(p.alive() for h in survivors for p in h.seen if "spawn_main" not in p.cmdline)

        # --- vista-b comes back and takes its share again.
        back = victim.run_foreground(logs[VICTIM])[1]
        victim.wait_workers(back, 1)
        wait_for(shared, TTL + TICK + 30, "vista-b to take its share back")
        rejoined = time.time()
        victim_log = victim.log(logs[VICTIM])
        assert "handed over" in "".join(h.log(logs[k]) for k, h in harnesses.items())
        wait_for(
            lambda: NEW_POINTS.search(victim.log(logs[VICTIM])[len(victim_log) :]) and True,
            TICK * 2 + 60,
            "vista-b to fetch its metrics again",
        )
        end = wait_for(
            lambda: caught_up(recorder, names, max(time.time(), rejoined + 61), STEP),
            150,
            "every metric caught up after the rejoin",
        )
        for h in harnesses.values():
            h.popens[-1].send_signal(signal.SIGTERM)
        for host, h in harnesses.items():
            assert h.popens[-1].wait(30) == 0, h.log_tail(path=logs[host])
    finally:
        for h in harnesses.values():
            h.cleanup()
        client.close()

    for host, h in harnesses.items():
        log = h.log(logs[host])
        assert "Traceback" not in log, log[-3000:]
    assert check_delivered(recorder, carbon_server, names, end, STEP) == 0


def quiet(client: redis.Redis) -> bool | None:
    return True if client.hlen(constants.INFLIGHT_KEY) == 0 else None


async def test_fetch_leases_grant_renew_expire_and_give_back(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    client = redisconn.connect_async(make_config_for(redis_server).redis)
    members = membership.AsyncMembers(client)
    try:
        assert await members.lease("a", ["m1", "m2"], 0.5) == {"m1", "m2"}
        assert await members.lease("b", ["m1", "m2", "m3"], 0.5) == {"m3"}  # held by a
        assert await members.lease("a", ["m1"], 0.5) == {"m1"}  # a renews its own
        assert await members.unlease("b", ["m1", "m3"]) == 1  # only b's own lease goes
        assert await members.lease("b", ["m3"], 5) == {"m3"}
        await asyncio.sleep(0.6)  # a's leases expire (Redis' clock)
        assert await members.lease("b", ["m1", "m2"], 5) == {"m1", "m2"}
        assert await members.unlease("a", ["m1", "m2"]) == 0
        assert redis_client.hlen(constants.FETCH_LEASES_KEY) == 3
    finally:
        await client.aclose()


def make_config_for(redis_server: RedisServer, **settings: object) -> config_module.VistaConfig:
    return config_module.validate(
        {
            "VISTA_ENABLED": True,
            "REDIS_URL": redis_server.url,
            "VISTA_SINK": "graphite",
            "CARBON_HOST": LOOPBACK,
            **settings,
        }  # fmt: skip
    )


async def test_two_hosts_that_both_believe_they_own_a_metric_never_fetch_it_both(
    rig: Rig, prometheus_server: PrometheusServer
) -> None:
    """The hand-over moment: neither host has seen the other (no member key in Redis), so each
    owns all 20 metrics and starts a cycle at the same time. With the fetch leases each metric
    is fetched by one of them only; after the cycles the leases are given back."""
    names, entries = vector_entries(prometheus_server.url, "lease", 20, 60)
    hosts = ("vista-a", "vista-b")
    configs = [
        make_config(rig.tmp_path / h, rig.redis_server, entries, VISTA_HOSTNAME=h) for h in hosts
    ]
    clients = [redisconn.connect_async(c.redis) for c in configs]
    try:
        async with aiohttp.ClientSession() as session:
            runs = [
                Fetcher(os.getpid(), c).cycle(
                    session,
                    AsyncFetchQueue(client, watermark_keys(c.sink)),
                    membership.AsyncMembers(client),
                )
                for c, client in zip(configs, clients, strict=True)
            ]
            reports = await asyncio.gather(*runs)
    finally:
        for client in clients:
            await client.aclose()
    fetched = [{r.metric for r in report.results if r.points} for report in reports if report]
    assert len(fetched) == 2
    assert fetched[0] | fetched[1] == set(names)
    assert fetched[0] & fetched[1] == set()  # never both
    assert rig.redis.hlen(constants.FETCH_LEASES_KEY) == 0


DUPLICATE = re.compile(
    r"ERROR .*another Vista agent uses VISTA_HOSTNAME 'twin' \(pid (\d+) on (\S+)\)"
    r".*give each host its own VISTA_HOSTNAME"
)


def told(harness: VistaHarness, log: Path) -> re.Match[str] | None:
    return DUPLICATE.search(harness.log(log))


WARNED = re.compile(
    r"WARNING: another agent uses VISTA_HOSTNAME 'twin' \(pid \d+ on \S+\), last seen"
)


def start_twins(twins: list[VistaHarness], logs: list[Path]) -> None:
    """Start both agents; each logs the ERROR naming the other's pid."""
    pids = [h.run_foreground(log)[1].pid for h, log in zip(twins, logs, strict=True)]
    for i, (h, log) in enumerate(zip(twins, logs, strict=True)):
        found = wait_for(functools.partial(told, h, log), 20, "the ERROR")
        assert int(found.group(1)) == pids[1 - i], found.group(0)


def twin_settings(redis_server: RedisServer) -> dict[str, object]:
    return {
        "VISTA_ENABLED": True,
        "REDIS_URL": redis_server.url,
        "VISTA_SINK": "graphite",
        "CARBON_HOST": LOOPBACK,
        "VISTA_WORKER_PROCESSES": 1,
        "VISTA_FETCH_METRICS": (),
        "VISTA_HOSTNAME": "twin",
        "VISTA_MEMBER_TTL": 3,  # a member beat every second
    }


@pytest.mark.slow
def test_two_agents_with_the_same_hostname_are_told(
    tmp_path: Path, tmp_redis: RedisFactory
) -> None:
    """A copied settings file: two agents, one VISTA_HOSTNAME. Each finds the other's token in
    the member key, logs the ERROR naming the other's pid, and ``vista status`` says so."""
    redis_server = tmp_redis()
    twins = [VistaHarness(tmp_path / f"twin{i}", twin_settings(redis_server)) for i in (1, 2)]
    logs = [tmp_path / f"twin{i}.stderr" for i in (1, 2)]
    try:
        started = time.time()
        start_twins(twins, logs)
        print(f"both agents logged the ERROR {time.time() - started:.1f} s after both started")
        status = twins[0].cli("status").stdout
        assert WARNED.search(status), status
        for h in twins:
            assert h.stop_foreground(h.popens[-1]) == 0
    finally:
        for h in twins:
            h.cleanup()


@pytest.mark.slow
def test_an_agent_restarted_after_a_sigkill_is_not_taken_for_another(
    tmp_path: Path, tmp_redis: RedisFactory
) -> None:
    """SIGKILL, then the same host starts again within VISTA_MEMBER_TTL: its first beat finds
    its predecessor's token (normal), and no ERROR is logged."""
    redis_server = tmp_redis()
    settings = {**twin_settings(redis_server), "VISTA_MEMBER_TTL": 6}  # a beat every 2 s
    harness = VistaHarness(tmp_path / "host", settings)
    log = tmp_path / "host.stderr"
    client = redis_server.client()
    key = membership.member_key("twin")
    try:
        agent = harness.run_foreground(log)[1]
        wait_for(lambda: client.get(key), 20, "the member key")
        for proc in harness.tree(agent):
            proc.kill()
        harness.popens[-1].wait(10)
        before = client.get(key)
        assert before is not None  # the predecessor's token is still there
        harness.run_foreground(log)
        wait_for(lambda: (client.get(key) != before) or None, 20, "the new agent's first beat")
        time.sleep(5)  # a few more beats
        assert "another Vista agent" not in harness.log(log), harness.log_tail(path=log)
        assert "WARNING: another agent" not in harness.cli("status").stdout
        assert harness.stop_foreground(harness.popens[-1]) == 0
    finally:
        harness.cleanup()
        client.close()


def metrics_text(port: int) -> str:
    """The running agent's /metrics page (VISTA_METRICS_ADDRESS)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def duplicates_counted(port: int) -> float | None:
    """vista_duplicate_hostname_total as the agent serves it, once above zero."""
    try:
        found = re.search(r"^vista_duplicate_hostname_total (\S+)$", metrics_text(port), re.M)
    except OSError:
        return None  # not serving yet
    return float(found.group(1)) if found and float(found.group(1)) > 0 else None


@pytest.mark.slow
def test_two_shard_agents_with_the_same_hostname_are_told_and_counted(
    tmp_path: Path, tmp_redis: RedisFactory
) -> None:
    """VISTA_SHARDS: no member key, no live member; the claim key tells the two apart. Each
    logs the ERROR, counts it in /metrics, and ``vista status`` run with another host's
    settings lists the record."""
    redis_server = tmp_redis()
    shards = {"VISTA_SHARDS": ("twin", "other")}
    ports = [free_port(), free_port()]
    twins = [
        VistaHarness(
            tmp_path / f"twin{i}",
            {
                **twin_settings(redis_server),
                **shards,
                "VISTA_METRICS_ADDRESS": f"{LOOPBACK}:{ports[i]}",
            },
        )
        for i in (0, 1)
    ]
    logs = [tmp_path / f"twin{i}.stderr" for i in (0, 1)]
    bystander = VistaHarness(
        tmp_path / "other", {**twin_settings(redis_server), **shards, "VISTA_HOSTNAME": "other"}
    )
    client = redis_server.client()
    try:
        start_twins(twins, logs)
        for port in ports:
            assert wait_for(functools.partial(duplicates_counted, port), 10, "the counter") >= 1
        assert client.smembers(constants.MEMBERS_KEY) == set()  # no live member
        assert client.exists(membership.member_key("twin")) == 0
        status = bystander.cli("status").stdout
        assert WARNED.search(status), status
        for h in twins:
            assert h.stop_foreground(h.popens[-1]) == 0
    finally:
        for h in (*twins, bystander):
            h.cleanup()
        client.close()
