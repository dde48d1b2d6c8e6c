"""State of metrics removed from the settings, against a real redis-server: remembered by
every Vista host, listed by ``vista status`` while pending removal, pruned after
VISTA_PRUNE_REMOVED_AFTER with a log line; never Skyline's own keys of metrics Vista does not
manage, never a metric another Vista host still has, never one with an item still queued."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista import constants, prune, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.report import redis_report
from skyline.vista.testing.servers import RedisServer
from tests.support.rig import Rig
from tests.support.settings import make_config

PROM = "http://prometheus.example:9090"
DAY = 86_400
WEEK = 7 * DAY


def entry(name: str) -> tuple[object, ...]:
    return (PROM, "prometheus", 60, "up", name, "default", "vista", None, None, None, None, ())


def config(
    tmp_path: Path, server: RedisServer, names: list[str], sink: str = "graphite", **extra: Any
) -> VistaConfig:
    sinks: dict[str, Any] = {"VISTA_SINK": "graphite", "CARBON_HOST": "127.0.0.1"}
    return make_config(
        tmp_path,
        server,
        [entry(n) for n in names],
        **(sinks if sink == "graphite" else {}),
        **extra,
    )


def maintain(cfg: VistaConfig, now: float) -> list[str]:
    async def go() -> list[str]:
        client = redisconn.connect_async(cfg.redis)
        try:
            return await prune.maintain(client, cfg, now)
        finally:
            await client.aclose()

    return asyncio.run(go())


def give_state(client: redis.Redis, metric: str, *, vista_owned: bool = True) -> None:
    """What a delivered metric leaves in Redis (carbon sink: Vista wrote flux.last.*)."""
    mark = "{'timestamp': 1700000000, 'value': 1.0}"
    client.hset(constants.WATERMARK_HASH, metric, mark)
    client.set(constants.WATERMARK_KEY_PREFIX + metric, "[1700000000, 1.0]", ex=3600)
    if vista_owned:
        client.hset(constants.VISTA_WATERMARK_HASH, metric, mark)
        client.sadd(constants.VISTA_METRICS_KEY, metric)
        client.set(constants.RESOLUTION_KEY_PREFIX + metric, "60", ex=3600)
        client.rpush(constants.CHAIN_KEY_PREFIX + metric, "an item")
        client.hset(constants.HOLES_KEY, metric, "[]")


def state_of(client: redis.Redis, metric: str) -> dict[str, bool]:
    return {
        "flux_hash": client.hexists(constants.WATERMARK_HASH, metric),
        "flux_key": bool(client.exists(constants.WATERMARK_KEY_PREFIX + metric)),
        "vista_hash": client.hexists(constants.VISTA_WATERMARK_HASH, metric),
        "vista_metrics": bool(client.sismember(constants.VISTA_METRICS_KEY, metric)),
        "resolution": bool(client.exists(constants.RESOLUTION_KEY_PREFIX + metric)),
        "chain": bool(client.exists(constants.CHAIN_KEY_PREFIX + metric)),
        "holes": client.hexists(constants.HOLES_KEY, metric),
    }


ALL = dict.fromkeys(
    ["flux_hash", "flux_key", "vista_hash", "vista_metrics", "resolution", "chain", "holes"], True
)
NONE = dict.fromkeys(ALL, False)


def test_removed_metrics_are_listed_then_pruned_after_the_grace_period(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    before = config(rig.tmp_path, rig.redis_server, ["a", "gone", "busy"])
    for metric in ("vista.a", "vista.gone", "vista.busy"):
        give_state(rig.redis, metric)
    give_state(rig.redis, "skyline.own", vista_owned=False)  # Flux's, not Vista's
    assert maintain(before, now - WEEK + 3600) == []  # all three in the settings then

    # 'gone' and 'busy' leave the settings; 'busy' still has an item queued.
    after = config(rig.tmp_path, rig.redis_server, ["a"])
    rig.redis.hset(constants.PENDING_KEY, "vista.busy", "an item")
    assert maintain(after, now) == []  # an hour of the grace period left
    lines = redis_report(after)
    at = lines.index("pending removal (in no Vista host's settings): 2")
    assert (
        lines[at + 1].startswith("  vista.busy  removed 7.0d ago")
        and "pruned in 60m" in lines[at + 1]
    )
    assert (
        lines[at + 2].startswith("  vista.gone  removed 7.0d ago")
        and "pruned in 60m" in lines[at + 2]
    )

    with caplog.at_level(logging.WARNING, logger="skyline.vista.prune"):
        assert maintain(after, now + 3601) == ["vista.gone"]
    assert state_of(rig.redis, "vista.gone") == NONE
    assert state_of(rig.redis, "vista.busy") == ALL  # its item is not delivered yet
    assert state_of(rig.redis, "vista.a") == ALL
    assert state_of(rig.redis, "skyline.own") == {**NONE, "flux_hash": True, "flux_key": True}
    assert "pruned the state of 1 metric(s)" in caplog.text and "vista.gone" in caplog.text
    # Once its item is delivered, 'busy' goes too; 'a' never.
    rig.redis.hdel(constants.PENDING_KEY, "vista.busy")
    assert maintain(after, now + 3602) == ["vista.busy"]
    assert state_of(rig.redis, "vista.a") == ALL
    assert not any("pending removal" in line for line in redis_report(after))


def test_with_the_flux_sink_flux_last_is_never_pruned(rig: Rig) -> None:
    now = time.time()
    give_state(rig.redis, "vista.gone")
    maintain(config(rig.tmp_path, rig.redis_server, ["gone"], sink="flux"), now - 2 * WEEK)
    assert maintain(config(rig.tmp_path, rig.redis_server, [], sink="flux"), now) == ["vista.gone"]
    assert state_of(rig.redis, "vista.gone") == {**NONE, "flux_hash": True, "flux_key": True}


def test_a_metric_another_vista_host_still_has_is_not_removed(rig: Rig) -> None:
    """Two Vista hosts on one Redis (VISTA_SHARDS, or settings that differ): 'm' is only in
    host A's settings; host B never prunes it while A keeps refreshing it."""
    now = time.time()
    give_state(rig.redis, "vista.m")
    host_a = config(rig.tmp_path, rig.redis_server, ["m", "x"], VISTA_PRUNE_REMOVED_AFTER=600)
    host_b = config(rig.tmp_path, rig.redis_server, ["x"], VISTA_PRUNE_REMOVED_AFTER=600)
    for step in range(0, 3600, 300):  # both refresh every 5 minutes for an hour
        maintain(host_a, now + step)
        assert maintain(host_b, now + step) == []
    assert state_of(rig.redis, "vista.m") == ALL
    assert not any("pending removal" in line for line in redis_report(host_b))
    # Host A goes away for good: once its refresh is stale and the grace period over, B
    # prunes it.
    assert maintain(host_b, now + 3300 + prune.STALE_AFTER - 1) == []
    assert maintain(host_b, now + 3300 + prune.STALE_AFTER + 1) == ["vista.m"]


def test_metrics_delivered_before_the_record_existed_get_a_grace_period_too(rig: Rig) -> None:
    now = time.time()
    give_state(rig.redis, "vista.old")  # in vista.metrics, not in the configured record
    cfg = config(rig.tmp_path, rig.redis_server, ["a"])
    assert maintain(cfg, now) == []  # its grace period starts now
    assert maintain(cfg, now + WEEK - 1) == []
    assert maintain(cfg, now + WEEK + 1) == ["vista.old"]


def test_prune_zero_never_prunes(rig: Rig) -> None:
    now = time.time()
    give_state(rig.redis, "vista.gone")
    maintain(config(rig.tmp_path, rig.redis_server, ["gone"]), now - 2 * WEEK)
    cfg = config(rig.tmp_path, rig.redis_server, [], VISTA_PRUNE_REMOVED_AFTER=0)
    assert maintain(cfg, now) == []
    assert state_of(rig.redis, "vista.gone") == ALL
