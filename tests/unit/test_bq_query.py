"""The query for one interval (skyline/vista/bq/query.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from skyline.vista.bq.query import (
    QueryError,
    QueryParameter,
    QuerySettings,
    build_query,
    check_date_format,
    interval_label,
    safe_label,
)

JAN31 = 1706659200  # 2024-01-31T00:00:00Z


def test_parameter_date() -> None:
    q = build_query("SELECT * FROM t WHERE day = @date", JAN31, 86400)
    assert q.sql == "SELECT * FROM t WHERE day = @date"
    assert q.parameters == (QueryParameter("date", "DATE", dt.date(2024, 1, 31)),)
    assert q.label == "2024-01-31"


def test_parameter_span() -> None:
    q = build_query("WHERE ts >= @interval_start AND ts < @interval_end", JAN31, 3600)
    start = dt.datetime(2024, 1, 31, tzinfo=dt.UTC)
    assert q.parameters == (
        QueryParameter("interval_end", "TIMESTAMP", start + dt.timedelta(hours=1)),
        QueryParameter("interval_start", "TIMESTAMP", start),
    )


def test_skyline_substitution_quotes_the_label() -> None:
    q = build_query("WHERE day = DATE_PLACEHOLDER", JAN31, 86400, replace="DATE_PLACEHOLDER")
    assert q.sql == "WHERE day = '2024-01-31'" and q.parameters == ()


def test_substitution_with_format() -> None:
    q = build_query("WHERE d = X", JAN31 + 3600, 3600, replace="X", date_format="%Y%m%d %H")
    assert q.sql == "WHERE d = '20240131 01'"


def test_label_is_utc_whatever_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert interval_label(JAN31) == "2024-01-31"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_missing_replace_string() -> None:
    with pytest.raises(QueryError, match="replace string"):
        build_query("SELECT 1", JAN31, 86400, replace="NOPE")


def test_no_parameter_and_no_replace() -> None:
    with pytest.raises(QueryError, match="same rows"):
        build_query("SELECT 1", JAN31, 86400)


@pytest.mark.parametrize("fmt", ["%Y-%m-%d'; DROP TABLE t; --", "%Y\\%m", "%Y-%m-%d%%"])
def test_unsafe_formats_are_refused(fmt: str) -> None:
    assert check_date_format(fmt) is not None
    with pytest.raises(QueryError):
        safe_label(JAN31, fmt)


@pytest.mark.parametrize("fmt", ["%Y-%m-%d", "%Y%m%d", "%Y-%m-%d %H:%M:%S", "%d/%m/%Y"])
def test_good_formats(fmt: str) -> None:
    assert check_date_format(fmt) is None
    assert safe_label(JAN31, fmt) == interval_label(JAN31, fmt)


def test_settings_for_backfill_and_update() -> None:
    account = {
        "query": "WHERE d = UPD",
        "update_replace_query": "UPD",
        "date_field_format": "%Y%m%d",
    }
    b = QuerySettings.for_backfill(account, {"replace_query_string": "UPD"})
    assert b.build(JAN31, 86400).sql == "WHERE d = '20240131'"
    u = QuerySettings.for_update(account)
    assert u.build(JAN31, 86400).sql == "WHERE d = '20240131'"
    assert u.problems() == []
    assert QuerySettings("SELECT 1", "X", "%Y").problems()[0].startswith("the query does not")
    assert "no @date" in QuerySettings("SELECT 1", None, "%Y-%m-%d").problems()[0]
