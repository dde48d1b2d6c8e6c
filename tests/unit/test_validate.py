"""Pure time-series rules: clean(), current_minute_start(), detect_resolution(), format_value()."""

from __future__ import annotations

import datetime
import math
import os
import random
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from skyline.vista.model import DropCounts, Point
from skyline.vista.validate import (
    clean,
    current_minute_start,
    detect_resolution,
    format_value,
    to_value,
)

T0 = 1_718_000_040  # 2024-06-10 06:14:00 UTC, a minute boundary
assert T0 % 60 == 0


# --- clean ------------------------------------------------------------------------------------

DROPS: list[tuple[str, list[tuple[object, object]], list[Point], dict[str, int]]] = [
    ("None value", [(T0, None), (T0 + 60, 1.0)], [(T0 + 60, 1.0)], {"none": 1}),
    ("NaN float", [(T0, math.nan), (T0 + 60, 1.0)], [(T0 + 60, 1.0)], {"non_finite": 1}),
    (
        "+/-Inf floats",
        [(T0, math.inf), (T0 + 60, -math.inf), (T0 + 120, 3.0)],
        [(T0 + 120, 3.0)],
        {"non_finite": 2},
    ),
    (
        "Prometheus 'NaN' '+Inf' '-Inf' strings",
        [(T0, "NaN"), (T0 + 60, "+Inf"), (T0 + 120, "-Inf"), (T0 + 180, "4.5")],
        [(T0 + 180, 4.5)],
        {"non_finite": 3},
    ),
    (
        "other spellings of non-finite",
        [(T0, "nan"), (T0 + 60, "inf"), (T0 + 120, "Infinity"), (T0 + 180, "-infinity")],
        [],
        {"non_finite": 4},
    ),
    (
        "unparsable values",
        [(T0, "abc"), (T0 + 60, ""), (T0 + 120, [1]), (T0 + 180, True), (T0 + 240, "1,5")],
        [],
        {"unparsable": 5},
    ),
    (
        "unparsable timestamps",
        [("soon", 1.0), (None, 1.0), (True, 1.0), (math.nan, 1.0), (math.inf, 2.0), (T0, 3.0)],
        [(T0, 3.0)],
        {"unparsable": 5},
    ),
    (
        "numeric strings",
        [(str(T0), "1e3"), (f"{T0 + 60}.0", " -2.5 "), (T0 + 120, "0")],
        [(T0, 1000.0), (T0 + 60, -2.5), (T0 + 120, 0.0)],
        {},
    ),
    (
        "integers become floats",
        [(T0, 7), (T0 + 60, -3)],
        [(T0, 7.0), (T0 + 60, -3.0)],
        {},
    ),
    (
        "duplicate timestamps, the last wins",
        [(T0, 1.0), (T0 + 60, 2.0), (T0, 3.0), (T0, 4.0)],
        [(T0, 4.0), (T0 + 60, 2.0)],
        {"duplicate_ts": 2},
    ),
    (
        "unsorted input is sorted",
        [(T0 + 180, 4.0), (T0, 1.0), (T0 + 120, 3.0), (T0 + 60, 2.0)],
        [(T0, 1.0), (T0 + 60, 2.0), (T0 + 120, 3.0), (T0 + 180, 4.0)],
        {},
    ),
    (
        "float timestamps truncated to whole seconds",
        [(T0 + 0.702, 1.0), (T0 + 60.999, 2.0), (float(T0 + 120), 3.0)],
        [(T0, 1.0), (T0 + 60, 2.0), (T0 + 120, 3.0)],
        {},
    ),
    (
        "truncation can make duplicates",
        [(T0 + 0.1, 1.0), (T0 + 0.9, 2.0)],
        [(T0, 2.0)],
        {"duplicate_ts": 1},
    ),
    ("empty", [], [], {}),
]


@pytest.mark.parametrize(
    ("raw", "points", "dropped"), [pytest.param(r, p, d, id=n) for n, r, p, d in DROPS]
)
def test_clean_drops_and_orders(
    raw: list[tuple[object, object]], points: list[Point], dropped: dict[str, int]
) -> None:
    result = clean(raw)
    assert result.points == tuple(points)
    assert all(type(ts) is int and type(v) is float for ts, v in result.points)
    assert result.dropped.as_dict() == dropped
    assert result.dropped.total() == sum(dropped.values())


SERIES = [(T0 + 60 * i, float(i)) for i in range(6)]  # T0 .. T0+300


@pytest.mark.parametrize(
    ("after", "before", "kept", "dropped"),
    [
        (None, None, range(6), {}),
        (T0 + 120, None, range(3, 6), {"at_or_below_watermark": 3}),
        (T0 + 119, None, range(2, 6), {"at_or_below_watermark": 2}),
        (T0 + 300, None, range(0), {"at_or_below_watermark": 6}),
        (T0 - 1, None, range(6), {}),
        (None, T0 + 240, range(4), {"current_minute": 2}),
        (None, T0 + 241, range(5), {"current_minute": 1}),
        (None, T0, range(0), {"current_minute": 6}),
        (T0 + 60, T0 + 240, range(2, 4), {"at_or_below_watermark": 2, "current_minute": 2}),
    ],
)
def test_clean_watermark_and_current_minute(
    after: int | None, before: int | None, kept: range, dropped: dict[str, int]
) -> None:
    result = clean(SERIES, after=after, before=before)
    assert result.points == tuple(SERIES[i] for i in kept)
    assert result.dropped.as_dict() == dropped


def test_clean_counts_every_reason_at_once() -> None:
    raw: list[tuple[object, object]] = [
        (T0 - 60, 1.0),  # at or below the watermark
        (T0, 2.0),  # the watermark itself
        (T0 + 60, None),
        (T0 + 120, "NaN"),
        (T0 + 180, "x"),
        (T0 + 240, 5.0),
        (T0 + 240, 6.0),  # duplicate, wins
        (T0 + 300, 7.0),  # current minute
    ]
    result = clean(raw, after=T0, before=T0 + 300)
    assert result.points == ((T0 + 240, 6.0),)
    assert result.dropped == DropCounts(
        none=1,
        non_finite=1,
        unparsable=1,
        duplicate_ts=1,
        at_or_below_watermark=2,
        current_minute=1,
    )
    assert result.dropped.total() == 7


def test_drop_counts_add() -> None:
    a = DropCounts(none=1, current_minute=2)
    a.update(DropCounts(none=3, duplicate_ts=1))
    assert a.as_dict() == {"none": 4, "duplicate_ts": 1, "current_minute": 2}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1, 1.0),
        (2.5, 2.5),
        ("3.25", 3.25),
        ("1e-05", 1e-05),
        (None, None),
        (True, None),
        ("abc", None),
        (b"1", None),
        ([1.0], None),
    ],
)
def test_to_value(raw: object, expected: float | None) -> None:
    assert to_value(raw) == expected


# --- current_minute_start under any TZ ----------------------------------------------------


@pytest.fixture(params=["UTC", "Asia/Kolkata", "America/Los_Angeles", "Europe/Berlin"])
def tz(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield name
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0, T0),
        (T0 + 0.001, T0),
        (T0 + 59.999, T0),
        (T0 + 60, T0 + 60),
        (T0 - 0.5, T0 - 60),
        (1_700_000_000, 1_699_999_980),  # 2023-11-14 22:13:20 UTC → 22:13:00
        (1_711_846_799.9, 1_711_846_740),  # 2024-03-31 00:59:59.9 UTC (Berlin DST change)
        (1_730_624_400.0, 1_730_624_400),  # 2024-11-03 09:00:00 UTC (LA DST ends)
    ],
)
def test_current_minute_start_is_the_utc_minute_in_any_tz(
    tz: str, now: float, expected: int
) -> None:
    assert time.tzname  # the zone is in effect
    assert current_minute_start(now) == expected
    # the same instant read back as UTC wall-clock time has seconds == 0
    assert time.gmtime(current_minute_start(now)).tm_sec == 0
    assert 0 <= now - current_minute_start(now) < 60


def test_current_minute_start_matches_calendar_arithmetic(tz: str) -> None:
    utc = datetime.UTC
    now = datetime.datetime(2024, 6, 10, 6, 14, 37, 250000, tzinfo=utc).timestamp()
    start = datetime.datetime(2024, 6, 10, 6, 14, tzinfo=utc)
    assert current_minute_start(now) == int(start.timestamp()) == T0
    # the local wall clock differs from UTC (except in UTC), and it does not matter
    assert time.strftime("%H:%M", time.localtime(T0)) != "06:14" or tz == "UTC"


def test_tz_fixture_really_changes_local_time(tz: str) -> None:
    offsets = {"UTC": 0, "Asia/Kolkata": 19800, "America/Los_Angeles": -25200}
    offsets["Europe/Berlin"] = 7200
    local = time.localtime(T0)  # June: summer time where it applies
    assert local.tm_gmtoff == offsets[tz]
    assert current_minute_start(T0 + 30) == T0


# --- detect_resolution ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        ([], None),
        ([T0], None),
        ([T0, T0], None),
        ([T0, T0 + 60], 60),
        ([T0 + 60 * i for i in range(10)], 60),
        ([T0, T0 + 10, T0 + 20, T0 + 30], 10),
        ([T0, T0 + 60, T0 + 120, T0 + 420], 60),  # one gap does not change it
        ([T0, T0 + 60, T0 + 360, T0 + 660], 300),  # 300 twice, 60 once
        ([T0, T0 + 60, T0 + 360], 60),  # tie: the smallest
        ([T0, T0 + 300, T0 + 360], 60),  # tie, other order
        ([T0, T0 + 86400, T0 + 2 * 86400], 86400),
    ],
)
def test_detect_resolution(stamps: list[int], expected: int | None) -> None:
    assert detect_resolution([(ts, 1.0) for ts in stamps]) == expected


# --- format_value -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.00243039089e11, "100243039089"),
        (1e-05, "0.00001"),
        (2.5, "2.5"),
        (3.0, "3"),
        (0.0, "0"),
        (-0.0, "-0"),
        (-2.5, "-2.5"),
        (-3.0, "-3"),
        (-1e-05, "-0.00001"),
        (-7.25e-08, "-0.0000000725"),
        (1e22, "10000000000000000000000"),
        (1e16, "10000000000000000"),
        (-1.5e17, "-150000000000000000"),
        (123456789.123, "123456789.123"),
        (0.1, "0.1"),
        (1e-300, "0." + "0" * 299 + "1"),
        (7, "7"),
    ],
)
def test_format_value_table(value: float, text: str) -> None:
    assert format_value(value) == text
    assert "e" not in text.lower()


def _random_floats() -> list[float]:
    rng = random.Random(1718000040)
    values: list[float] = []
    for _ in range(300):
        mantissa = rng.uniform(-10, 10)
        values.append(mantissa * 10.0 ** rng.randint(-30, 30))
    values += [rng.uniform(-1e6, 1e6) for _ in range(100)]
    values += [float(rng.randint(-(2**53), 2**53)) for _ in range(100)]
    return values


def test_format_value_round_trips_many_floats() -> None:
    values = _random_floats()
    assert len(values) == 500
    for value in values:
        text = format_value(value)
        assert "e" not in text and "E" not in text, (value, text)
        assert float(text) == value, (value, text)
        assert Decimal(text) == Decimal(repr(value)), (value, text)
