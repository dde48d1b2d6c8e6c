"""Rows → points, names and timestamps (skyline/vista/bq/rows.py, names.py)."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest

from skyline.vista.bq.names import sanitise
from skyline.vista.bq.rows import (
    RowConverter,
    RowSchemaError,
    RowSpec,
    TooFewRows,
    check_row_count,
    timestamp_of,
)
from skyline.vista.sinks import SinkPoint

SPEC = RowSpec("biz.signups", "day", "country", ("count", "revenue", "orders"))
COLUMNS = ("day", "country", "count", "revenue", "orders")
JAN1 = 1704067200  # 2024-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("GB", "GB"),
        ("new-york_1", "new-york_1"),
        ("us.east", "us_east"),
        ("New York", "New_York"),
        ("a/b", "a_b"),
        ("Zürich", "Zurich"),
        ("Café", "Cafe"),
        ("東京", "u6771u4eac"),
        ("ﬁ", "fi"),
        ("50%*'", "50___"),
        ("  padded ", "padded"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_sanitise(raw: str, name: str) -> None:
    assert sanitise(raw) == name


@pytest.mark.parametrize(
    ("cell", "ts"),
    [
        (dt.date(2024, 1, 1), JAN1),
        ("2024-01-01", JAN1),
        (dt.datetime(2024, 1, 1, 6), JAN1 + 6 * 3600),  # DATETIME: read as UTC
        (dt.datetime(2024, 1, 1, 6, tzinfo=dt.timezone(dt.timedelta(hours=2))), JAN1 + 4 * 3600),
        ("2024-01-01 06:00:00", JAN1 + 6 * 3600),
        ("2024-01-01T06:00:00+00:00", JAN1 + 6 * 3600),
        ("2024-01-01 06:00:00 UTC", JAN1 + 6 * 3600),
        (JAN1, JAN1),
        (float(JAN1), JAN1),
    ],
)
def test_timestamp_of(cell: object, ts: int) -> None:
    assert timestamp_of(cell) == ts


@pytest.mark.parametrize("cell", ["yesterday", None, True, float("nan"), "2024-13-01"])
def test_timestamp_of_bad(cell: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        timestamp_of(cell)


def convert(
    rows: list[tuple[object, ...]], spec: RowSpec = SPEC
) -> tuple[list[SinkPoint], RowConverter]:
    conv = RowConverter(spec, COLUMNS)
    out: list[SinkPoint] = []
    conv.convert(rows, out)
    return out, conv


def test_one_point_per_row_and_dimension() -> None:
    out, conv = convert([(dt.date(2024, 1, 1), "GB", 10, 2.5, Decimal("3"))])
    assert out == [
        SinkPoint("biz.signups.GB.count", JAN1, 10.0),
        SinkPoint("biz.signups.GB.revenue", JAN1, 2.5),
        SinkPoint("biz.signups.GB.orders", JAN1, 3.0),
    ]
    assert conv.stats.rows == 1 and conv.stats.points == 3 and conv.stats.errors == 0


def test_null_nan_and_non_numeric_are_skipped_and_counted() -> None:
    out, conv = convert(
        [
            ("2024-01-01", "GB", None, float("nan"), "n/a"),
            ("2024-01-01", "FR", "", "inf", "7.5"),
        ]
    )
    assert out == [SinkPoint("biz.signups.FR.orders", JAN1, 7.5)]
    assert conv.stats.null == 3 and conv.stats.non_numeric == 2
    assert conv.stats.zero_filled == 0


def test_zero_fill() -> None:
    spec = RowSpec("p", "day", "country", ("count", "revenue", "orders"), zero_fill=True)
    out, conv = convert([("2024-01-01", "GB", None, "x", 1)], spec)
    assert out == [
        SinkPoint("p.GB.count", JAN1, 0.0),
        SinkPoint("p.GB.revenue", JAN1, 0.0),
        SinkPoint("p.GB.orders", JAN1, 1.0),
    ]
    assert conv.stats.zero_filled == 2


def test_bad_row_is_logged_and_skipped_and_later_rows_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    out, conv = convert(
        [
            ("2024-01-01", "GB", 1, 1, 1),
            ("not a date", "FR", 2, 2, 2),
            ("2024-01-01", None, 3, 3, 3),
            ("2024-01-01", " ", 4, 4, 4),
            ("2024-01-01", "DE", 5, 5, 5),
        ]
    )
    assert sorted({e.metric.split(".")[2] for e in out}) == ["DE", "GB"]
    assert conv.stats.bad_rows == 3 and conv.stats.rows == 5
    assert "not a date" in caplog.text and "'FR'" in caplog.text


def test_values_that_sanitise_alike_are_an_error_for_that_row() -> None:
    out, conv = convert(
        [
            ("2024-01-01", "a.b", 1, 1, 1),
            ("2024-01-01", "a b", 2, 2, 2),
            ("2024-01-02", "a b", 3, 3, 3),
            ("2024-01-02", "a.b", 4, 4, 4),
        ]
    )
    assert {e.value for e in out} == {1.0, 4.0}
    assert all(e.metric.startswith("biz.signups.a_b.") for e in out)
    assert conv.stats.collisions == 2 and conv.stats.errors == 2


def test_collisions_are_caught_across_intervals() -> None:
    conv = RowConverter(SPEC, COLUMNS)
    out: list[SinkPoint] = []
    conv.convert([("2024-01-01", "a.b", 1, 1, 1)], out)
    conv.begin_interval()
    conv.convert([("2024-01-02", "a/b", 1, 1, 1)], out)
    assert len(out) == 3 and conv.stats.collisions == 1


def test_duplicate_rows_first_wins() -> None:
    out, conv = convert([("2024-01-01", "GB", 1, 1, 1), ("2024-01-01", "GB", 9, 9, 9)])
    assert [e.value for e in out] == [1.0, 1.0, 1.0]
    assert conv.stats.duplicates == 1


def test_begin_interval_resets_duplicates_and_returns_stats() -> None:
    conv = RowConverter(SPEC, COLUMNS)
    out: list[SinkPoint] = []
    conv.convert([("2024-01-01", "GB", 1, 1, 1)], out)
    done = conv.begin_interval()
    conv.convert([("2024-01-01", "GB", 1, 1, 1)], out)
    assert done.rows == 1 and conv.stats.duplicates == 0 and len(out) == 6


def test_missing_column_is_a_schema_error() -> None:
    with pytest.raises(RowSchemaError, match="orders"):
        RowConverter(SPEC, ("day", "country", "count", "revenue"))


def test_other_column_order() -> None:
    conv = RowConverter(SPEC, ("orders", "revenue", "count", "country", "day"))
    out: list[SinkPoint] = []
    conv.convert([(3, 2, 1, "GB", "2024-01-01")], out)
    assert [e.value for e in out] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("rows", "ok"), [(None, False), (0, False), (9, False), (10, True)])
def test_min_expected_results(rows: int | None, ok: bool) -> None:
    spec = RowSpec("p", "d", "c", ("x",), min_expected_results=10)
    if ok:
        check_row_count(rows, spec)
    else:
        with pytest.raises(TooFewRows):
            check_row_count(rows, spec)
    check_row_count(0, RowSpec("p", "d", "c", ("x",)))  # 0 = not enforced


def test_from_account() -> None:
    spec = RowSpec.from_account(
        {
            "metric_prefix": "p",
            "date_field": "d",
            "primary_dimension": "c",
            "metric_dimensions": ["x", "y"],
            "min_expected_results": 5,
        },
        zero_fill=True,
    )
    assert spec == RowSpec("p", "d", "c", ("x", "y"), True, 5)
