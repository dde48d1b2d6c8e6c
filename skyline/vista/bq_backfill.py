"""``bq_backfill``: load an account's history from BigQuery, one interval at a time.

For each interval from ``from_timestamp`` to ``until_timestamp`` (inclusive) by the account's
``schedule_interval`` (or the job's ``interval``): read its rows (from its archive when the job
says ``use_archive_data`` and one exists, else by query), write the archive (atomically, while
streaming the pages), convert and deliver. ``dry_run`` reads and converts but writes nothing
(no point, no archive, no known-metric mark) and reports the counts and a sample of the points;
``flux_test`` sends with Flux's test flag. The interval loop, its checkpoint and its stop rules
are in :mod:`skyline.vista.bq.runner`.

SinkPoint points: :func:`run_job` (the job core's ``run(ctx)``) and :func:`bq_backfill` (Skyline's
name, for one job id, in the foreground).
"""

from __future__ import annotations

import logging
from typing import Any

from skyline.vista.bq.archive import ArchiveWriter
from skyline.vista.bq.job import JobIO
from skyline.vista.bq.rows import RowConverter, check_row_count
from skyline.vista.bq.runner import IntervalJob, IntervalReport
from skyline.vista.sinks import SinkPoint

logger = logging.getLogger(__name__)

KIND = "bq_backfill"
DRY_RUN_SAMPLE = 5


class Backfill(IntervalJob):
    KIND = KIND
    UPDATE = False

    def __init__(self, ctx: JobIO) -> None:
        super().__init__(ctx)
        self.converter: RowConverter | None = None
        self.sample: list[SinkPoint] = []

    def _converter(self, columns: tuple[str, ...]) -> RowConverter:
        if self.converter is None:
            self.converter = RowConverter(self.spec, columns)
        elif tuple(self.converter.columns) != columns:
            self.converter = self.converter.with_columns(columns)
        self.converter.begin_interval()
        return self.converter

    def interval(self, start: int) -> IntervalReport:
        rows = self.source.archived(start) if self.params.use_archive else None
        if rows is None:
            _query, rows = self.source.query(start)
        check_row_count(rows.total_rows, self.spec)
        converter = self._converter(rows.columns)
        write_archive = not rows.from_archive and not self.params.dry_run
        path = self.source.archive_path(start)
        writer = ArchiveWriter(path, rows.columns) if write_archive else None
        points = 0
        try:
            for page in rows.pages:
                if writer is not None:
                    writer.write(page)
                out: list[SinkPoint] = []
                converter.convert(page, out)
                points += len(out)
                if self.delivery is not None:
                    self.delivery.send(out)
                elif len(self.sample) < DRY_RUN_SAMPLE:
                    self.sample += out[: DRY_RUN_SAMPLE - len(self.sample)]
            if writer is not None:
                writer.commit()
        finally:
            if writer is not None:
                writer.abort()
        stats = converter.stats
        source = "archive" if rows.from_archive else "query"
        skipped = stats.null + stats.non_numeric - stats.zero_filled
        return IntervalReport(
            stats,
            points,
            rows.bytes_billed or 0,
            message=(
                f"{stats.rows} rows ({source}), {self.params.verb} {points} points, "
                f"{skipped} cells skipped, {stats.errors} bad rows, {stats.duplicates} duplicates"
            ),
        )

    def run(self) -> None:
        totals = self.run_all()
        if self.params.dry_run:
            shown = ", ".join(f"{e.metric} {e.value:g} {e.timestamp}" for e in self.sample)
            self.ctx.progress(
                message=f"dry run: would send {totals.points} points, e.g. {shown or 'none'}"
            )


def run_job(ctx: JobIO) -> None:
    """The job core's entry point for kind ``bq_backfill``."""
    Backfill(ctx).run()


def describe(params: dict[str, Any]) -> str:
    """One line for ``vista bq jobs``."""
    return (
        f"{params.get('vista_bq_account_key')} "
        f"{params.get('from_timestamp')}..{params.get('until_timestamp')}"
        + (" dry-run" if params.get("dry_run") else "")
    )
