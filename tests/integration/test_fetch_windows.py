"""Fetch windows against a real Prometheus: a window that keeps failing does not hold back the
metric's newer points (it is retried, in smaller chunks after a timeout, and given up in the
end), and a series with no data costs the same every cycle.

The failures come from a small aiohttp proxy in front of the real Prometheus that fails (or
stalls) the ``query_range`` requests starting before a given time and passes the others on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from skyline.vista import codec, constants, expand, holes, redisconn
from skyline.vista.agent import Vista
from skyline.vista.config import VistaConfig
from skyline.vista.cycle_setup import metric_states, new_cycle, read_recorded
from skyline.vista.fetch_cycle import CycleReport, FetchCycle
from skyline.vista.fetch_log import log_holes
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.holes import Hole
from skyline.vista.logs import LogSpec
from skyline.vista.model import Point, QueueItem
from skyline.vista.report import redis_report
from skyline.vista.schedule import EMPTY_RESCAN, MetricState
from skyline.vista.telemetry import QueueCollector
from skyline.vista.testing.servers import (
    PrometheusServer,
    free_port,
    poll_until,
)
from tests.conftest import PrometheusFactory
from tests.support.rig import GraphiteRig, Rig
from tests.support.web import serving

STEP = 5  # the metric's frequency: 11,000 points per request cover 15.3 h, a day is 2 windows
DAY = 86_400


@dataclass(frozen=True)
class History:
    now: float
    minute: int
    text: str


@pytest.fixture(scope="module")
def history() -> History:
    now = time.time()
    minute = int(now) // 60 * 60
    lines = ["# TYPE vista_day gauge"]
    for ts in range(minute - DAY - 600, minute - 120 + 1, 60):
        lines.append(f"vista_day {ts % 9973 + 0.5} {ts}")
    return History(now, minute, "\n".join(lines) + "\n# EOF\n")


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, history: History) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prom-windows"), history=history.text) as server:
        yield server


@dataclass
class FailingProxy:
    """Passes query_range on to ``upstream``, except requests starting before ``fail_before``:
    those stall (``mode='timeout'``) or answer HTTP 500 (``mode='error'``)."""

    upstream: str
    fail_before: int = 0
    mode: str = "error"
    port: int = field(default_factory=free_port)
    asked: list[tuple[int, int, bool]] = field(default_factory=list)  # (start, end, failed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def query_range(self, request: web.Request) -> web.StreamResponse:
        start, end = int(request.query["start"]), int(request.query["end"])
        return await self._answer(request, "/api/v1/query_range", start, end)

    async def render(self, request: web.Request) -> web.StreamResponse:
        frm, until = request.query.get("from", ""), request.query.get("until", "")
        start = int(frm) if frm.lstrip("-").isdigit() and not frm.startswith("-") else 1 << 62
        end = int(until) if until.isdigit() else 0
        return await self._answer(request, "/render/", start, end)

    async def _answer(
        self, request: web.Request, path: str, start: int, end: int
    ) -> web.StreamResponse:
        failing = start < self.fail_before
        self.asked.append((start, end, failing))
        if failing and self.mode == "timeout":
            await asyncio.sleep(20)
        if failing:
            return web.Response(status=500, text="upstream exploded")
        async with aiohttp.ClientSession() as session:
            async with session.get(self.upstream + path, params=request.query) as answer:
                body = await answer.read()
                return web.Response(
                    body=body, status=answer.status, content_type="application/json"
                )


@asynccontextmanager
async def serve(proxy: FailingProxy) -> AsyncIterator[FailingProxy]:
    app = web.Application()
    app.router.add_get("/api/v1/query_range", proxy.query_range)
    app.router.add_get("/render/", proxy.render)
    async with serving(app, proxy.port, handler_cancellation=True):
        yield proxy


def entry(host: str, name: str = "day", populate: tuple[str, ...] = ("1d",)) -> tuple[object, ...]:
    return (host, "prometheus", STEP, "vista_day", name, "default", "w", None, None, None, None,
            populate)  # fmt: skip


def config(rig: Rig, host: str, **extra: Any) -> VistaConfig:
    return rig.config(
        [entry(host)],
        VISTA_REMOTE_HOSTS={host: {"timeout": 3.0}},
        VISTA_MAX_BACKFILL=2 * DAY,
        **extra,
    )


async def cycle(cfg: VistaConfig, now: float, client: redis.Redis) -> CycleReport:
    """One cycle at ``now`` the way the fetcher runs it: watermarks, pending and holes read
    from Redis, the items and holes written back."""
    rclient = redisconn.connect_async(cfg.redis)
    queue = AsyncFetchQueue(rclient, watermark_keys(cfg.sink))
    names = [e.metric for e in cfg.fetch_metrics]
    try:
        marks = await queue.watermarks(names)
        found = await queue.holes(names)
        states = {
            m: MetricState(
                watermark=marks[m].timestamp if m in marks else None, holes=found.get(m, ())
            )
            for m in names
        }
        async with aiohttp.ClientSession() as session:
            fetch = FetchCycle(cfg, session, {}, queue=queue, clock=lambda: now)
            return await fetch.run(cfg.fetch_metrics, states=states)
    finally:
        await rclient.aclose()


def take_items(client: redis.Redis, metric: str) -> list[QueueItem]:
    return take_all(client, [metric])[metric]


def take_all(client: redis.Redis, metrics: list[str]) -> dict[str, list[QueueItem]]:
    """The metrics' queued chains, removed as a worker would after delivering them; each
    watermark moves to the last point of its non-replay items."""
    found: dict[str, list[QueueItem]] = {}
    for metric in metrics:
        head = client.hget(constants.PENDING_KEY, metric)
        rest = client.lrange(constants.CHAIN_KEY_PREFIX + metric, 0, -1) if head else []
        found[metric] = [codec.decode_item(raw) for raw in [head, *rest]] if head else []
    client.delete(constants.QUEUE_KEY, constants.PENDING_KEY)
    for metric, items in found.items():
        client.delete(constants.CHAIN_KEY_PREFIX + metric)
        fresh = [p for i in items if not i.replay for p in i.points]
        if fresh:
            ts, value = fresh[-1]
            client.hset(
                constants.VISTA_WATERMARK_HASH, metric, f"{{'timestamp': {ts}, 'value': {value}}}"
            )
    return found


def points_of(items: list[QueueItem], *, replay: bool) -> list[Point]:
    return [p for i in items if i.replay == replay for p in i.points]


def stored_holes(client: redis.Redis, metric: str) -> list[Hole]:
    return holes.decode(client.hget(constants.HOLES_KEY, metric))


async def prometheus_points(url: str, start: int, end: int) -> list[Point]:
    params = {"query": "vista_day", "start": str(start), "end": str(end), "step": str(STEP)}
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/api/v1/query_range", params=params) as answer:
            body = await answer.json()
    values = body["data"]["result"][0]["values"] if body["data"]["result"] else []
    return [(int(ts), float(v)) for ts, v in values]


@pytest.mark.slow
async def test_a_window_that_times_out_does_not_hold_back_newer_points_and_is_refilled(
    rig: Rig, prom: PrometheusServer, history: History, caplog: pytest.LogCaptureFixture
) -> None:
    metric = "w.day"
    now = history.now
    async with serve(
        FailingProxy(prom.url, fail_before=int(now) - 20 * 3600, mode="timeout")
    ) as px:
        cfg = config(rig, px.url)
        # Cycle 1: the day is two windows; the older one stalls past the 3 s timeout.
        report = await cycle(cfg, now, rig.redis)
        result = report.results[0]
        assert tuple(result.windows) == result.plan.windows and len(result.windows) == 2
        old, new = result.windows
        assert result.error is not None and result.error.kind == "timeout"
        first = take_items(rig.redis, metric)
        newer = await prometheus_points(prom.url, new.start or 0, new.end or 0)
        minute = history.minute
        want_new = [p for p in newer if p[0] < minute]
        assert points_of(first, replay=False) == want_new and want_new  # delivered at once
        assert points_of(first, replay=True) == []
        [hole] = stored_holes(rig.redis, metric)
        assert (hole.start, hole.end, hole.attempts, hole.kind) == (
            old.start,
            old.end,
            1,
            "timeout",
        )
        with caplog.at_level(logging.WARNING, logger="skyline.vista.fetcher"):
            log_holes(result)
        assert "failed (no answer within 3s); newer points are delivered" in caplog.text

        # Cycle 2, after the retry delay: still stalling; the hole is split in two.
        now2 = now + holes.retry_delay(1) + 1
        report = await cycle(cfg, now2, rig.redis)
        take_items(rig.redis, metric)
        split = stored_holes(rig.redis, metric)
        assert old.start is not None and old.end is not None
        middle = old.start + (old.end - old.start) // 2 // STEP * STEP
        assert [(h.start, h.end, h.attempts) for h in split] == [
            (old.start, middle, 2),
            (middle + STEP, old.end, 2),
        ]
        # Not due yet: a cycle right after does not ask for them.
        asked = len(px.asked)
        await cycle(cfg, now2 + 10, rig.redis)
        take_items(rig.redis, metric)
        assert all(start >= (new.end or 0) - 600 for start, _, _ in px.asked[asked:])

        # The source heals: the hole's points come as replay items, the record is gone.
        px.fail_before = 0
        now3 = now2 + holes.retry_delay(2) + 1
        report = await cycle(cfg, now3, rig.redis)
        refill = take_items(rig.redis, metric)
        assert points_of(refill, replay=True) == await prometheus_points(
            prom.url, old.start or 0, old.end or 0
        )
        assert report.results[0].refilled == len(points_of(refill, replay=True)) > 10_000
        assert rig.redis.hget(constants.HOLES_KEY, metric) is None


async def templated_cycle(cfg: VistaConfig, now: float) -> CycleReport:
    """One cycle at ``now`` set up as the Fetcher does (cycle_setup.py: a templated entry's
    names and their watermarks), the names it saw remembered."""
    rclient = redisconn.connect_async(cfg.redis)
    queue = AsyncFetchQueue(rclient, watermark_keys(cfg.sink))
    try:
        recorded = await read_recorded(queue, cfg.fetch_metrics, now)
        async with aiohttp.ClientSession() as session:
            fetch = new_cycle(cfg, session, queue, recorded, clock=lambda: now)
            report = await fetch.run(
                cfg.fetch_metrics, states=metric_states(cfg.fetch_metrics, recorded)
            )
        await expand.remember(rclient, {r.metric: r.seen for r in report.results}, now)
        return report
    finally:
        await rclient.aclose()


def two_series_prometheus(
    tmp_prometheus: PrometheusFactory, metric: str, first: int, minute: int
) -> PrometheusServer:
    """A Prometheus holding ``metric{i="a"}`` and ``metric{i="b"}`` every minute from ``first``
    to two minutes before ``minute`` (values told apart by a .25 / .75 offset)."""
    lines = [f"# TYPE {metric} gauge"]
    for i, offset in (("a", 0.25), ("b", 0.75)):
        for ts in range(first, minute - 120 + 1, 60):
            lines.append(f'{metric}{{i="{i}"}} {ts % 9973 + offset} {ts}')
    return tmp_prometheus(history="\n".join(lines) + "\n# EOF\n")


def series_points(prom: PrometheusServer, query: str, start: int, end: int) -> list[Point]:
    """What Prometheus itself answers for one series of ``query`` at STEP."""
    body = prom.query_range(query, start, end, STEP)
    return [(int(ts), float(v)) for ts, v in body["data"]["result"][0]["values"]]


def template_entry(url: str, query: str, **extra: object) -> dict[str, object]:
    """A fetch-list entry naming each series of ``query`` tw.<its label i>."""
    return {
        "remote_host": url,
        "remote_host_type": "prometheus",
        "frequency": STEP,
        "remote_target": query,
        "graphite_target": "{i}",
        "namespace_prefix": "tw",
        **extra,
    }


@pytest.mark.slow
async def test_a_failed_window_of_a_name_template_is_a_hole_refilled_under_each_name(
    rig: Rig, tmp_prometheus: PrometheusFactory, history: History
) -> None:
    """One query, two series (a, b), a day to pre-populate in two windows; the older one fails.
    The newer points of both names are delivered at once, the window is kept as the entry's
    hole, and once the source heals its points come as replay items under each name (before:
    the failed window ended the merge, nothing was delivered and nothing recorded)."""
    now, minute = history.now, history.minute
    prom = two_series_prometheus(tmp_prometheus, "vista_tw", minute - DAY - 600, minute)
    names = {"a": "tw.a", "b": "tw.b"}

    def source(i: str, start: int, end: int) -> list[Point]:
        return series_points(prom, f'vista_tw{{i="{i}"}}', start, end)

    async with serve(FailingProxy(prom.url, fail_before=int(now) - 20 * 3600)) as px:
        entry = template_entry(px.url, "vista_tw", populate_at_resolutions=("1d",))
        cfg = rig.config([entry], VISTA_MAX_BACKFILL=2 * DAY)
        template = cfg.fetch_metrics[0].metric
        report = await templated_cycle(cfg, now)
        result = report.results[0]
        assert len(result.windows) == 2 and result.error is not None
        old, new = result.windows
        first = take_all(rig.redis, list(names.values()))
        for i, name in names.items():
            want = [p for p in source(i, new.start or 0, new.end or 0) if p[0] < minute]
            assert points_of(first[name], replay=False) == want and want, name  # at once
        [hole] = stored_holes(rig.redis, template)
        assert (hole.start, hole.end, hole.attempts) == (old.start, old.end, 1)

        px.fail_before = 0  # the source heals
        report = await templated_cycle(cfg, now + holes.retry_delay(1) + 1)
        assert report.results[0].error is None, report.results[0].error
        refilled = 0
        refill = take_all(rig.redis, list(names.values()))
        for i, name in names.items():
            want = source(i, old.start or 0, old.end or 0)
            assert points_of(refill[name], replay=True) == want and len(want) > 10_000, name
            refilled += len(want)
        assert report.results[0].refilled == refilled
        assert rig.redis.hget(constants.HOLES_KEY, template) is None


@pytest.mark.slow
async def test_a_template_hole_refills_each_name_only_after_its_own_watermark(
    rig: Rig, tmp_prometheus: PrometheusFactory, history: History
) -> None:
    """One query, two series whose names were delivered to different points: tw.a up to 30 h
    ago, tw.b up to 25 h ago (the entry's watermark is the older, tw.a's). The older window
    (from 30 h ago) fails while the newer one answers: a hole of the entry. Once the source
    heals, the refill gives tw.a the hole's points after its watermark and tw.b only those
    after its own: every point reaches the queue exactly once (before: tw.b's points between
    the two watermarks, already delivered, were queued again as replay items, which skip the
    watermark check, and the sink got them twice)."""
    now, minute = history.now, history.minute
    prom = two_series_prometheus(tmp_prometheus, "vista_tm", minute - 2 * DAY, minute)
    names = {"a": "tw.a", "b": "tw.b"}
    marks = {"tw.a": minute - 30 * 3600, "tw.b": minute - 25 * 3600}

    def source(i: str, start: int, end: int) -> list[Point]:
        return series_points(prom, f'vista_tm{{i="{i}"}}', start, end)

    async with serve(FailingProxy(prom.url, fail_before=int(now) - 20 * 3600)) as px:
        entry = template_entry(px.url, "vista_tm")
        cfg = rig.config([entry], VISTA_MAX_BACKFILL=2 * DAY)
        template = cfg.fetch_metrics[0].metric
        # The names were seen and delivered before, each to its own watermark.
        rclient = redisconn.connect_async(cfg.redis)
        try:
            await expand.remember(rclient, {template: list(names.values())}, now - 60)
        finally:
            await rclient.aclose()
        for name, mark in marks.items():
            rig.redis.hset(
                constants.VISTA_WATERMARK_HASH, name, f"{{'timestamp': {mark}, 'value': 1.0}}"
            )
        report = await templated_cycle(cfg, now)
        result = report.results[0]
        assert len(result.windows) == 2 and result.error is not None
        old, new = result.windows
        assert old.start is not None and old.end is not None
        assert old.start <= marks["tw.a"] < marks["tw.b"] < old.end, (old, marks)
        first = take_all(rig.redis, list(names.values()))
        [hole] = stored_holes(rig.redis, template)
        assert (hole.start, hole.end, hole.after) == (old.start, old.end, marks["tw.a"])
        assert hole.names == (("tw.b", marks["tw.b"]),)

        px.fail_before = 0  # the source heals
        report = await templated_cycle(cfg, now + holes.retry_delay(1) + 1)
        assert report.results[0].error is None, report.results[0].error
        refill = take_all(rig.redis, list(names.values()))
        assert rig.redis.hget(constants.HOLES_KEY, template) is None
    refilled = 0
    for i, name in names.items():
        assert new.start is not None and new.end is not None
        asked = source(i, old.start, old.end) + source(i, new.start, new.end)
        want = [p for p in asked if marks[name] < p[0] < minute]  # the sink gets each once
        got = points_of(first[name], replay=False) + points_of(refill[name], replay=True)
        again = [ts for ts, _ in got if ts <= marks[name]]  # delivered before: sent twice
        twice = len(got) - len({ts for ts, _ in got})
        assert (len(again), twice) == (0, 0), name
        assert sorted(got) == want and len(want) > 10_000, name
        # The second cycle's own points: the minute that closed meanwhile, nothing older.
        assert all(ts >= minute for ts, _ in points_of(refill[name], replay=False)), name
        refilled += len(points_of(refill[name], replay=True))
    assert report.results[0].refilled == refilled


async def test_a_window_that_keeps_failing_is_given_up_with_a_log_line(
    rig: Rig, prom: PrometheusServer, history: History, caplog: pytest.LogCaptureFixture
) -> None:
    metric = "w.day"
    now = history.now
    start = history.minute - 20 * 3600
    # A hole at its last attempt; the metric is otherwise up to date.
    mark = history.minute - 180
    rig.redis.hset(constants.VISTA_WATERMARK_HASH, metric, f"{{'timestamp': {mark}, 'value': 1}}")
    last = Hole(
        start, start + 3600, holes.MAX_ATTEMPTS - 1, now - 1, now - 7200, "HTTP 500", "http_500"
    )
    rig.redis.hset(constants.HOLES_KEY, metric, holes.encode([last]))
    async with serve(FailingProxy(prom.url, fail_before=start + 3600, mode="error")) as px:
        cfg = config(rig, px.url)
        report = await cycle(cfg, now, rig.redis)
    result = report.results[0]
    assert [(h.start, h.end, h.attempts) for h in result.given_up] == [
        (start, start + 3600, holes.MAX_ATTEMPTS)
    ]
    assert rig.redis.hget(constants.HOLES_KEY, metric) is None
    with caplog.at_level(logging.ERROR, logger="skyline.vista.fetcher"):
        log_holes(result)
    assert "w.day: giving up window" in caplog.text
    assert f"after {holes.MAX_ATTEMPTS} failed attempts" in caplog.text
    assert "its points are not fetched" in caplog.text


@pytest.mark.parametrize(
    ("populate", "watermark_age", "first_span"),
    [(("15d",), None, 15 * DAY), ((), 2 * DAY, 2 * DAY)],
    ids=["populate-15d", "watermark-2-days-old"],
)
async def test_a_series_with_no_data_costs_the_same_every_cycle(
    rig: Rig,
    prom: PrometheusServer,
    history: History,
    populate: tuple[str, ...],
    watermark_age: int | None,
    first_span: int,
) -> None:
    """A series that has no data, to pre-populate over 15 days or with a watermark 2 days old:
    the first cycle asks for the whole span, the next ones only for the last hour (data may
    arrive late), not a span that grows every cycle."""
    if watermark_age is not None:
        mark = history.minute - watermark_age
        rig.redis.hset(
            constants.VISTA_WATERMARK_HASH, "w.none", f"{{'timestamp': {mark}, 'value': 1.0}}"
        )
    async with serve(FailingProxy(prom.url)) as px:
        entry = (px.url, "prometheus", 60, "vista_nothing", "none", "default", "w", None, None,
                 None, None, populate)  # fmt: skip
        cfg = rig.config([entry])
        clock = [history.now]
        fetcher = Fetcher(0, cfg, clock=lambda: clock[0])
        rclient = redisconn.connect_async(cfg.redis)
        queue = AsyncFetchQueue(rclient, watermark_keys(cfg.sink))
        spans = []
        try:
            async with aiohttp.ClientSession() as session:
                for n in range(4):
                    clock[0] = history.now + 60 * n
                    before = len(px.asked)
                    await fetcher.cycle(session, queue)
                    spans.append(sum(e - s for s, e, _ in px.asked[before:]))
        finally:
            await rclient.aclose()
    assert spans[0] >= first_span - 600, spans
    for span in spans[1:]:
        assert span <= EMPTY_RESCAN + 2 * 300, spans
    assert rig.redis.scard(constants.QUEUE_KEY) == 0


async def test_failing_windows_are_listed_by_status_and_counted_in_metrics(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    now = history.now
    async with serve(FailingProxy(prom.url, fail_before=int(now) - 20 * 3600)) as px:
        cfg = config(rig, px.url)
        report = await cycle(cfg, now, rig.redis)
    [hole] = report.results[0].new_holes
    assert hole.kind == "http_500"

    lines = redis_report(cfg)
    at = lines.index("failing windows (retried, newer points delivered): 1")
    assert lines[at + 1].startswith(
        f"  w.day  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(hole.start))}Z .. "
    )
    assert "1 attempt(s)" in lines[at + 1] and "HTTP 500" in lines[at + 1]

    agent = Vista(cfg, LogSpec(None))
    try:
        snapshot = agent.metrics.queue_snapshot()
        assert snapshot is not None and snapshot.failing_windows == 1
        gauges = {m.name: m.samples[0].value for m in QueueCollector(lambda: snapshot).collect()}
        assert gauges["vista_fetch_windows_failing"] == 1
    finally:
        agent.client.close()


async def test_graphite_a_failed_gap_chunk_does_not_hold_back_the_newer_ones(
    graphite: GraphiteRig,
) -> None:
    """A real graphite-web behind the proxy: a gap of 2 h in chunks of 50 min, the oldest
    failing. The newer chunks' points are queued at once; the failed one is refilled later
    with exactly its points after the watermark (none delivered twice)."""
    step = 10
    now = time.time()
    m = int(now) // 60 * 60
    target = f"{graphite.prefix}.gap"
    sent = [(ts, float(ts % 7919) + 0.25) for ts in range(m - 7500, m - step + 1, step)]
    graphite.carbon.send_plaintext(f"{target} {v} {ts}" for ts, v in sent)

    def rendered() -> bool | None:
        body = graphite.web.render([target], m - 7600, m)
        found = sum(1 for v, _ in body[0]["datapoints"] if v is not None) if body else 0
        return True if found >= len(sent) else None

    poll_until(rendered, 30, what="graphite-web to render the gap")
    mark = m - 7200 + 130  # the gap starts at a 300 s quantum before it
    graphite.redis.hset(
        constants.VISTA_WATERMARK_HASH, "w.gap", f"{{'timestamp': {mark}, 'value': 1.0}}"
    )
    first = (mark // 300) * 300
    async with serve(FailingProxy(graphite.web.url, fail_before=first + 1)) as px:
        cfg = graphite.config(
            [
                {
                    "remote_host": px.url,
                    "remote_host_type": "graphite",
                    "frequency": step,
                    "remote_target": target,
                    "graphite_target": "gap",
                    "uri": "/render/?from=-10minutes&format=json&target=",
                    "namespace_prefix": "w",
                }
            ],
            VISTA_QUEUE_ITEM_MAX_POINTS=300,
        )
        report = await cycle(cfg, now, graphite.redis)
        result = report.results[0]
        assert len(result.windows) == 3 and result.windows[0].start == first
        failed = result.windows[0]
        assert result.error is not None and result.error.kind == "http_500"
        items = take_items(graphite.redis, "w.gap")
        assert points_of(items, replay=False) == [p for p in sent if p[0] > (failed.end or 0)]
        [hole] = stored_holes(graphite.redis, "w.gap")
        assert (hole.start, hole.end, hole.after) == (failed.start, failed.end, mark)

        px.fail_before = 0
        report = await cycle(cfg, now + holes.retry_delay(1) + 1, graphite.redis)
        refill = points_of(take_items(graphite.redis, "w.gap"), replay=True)
        assert refill == [p for p in sent if mark < p[0] <= (failed.end or 0)]
        assert graphite.redis.hget(constants.HOLES_KEY, "w.gap") is None
