"""Delivery-lag buckets and quantiles (pure)."""

from __future__ import annotations

import math

import pytest

from skyline.vista import lag


def counts_of(values: list[float]) -> list[int]:
    counts = [0] * len(lag.BUCKETS)
    for v in values:
        counts[lag.bucket_of(v)] += 1
    return counts


def test_bucket_of_uses_upper_bounds() -> None:
    assert lag.bucket_of(0) == 0 and lag.bucket_of(1) == 0 and lag.bucket_of(1.01) == 1
    assert lag.BUCKETS[lag.bucket_of(61)] == 75
    assert math.isinf(lag.BUCKETS[lag.bucket_of(10**9)])
    assert lag.bucket_of(-5) == 0  # a point from the future (clock skew) counts as 0


def test_quantiles_interpolate_inside_the_bucket() -> None:
    counts = counts_of([70.0] * 98 + [500.0, 500.0])  # 98 in (60, 75], 2 in (450, 600]
    summary = lag.summarise(counts)
    assert summary.count == 100
    assert summary.p50 == pytest.approx(60 + 15 * 50 / 98)
    assert summary.p99 == pytest.approx(450 + 150 * 1 / 2)
    assert lag.status_line(summary) == (
        "delivery lag (point -> acknowledged), last hour: p50 68s, p99 8.8m over 100 item(s)"
    )


def test_no_observation_and_the_inf_bucket() -> None:
    assert lag.quantile([0] * len(lag.BUCKETS), 0.5) is None
    assert lag.status_line(lag.summarise([0] * len(lag.BUCKETS))).endswith("no item delivered")
    assert lag.quantile(counts_of([10**7]), 0.5) == lag.BUCKETS[-2]


def test_minute_keys() -> None:
    assert lag.minute_key(1_700_000_059.9) == "vista.lag.1700000040"
