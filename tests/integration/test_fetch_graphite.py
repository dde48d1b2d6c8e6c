"""FetchCycle against a real graphite-web reading a real carbon-cache, queuing into a real Redis.

Every test sends known points to carbon (plaintext or pickle) at exact timestamps on the 10 s
grid of the finest archive (retentions 10s:6h,60s:1d), waits until graphite-web renders them,
runs one cycle and compares the queued items with the points sent or with graphite-web's own
``/render`` of the same target and range. Request URLs are recorded with an aiohttp trace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from skyline.vista import constants
from skyline.vista.fetch_once import describe
from skyline.vista.model import Point
from skyline.vista.schedule import Window
from skyline.vista.testing.servers import (
    GraphiteWebServer,
    ServerError,
    poll_until,
)
from tests.support.cycle import Requests, by_metric, cycle_into_redis, queued_chain, queued_points
from tests.support.rig import GraphiteRig

STEP = 10  # the finest archive of the test carbon


# ------------------------------------------------------------------------------- helpers


def graphite_entry(
    host: str,
    target: str,
    name: str,
    *,
    uri: str = "/render/?from=-10minutes&format=json&target=",
    frequency: int = STEP,
) -> dict[str, object]:
    return {
        "remote_host": host,
        "remote_host_type": "graphite",
        "frequency": frequency,
        "remote_target": target,
        "graphite_target": name,
        "uri": uri,
        "namespace_prefix": "gw",
    }


def rendered(body: list[dict[str, Any]]) -> list[Point]:
    """The non-null points of a one-series render answer."""
    assert len(body) == 1, [s["target"] for s in body]
    return [(int(ts), float(v)) for v, ts in body[0]["datapoints"] if v is not None]


def wait_rendered(
    graphite_web: GraphiteWebServer,
    targets: Sequence[str],
    start: int,
    end: int,
    count: int,
    *,
    series: int | None = None,
) -> None:
    """Poll /render until every series of ``targets`` has ``count`` non-null points."""
    want_series = len(targets) if series is None else series

    def probe() -> bool | None:
        try:
            body = graphite_web.render(list(targets), start, end)
        except ServerError as exc:
            # 500 while carbon is still writing a new whisper file's header.
            if "answered 500" in str(exc):
                return None
            raise
        counts = [sum(1 for v, _ in s["datapoints"] if v is not None) for s in body]
        return True if len(counts) == want_series and min(counts) >= count else None

    poll_until(probe, 30, what=f"graphite-web to render {count} points of {targets[:3]}...")


@dataclass(frozen=True)
class Clock:
    now: float
    minute: int


def clock() -> Clock:
    now = time.time()
    return Clock(now, int(now) // 60 * 60)


def value_of(series: int, ts: int) -> float:
    """Distinct per series and timestamp; exact in binary (quarters)."""
    return series * 1000 + (ts // STEP) % 400 * 0.25 - 37.5


# --------------------------------------------------------------------------------- tests


async def test_single_metric_relative_window(graphite: GraphiteRig) -> None:
    c = clock()
    m = c.minute
    metric = f"{graphite.prefix}.single"
    recent = [(ts, value_of(1, ts)) for ts in range(m - 480, m, STEP)]
    old = [(ts, value_of(1, ts)) for ts in range(m - 900, m - 660, STEP)]  # outside -10minutes
    current = (m, 99.5)  # the current minute: fetched, never queued
    graphite.carbon.send_plaintext(f"{metric} {v} {ts}" for ts, v in [*old, *recent, current])
    wait_rendered(graphite.web, [metric], m - 1000, m, len(old) + len(recent) + 1)

    cfg = graphite.config([graphite_entry(graphite.web.url, metric, "single")])
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, seen=seen)

    result = by_metric(report)["gw.single"]
    assert result.error is None and result.windows == [Window(None, None)]
    assert result.requests == 1 and len(seen.urls) == 1
    params = seen.params(0)
    assert params["from"] == ["-10minutes"] and "until" not in params
    assert params["target"] == [metric]  # a single target is not wrapped in alias()
    assert list(result.points) == recent
    assert result.dropped["current_minute"] == 1
    items = queued_chain(graphite.redis, "gw.single")
    assert len(items) == 1
    item = items[0]
    assert (item.metric, item.source, item.host, item.target) == (
        "gw.single",
        "graphite",
        graphite.web.url,
        metric,
    )
    assert item.frequency == STEP and item.seq == 0
    assert list(item.points) == recent


async def test_functions_match_graphite_web_render(graphite: GraphiteRig) -> None:
    c = clock()
    m = c.minute
    p = graphite.prefix
    names = [f"{p}.fn.{node}.b" for node in ("x", "y", "z")]
    lines = []
    for n, name in enumerate(names):
        # Some slots missing per series: sumSeries must handle the holes as graphite does.
        lines += [
            f"{name} {value_of(n + 1, ts)} {ts}"
            for ts in range(m - 1200, m - STEP + 1, STEP)
            if (ts // STEP + n) % 7
        ]
    graphite.carbon.send_plaintext(lines)
    wait_rendered(graphite.web, names, m - 1300, m, 100)

    targets = {
        "summed": f"sumSeries({p}.fn.*.b)",
        "bynode": f"aliasByNode({p}.fn.y.b, 2)",
        "scaled": f"scale(averageSeries({p}.fn.{{x,z}}.b), 0.5)",
    }
    cfg = graphite.config(
        [graphite_entry(graphite.web.url, t, name) for name, t in targets.items()],
    )
    start = (m - 900) // 300 * 300
    mark = start + 5  # the window starts on a multiple of 300 s at or before the watermark
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, {f"gw.{n}": mark for n in targets}, seen=seen)

    # One batched request for all three (same window), mapped back by alias.
    assert len(seen.urls) == 1
    assert seen.targets()[0] == [f'alias({t},"vista.{i}")' for i, t in enumerate(targets.values())]
    assert seen.params(0)["from"] == [str(start)]
    assert seen.params(0)["until"] == [str(int(c.now))]
    for name, target in targets.items():
        result = by_metric(report)[f"gw.{name}"]
        assert result.error is None and result.requests == 1
        assert result.windows == [Window(start, int(c.now))]
        reference = [
            (ts, v) for ts, v in rendered(graphite.web.render(target, mark, m - 1)) if ts > mark
        ]
        assert len(reference) > 70 and reference[-1][0] >= m - 2 * STEP  # y has holes
        assert list(result.points) == reference, name
        assert queued_points(graphite.redis, f"gw.{name}") == reference


async def test_batch_of_26_targets_maps_each_series_back(graphite: GraphiteRig) -> None:
    c = clock()
    m = c.minute
    p = graphite.prefix
    count = 25
    stamps = list(range(m - 300, m, STEP))
    metrics = [f"{p}.batch.m{i:02d}" for i in range(count)]
    graphite.carbon.send_plaintext(
        f"{metric} {value_of(i, ts)} {ts}" for i, metric in enumerate(metrics) for ts in stamps
    )
    wait_rendered(graphite.web, metrics, m - 400, m, len(stamps))

    def target(i: int) -> str:
        # graphite-web rewrites these: whitespace removed, aliasByNode renames the series.
        return [
            metrics[i],
            f"scale( {metrics[i]} ,  1 )",
            f"aliasByNode({metrics[i]}, 3)",
            f'alias({metrics[i]}, "x y")',
        ][i % 4]

    entries = [graphite_entry(graphite.web.url, target(i), f"m{i:02d}") for i in range(count)]
    # A target that matches nothing, in the middle of the first batch.
    entries.insert(12, graphite_entry(graphite.web.url, f"{p}.batch.missing", "missing"))
    cfg = graphite.config(entries)
    assert cfg.graphite_batch_size == 20
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, seen=seen)

    sent = seen.targets()
    # Two batches (20 + 6 targets), then the missing target alone.
    assert sorted(len(t) for t in sent) == [1, 6, 20]
    assert [t for t in sent if len(t) == 1] == [[f"{p}.batch.missing"]]
    assert report.hosts[graphite.web.url].requests == 3
    results = by_metric(report)
    for i in range(count):
        result = results[f"gw.m{i:02d}"]
        assert result.error is None and result.requests == 1, (i, result.error)
        want = [(ts, value_of(i, ts)) for ts in stamps]
        assert list(result.points) == want, i
        assert queued_points(graphite.redis, f"gw.m{i:02d}") == want
        assert queued_chain(graphite.redis, f"gw.m{i:02d}")[0].target == target(i)
    missing = results["gw.missing"]
    # Re-fetched on its own, and reported as what it is: no series, no error, nothing queued.
    assert missing.requests == 2
    assert missing.done and missing.error is None
    assert missing.raw == {0: []} and missing.points == () and missing.items == []
    shown = describe(missing)  # what `vista fetch --once` prints for it
    assert "no new points" in shown and "2 request(s)" in shown, shown
    assert graphite.redis.hget(constants.PENDING_KEY, "gw.missing") is None
    assert graphite.redis.scard(constants.QUEUE_KEY) == count


async def test_a_failing_batch_is_fetched_target_by_target(graphite: GraphiteRig) -> None:
    """An unknown function answers 400 for the whole batch: the others must not be lost."""
    c = clock()
    m = c.minute
    p = graphite.prefix
    stamps = list(range(m - 120, m, STEP))
    metrics = [f"{p}.ok.a", f"{p}.ok.b", f"{p}.many.x", f"{p}.many.y"]
    graphite.carbon.send_plaintext(
        f"{metric} {value_of(i, ts)} {ts}" for i, metric in enumerate(metrics) for ts in stamps
    )
    wait_rendered(graphite.web, metrics, m - 400, m, len(stamps))

    entries = [
        graphite_entry(graphite.web.url, metrics[0], "a"),
        graphite_entry(graphite.web.url, f"noSuchFunction({metrics[1]})", "bad"),
        graphite_entry(graphite.web.url, f"{p}.many.*", "many"),
        graphite_entry(graphite.web.url, metrics[1], "b"),
    ]
    cfg = graphite.config(entries)
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, seen=seen)

    assert [len(t) for t in seen.targets()] == [4, 1, 1, 1, 1]
    results = by_metric(report)
    assert list(results["gw.a"].points) == [(ts, value_of(0, ts)) for ts in stamps]
    assert list(results["gw.b"].points) == [(ts, value_of(1, ts)) for ts in stamps]
    bad = results["gw.bad"].error
    assert bad is not None and bad.kind == "http_400"
    many = results["gw.many"].error
    assert many is not None and many.kind == "too_many_series"
    assert "returned 2 series" in str(many)
    assert f"{p}.many.x, {p}.many.y" in str(many)
    assert {k for k, r in results.items() if r.items} == {"gw.a", "gw.b"}
    assert graphite.redis.scard(constants.QUEUE_KEY) == 2


@pytest.mark.parametrize("batch_size", [1, 20], ids=["single", "batched"])
async def test_names_with_plus_percent_and_space_are_fetched_exactly(
    graphite: GraphiteRig, batch_size: int
) -> None:
    c = clock()
    m = c.minute
    p = f"{graphite.prefix}.odd"
    stamps = list(range(m - 200, m, STEP))
    # whisper path element -> (remote target, local name). graphite-web's grammar has no way
    # to write a space or an unescaped bracket in a path: a glob or a backslash reaches them.
    odd = {
        "plus+name": ("plus+name", "plus+name"),
        "pct%41name": ("pct%41name", "pct%41name"),  # must not become 'pctAname'
        "pct%20sp": ("pct%20sp", "pct%20sp"),  # must not become 'pct sp'
        "sp ace": ("sp?ace", "sp_ace"),
        "par(en)": (r"par\(en\)", "par_en"),
        "pctAname": ("pctAname", "decoy"),  # what a decoded %41 would fetch
    }
    graphite.carbon.send_pickle(
        (f"{p}.{path}", (float(ts), value_of(i, ts))) for i, path in enumerate(odd) for ts in stamps
    )
    targets = [f"{p}.{remote}" for remote, _ in odd.values()]
    wait_rendered(graphite.web, targets, m - 400, m, len(stamps))

    cfg = graphite.config(
        [
            graphite_entry(graphite.web.url, t, local)
            for t, (_, local) in zip(targets, odd.values(), strict=True)
        ],
        VISTA_GRAPHITE_BATCH_SIZE=batch_size,
    )
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, seen=seen)

    assert len(seen.urls) == (len(odd) if batch_size == 1 else 1)
    results = by_metric(report)
    for i, (path, (_, local)) in enumerate(odd.items()):
        result = results[f"gw.{local}"]
        assert result.error is None, (path, result.error)
        want = [(ts, value_of(i, ts)) for ts in stamps]
        assert list(result.points) == want, path
        assert queued_points(graphite.redis, f"gw.{local}") == want
    # The whisper files are named exactly as sent.
    for path in odd:
        assert (graphite.carbon.whisper_dir / p.replace(".", "/") / f"{path}.wsp").exists()


@pytest.mark.parametrize("hours", [2, 8], ids=["finest-archive", "both-archives"])
async def test_gap_longer_than_one_chunk(graphite: GraphiteRig, hours: int) -> None:
    """A watermark hours back: absolute from/until chunks of ≤ 200 points at 10 s, each point
    once. Beyond 6 h graphite-web answers from the 60 s archive: compared with its own render."""
    c = clock()
    m = c.minute
    metric = f"{graphite.prefix}.gap"
    mark = m - hours * 3600 + 130
    stamps = list(range(m - hours * 3600 - 600, m + 1, STEP))  # up to and including m
    graphite.carbon.send_plaintext(f"{metric} {value_of(3, ts)} {ts}" for ts in stamps)
    recent = [ts for ts in stamps if ts > m - 6 * 3600 + 60]
    wait_rendered(graphite.web, [metric], m - 6 * 3600 + 60, m, len(recent))
    # Everything in whisper, nothing left in carbon's cache (graphite-web merges cached points
    # into its answers itself, which could differ from whisper's own roll-up to 60 s).
    poll_until(
        lambda: True if not graphite.carbon.cache_query(metric) else None,
        30,
        what="carbon to write every point",
    )

    cfg = graphite.config(
        [graphite_entry(graphite.web.url, metric, "gap")],
        VISTA_QUEUE_ITEM_MAX_POINTS=200,
    )
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, {"gw.gap": mark}, seen=seen)

    result = by_metric(report)["gw.gap"]
    assert result.error is None
    start = mark // 300 * 300
    span = 200 * STEP
    edges = list(range(start, int(c.now), span)) + [int(c.now)]
    assert result.windows == [Window(a, b) for a, b in zip(edges, edges[1:], strict=False)]
    assert result.requests == len(result.windows) == len(seen.urls) >= hours * 3600 // span
    asked = [
        (int(seen.params(n)["from"][0]), int(seen.params(n)["until"][0]))
        for n in range(len(seen.urls))
    ]
    assert sorted(asked) == [(w.start, w.end) for w in result.windows]

    # The oracle: graphite-web's own answer for each window, in order, after the watermark.
    # A window starting more than 6 h back is answered from the 60 s archive.
    boundary = int(time.time()) - 6 * 3600
    assert all(abs(w.start - boundary) > 120 for w in result.windows if w.start is not None)
    coarse = [w for w in result.windows if w.start is not None and w.start < boundary]
    assert len(coarse) == (0 if hours <= 6 else ((hours - 6) * 3600 - 130) // span + 1)
    reference: list[Point] = []
    for w in result.windows:
        assert w.start is not None and w.end is not None
        answer = [(ts, v) for ts, v in rendered(graphite.web.render(metric, w.start, w.end))]
        if w.start > boundary:  # the finest archive: exactly the values sent
            assert answer == [(ts, value_of(3, ts)) for ts in stamps if w.start < ts <= w.end]
        else:
            assert answer and all(ts % 60 == 0 for ts, _ in answer)
        reference += answer
    reference = [(ts, v) for ts, v in reference if mark < ts < m]
    assert len({ts for ts, _ in reference}) == len(reference)  # adjacent chunks do not overlap
    assert list(result.points) == reference
    assert result.dropped["duplicate_ts"] == 0
    assert result.dropped["current_minute"] == 1
    if hours == 2:
        assert list(result.points) == [(ts, value_of(3, ts)) for ts in stamps if mark < ts < m]

    items = queued_chain(graphite.redis, "gw.gap")
    assert [i.seq for i in items] == list(range(len(items)))
    assert all(len(i.points) <= 200 for i in items)
    assert [len(i.points) for i in items[:-1]] == [200] * (len(items) - 1)
    assert [p for i in items for p in i.points] == list(result.points)


async def test_pre_populate_honours_max_backfill_and_fetch_max_points(
    graphite: GraphiteRig,
) -> None:
    """('365days', '7days') with a 1-hour VISTA_MAX_BACKFILL and 100 points per cycle: no
    request reaches back a year or asks for more than 100 points; the points queued are
    graphite-web's own for the first 100 steps of the last hour, and the next cycle goes on
    from the watermark."""
    c = clock()
    m = c.minute
    metric = f"{graphite.prefix}.populate"
    stamps = list(range(m - 3600 - 600, m - STEP + 1, STEP))
    graphite.carbon.send_plaintext(f"{metric} {value_of(4, ts)} {ts}" for ts in stamps)
    wait_rendered(graphite.web, [metric], m - 3600 - 700, m, len(stamps))
    entry = {**graphite_entry(graphite.web.url, metric, "populate")}
    entry["populate_at_resolutions"] = ("365days", "7days")
    cfg = graphite.config(
        [entry],
        VISTA_MAX_BACKFILL=3600,
        VISTA_FETCH_MAX_POINTS=100,
        VISTA_QUEUE_ITEM_MAX_POINTS=40,
    )
    seen = Requests()
    report = await cycle_into_redis(cfg, c.now, seen=seen)
    result = by_metric(report)["gw.populate"]
    assert result.error is None
    t = int(c.now)
    asked = [
        (int(seen.params(n)["from"][0]), int(seen.params(n)["until"][0]))
        for n in range(len(seen.urls))
    ]
    assert min(a for a, _ in asked) == t - 3600  # VISTA_MAX_BACKFILL, not 365 days
    assert max(b for _, b in asked) == t - 3600 + 100 * STEP  # VISTA_FETCH_MAX_POINTS
    assert all(b - a <= 40 * STEP for a, b in asked)  # chunked as gaps are
    assert list(result.points) == [
        (ts, value_of(4, ts)) for ts in stamps if t - 3600 < ts <= t - 3600 + 100 * STEP
    ]
