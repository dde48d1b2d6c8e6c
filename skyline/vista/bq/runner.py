"""The interval loop of a BigQuery job: resume, one unit per interval, checkpoint, stop, counts.

The job's checkpoint holds ``next`` (the index of the first interval not finished), the labels
of the ``failed`` intervals with their reasons, and the running totals, written after every
interval; a job process that dies (SIGKILL) resumes at ``next`` with nothing missing or sent
twice from finished intervals (the interval in progress is done again whole; carbon keeps one
value per metric and timestamp). SIGTERM or a cancel request stops between intervals (or while
pacing), keeping the progress.

An interval that fails (too few rows, a failed or unreachable query, a missing column, the sink
failing after its retries) is recorded and the job goes on with the next one; the job ends
``failed`` naming them, and re-running it (or the next scheduled run) tries them again. Errors
of configuration (credentials, an unusable query) fail the job at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from skyline.vista.bq import metrics
from skyline.vista.bq.client import QueryFailed, QueryUnavailable
from skyline.vista.bq.job import Delivery, JobIO, JobParams, RowsSource, Stopped, open_sink
from skyline.vista.bq.query import interval_label
from skyline.vista.bq.rows import RowSchemaError, RowStats, TooFewRows
from skyline.vista.create_budget import CreateBudget
from skyline.vista.errors import SinkError, VistaError

logger = logging.getLogger(__name__)

INTERVAL_ERRORS: tuple[type[Exception], ...] = (
    TooFewRows,
    QueryFailed,
    QueryUnavailable,
    RowSchemaError,
    SinkError,
)


SKYLINE_RUNNING_TTL = 3600


class JobFailed(VistaError):
    """The job ran to its end but some intervals failed."""


@dataclass
class IntervalReport:
    """What one interval did: its rows' counts (converter), the points sent, the bytes billed
    for its query (0 from an archive) and one line for the job's progress."""

    stats: RowStats
    points: int
    bytes_billed: int
    message: str


@dataclass
class Totals:
    rows: int = 0
    points: int = 0
    errors: int = 0  # bad rows and failed intervals
    bytes_billed: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, report: IntervalReport) -> None:
        self.rows += report.stats.rows
        self.points += report.points
        self.errors += report.stats.errors
        self.bytes_billed += report.bytes_billed

    def as_checkpoint(self, next_index: int) -> dict[str, Any]:
        return {
            "next": next_index,
            "rows": self.rows,
            "points": self.points,
            "errors": self.errors,
            "bytes_billed": self.bytes_billed,
            "done": self.done,
            "failed": dict(self.failed),
        }

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> tuple[Totals, int]:
        totals = cls(
            rows=int(data.get("rows", 0)),
            points=int(data.get("points", 0)),
            errors=int(data.get("errors", 0)),
            bytes_billed=int(data.get("bytes_billed", 0)),
            done=int(data.get("done", 0)),
            failed=dict(data.get("failed") or {}),
        )
        return totals, int(data.get("next", 0))


class IntervalJob:
    """What every BigQuery job kind sets up the same way from its job record: the parameters,
    where the rows come from, the delivery (none in a dry run), and at the end the closing of
    the rows source and the sink. A kind names itself (``KIND``, ``UPDATE``) and does one
    interval (:meth:`interval`); :meth:`run_all` runs them all (:func:`run_intervals`)."""

    KIND: ClassVar[str]
    UPDATE: ClassVar[bool]

    def __init__(self, ctx: JobIO) -> None:
        self.ctx = ctx
        self.params = JobParams.parse(ctx.params, ctx.config, update=self.UPDATE)
        self.settings = self.params.query_settings(update=self.UPDATE)
        self.source = RowsSource(self.params, ctx.config, self.settings)
        self.spec = self.params.row_spec()
        self.delivery: Delivery | None = None
        if not self.params.dry_run:
            sink = open_sink(ctx.config, self.params.account, flux_test=self.params.flux_test)
            budget = CreateBudget(ctx.client, ctx.config.carbon_max_creates_per_minute)
            self.delivery = Delivery(sink, budget, ctx.should_stop)

    def interval(self, start: int) -> IntervalReport:
        raise NotImplementedError

    def run_all(self) -> Totals:
        try:
            return run_intervals(
                self.ctx, self.params, self.KIND, self.settings.date_format, self.interval
            )
        finally:
            self.source.close()
            if self.delivery is not None and self.delivery.sink is not None:
                self.delivery.sink.close()


def run_intervals(
    ctx: JobIO,
    params: JobParams,
    kind: str,
    date_format: str,
    do_interval: Callable[[int], IntervalReport],
) -> Totals:
    """Run ``do_interval(start)`` for each interval not yet finished; returns the totals.
    Raises :class:`JobFailed` when some intervals failed, Stopped-free: a stop just returns."""
    started = time.time()
    starts = params.starts()
    totals, first = Totals.from_checkpoint(dict(ctx.record.checkpoint or {}))
    if first:
        logger.info(
            "%s %s: resuming at interval %d of %d (%s)",
            kind,
            ctx.record.id,
            first + 1,
            len(starts),
            interval_label(starts[min(first, len(starts) - 1)], date_format),
        )
    ctx.progress(done=first, total=len(starts), points=totals.points, errors=totals.errors)
    try:
        return _loop(ctx, params, kind, date_format, do_interval, starts, first, totals, started)
    finally:
        _skyline_running(ctx, kind, None)


def _skyline_running(ctx: JobIO, kind: str, started: float | None) -> None:
    """Skyline's own running key (``vista.bq_backfill.running``), for its webapp: set while a
    job of the kind runs here, gone when it ends (an hour at most after a crash). Vista itself
    uses the job core's per-job markers, so this key never blocks a job."""
    from skyline.vista import constants, redisconn

    key = constants.JOB_RUNNING_KEY.format(kind=kind)
    try:
        if started is None:
            ctx.client.delete(key)
        else:
            value = json.dumps({"started": int(started), "job_id": str(ctx.record.id)})
            ctx.client.set(key, value, ex=SKYLINE_RUNNING_TTL)
    except redisconn.REDIS_ERRORS as exc:
        logger.debug("%s: Skyline's running key not written: %s", kind, exc)


def _loop(
    ctx: JobIO,
    params: JobParams,
    kind: str,
    date_format: str,
    do_interval: Callable[[int], IntervalReport],
    starts: list[int],
    first: int,
    totals: Totals,
    started: float,
) -> Totals:
    for index in range(first, len(starts)):
        _skyline_running(ctx, kind, started)
        if ctx.should_stop():
            logger.info("%s %s: stopping before interval %d", kind, ctx.record.id, index + 1)
            return totals
        label = interval_label(starts[index], date_format)
        message = _interval(ctx, params, kind, label, do_interval, starts[index], totals)
        if message is None:
            return totals
        ctx.checkpoint(
            totals.as_checkpoint(index + 1),
            done=index + 1,
            total=len(starts),
            points=totals.points,
            errors=totals.errors,
            message=message,
        )
    _finish(ctx, params, kind, len(starts), totals, time.time() - started)
    return totals


def _interval(
    ctx: JobIO,
    params: JobParams,
    kind: str,
    label: str,
    do_interval: Callable[[int], IntervalReport],
    start: int,
    totals: Totals,
) -> str | None:
    """Run one interval, counted in ``totals``: its progress message (done or failed), or None
    when the job was stopped during it (it is redone on resume)."""
    t0 = time.monotonic()
    try:
        report = do_interval(start)
    except Stopped:
        logger.info("%s %s: stopped during %s; it is redone on resume", kind, ctx.record.id, label)
        return None
    except INTERVAL_ERRORS as exc:
        totals.failed[label] = str(exc)
        totals.errors += 1
        metrics.INTERVALS.labels(params.account_name, kind, "failed").inc()
        logger.error("%s %s: interval %s failed: %s", kind, ctx.record.id, label, exc)
        return f"{label} failed: {exc}"
    totals.add(report)
    totals.done += 1
    metrics.INTERVALS.labels(params.account_name, kind, "done").inc()
    metrics.observe_interval(
        params.account_name, kind, report.stats.rows, report.points, report.bytes_billed
    )
    message = f"{label}: {report.message}"
    logger.info("%s %s: %s (%.2f s)", kind, ctx.record.id, message, time.monotonic() - t0)
    return message


def _finish(
    ctx: JobIO, params: JobParams, kind: str, intervals: int, totals: Totals, duration: float
) -> None:
    """Every interval was tried: the summary, the job's self-metrics; JobFailed naming the
    failed intervals if any."""
    billed = f", {totals.bytes_billed:,} bytes billed" if totals.bytes_billed else ""
    ctx.progress(
        message=(
            f"{kind} {params.account_name}: {totals.done} of {intervals} interval(s) done, "
            f"{len(totals.failed)} failed; {totals.rows:,} rows, {params.verb} {totals.points:,} "
            f"points, {totals.errors - len(totals.failed)} bad row(s){billed}"
        )
    )
    metrics.JOB_SECONDS.labels(kind).observe(duration)
    metrics.send_self_metrics(ctx.config, params.account_name, kind, totals, duration)
    if totals.failed:
        shown = sorted(totals.failed.items())
        reasons = "; ".join(f"{label}: {why[:200]}" for label, why in shown[:5])
        more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise JobFailed(f"{len(totals.failed)} of {intervals} interval(s) failed: {reasons}{more}")
