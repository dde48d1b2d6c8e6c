"""Pure scheduling: when a metric is due, and which time windows to fetch for it.

:func:`plan_metric` is the one place that decides, for every cycle (the fetcher's and
``vista fetch --once``'s), whether a metric is fetched and over which windows: the schedule
(:func:`is_due`), an item still queued, a host backing off, failed windows due for a retry.

A *window* is a half-open span of source time. ``start=None`` means "the uri's own relative
window" (Graphite ``from=-10minutes``, or a custom Prometheus uri used as given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skyline.vista.constants import PROMETHEUS_DEFAULT_WINDOW, PROMETHEUS_MAX_POINTS
from skyline.vista.entries import FetchEntry
from skyline.vista.holes import Hole

BATCH_QUANTUM = 300
"""Graphite gap windows start on a multiple of this (at or before the watermark), so that
metrics whose watermarks differ slightly still share a window and a batched request."""

EMPTY_RESCAN = 3600
"""A span found empty is asked again for this long (data may arrive late at the source);
before that, it is not asked again (see :func:`scanned_to`)."""


@dataclass(frozen=True)
class Window:
    start: int | None  # None: the uri's own relative window
    end: int | None  # None: now, as the source sees it

    @property
    def relative(self) -> bool:
        return self.start is None


@dataclass(frozen=True)
class Limits:
    fetch_max_points: int = 50_000  # per metric per cycle
    max_backfill: int = 0  # seconds; 0 = no limit
    graphite_chunk_points: int = 10_000
    prometheus_max_points: int = PROMETHEUS_MAX_POINTS


def next_tick(now: float, tick: float) -> float:
    """The next wall-clock multiple of ``tick`` strictly after ``now`` (drift-free cycles)."""
    return (math.floor(now / tick) + 1) * tick


def cycle_tick(frequencies: list[int]) -> int:
    """How often the fetcher wakes: the smallest frequency, clamped to [10, 60] seconds."""
    if not frequencies:
        return 60
    return max(10, min(60, min(frequencies)))


def is_due(
    frequency: int,
    now: float,
    *,
    watermark: int | None,
    last_attempt: float | None,
) -> bool:
    """A metric is due when a new complete interval of its frequency may exist at the source.

    * not attempted since the last ``frequency`` boundary (drift-free: boundaries are wall-clock
      multiples of the frequency), and
    * with a watermark W, the interval after W has closed: ``now >= W + 2 * frequency``
      (the point stamped W+f covers [W+f, W+2f)).
    """
    if last_attempt is not None and math.floor(last_attempt / frequency) >= math.floor(
        now / frequency
    ):
        return False
    if watermark is None:
        return True
    return now >= watermark + 2 * frequency


@dataclass(frozen=True)
class MetricState:
    """What is known about a metric when a cycle starts."""

    watermark: int | None = None
    last_attempt: float | None = None  # when it was last fetched (not skipped)
    carried: bool = False  # left unfinished by the last cycle: goes again at once
    pending: bool = False  # an earlier item of it is still queued or in flight
    in_flight: bool = False  # an earlier cycle, still running, is fetching it (slow host)
    scan_from: int | None = None  # found empty up to here (see scanned_to)
    holes: tuple[Hole, ...] = ()  # failed windows, retried when due


@dataclass(frozen=True)
class Plan:
    """A metric's part of one cycle: skipped (and why), or the windows to fetch.

    ``windows`` first hold the new data (oldest first, after the watermark), then one window
    per chunk of each failed window due for a retry; ``retries[i]`` is the hole that
    ``windows[len(windows) - len(retries) + i]`` retries.
    """

    skipped: str | None = None  # 'in_flight', 'not_due', 'pending', 'host_backoff'
    windows: tuple[Window, ...] = ()
    retries: tuple[Hole, ...] = ()

    @property
    def fresh(self) -> int:
        """How many of ``windows`` fetch new data (the rest retry holes)."""
        return len(self.windows) - len(self.retries)


def plan_metric(
    entry: FetchEntry,
    now: float,
    state: MetricState,
    limits: Limits,
    *,
    host_available: bool = True,
    ignore_schedule: bool = False,
) -> Plan:
    """Whether ``entry`` is fetched this cycle, and over which windows: the one decision.

    ``ignore_schedule`` (``vista fetch --once``): fetch whatever is not held back by an item
    still queued or a host backing off, due or not.
    """
    if state.in_flight:
        return Plan("in_flight")
    if state.pending:
        return Plan("pending")
    retry = [h for h in state.holes if h.due(now)]
    due = (
        ignore_schedule
        or state.carried
        or is_due(entry.frequency, now, watermark=state.watermark, last_attempt=state.last_attempt)
    )
    if not due and not retry:
        return Plan("not_due")
    if not host_available:
        return Plan("host_backoff")
    fresh = windows_for(entry, now, state.watermark, limits, state.scan_from) if due else []
    windows: list[Window] = list(fresh)
    retries: list[Hole] = []
    for hole in retry:
        for window in hole_windows(entry, hole, limits):
            windows.append(window)
            retries.append(hole)
    return Plan(None, tuple(windows), tuple(retries))


def hole_windows(entry: FetchEntry, hole: Hole, limits: Limits) -> list[Window]:
    """A failed window, again, in request-sized chunks."""
    if entry.remote_host_type == "prometheus":
        step = entry.frequency
        span = (limits.prometheus_max_points - 1) * step
        return _split(hole.start, hole.end, span, step)
    return _split(hole.start, hole.end, limits.graphite_chunk_points * entry.frequency, 0)


def scanned_to(windows: list[Window], now: float) -> int | None:
    """After every window of a metric answered with no points: where the next fetch may start.

    The span up to ``now - EMPTY_RESCAN`` is not asked again (so a series with no data costs
    the same every cycle instead of a window that grows with its age); the last hour is, as
    data may still arrive there late. None when there is nothing to skip.
    """
    ends = [w.end for w in windows if w.end is not None and w.start is not None]
    if not ends:
        return None
    upto = min(max(ends), int(now) - EMPTY_RESCAN)
    first = min(w.start for w in windows if w.start is not None)
    if upto <= first:
        return None
    return upto // BATCH_QUANTUM * BATCH_QUANTUM if upto - first > BATCH_QUANTUM else upto


def _split(start: int, end: int, span: int, step: int) -> list[Window]:
    """Consecutive windows of at most ``span`` seconds covering [start, end]."""
    windows: list[Window] = []
    cursor = start
    # With a step, a window after the first may hold a single point (cursor == end): the
    # previous window ended one step before ``end``, and ``end`` must still be fetched.
    while cursor < end or (windows and step > 0 and cursor == end):
        stop = min(end, cursor + span)
        windows.append(Window(cursor, stop))
        cursor = stop + (step if step > 0 else 0)
    return windows


def _budget_end(start: int, now: int, frequency: int, limits: Limits) -> int:
    """Where this cycle's fetch stops: no more than fetch_max_points of the metric's frequency."""
    return min(now, start + limits.fetch_max_points * frequency)


def windows_for(
    entry: FetchEntry,
    now: float,
    watermark: int | None,
    limits: Limits,
    scan_from: int | None = None,
) -> list[Window]:
    """The windows to fetch this cycle, oldest first, bounded by the per-cycle budget.

    ``scan_from``: a point in time before which the source was found empty on an earlier cycle
    (old enough that no late data can arrive there); the window starts no earlier.
    """
    t = int(now)
    if entry.remote_host_type == "prometheus" and not entry.is_default_uri:
        return [Window(None, None)]
    start: int | None
    if watermark is not None:
        start = watermark
    elif entry.populate_seconds:
        start = t - entry.populate_seconds[0]
    else:
        start = None
    if start is not None and limits.max_backfill:
        start = max(start, t - limits.max_backfill)
    if start is not None and scan_from is not None:
        start = max(start, scan_from)
    if entry.remote_host_type == "prometheus":
        return _prometheus_windows(entry, t, start, limits)
    return _graphite_windows(entry, t, start, watermark, limits)


def _prometheus_windows(
    entry: FetchEntry, t: int, start: int | None, limits: Limits
) -> list[Window]:
    step = entry.frequency
    if start is None:
        start = t - PROMETHEUS_DEFAULT_WINDOW
    # Evaluate on multiples of the step, so every cycle asks for the same timestamps.
    first = start // step * step
    last = t // step * step
    last = min(last, _budget_end(first, last, step, limits))
    span = (limits.prometheus_max_points - 1) * step
    return _split(first, last, span, step)


def _graphite_windows(
    entry: FetchEntry, t: int, start: int | None, watermark: int | None, limits: Limits
) -> list[Window]:
    if start is None:
        return [Window(None, None)]
    if watermark is not None and start == watermark:
        quantum = max(BATCH_QUANTUM, entry.frequency)
        start = start // quantum * quantum
    end = _budget_end(start, t, entry.frequency, limits)
    span = limits.graphite_chunk_points * entry.frequency
    edges = [start, end]
    if entry.populate_seconds and watermark is None:
        # Pre-populate: the windows also break at each resolution's edge, coarsest first
        # (graphite-web serves each from the archive that covers its age, so recent data comes
        # at the finest resolution), within VISTA_MAX_BACKFILL and this cycle's budget.
        inner = {t - s for s in entry.populate_seconds if start < t - s < end}
        edges = sorted({start, end, *inner})
    # Graphite's from/until are exclusive/inclusive of step boundaries; adjacent chunks share
    # their edge, and duplicates are removed when the chunks are merged.
    windows: list[Window] = []
    for a, b in zip(edges, edges[1:], strict=False):
        windows += _split(a, b, span, 0)
    return windows
