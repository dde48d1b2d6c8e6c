"""Account schedules (pure): cron-like dicts → cron expressions, evaluated in UTC.

``{'minute': 5, 'hour': [1, 13], 'day_of_month': '*', 'month': '*', 'day_of_week': '1-5'}``
becomes ``"5 1,13 * * 1-5"``, by field *name* (never by the dict's order); a missing field is
``*``. All fields 0 (Skyline's ``'0 0 0 0 0'``) means disabled. Expressions are matched on
whole UTC minutes, whatever the host's ``TZ``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from croniter import croniter

from skyline.vista.errors import VistaError

FIELDS = ("minute", "hour", "day_of_month", "month", "day_of_week")


class ScheduleError(VistaError):
    """A schedule dict that is not a valid cron schedule."""


def _field(value: object) -> str:
    if isinstance(value, bool):
        raise ScheduleError(f"{value!r} is not a cron field")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ScheduleError("an empty list is not a cron field")
        return ",".join(_field(v) for v in value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip() and " " not in value.strip():
        return value.strip()
    raise ScheduleError(f"{value!r} is not a cron field")


def cron_expression(schedule: Mapping[str, object] | None) -> str | None:
    """The cron expression of a schedule dict, or None when it is absent or disabled."""
    if not schedule:
        return None
    unknown = sorted(set(map(str, schedule)) - set(FIELDS))
    if unknown:
        raise ScheduleError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    parts = [_field(schedule.get(name, "*")) for name in FIELDS]
    if all(p == "0" for p in parts):
        return None
    expr = " ".join(parts)
    if not croniter.is_valid(expr):
        raise ScheduleError(f"{expr!r} is not a valid cron expression")
    return expr


def minute_of(ts: float) -> int:
    """The start of the UTC minute holding ``ts``."""
    return int(ts // 60 * 60)


def is_due(expr: str, minute: int) -> bool:
    """True when the UTC minute starting at ``minute`` (epoch seconds) matches ``expr``."""
    return bool(croniter.match(expr, dt.datetime.fromtimestamp(minute, dt.UTC)))


def next_runs(expr: str, after: float, count: int = 1) -> list[int]:
    """The next ``count`` due minutes strictly after ``after`` (epoch seconds, UTC)."""
    it = croniter(expr, dt.datetime.fromtimestamp(after, dt.UTC))
    return [int(it.get_next(float)) for _ in range(count)]


def backfill_interval(now: float, schedule_interval: int) -> int:
    """The interval a due ``schedule`` fetches (as Skyline's bq_fetcher does): the one that
    holds ``now``, i.e. ``floor(now, schedule_interval)``."""
    return int(now // schedule_interval * schedule_interval)


def update_range(now: float, schedule_interval: int, update_data_period: int) -> tuple[int, int]:
    """The intervals a due ``update_data_schedule`` re-checks: ``until = floor(now,
    schedule_interval)`` and ``from = until - update_data_period`` (both interval starts)."""
    until = backfill_interval(now, schedule_interval)
    start = until - update_data_period
    return start - start % schedule_interval, until


def interval_starts(start: int, until: int, step: int) -> list[int]:
    """The interval starts from ``start`` to ``until`` inclusive, on ``step`` boundaries."""
    first = start - start % step
    return list(range(first, until + 1, step))
