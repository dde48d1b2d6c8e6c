"""Pure scheduling: when a metric is due, and which time windows to fetch for it.

A *window* is a half-open span of source time. ``start=None`` means "the uri's own relative
window" (Graphite ``from=-10minutes``, or a custom Prometheus uri used as given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skyline.vista.constants import PROMETHEUS_DEFAULT_WINDOW, PROMETHEUS_MAX_POINTS
from skyline.vista.entries import FetchEntry

BATCH_QUANTUM = 300
"""Graphite gap windows start on a multiple of this (at or before the watermark), so that
metrics whose watermarks differ slightly still share a window and a batched request."""


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
    if entry.populate_seconds and watermark is None:
        # Pre-populate: one window per resolution, coarsest first (graphite-web serves each
        # from the archive that covers its age, so recent data comes at the finest resolution).
        edges = [t - s for s in entry.populate_seconds] + [t]
        return [Window(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    end = _budget_end(start, t, entry.frequency, limits)
    span = limits.graphite_chunk_points * entry.frequency
    # Graphite's from/until are exclusive/inclusive of step boundaries; adjacent chunks share
    # their edge, and duplicates are removed when the chunks are merged.
    return _split(start, end, span, 0)
