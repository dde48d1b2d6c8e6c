"""Pure time-series rules, shared by the fetcher and the workers. No I/O, no clock.

Time is UTC epoch seconds everywhere: the start of the current minute is integer arithmetic on
the epoch, so the host's TZ cannot change it (the original's ``strftime('%s')`` bug).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal

from skyline.vista.model import CleanSeries, DropCounts, Point


def current_minute_start(now: float) -> int:
    """Epoch of the start of the minute that contains ``now`` (UTC; TZ-independent)."""
    return int(now) // 60 * 60


def to_value(raw: object) -> float | None:
    """A finite float from a source value (number or Prometheus string); None if not one."""
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            return None
    else:
        return None
    return value


def clean(
    raw: Iterable[tuple[object, object]],
    *,
    after: int | None = None,
    before: int | None = None,
) -> CleanSeries:
    """Validate raw (timestamp, value) pairs into sorted, finite, one-per-timestamp points.

    ``after``: drop points at or below it (the watermark). ``before``: drop points at or after
    it (the start of the still-open minute). Later duplicates of a timestamp win.
    """
    dropped = DropCounts()
    by_ts: dict[int, float] = {}
    for ts_raw, value_raw in raw:
        if value_raw is None:
            dropped["none"] += 1
            continue
        # The usual types first (a float value, an int timestamp), which the helpers would
        # return unchanged: this loop runs for every point fetched and delivered.
        value = value_raw if type(value_raw) is float else to_value(value_raw)
        ts = ts_raw if type(ts_raw) is int else _to_ts(ts_raw)
        if ts is None or value is None:
            dropped["unparsable"] += 1
            continue
        if not math.isfinite(value):
            dropped["non_finite"] += 1
            continue
        if after is not None and ts <= after:
            dropped["at_or_below_watermark"] += 1
            continue
        if before is not None and ts >= before:
            dropped["current_minute"] += 1
            continue
        if ts in by_ts:
            dropped["duplicate_ts"] += 1
        by_ts[ts] = value
    return CleanSeries(tuple(sorted(by_ts.items())), dropped)


def _to_ts(raw: object) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw):
        # Prometheus sends float seconds (1718000040.0, or .702 off-step); keep whole seconds.
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(float(raw))
        except ValueError:
            return None
    return None


def detect_resolution(points: Iterable[Point]) -> int | None:
    """The most common step between consecutive timestamps (smallest on a tie); None if <2."""
    stamps = [ts for ts, _ in points]
    steps = Counter(b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > a)
    if not steps:
        return None
    best = max(steps.values())
    return min(step for step, count in steps.items() if count == best)


def format_value(value: float) -> str:
    """Positional decimal text that Flux's and carbon's parsers accept: never '1e+11'.

    1.00243039089e+11 → '100243039089', 1e-05 → '0.00001', 2.5 → '2.5', 3.0 → '3'.
    """
    text = repr(float(value))
    if "e" not in text and "E" not in text:
        return text[:-2] if text.endswith(".0") else text
    return format(Decimal(text), "f")
