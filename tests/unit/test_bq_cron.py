"""Account schedules → cron expressions in UTC (skyline/vista/bq/cron.py)."""

from __future__ import annotations

import calendar
import time

import pytest

from skyline.vista.bq.cron import (
    ScheduleError,
    backfill_interval,
    cron_expression,
    interval_starts,
    is_due,
    minute_of,
    next_runs,
    update_range,
)


def utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


SCHEDULES = [
    # (schedule dict, expression, after, next two due minutes)
    (
        {"minute": 5, "hour": 2, "day_of_month": "*", "month": "*", "day_of_week": "*"},
        "5 2 * * *",
        "2024-01-31 02:05",
        ["2024-02-01 02:05", "2024-02-02 02:05"],
    ),
    (  # key order does not matter; missing fields are '*'
        {"day_of_week": 1, "hour": 0, "minute": 30},
        "30 0 * * 1",
        "2024-01-31 00:00",  # a Wednesday
        ["2024-02-05 00:30", "2024-02-12 00:30"],
    ),
    (
        {"minute": [0, 30], "hour": [1, 13]},
        "0,30 1,13 * * *",
        "2024-01-31 01:10",
        ["2024-01-31 01:30", "2024-01-31 13:00"],
    ),
    (
        {"minute": "*/15"},
        "*/15 * * * *",
        "2024-01-31 23:50",
        ["2024-02-01 00:00", "2024-02-01 00:15"],
    ),
    (
        {"minute": 0, "hour": 6, "day_of_month": 1, "month": "1-12/3", "day_of_week": "*"},
        "0 6 1 1-12/3 *",
        "2024-01-31 00:00",
        ["2024-04-01 06:00", "2024-07-01 06:00"],
    ),
]


@pytest.mark.parametrize(("schedule", "expr", "after", "runs"), SCHEDULES)
def test_schedule_table(
    schedule: dict[str, object], expr: str, after: str, runs: list[str]
) -> None:
    assert cron_expression(schedule) == expr
    assert next_runs(expr, utc(after), 2) == [utc(r) for r in runs]
    assert all(is_due(expr, utc(r)) for r in runs)
    assert not is_due(expr, utc(runs[0]) + 60)


@pytest.mark.parametrize(
    "schedule",
    [None, {}, {"minute": 0, "hour": 0, "day_of_month": 0, "month": 0, "day_of_week": 0}],
)
def test_disabled(schedule: dict[str, object] | None) -> None:
    assert cron_expression(schedule) is None


@pytest.mark.parametrize(
    "schedule",
    [{"minutes": 5}, {"minute": 61}, {"minute": []}, {"minute": True}, {"hour": "1 2"}],
)
def test_bad_schedules(schedule: dict[str, object]) -> None:
    with pytest.raises(ScheduleError):
        cron_expression(schedule)


@pytest.mark.parametrize("tz", ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"])
def test_host_tz_does_not_matter(tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        expr = "5 2 * * 3"
        assert is_due(expr, utc("2024-01-31 02:05"))  # Wednesday in UTC
        assert next_runs(expr, utc("2024-01-30 00:00")) == [utc("2024-01-31 02:05")]
        assert backfill_interval(utc("2024-01-31 02:05") + 7, 86400) == utc("2024-01-31 00:00")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_intervals() -> None:
    now = utc("2024-01-31 02:05") + 13
    assert minute_of(now) == utc("2024-01-31 02:05")
    assert backfill_interval(now, 3600) == utc("2024-01-31 02:00")
    assert update_range(now, 86400, 7 * 86400) == (utc("2024-01-24 00:00"), utc("2024-01-31 00:00"))
    assert interval_starts(utc("2024-01-01 00:00") + 5, utc("2024-01-03 00:00"), 86400) == [
        utc("2024-01-01 00:00"),
        utc("2024-01-02 00:00"),
        utc("2024-01-03 00:00"),
    ]
