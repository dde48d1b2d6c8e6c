"""The query for one interval (pure).

Two ways to put the interval into an account's ``query``, both allowed together:

* **Query parameters** (preferred): the query names ``@date`` (DATE, the interval's UTC day),
  ``@interval_start`` and/or ``@interval_end`` (TIMESTAMP, the interval's half-open UTC span).
  BigQuery binds them; nothing is pasted into the SQL.
* **Skyline's substitution** (compatibility): the job's ``replace_query_string`` (or the
  account's ``update_replace_query`` for updates) is a placeholder in the query, replaced by the
  interval's label in quotes, e.g. ``'2024-01-31'``. The label is made by ``date_format`` (or
  the account's ``date_field_format``, default ``%Y-%m-%d``) from the interval's start **in
  UTC**, must parse back with that format to the same instant, and may only hold letters,
  digits, blanks and ``- : . / _ +``: a label that could close the quote is refused.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skyline.vista.errors import VistaError

DEFAULT_DATE_FORMAT = "%Y-%m-%d"
_PARAMETER = re.compile(r"@(date|interval_start|interval_end)\b")
_SAFE_LABEL = re.compile(r"[0-9A-Za-z :./_+-]+")


class QueryError(VistaError):
    """The query cannot be built for this interval (configuration, not transient)."""


@dataclass(frozen=True)
class QueryParameter:
    name: str
    type: str  # BigQuery type: DATE or TIMESTAMP
    value: dt.date | dt.datetime


@dataclass(frozen=True)
class IntervalQuery:
    sql: str
    parameters: tuple[QueryParameter, ...]
    label: str


def utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def interval_label(ts: int, date_format: str = DEFAULT_DATE_FORMAT) -> str:
    """The interval's label (archive names, change records, Skyline's substitution), in UTC."""
    return utc(ts).strftime(date_format)


def check_date_format(date_format: str) -> str | None:
    """None when ``date_format`` makes safe labels that parse back; else what is wrong."""
    try:
        label = interval_label(86400 * 19000 + 3723, date_format)
    except ValueError as exc:
        return f"not a strftime format: {exc}"
    if not _SAFE_LABEL.fullmatch(label):
        return f"makes labels like {label!r}; only letters, digits, blanks and - : . / _ +"
    try:
        dt.datetime.strptime(label, date_format)
    except ValueError:
        return f"makes labels like {label!r} that do not parse back"
    return None


def safe_label(ts: int, date_format: str) -> str:
    """The label, checked: it matches the format's shape and cannot break out of a literal."""
    label = interval_label(ts, date_format)
    if not _SAFE_LABEL.fullmatch(label):
        raise QueryError(f"date format {date_format!r} made the unsafe label {label!r}")
    try:
        parsed = dt.datetime.strptime(label, date_format).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise QueryError(f"label {label!r} does not match date format {date_format!r}") from exc
    if parsed.strftime(date_format) != label:
        raise QueryError(f"label {label!r} does not round-trip through {date_format!r}")
    return label


def query_parameters(sql: str, start: int, interval: int) -> tuple[QueryParameter, ...]:
    names = sorted(set(_PARAMETER.findall(sql)))
    values: dict[str, QueryParameter] = {
        "date": QueryParameter("date", "DATE", utc(start).date()),
        "interval_start": QueryParameter("interval_start", "TIMESTAMP", utc(start)),
        "interval_end": QueryParameter("interval_end", "TIMESTAMP", utc(start + interval)),
    }
    return tuple(values[n] for n in names)


def build_query(
    query: str,
    start: int,
    interval: int,
    *,
    replace: str | None = None,
    date_format: str = DEFAULT_DATE_FORMAT,
) -> IntervalQuery:
    """The SQL and parameters for the interval ``[start, start + interval)``."""
    label = safe_label(start, date_format)
    sql = query
    if replace:
        if replace not in query:
            raise QueryError(f"the query does not contain the replace string {replace!r}")
        sql = query.replace(replace, f"'{label}'")
    parameters = query_parameters(sql, start, interval)
    if not replace and not parameters:
        raise QueryError(
            "the query names no @date, @interval_start or @interval_end parameter and no "
            "replace string is set: every interval would get the same rows"
        )
    return IntervalQuery(sql, parameters, label)


@dataclass(frozen=True)
class QuerySettings:
    """How an account's query is built, for backfill or for update."""

    query: str
    replace: str | None
    date_format: str

    @classmethod
    def for_backfill(
        cls, account: Mapping[str, Any], job: Mapping[str, Any] | None = None
    ) -> QuerySettings:
        job = job or {}
        replace = (
            job.get("replace_query_string")
            or account.get("replace_query_string")
            or account.get("update_replace_query")
        )
        date_format = (
            job.get("date_format")
            or account.get("date_format")
            or account.get("date_field_format")
            or DEFAULT_DATE_FORMAT
        )
        return cls(str(account["query"]), replace or None, str(date_format))

    @classmethod
    def for_update(cls, account: Mapping[str, Any]) -> QuerySettings:
        replace = account.get("update_replace_query") or account.get("replace_query_string")
        date_format = (
            account.get("date_field_format") or account.get("date_format") or DEFAULT_DATE_FORMAT
        )
        return cls(str(account["query"]), replace or None, str(date_format))

    def problems(self) -> list[str]:
        """What check-config reports: the replace string or a parameter must be in the query."""
        found: list[str] = []
        if self.replace and self.replace not in self.query:
            found.append(f"the query does not contain the replace string {self.replace!r}")
        if not self.replace and not _PARAMETER.search(self.query):
            found.append(
                "the query names no @date/@interval_start/@interval_end parameter and "
                "no replace string (replace_query_string or update_replace_query) is set"
            )
        bad = check_date_format(self.date_format)
        if bad:
            found.append(f"date format {self.date_format!r}: {bad}")
        return found

    def build(self, start: int, interval: int) -> IntervalQuery:
        return build_query(
            self.query, start, interval, replace=self.replace, date_format=self.date_format
        )
