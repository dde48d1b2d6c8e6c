"""Rows → points (pure): one point per row and ``metric_dimensions`` column.

``<metric_prefix>.<sanitised primary value>.<dimension>`` at the UTC timestamp of the row's
``date_field`` cell:

* DATE (``datetime.date`` or ``"2024-01-31"``) → midnight UTC of that day;
* TIMESTAMP (an aware ``datetime``, or a string with an offset) → that instant;
* DATETIME (a naive ``datetime``, or a string without an offset) → read as UTC, never as the
  host's local time;
* an int or float → epoch seconds.

Cells: an int, float or Decimal, or a string that parses as a float (archive CSV cells) is a
value. NULL/empty and NaN are *null* and ±Inf or anything else is *non-numeric*: both are
skipped and counted, or sent as 0.0 when the account asks for zero fill.

A row whose date or primary value cannot be read is *bad*: it is logged with its values and
skipped; the rows after it are kept. A primary value that sanitises like a different one already
seen in the job (:mod:`skyline.vista.bq.names`) is a *collision*: that row is skipped, counted
and logged. A second row for the same primary value and timestamp is a *duplicate*: the first
one wins.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from skyline.vista.bq.names import sanitise
from skyline.vista.errors import VistaError
from skyline.vista.sinks import SinkPoint

logger = logging.getLogger(__name__)

LOGGED_BAD_ROWS = 10
"""Bad rows logged one by one per interval; the rest are only counted."""

_EPOCH_DATE = dt.date(1970, 1, 1)


class RowSchemaError(VistaError):
    """The query's result lacks a column the account names (date, primary or a dimension)."""


class TooFewRows(VistaError):
    """Fewer rows than the account's ``min_expected_results``: the interval is not sent."""


@dataclass(frozen=True)
class RowSpec:
    """What an account says about its rows (VISTA_BQ_ACCOUNTS, see bigquery_settings.py)."""

    metric_prefix: str
    date_field: str
    primary_dimension: str
    metric_dimensions: tuple[str, ...]
    zero_fill: bool = False
    min_expected_results: int = 0

    @classmethod
    def from_account(cls, account: Mapping[str, Any], *, zero_fill: bool = False) -> RowSpec:
        return cls(
            metric_prefix=str(account["metric_prefix"]),
            date_field=str(account["date_field"]),
            primary_dimension=str(account["primary_dimension"]),
            metric_dimensions=tuple(account["metric_dimensions"]),
            zero_fill=zero_fill,
            min_expected_results=int(account.get("min_expected_results") or 0),
        )


@dataclass
class RowStats:
    """What :class:`RowConverter` made of one interval's rows."""

    rows: int = 0  # read
    points: int = 0  # made (zero-filled ones included)
    null: int = 0  # cells without a value
    non_numeric: int = 0  # cells whose value is not a number
    zero_filled: int = 0  # of those null or non-numeric cells, sent as 0.0 (zero_fill)
    bad_rows: int = 0  # rows without a timestamp or a usable primary value
    collisions: int = 0  # rows whose primary value gives the same names as another one
    duplicates: int = 0  # rows of a (primary value, timestamp) already read

    @property
    def errors(self) -> int:
        return self.bad_rows + self.collisions


def check_row_count(total_rows: int | None, spec: RowSpec) -> None:
    """Raise :class:`TooFewRows` when the result has fewer rows than the account expects."""
    if spec.min_expected_results and (total_rows or 0) < spec.min_expected_results:
        raise TooFewRows(
            f"{total_rows or 0} row(s), fewer than min_expected_results "
            f"{spec.min_expected_results}: the interval is not sent"
        )


def timestamp_of(cell: object) -> int:
    """The UTC epoch seconds of a date cell (module docstring). Raises ValueError."""
    if isinstance(cell, dt.datetime):
        if cell.tzinfo is None:
            cell = cell.replace(tzinfo=dt.UTC)
        return int(cell.timestamp())
    if isinstance(cell, dt.date):
        return (cell - _EPOCH_DATE).days * 86400
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        if not math.isfinite(cell):
            raise ValueError(f"not a finite epoch: {cell!r}")
        return int(cell)
    if isinstance(cell, str):
        text = cell.strip()
        if len(text) == 10:
            return timestamp_of(dt.date.fromisoformat(text))
        return timestamp_of(dt.datetime.fromisoformat(text.replace(" UTC", "+00:00")))
    raise ValueError(f"not a date: {cell!r}")


_NULL = object()
_NON_NUMERIC = object()


def _number(cell: object) -> float | object:
    """A finite float, or _NULL (NULL, empty, NaN), or _NON_NUMERIC."""
    kind = type(cell)
    if kind is float:
        value: float = cell  # type: ignore[assignment]
    elif kind is int or kind is Decimal:
        value = float(cell)  # type: ignore[arg-type]
    elif cell is None:
        return _NULL
    elif kind is str:
        text = cell.strip()  # type: ignore[attr-defined]
        if not text:
            return _NULL
        try:
            value = float(text)
        except ValueError:
            return _NON_NUMERIC
    else:
        return _NON_NUMERIC
    if value != value:
        return _NULL
    if value in (math.inf, -math.inf):
        return _NON_NUMERIC
    return value


@dataclass
class RowConverter:
    """Converts the rows of one job, interval by interval (``begin_interval`` between them).

    ``columns`` are the result's column names, in row order; rows are sequences in that order.
    The name map (sanitised → raw primary value) lives for the whole job so that a collision
    across intervals is caught too; the duplicate check is per interval.
    """

    spec: RowSpec
    columns: Sequence[str]
    stats: RowStats = field(default_factory=RowStats)
    _owners: dict[str, str] = field(default_factory=dict)
    _names: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    _seen: set[tuple[str, int]] = field(default_factory=set)
    _times: dict[object, int] = field(default_factory=dict)
    _logged: int = 0

    def __post_init__(self) -> None:
        index = {name: i for i, name in enumerate(self.columns)}
        wanted = (self.spec.date_field, self.spec.primary_dimension, *self.spec.metric_dimensions)
        missing = [c for c in wanted if c not in index]
        if missing:
            raise RowSchemaError(
                f"the query result has no column(s) {', '.join(missing)} "
                f"(it has {', '.join(self.columns) or 'none'})"
            )
        self._date = index[self.spec.date_field]
        self._primary = index[self.spec.primary_dimension]
        self._dims = tuple(index[d] for d in self.spec.metric_dimensions)

    def with_columns(self, columns: Sequence[str]) -> RowConverter:
        """The same job state (names seen, stats) for rows with another column order."""
        other = RowConverter(self.spec, columns, self.stats)
        other._owners, other._names, other._times = self._owners, self._names, self._times
        return other

    def begin_interval(self) -> RowStats:
        """Start a new interval; returns (and resets) the stats of the one before."""
        done, self.stats = self.stats, RowStats()
        self._seen = set()
        self._times.clear()
        self._logged = 0
        return done

    def _metric_names(self, raw: str, row: Sequence[object]) -> tuple[str, ...] | None:
        names = self._names.get(raw, ())
        if names != ():
            return names
        element = sanitise(raw)
        result: tuple[str, ...] | None
        if not element:
            result = None
        elif self._owners.setdefault(element, raw) != raw:
            self.stats.collisions += 1
            self._log_row(
                row,
                f"primary value {raw!r} gives the name element {element!r}, "
                f"as {self._owners[element]!r} does",
            )
            return None  # not cached: every such row is counted and logged
        else:
            prefix = f"{self.spec.metric_prefix}.{element}."
            result = tuple(prefix + d for d in self.spec.metric_dimensions)
        self._names[raw] = result
        return result

    def _log_row(self, row: Sequence[object], why: str) -> None:
        self._logged += 1
        if self._logged <= LOGGED_BAD_ROWS:
            shown = dict(zip(self.columns, row, strict=False))
            logger.warning("skipping a BigQuery row: %s; row %r", why, shown)

    def _timestamp(self, cell: object) -> int | None:
        ts = self._times.get(cell)
        if ts is None:
            try:
                ts = timestamp_of(cell)
            except (ValueError, TypeError, OverflowError):
                return None
            self._times[cell] = ts
        return ts

    def convert(self, rows: Iterable[Sequence[object]], out: list[SinkPoint]) -> None:  # noqa: C901
        """Append the points of ``rows`` to ``out``, counting what was skipped.

        One loop with the common cases inlined (a float or int cell, a known name, a cached
        date): it runs once per cell of a job (bench/bigquery.py)."""
        stats = self.stats
        zero_fill = self.spec.zero_fill
        append = out.append
        before = len(out)
        times = self._times
        names_of = self._names
        seen = self._seen
        dims = self._dims
        new = tuple.__new__  # SinkPoint(...) without the Python-level __new__: a hot loop
        for row in rows:
            stats.rows += 1
            raw = row[self._primary]
            cell = row[self._date]
            ts = times.get(cell)
            if ts is None:
                ts = self._timestamp(cell)
            if ts is None or raw is None:
                stats.bad_rows += 1
                what = "date" if ts is None else "primary value"
                self._log_row(row, f"no readable {what}")
                continue
            raw = raw if type(raw) is str else str(raw)
            names = names_of.get(raw)
            if names is None:
                names = self._metric_names(raw, row)
            if names is None:
                if names_of.get(raw, ()) is None:
                    stats.bad_rows += 1
                    self._log_row(row, f"primary value {raw!r} gives no name element")
                continue
            key = (raw, ts)
            if key in seen:
                stats.duplicates += 1
                self._log_row(row, f"a second row for {raw!r} at {ts} (the first is kept)")
                continue
            seen.add(key)
            for name, i in zip(names, dims, strict=True):
                cell = row[i]
                kind = type(cell)
                if kind is float:
                    if cell - cell == 0:  # type: ignore[operator]  # not NaN, not ±Inf
                        append(new(SinkPoint, (name, ts, cell)))
                        continue
                elif kind is int:
                    append(new(SinkPoint, (name, ts, float(cell))))  # type: ignore[arg-type]
                    continue
                value = _number(cell)
                if type(value) is float:
                    append(new(SinkPoint, (name, ts, value)))
                    continue
                if value is _NULL:
                    stats.null += 1
                else:
                    stats.non_numeric += 1
                if zero_fill:
                    stats.zero_filled += 1
                    append(SinkPoint(name, ts, 0.0))
        stats.points += len(out) - before
