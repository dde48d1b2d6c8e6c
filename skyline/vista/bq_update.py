"""``bq_update``: re-query the last ``update_data_period`` and rewrite what BigQuery corrected.

For each interval (``until = floor(until or now, schedule_interval)``, ``from = until -
update_data_period`` unless the job gives them): query again and compare, value by value, with
the interval's archive. Values are equal when ``math.isclose(old, new, rel_tol=1e-9,
abs_tol=1e-12)`` (the archive keeps the exact text BigQuery sent, so unchanged values compare
equal; the tolerance only absorbs float formatting). Only *new* (no archived value) and
*changed* values are sent; an interval without an archive is all new. Values that disappeared
are counted (``removed``), not deleted. Then the new archive replaces the old one, and when
anything changed Skyline's change record ``vista.bq_update.<account>.<label>.<folder>`` (a hash:
``new_count``, ``changed_count``, ``removed_count``, ``new``, ``changed`` as JSON lists with
``metric, timestamp, old, new, percent``; ``anomaly_updated_count`` 0 and
``anomalies_updated`` ``[]``, since Vista keeps no anomalies) is written with a 30-day expiry,
and ``vista.bq_update.<account>.last_update`` for an hour, as Skyline does.

Rewrites must replace the stored value, so they take the history path (skyline/vista/history.py
and :func:`skyline.vista.bq.job.open_sink`): carbon with the carbon sink; with the Flux sink, a
POST with ``fill`` when Flux's ``FLUX_CHECK_LAST_TIMESTAMP`` is True (Flux never checks such
points against ``flux.last``), else the carbon beside Flux, as Skyline does, because Flux would
drop them at or below ``flux.last`` even with ``fill``. No watermark is read or moved.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from skyline.vista import constants
from skyline.vista.bq.archive import ArchiveWriter
from skyline.vista.bq.job import IntervalRows, JobIO, job_folder
from skyline.vista.bq.query import interval_label
from skyline.vista.bq.rows import RowConverter, check_row_count
from skyline.vista.bq.runner import IntervalJob, IntervalReport
from skyline.vista.sinks import SinkPoint

logger = logging.getLogger(__name__)

KIND = "bq_update"
CHANGE_RECORD_TTL = 30 * 86400
LAST_UPDATE_TTL = 3600
REL_TOL = 1e-9
ABS_TOL = 1e-12


def change_record_key(account: str, label: str, folder: str) -> str:
    return constants.BQ_UPDATE_CHANGE_KEY.format(account=account, label=label, folder=folder)


def percent_different(old: float, new: float) -> float:
    if old == 0:
        return 100.0
    return round(abs(new - old) / abs(old) * 100.0, 4)


def compare(
    old: dict[tuple[str, int], float], new: dict[tuple[str, int], float]
) -> tuple[list[SinkPoint], list[dict[str, Any]], int]:
    """(new points, changes, removed count): the pure comparison of one interval."""
    added: list[SinkPoint] = []
    changed: list[dict[str, Any]] = []
    for (metric, ts), value in new.items():
        before = old.get((metric, ts))
        if before is None:
            added.append(SinkPoint(metric, ts, value))
        elif not math.isclose(before, value, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            changed.append(
                {
                    "metric": metric,
                    "timestamp": ts,
                    "old": before,
                    "new": value,
                    "percent": percent_different(before, value),
                }
            )
    removed = sum(1 for key in old if key not in new)
    return added, changed, removed


class Update(IntervalJob):
    KIND = KIND
    UPDATE = True

    def __init__(self, ctx: JobIO) -> None:
        super().__init__(ctx)
        self.started = time.time()
        self.folder = job_folder(self.started)
        self.counts = {"changed": 0, "new": 0, "removed": 0}

    def _values(
        self, rows: IntervalRows, writer: ArchiveWriter | None
    ) -> tuple[dict[tuple[str, int], float], RowConverter]:
        converter = RowConverter(self.spec, rows.columns)
        values: dict[tuple[str, int], float] = {}
        for page in rows.pages:
            if writer is not None:
                writer.write(page)
            out: list[SinkPoint] = []
            converter.convert(page, out)
            for metric, ts, value in out:
                values[(metric, ts)] = value
        return values, converter

    def interval(self, start: int) -> IntervalReport:
        label = interval_label(start, self.settings.date_format)
        archived = self.source.archived(start)
        _query, current = self.source.query(start)
        check_row_count(current.total_rows, self.spec)
        old: dict[tuple[str, int], float] = {}
        if archived is not None:
            old, _ = self._values(archived, None)
        path = self.source.archive_path(start)
        writer = None if self.params.dry_run else ArchiveWriter(path, current.columns)
        try:
            new, converter = self._values(current, writer)
            added, changed, removed = compare(old, new)
            points = added + [SinkPoint(c["metric"], c["timestamp"], c["new"]) for c in changed]
            if self.delivery is not None:
                self.delivery.send(points)
            if writer is not None:
                writer.commit()
        finally:
            if writer is not None:
                writer.abort()
        self.counts["changed"] += len(changed)
        self.counts["new"] += len(added)
        self.counts["removed"] += removed
        if (added or changed) and not self.params.dry_run:
            self._record(label, added, changed, removed)
        stats = converter.stats
        return IntervalReport(
            stats,
            len(points),
            current.bytes_billed or 0,
            message=(
                f"{stats.rows} rows, {len(changed)} changed, {len(added)} new, "
                f"{removed} removed; {self.params.verb} {len(points)} points"
                + ("" if archived is not None else " (no archive: all new)")
            ),
        )

    def _record(
        self, label: str, added: list[SinkPoint], changed: list[dict[str, Any]], removed: int
    ) -> None:
        account = self.params.account_name
        key = change_record_key(account, label, self.folder)
        fields: dict[str, str | int] = {
            "new_count": len(added),
            "changed_count": len(changed),
            "removed_count": removed,
            "anomaly_updated_count": 0,
            "new": json.dumps([[e.metric, e.timestamp, e.value] for e in added]),
            "changed": json.dumps(changed),
            "anomalies_updated": "[]",
            "job_id": str(self.ctx.record.id),
        }
        pipe = self.ctx.client.pipeline()
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, CHANGE_RECORD_TTL)
        last_update = constants.BQ_UPDATE_LAST_KEY.format(account=account)
        pipe.set(last_update, int(time.time()), ex=LAST_UPDATE_TTL)
        pipe.execute()

    def run(self) -> None:
        totals = self.run_all()
        self.ctx.progress(
            message=(
                f"bq_update {self.params.account_name}: {totals.done} interval(s) compared, "
                f"{self.counts['changed']} value(s) changed, {self.counts['new']} new, "
                f"{self.counts['removed']} removed; {self.params.verb} {totals.points} point(s)"
            )
        )


def run_job(ctx: JobIO) -> None:
    """The job core's entry point for kind ``bq_update``."""
    Update(ctx).run()
