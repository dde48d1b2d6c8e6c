"""One query → many metrics (skyline/vista/expand.py), against a real Prometheus (history loaded
with promtool) and a real graphite-web (reading a real carbon-cache), through the real Fetcher
cycle and a real worker into the Flux double: three series, one of which appears later and is
pre-populated; every point delivered exactly once under its templated name, and ``vista
status`` lists the three metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import pytest
import redis

from skyline.vista import constants, expand, prune, redisconn, report
from skyline.vista.config import VistaConfig
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.model import Point
from skyline.vista.sinks.flux import FluxSink
from skyline.vista.testing.servers import RedisServer
from skyline.vista.worker import WorkerLoop
from tests.conftest import PrometheusFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.items import drained, run_until_drained
from tests.support.rig import GraphiteRig, Rig


def CLOCKS(minute: int) -> list[float]:
    """10 min ago (a and b), 2 min ago (c has appeared, with 20 min of history: held back),
    1 min ago (c fetched over its populate window, older than the window of cycle 2)."""
    return [minute - 600 + 1.0, minute - 120 + 1.0, minute - 60 + 1.0]


def value(instance: str, ts: int) -> float:
    return float(ts // 60 % 10_000) + {"a": 0.25, "b": 0.5, "c": 0.75}[instance]


def deliver(cfg: VistaConfig, server: RedisServer, client: redis.Redis) -> None:
    loop = WorkerLoop(cfg, f"test:{os.getpid()}:0", server.client(), FluxSink(cfg.flux))
    run_until_drained(loop, client, 20)
    assert drained(client)


def by_metric(flux: FluxServer) -> dict[str, list[Point]]:
    found: dict[str, list[Point]] = {}
    for p in flux.accepted:
        found.setdefault(p.metric, []).append((p.timestamp, p.value))
    return found


@dataclass
class Run:
    cfg: VistaConfig
    queued: list[list[str]]  # the metrics each cycle queued
    stored: dict[str, list[Point]]  # what Flux accepted


async def run_cycles(
    rig: Rig, entry: Mapping[str, object], clocks: list[float], between: Callable[[int], None]
) -> Run:
    """``entry`` delivered to a Flux double: one Fetcher cycle per clock value (``between(n)``
    first), each followed by a worker draining the queue."""
    with FluxServer() as flux:
        cfg = rig.config([entry], FLUX_PORT=flux.port, FLUX_SELF_API_KEY=DEFAULT_KEY)
        now = [clocks[0]]
        fetcher = Fetcher(os.getpid(), cfg, clock=lambda: now[0])
        queued: list[list[str]] = []
        aclient = redisconn.connect_async(cfg.redis)
        try:
            async with aiohttp.ClientSession() as session:
                queue = AsyncFetchQueue(aclient, watermark_keys(cfg.sink))
                for n, clock in enumerate(clocks):
                    between(n)
                    now[0] = clock
                    cycle = await fetcher.cycle(session, queue)
                    assert cycle is not None
                    queued.append(sorted(name for r in cycle.results for name, _ in r.chains))
                    deliver(cfg, rig.redis_server, rig.redis)
        finally:
            await aclient.aclose()
        return Run(cfg, queued, by_metric(flux))


@pytest.mark.slow
async def test_prometheus_three_series_one_added_later_and_pre_populated(
    rig: Rig, tmp_prometheus: PrometheusFactory
) -> None:
    minute = int(time.time()) // 60 * 60
    starts = {"a": minute - 3000, "b": minute - 3000, "c": minute - 1200}

    def history(instances: str) -> str:
        lines = [
            f'vista_tmpl{{instance="{i}:9100",job="node"}} {value(i, ts)} {ts}'
            for i in instances
            for ts in range(starts[i], minute, 60)
        ]
        return "\n".join(lines) + "\n# EOF\n"

    prom = tmp_prometheus(history=history("ab"))
    entry = {
        "remote_host": prom.url,
        "remote_host_type": "prometheus",
        "remote_target": "vista_tmpl",
        "graphite_target": "{instance}.{job}",
        "namespace_prefix": "tmpl",
        "populate_at_resolutions": ("1h",),
    }
    run = await run_cycles(
        rig, entry, CLOCKS(minute), lambda n: prom.add_history(history("c")) if n == 1 else None
    )
    cfg, queued, stored = run.cfg, run.queued, run.stored
    names = {i: f"tmpl.{i}_9100.node" for i in "abc"}
    assert queued == [
        [names["a"], names["b"]],
        [names["a"], names["b"]],  # c seen, held back
        [names["a"], names["b"], names["c"]],
    ]
    last = minute - 120  # the open minute of the last cycle is minute - 60
    for i, name in names.items():
        want = [(ts, value(i, ts)) for ts in range(starts[i], last + 1, 60)]
        assert stored[name] == want, (name, stored[name][:3], stored[name][-3:])
    assert set(stored) == set(names.values())
    lines = report.redis_report(cfg)
    at = lines.index("VISTA_FETCH_METRICS[0] (tmpl.{instance}.{job}): 3 series:")
    assert [line.split()[0] for line in lines[at + 1 : at + 4]] == sorted(names.values())


@pytest.mark.slow
async def test_graphite_wildcard_three_series_one_added_later(graphite: GraphiteRig) -> None:
    minute = int(time.time()) // 60 * 60
    source = f"{graphite.prefix}.src"
    starts = {"a": minute - 3000, "b": minute - 3000, "c": minute - 1200}

    def write(instances: str) -> None:
        points = [
            (f"{source}.{i}.load", (float(ts), value(i, ts)))
            for i in instances
            for ts in range(starts[i], minute, 60)
        ]
        graphite.carbon.send_pickle(points)
        for i in instances:  # all of them: carbon writes a metric's points in several goes
            count = len(range(starts[i], minute, 60))
            graphite.carbon.wait_for_points(f"{source}.{i}.load", count, timeout=15)
        graphite.web.wait_visible(f"{source}.{instances[-1]}.load")

    write("ab")
    entry = {
        "remote_host": graphite.web.url,
        "remote_host_type": "graphite",
        "remote_target": f"{source}.*.load",
        "graphite_target": "{node[-2]}.load",
        "namespace_prefix": "gtmpl",
        "populate_at_resolutions": ("1hours",),
    }
    run = await run_cycles(
        graphite, entry, CLOCKS(minute), lambda n: write("c") if n == 1 else None
    )
    queued, stored = run.queued, run.stored
    names = {i: f"gtmpl.{i}.load" for i in "abc"}
    assert queued == [
        [names["a"], names["b"]],
        [names["a"], names["b"]],
        [names["a"], names["b"], names["c"]],
    ]
    last = minute - 120
    for i, name in names.items():
        want = [(ts, value(i, ts)) for ts in range(starts[i], last + 1, 60)]
        assert stored[name] == want, (name, stored[name][:3], stored[name][-3:])


async def test_metrics_made_by_a_template_are_not_pruned_as_removed(rig: Rig) -> None:
    """prune.py removes the state of metrics in no Vista host's settings; a templated entry's
    metrics are in the settings through their entry."""
    entry = {
        "remote_host": "http://127.0.0.1:1",
        "remote_host_type": "prometheus",
        "remote_target": "up",
        "graphite_target": "{job}",
        "namespace_prefix": "tmpl",
    }
    cfg = rig.config([entry], VISTA_PRUNE_REMOVED_AFTER=60)
    now = time.time()
    rig.redis.hset(expand.key("tmpl.{job}"), "tmpl.node", repr(now - 7200))
    rig.redis.sadd(constants.VISTA_METRICS_KEY, "tmpl.node", "gone.metric")
    rig.redis.hset(constants.VISTA_WATERMARK_HASH, "tmpl.node", "{'timestamp': 60, 'value': 1.0}")
    rig.redis.hset(constants.CONFIGURED_KEY, mapping={"tmpl.node": 1, "gone.metric": 1})
    aclient = redisconn.connect_async(cfg.redis)
    try:
        pruned = await prune.maintain(aclient, cfg, now)
    finally:
        await aclient.aclose()
    assert pruned == ["gone.metric"]
    assert rig.redis.sismember(constants.VISTA_METRICS_KEY, "tmpl.node")
    assert rig.redis.hexists(constants.VISTA_WATERMARK_HASH, "tmpl.node")
