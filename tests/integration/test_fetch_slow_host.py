"""A slow remote host must not hold back the others.

Two hosts: a real Prometheus with known history, and a local aiohttp server speaking the
Prometheus ``query_range`` API that answers only after a long delay (with the values of
``time()``, so a late answer is still checkable). The fast host's metrics must be finished
and queued long before the slow one answers; with a cycle deadline shorter than the delay the
slow metrics are counted as unfinished, nothing of them is queued, and they go first in the
next cycle (the Fetcher's carried set and ``order_due``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
import redis
from aiohttp import web

from skyline.vista import codec, constants, redisconn
from skyline.vista.fetch_cycle import FetchCycle, MetricResult
from skyline.vista.fetcher import Fetcher, order_due
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.model import Point
from skyline.vista.testing.servers import PrometheusServer, free_port
from tests.conftest import PrometheusFactory
from tests.support.rig import Rig
from tests.support.web import serving

FAST = 4
SLOW = 3


# ------------------------------------------------------------------------------ the hosts


@dataclass
class SlowPrometheus:
    """``/api/v1/query_range`` of ``time()`` answered after ``delay`` seconds."""

    delay: float
    port: int = field(default_factory=free_port)
    arrived: list[float] = field(default_factory=list)  # monotonic time of each request
    answered: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def query_range(self, request: web.Request) -> web.Response:
        self.arrived.append(time.monotonic())
        await asyncio.sleep(self.delay)
        start, end = int(request.query["start"]), int(request.query["end"])
        step = int(request.query["step"].rstrip("s"))
        values = [[ts, str(ts)] for ts in range(start, end + 1, step)]
        self.answered.append(time.monotonic())
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
            }
        )


@asynccontextmanager
async def serve(source: SlowPrometheus) -> AsyncIterator[SlowPrometheus]:
    app = web.Application()
    app.router.add_get("/api/v1/query_range", source.query_range)
    # handler_cancellation: a request whose client gave up stops sleeping at once.
    async with serving(app, source.port, handler_cancellation=True):
        yield source


def history_text(minute: int) -> tuple[str, dict[int, float]]:
    samples = {ts: float(ts // 60 % 1000) + 0.5 for ts in range(minute - 1800, minute, 60)}
    lines = [f'vista_fast{{job="f"}} {v} {ts}' for ts, v in samples.items()]
    return "\n".join(lines) + "\n# EOF\n", samples


@pytest.fixture
def fast(tmp_prometheus: PrometheusFactory) -> tuple[PrometheusServer, int, dict[int, float]]:
    minute = int(time.time()) // 60 * 60
    text, samples = history_text(minute)
    return tmp_prometheus(history=text), minute, samples


# --------------------------------------------------------------------------------- helpers


def entries(fast_url: str, slow_url: str) -> list[tuple[object, ...]]:
    """The slow metrics first in the settings: a slow host must not delay later entries."""

    def one(host: str, target: str, name: str) -> tuple[object, ...]:
        return (host, "prometheus", 60, target, name, "default", "hosts", *[None] * 4, ())

    slow = [one(slow_url, "time()", f"slow{i}") for i in range(SLOW)]
    fast = [one(fast_url, f'vista_fast{{job="f"}} + {i}', f"fast{i}") for i in range(FAST)]
    return slow + fast


def fast_points(samples: dict[int, float], minute: int, i: int) -> list[Point]:
    """The last 5 min of vista_fast + i (the history ends one minute before ``minute``)."""
    return [(ts, samples[ts] + i) for ts in range(minute - 300, minute, 60)]


def queued(client: redis.Redis) -> dict[str, list[Point]]:
    found: dict[str, list[Point]] = {}
    for raw in client.smembers(constants.QUEUE_KEY):
        item = codec.decode_item(raw)
        found[item.metric] = list(item.points)
    return found


class TimedCycle(FetchCycle):
    """Records when each metric finished (monotonic)."""

    finished: dict[str, float]

    def _finish(self, result: MetricResult) -> None:
        super()._finish(result)
        self.finished[result.metric] = time.monotonic()


# ----------------------------------------------------------------------------------- tests


@pytest.mark.slow
async def test_fast_host_finishes_and_is_queued_long_before_the_slow_one_answers(
    rig: Rig, fast: tuple[PrometheusServer, int, dict[int, float]]
) -> None:
    prom, minute, samples = fast
    delay = 3.0
    async with serve(SlowPrometheus(delay)) as slow:
        cfg = rig.config(entries(prom.url, slow.url))
        client = redisconn.connect_async(cfg.redis)
        queued_at: list[float] = []

        async def watch_queue() -> None:
            while await client.scard(constants.QUEUE_KEY) < FAST:
                await asyncio.sleep(0.01)
            queued_at.append(time.monotonic())

        try:
            async with aiohttp.ClientSession() as session:
                cycle = TimedCycle(
                    cfg, session, {}, queue=AsyncFetchQueue(client), clock=lambda: minute + 1.0
                )
                cycle.finished = {}
                watcher = asyncio.ensure_future(watch_queue())
                began = time.monotonic()
                report = await cycle.run(cfg.fetch_metrics, {}, set(), deadline=delay + 5)
                await asyncio.wait_for(watcher, 5)
        finally:
            await client.aclose()

    results = {r.metric: r for r in report.results}
    assert report.unfinished == 0 and all(r.error is None for r in report.results)
    fast_done = [cycle.finished[f"hosts.fast{i}"] - began for i in range(FAST)]
    slow_done = [cycle.finished[f"hosts.slow{i}"] - began for i in range(SLOW)]
    assert len(slow.arrived) == SLOW
    assert max(fast_done) < delay / 2, fast_done
    assert min(slow_done) >= delay, slow_done
    # Queued too (not only finished) while the slow host was still thinking.
    assert queued_at[0] - began < delay / 2, queued_at[0] - began
    for i in range(FAST):
        assert list(results[f"hosts.fast{i}"].points) == fast_points(samples, minute, i)
    for i in range(SLOW):
        want = [(ts, float(ts)) for ts in range(minute - 300, minute, 60)]
        assert list(results[f"hosts.slow{i}"].points) == want
    assert queued(rig.redis) == {
        **{f"hosts.fast{i}": fast_points(samples, minute, i) for i in range(FAST)},
        **{
            f"hosts.slow{i}": [(ts, float(ts)) for ts in range(minute - 300, minute, 60)]
            for i in range(SLOW)
        },
    }


@pytest.mark.slow
async def test_cycle_deadline_counts_slow_metrics_unfinished_and_they_go_first_next_cycle(
    rig: Rig, fast: tuple[PrometheusServer, int, dict[int, float]]
) -> None:
    prom, minute, samples = fast
    now = [minute + 1.0]
    async with serve(SlowPrometheus(delay=30.0)) as slow:
        cfg = rig.config(
            entries(prom.url, slow.url),
            VISTA_FETCHER_PROCESS_MAX_RUNTIME=1.5,
        )
        fetcher = Fetcher(os.getpid(), cfg, clock=lambda: now[0])
        client = redisconn.connect_async(cfg.redis)
        try:
            async with aiohttp.ClientSession() as session:
                queue = AsyncFetchQueue(client)
                began = time.monotonic()
                first = await fetcher.cycle(session, queue)
                took = time.monotonic() - began
                assert first is not None

                slow_names = {f"hosts.slow{i}" for i in range(SLOW)}
                assert 1.5 <= took < 3.0, took  # the deadline, not the slow host's 30 s
                assert first.unfinished == SLOW
                assert {r.metric for r in first.results if not r.done} == slow_names
                assert fetcher.state.carried == slow_names
                # The fast host's metrics were queued; nothing of the slow ones.
                assert queued(rig.redis) == {
                    f"hosts.fast{i}": fast_points(samples, minute, i) for i in range(FAST)
                }
                assert await client.get(constants.FETCHER_HEARTBEAT_KEY) == str(minute + 1).encode()

                # The carried metrics go first, whatever their place in the settings.
                ordered = order_due(list(cfg.fetch_metrics[::-1]), fetcher.state.carried)
                assert [e.metric for e in ordered[:SLOW]] == sorted(slow_names)

                # Next minute: the slow host is fast again.
                slow.delay = 0.0
                now[0] = minute + 61.0
                second = await fetcher.cycle(session, queue)
                assert second is not None
        finally:
            await client.aclose()

    results = second.results
    assert [r.metric for r in results[:SLOW]] == sorted(slow_names)
    assert second.unfinished == 0 and fetcher.state.carried == set()
    for r in results[:SLOW]:
        assert r.error is None and r.skipped is None
        assert list(r.points) == [(ts, float(ts)) for ts in range(minute - 240, minute + 60, 60)]
    # The fast metrics' first items are still queued (no worker runs here): not fetched again.
    assert [r.skipped for r in results[SLOW:]] == ["pending"] * FAST
    assert set(queued(rig.redis)) == {r.metric for r in results}
