"""Delivery lag: how old a point is when the sink has acknowledged it.

One observation per delivered queue item: acknowledgement time minus the item's newest
delivered point (its freshness; the older points of the same item were only waiting for the
minute to close). Workers add each observation to the ``vista_delivery_lag_seconds``
histogram on ``/metrics`` and to a per-minute count of the same buckets in Redis
(``vista.lag.<minute>``, kept 62 minutes), from which ``vista status`` reads the p50/p99 of the
last hour over every worker of every host.

Pure apart from :func:`record` and :func:`read_counts`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from skyline.vista import constants
from skyline.vista.durations import UP_TO_HOURS, short

BUCKETS: tuple[float, ...] = (
    1, 2, 5, 10, 15, 20, 30, 45, 60, 75, 90, 120, 150, 180, 240, 300, 450, 600, 900, 1200,
    1800, 2700, 3600, 7200, 21600, 86400, 604800, math.inf,
)  # fmt: skip
"""Upper bounds in seconds (the open minute alone makes 60-120 s usual for 60 s metrics)."""

KEY_PREFIX = constants.LAG_KEY_PREFIX
KEY_TTL = 62 * 60
WINDOW = 3600


def bucket_of(seconds: float) -> int:
    """Index of the first bucket whose upper bound is >= seconds."""
    return bisect.bisect_left(BUCKETS, max(0.0, seconds))


def minute_key(now: float) -> str:
    return f"{KEY_PREFIX}{int(now) // 60 * 60}"


def record(pipe: redis.client.Pipeline, lags: Iterable[float], now: float) -> None:
    """Queue HINCRBYs of the lags' buckets into this minute's hash on ``pipe``."""
    counts: dict[int, int] = {}
    for lag in lags:
        index = bucket_of(lag)
        counts[index] = counts.get(index, 0) + 1
    if not counts:
        return
    key = minute_key(now)
    for index, n in counts.items():
        pipe.hincrby(key, str(index), n)
    pipe.expire(key, KEY_TTL)


def read_counts(client: redis.Redis, now: float, window: int = WINDOW) -> list[int]:
    """Bucket counts summed over the minutes of the last ``window`` seconds."""
    first = (int(now) - window) // 60 * 60 + 60
    minutes = range(first, int(now) // 60 * 60 + 60, 60)
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{KEY_PREFIX}{minute}")
    totals = [0] * len(BUCKETS)
    for found in pipe.execute():
        for index, n in found.items():
            i = int(index)
            if 0 <= i < len(totals):
                totals[i] += int(n)
    return totals


@dataclass(frozen=True)
class LagSummary:
    count: int
    p50: float | None
    p99: float | None


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile, interpolated linearly inside its bucket (as Prometheus'
    histogram_quantile does); the last finite bound when it falls in the +Inf bucket."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= rank:
            upper = BUCKETS[index]
            lower = BUCKETS[index - 1] if index else 0.0
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return BUCKETS[-2]


def summarise(counts: Sequence[int]) -> LagSummary:
    return LagSummary(sum(counts), quantile(counts, 0.5), quantile(counts, 0.99))


def status_line(summary: LagSummary) -> str:
    if not summary.count:
        return "delivery lag (point -> acknowledged), last hour: no item delivered"
    assert summary.p50 is not None and summary.p99 is not None
    return (
        "delivery lag (point -> acknowledged), last hour: "
        f"p50 {short(summary.p50, UP_TO_HOURS)}, p99 {short(summary.p99, UP_TO_HOURS)} "
        f"over {summary.count} item(s)"
    )
