"""Pure scheduling: is_due, next_tick, cycle_tick and the windows to fetch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skyline.vista.constants import PROMETHEUS_DEFAULT_WINDOW, PROMETHEUS_MAX_POINTS
from skyline.vista.entries import FetchEntry, check_entry
from skyline.vista.holes import Hole
from skyline.vista.problems import Problems
from skyline.vista.schedule import (
    BATCH_QUANTUM,
    EMPTY_RESCAN,
    Limits,
    MetricState,
    Window,
    cycle_tick,
    is_due,
    next_tick,
    plan_metric,
    scanned_to,
    windows_for,
)

T0 = 1_718_000_100  # a multiple of 60 and of 300 (2024-06-10 06:15:00 UTC)
assert T0 % 300 == 0
NOW = T0 + 37.25  # some way into the minute
DAY = 86_400


def entry(
    kind: str = "prometheus",
    frequency: int = 60,
    uri: str | None = None,
    populate: tuple[str, ...] = (),
) -> FetchEntry:
    if uri is None:
        uri = "default" if kind == "prometheus" else "/render/?from=-10minutes&format=json&target="
    raw = ("http://remote:9090", kind, frequency, "up", "m", uri, "vista")
    problems = Problems()
    made = check_entry(0, (*raw, None, None, None, None, populate), problems)
    assert made is not None, problems.errors
    return made


def points_in(window: Window, step: int) -> int:
    assert window.start is not None and window.end is not None
    return (window.end - window.start) // step + 1


# --- is_due -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "now", "watermark", "last_attempt", "due"),
    [
        # never fetched
        (60, NOW, None, None, True),
        (10, NOW, None, None, True),
        (300, NOW, None, None, True),
        (86400, NOW, None, None, True),
        # watermark recent: the interval after it has not closed yet
        (60, NOW, T0 - 60, None, False),  # due at T0 + 60
        (60, T0 + 60, T0 - 60, None, True),  # exactly W + 2f
        (60, T0 + 59.999, T0 - 60, None, False),
        (60, NOW, T0, None, False),
        # watermark old: due
        (60, NOW, T0 - 120, None, True),
        (60, NOW, T0 - 30 * DAY, None, True),
        (10, T0 + 20, T0, None, True),
        (10, T0 + 19, T0, None, False),
        (300, T0 + 599, T0, None, False),
        (300, T0 + 600, T0, None, True),
        (86400, T0 + 2 * DAY - 1, T0, None, False),
        (86400, T0 + 2 * DAY, T0, None, True),
        # already attempted in this frequency interval
        (60, NOW, None, T0 + 1, False),
        (60, NOW, None, T0, False),
        (60, NOW, T0 - 3600, T0 + 0.5, False),
        (10, T0 + 9.9, None, T0, False),
        (300, T0 + 299, None, T0 + 5, False),
        (86400, T0 + 3600, None, T0 - (T0 % DAY) + 1, False),
        # attempted in the previous interval
        (60, NOW, None, T0 - 0.001, True),
        (60, NOW, T0 - 3600, T0 - 30, True),
        (10, T0 + 10, None, T0 + 9.9, True),
        (300, T0 + 300, None, T0 + 299, True),
        (86400, T0 - (T0 % DAY) + DAY, None, T0, True),
        # previous interval, but the watermark is still too recent
        (60, NOW, T0 - 60, T0 - 30, False),
    ],
)
def test_is_due(
    frequency: int, now: float, watermark: int | None, last_attempt: float | None, due: bool
) -> None:
    assert is_due(frequency, now, watermark=watermark, last_attempt=last_attempt) is due


# --- ticks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tick", [10, 15, 60, 300])
@pytest.mark.parametrize("offset", [0.0, 0.001, 7.5, 9.999, 59.999, 299.0])
def test_next_tick_is_a_wall_clock_multiple_strictly_after_now(tick: int, offset: float) -> None:
    now = T0 + offset
    tick_at = next_tick(now, tick)
    assert tick_at > now
    assert tick_at - now <= tick
    assert tick_at % tick == 0
    assert next_tick(tick_at, tick) == tick_at + tick  # on a boundary: the next one


@pytest.mark.parametrize(
    ("frequencies", "tick"),
    [
        ([], 60),
        ([60], 60),
        ([300, 86400], 60),
        ([30, 60], 30),
        ([15, 300], 15),
        ([10], 10),
        ([5, 60], 10),
        ([1], 10),
    ],
)
def test_cycle_tick(frequencies: list[int], tick: int) -> None:
    assert cycle_tick(frequencies) == tick


# --- Prometheus windows -----------------------------------------------------------------------


def assert_prometheus_chain(windows: list[Window], step: int, limits: Limits) -> None:
    """Contiguous (next start = previous end + step), aligned, each ≤ the per-request limit."""
    assert windows
    for w in windows:
        assert w.start is not None and w.end is not None
        assert w.start % step == 0 and w.end % step == 0
        assert w.start <= w.end
        assert points_in(w, step) <= limits.prometheus_max_points
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.end is not None and b.start is not None
        assert b.start == a.end + step


@pytest.mark.parametrize("frequency", [10, 60, 300])
def test_prometheus_default_without_watermark_is_the_last_300s_aligned(frequency: int) -> None:
    windows = windows_for(entry(frequency=frequency), NOW, None, Limits())
    end = int(NOW) // frequency * frequency
    start = (int(NOW) - PROMETHEUS_DEFAULT_WINDOW) // frequency * frequency
    assert windows == [Window(start, end)]
    assert end == {10: T0 + 30, 60: T0, 300: T0}[frequency]
    assert end - start == 300
    assert start % frequency == 0 and end % frequency == 0


def test_prometheus_30_day_gap_splits_into_contiguous_aligned_windows() -> None:
    limits = Limits()
    watermark = T0 - 30 * DAY
    windows = windows_for(entry(), NOW, watermark, limits)
    assert_prometheus_chain(windows, 60, limits)
    assert windows[0].start == watermark
    assert windows[-1].end == T0  # now, aligned to the step
    total = sum(points_in(w, 60) for w in windows)
    assert total == 30 * DAY // 60 + 1  # every step from the watermark to now, once
    assert [points_in(w, 60) for w in windows] == [11_000, 11_000, 11_000, 10_201]
    assert PROMETHEUS_MAX_POINTS == 11_000


def test_prometheus_unaligned_watermark_starts_at_its_step() -> None:
    windows = windows_for(entry(), NOW, T0 - 3600 + 17, Limits())
    assert windows == [Window(T0 - 3600, T0)]


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_prometheus_gap_of_a_whole_number_of_chunks_still_ends_at_now(chunks: int) -> None:
    """A gap of exactly k·11,000 steps: the last window holds the single point at now."""
    limits = Limits()
    watermark = T0 - chunks * PROMETHEUS_MAX_POINTS * 60
    windows = windows_for(entry(), NOW, watermark, limits)
    assert_prometheus_chain(windows, 60, limits)
    assert windows[-1] == Window(T0, T0)
    assert len(windows) == chunks + 1
    assert sum(points_in(w, 60) for w in windows) == chunks * PROMETHEUS_MAX_POINTS + 1


def test_prometheus_windows_bounded_by_fetch_max_points() -> None:
    limits = Limits(fetch_max_points=20_000)
    watermark = T0 - 30 * DAY
    windows = windows_for(entry(), NOW, watermark, limits)
    assert_prometheus_chain(windows, 60, limits)
    assert windows[0].start == watermark
    assert windows[-1].end == watermark + 20_000 * 60
    new_points = sum(points_in(w, 60) for w in windows) - 1  # the watermark itself is re-read
    assert new_points == 20_000


def test_prometheus_nothing_new_gives_no_window() -> None:
    assert windows_for(entry(), NOW, T0, Limits()) == []
    assert windows_for(entry(), NOW, T0 - 60, Limits()) == [Window(T0 - 60, T0)]


def test_max_backfill_limits_how_far_back() -> None:
    limits = Limits(max_backfill=DAY)
    windows = windows_for(entry(), NOW, T0 - 30 * DAY, limits)
    assert_prometheus_chain(windows, 60, limits)
    assert windows[0].start == (int(NOW) - DAY) // 60 * 60 == T0 - DAY
    assert windows[-1].end == T0
    # a watermark inside the backfill limit is used as it is
    assert windows_for(entry(), NOW, T0 - 3600, limits) == [Window(T0 - 3600, T0)]


def test_scan_from_skips_a_span_known_to_be_empty() -> None:
    windows = windows_for(entry(), NOW, T0 - 30 * DAY, Limits(), scan_from=T0 - 7200)
    assert windows == [Window(T0 - 7200, T0)]


def test_prometheus_populate_without_watermark_starts_at_the_coarsest() -> None:
    limits = Limits()
    windows = windows_for(entry(populate=("1h", "15d")), NOW, None, limits)
    assert_prometheus_chain(windows, 60, limits)
    assert windows[0].start == T0 - 15 * DAY
    assert windows[-1].end == T0


@pytest.mark.parametrize("uri", ["/api/v1/query?query=up", "/api/v1/query_range?query=up"])
def test_custom_prometheus_uri_is_one_relative_window(uri: str) -> None:
    for watermark in (None, T0 - 30 * DAY):
        windows = windows_for(entry(uri=uri), NOW, watermark, Limits())
        assert windows == [Window(None, None)]
        assert windows[0].relative


# --- Graphite windows -------------------------------------------------------------------------


def test_graphite_without_watermark_uses_the_uri_window() -> None:
    windows = windows_for(entry("graphite"), NOW, None, Limits())
    assert windows == [Window(None, None)]
    assert windows[0].relative


@pytest.mark.parametrize(
    ("frequency", "watermark", "start"),
    [
        (60, T0 - 600, T0 - 600),  # already on a 300 s multiple
        (60, T0 - 540, T0 - 600),
        (60, T0 - 301, T0 - 600),
        (60, T0 - 1, T0 - 300),
        (10, T0 - 7, T0 - 300),
        (600, T0 - 60, T0 - 300),  # quantum = frequency when it is longer (T0 % 600 == 300)
        (3600, T0 - 60, (T0 - 60) // 3600 * 3600),
    ],
)
def test_graphite_with_watermark_is_absolute_from_a_quantum_at_or_before_it(
    frequency: int, watermark: int, start: int
) -> None:
    windows = windows_for(entry("graphite", frequency), NOW, watermark, Limits())
    assert windows == [Window(start, int(NOW))]
    assert start <= watermark
    assert start % max(BATCH_QUANTUM, frequency) == 0


def test_graphite_long_gap_is_chunked_into_adjacent_windows() -> None:
    limits = Limits(graphite_chunk_points=1000, fetch_max_points=5000)
    watermark = T0 - 30 * DAY + 90
    windows = windows_for(entry("graphite"), NOW, watermark, limits)
    first = watermark // 300 * 300
    assert windows[0].start == first <= watermark
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start == a.end  # Graphite's from is exclusive: chunks share their edge
    for w in windows:
        assert w.start is not None and w.end is not None
        assert w.end - w.start <= 1000 * 60
    assert windows[-1].end == first + 5000 * 60  # the per-cycle budget
    assert len(windows) == 5


def test_graphite_short_gap_ends_at_now() -> None:
    windows = windows_for(entry("graphite"), NOW, T0 - 3 * DAY, Limits())
    assert windows[0].start == T0 - 3 * DAY
    assert windows[-1].end == int(NOW)
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start == a.end


def test_graphite_populate_is_one_window_per_resolution_coarsest_first() -> None:
    e = entry("graphite", populate=("6hours", "90days", "24hours", "7days"))
    assert e.populate_at_resolutions == ("90days", "7days", "24hours", "6hours")
    t = int(NOW)
    roomy = Limits(fetch_max_points=10**6, graphite_chunk_points=10**6)
    windows = windows_for(e, NOW, None, roomy)
    assert windows == [
        Window(t - 90 * DAY, t - 7 * DAY),
        Window(t - 7 * DAY, t - DAY),
        Window(t - DAY, t - 6 * 3600),
        Window(t - 6 * 3600, t),
    ]


def test_graphite_populate_single_resolution() -> None:
    roomy = Limits(graphite_chunk_points=20_000)
    windows = windows_for(entry("graphite", populate=("7days",)), NOW, None, roomy)
    assert windows == [Window(int(NOW) - 7 * DAY, int(NOW))]


def test_graphite_populate_honours_max_backfill_and_fetch_max_points() -> None:
    """('365days', '7days') with a 1-day VISTA_MAX_BACKFILL and 1,000 points: no request for
    525,600 points, only the last day, 1,000 points per cycle, chunked as gaps are."""
    e = entry("graphite", populate=("365days", "7days"))
    t = int(NOW)
    limits = Limits(max_backfill=DAY, fetch_max_points=1000, graphite_chunk_points=300)
    windows = windows_for(e, NOW, None, limits)
    assert windows[0].start == t - DAY
    assert windows[-1].end == t - DAY + 1000 * 60
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start == a.end
    assert all(w.end - w.start <= 300 * 60 for w in windows if w.start and w.end)
    assert len(windows) == 4


def test_graphite_populate_breaks_at_each_resolution_within_the_budget() -> None:
    e = entry("graphite", populate=("90days", "7days"))
    t = int(NOW)
    limits = Limits(fetch_max_points=100_000, graphite_chunk_points=50_000)
    windows = windows_for(e, NOW, None, limits)
    edges = [(w.start, w.end) for w in windows]
    assert edges[0][0] == t - 90 * DAY and edges[-1][1] == t - 90 * DAY + 100_000 * 60
    assert all(w.end - w.start <= 50_000 * 60 for w in windows if w.start and w.end)
    assert (t - 7 * DAY) not in {a for a, _ in edges}  # beyond this cycle's budget
    whole = windows_for(e, NOW, None, Limits(fetch_max_points=10**6, graphite_chunk_points=50_000))
    assert any(w.start == t - 7 * DAY for w in whole)  # a window starts at the 7-day edge
    assert whole[-1].end == t


def test_graphite_populate_with_a_watermark_fills_the_gap_instead() -> None:
    e = entry("graphite", populate=("90days", "7days"))
    windows = windows_for(e, NOW, T0 - 3600, Limits())
    assert windows == [Window(T0 - 3600, int(NOW))]


def test_graphite_max_backfill() -> None:
    windows = windows_for(entry("graphite"), NOW, T0 - 30 * DAY, Limits(max_backfill=DAY))
    assert windows == [Window(int(NOW) - DAY, int(NOW))]


# --- plan_metric: the one decision ------------------------------------------------------------

HOLE = Hole(T0 - 3 * DAY, T0 - 2 * DAY, 1, NOW - 1, NOW - 600, "HTTP 500", "http_500")
LATER = Hole(T0 - 5 * DAY, T0 - 4 * DAY, 2, NOW + 60, NOW - 600, "HTTP 500", "http_500")
FRESH = MetricState(watermark=T0 - 120)  # the interval after it has closed: due
RECENT = MetricState(watermark=T0 - 60, last_attempt=T0 + 1)  # not due before T0 + 60


@pytest.mark.parametrize(
    ("state", "kwargs", "skipped"),
    [
        (FRESH, {}, None),
        (RECENT, {}, "not_due"),
        (replace(RECENT, carried=True), {}, None),  # unfinished last cycle: at once
        (RECENT, {"ignore_schedule": True}, None),  # vista fetch --once
        (replace(FRESH, pending=True), {}, "pending"),
        (replace(FRESH, in_flight=True), {}, "in_flight"),  # a running cycle still fetches it
        (replace(FRESH, in_flight=True, holes=(HOLE,)), {"ignore_schedule": True}, "in_flight"),
        (replace(FRESH, pending=True), {"ignore_schedule": True}, "pending"),
        (FRESH, {"host_available": False}, "host_backoff"),
        (RECENT, {"host_available": False}, "not_due"),
        (replace(RECENT, holes=(HOLE,)), {}, None),  # a hole due for a retry makes it due
        (replace(RECENT, holes=(LATER,)), {}, "not_due"),  # ... not before its time
    ],
)
def test_plan_metric_decides_whether_a_metric_is_fetched(
    state: MetricState, kwargs: dict[str, bool], skipped: str | None
) -> None:
    plan = plan_metric(entry(), NOW, state, Limits(), **kwargs)
    assert plan.skipped == skipped
    assert (plan.windows != ()) == (skipped is None)


def test_plan_metric_appends_the_due_holes_after_the_new_windows() -> None:
    state = replace(FRESH, holes=(HOLE, LATER))
    plan = plan_metric(entry(), NOW, state, Limits())
    assert plan.windows[: plan.fresh] == tuple(windows_for(entry(), NOW, T0 - 120, Limits()))
    assert plan.windows[plan.fresh :] == (Window(HOLE.start, HOLE.end),)
    assert plan.retries == (HOLE,)
    # Only the hole when the metric itself is not due.
    only = plan_metric(entry(), NOW, replace(RECENT, holes=(HOLE,)), Limits())
    assert only.fresh == 0 and only.windows == (Window(HOLE.start, HOLE.end),)


def test_a_long_hole_is_retried_in_request_sized_chunks() -> None:
    hole = replace(HOLE, start=T0 - 30 * DAY, end=T0 - DAY)
    plan = plan_metric(entry(), NOW, replace(RECENT, holes=(hole,)), Limits())
    assert len(plan.windows) == len(plan.retries) > 1
    assert all(points_in(w, 60) <= PROMETHEUS_MAX_POINTS for w in plan.windows)
    assert plan.windows[0].start == hole.start and plan.windows[-1].end == hole.end
    g = plan_metric(entry("graphite"), NOW, replace(RECENT, holes=(hole,)), Limits())
    assert all(w.end - w.start <= 10_000 * 60 for w in g.windows if w.start and w.end)


def test_scanned_to_keeps_asking_the_last_hour_only() -> None:
    t = int(NOW)
    assert scanned_to([Window(t - 15 * DAY, t - 7 * DAY), Window(t - 7 * DAY, t)], NOW) == (
        (t - EMPTY_RESCAN) // BATCH_QUANTUM * BATCH_QUANTUM
    )
    assert scanned_to([Window(t - 600, t)], NOW) is None  # nothing older than an hour
    assert scanned_to([Window(None, None)], NOW) is None  # a relative window: nothing to skip
    # A window ended long ago (this cycle's budget): up to its end, on a batching quantum.
    assert scanned_to([Window(t - 9 * DAY, t - 8 * DAY)], NOW) == (t - 8 * DAY) // 300 * 300
