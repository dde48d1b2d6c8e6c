"""What the Fetcher remembers of each metric between cycles (in memory only), and what it says
of each cycle and metric: log lines, Prometheus metrics and Skyline-style self-metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from skyline.vista import expand, redisconn, telemetry
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.fetch_cycle import CycleReport, FetchCycle, MetricResult
from skyline.vista.sources.http import HostState, SharedLimit

logger = logging.getLogger("skyline.vista.fetcher")  # the Fetcher's lines, named as ever


@dataclass
class FetcherState:
    """What the fetcher remembers between cycles (in memory only)."""

    last_attempt: dict[str, float] = field(default_factory=dict)
    scan_from: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    carried: set[str] = field(default_factory=set)
    hosts: dict[str, HostState] = field(default_factory=dict)  # by remote_host
    shared: SharedLimit | None = None
    cycles: int = 0
    last_report: CycleReport | None = None
    members: tuple[str, ...] = ()  # the live Vista hosts seen at the last cycle
    owned: tuple[FetchEntry, ...] = ()  # what this host fetched at the last cycle
    lease_waiting: int = 0  # owned metrics whose fetch lease another host held, last cycle

    def forget(self, metrics: set[str]) -> None:
        """Drop what is remembered of metrics this host no longer fetches: if one comes back,
        its window starts again at its watermark (whoever delivered up to it)."""
        for table in (self.last_attempt, self.scan_from, self.last_error):
            for metric in metrics & table.keys():
                del table[metric]
        self.carried -= metrics

    def shared_limit(self, limit: int) -> SharedLimit:
        """The fetches' limit shared by the cycles running at once (a new one when
        ``VISTA_ASYNCIO_FETCHER_LIMIT`` changed)."""
        if self.shared is None or self.shared.limit != limit:
            self.shared = SharedLimit(limit)
        return self.shared


class CycleLog:
    """The Fetcher's memory (``state``) and voice; ``config_of`` and ``self_metrics_of`` give
    the current settings and self-metrics sender (both change on a reload)."""

    def __init__(
        self,
        state: FetcherState,
        config_of: Callable[[], VistaConfig],
        self_metrics_of: Callable[[], telemetry.SelfMetrics],
    ) -> None:
        self.state = state
        self.config_of = config_of
        self.self_metrics_of = self_metrics_of

    def on_error(self, result: MetricResult) -> None:
        error = result.error
        assert error is not None
        entry = result.entry
        telemetry.FETCH_ERRORS.labels(entry.host, error.kind).inc()
        if self.state.last_error.get(entry.metric) != error.kind:
            logger.warning(
                "%s %s (target %r): %s", entry.host, entry.metric, entry.remote_target, error
            )
            self.state.last_error[entry.metric] = error.kind
        else:
            logger.debug("%s %s: still failing: %s", entry.host, entry.metric, error)

    def remember(self, report: CycleReport) -> None:
        state = self.state
        state.cycles += 1
        state.last_report = report
        # Cycles overlap: this one settles only its own metrics' carried marks.
        state.carried.difference_update(r.metric for r in report.results)
        state.carried.update(r.metric for r in report.results if not r.done)

    def remember_metric(self, r: MetricResult, started: float) -> None:
        """As soon as a metric is finished (its cycle, begun at ``started``, may go on)."""
        state = self.state
        if r.skipped:
            return
        state.last_attempt[r.metric] = started
        if r.scan_to is not None:
            state.scan_from[r.metric] = r.scan_to
        log_holes(r)
        if r.error is None and r.metric in state.last_error:
            logger.info("%s %s: fetching works again", r.entry.host, r.metric)
            del state.last_error[r.metric]
        if r.points:
            telemetry.POINTS_FETCHED.labels(r.entry.host).inc(len(r.points))
        for reason, count in r.dropped.as_dict().items():
            if reason != "at_or_below_watermark":
                telemetry.POINTS_DROPPED.labels(reason).inc(count)

    async def report(self, report: CycleReport, to_fetch: int) -> None:
        telemetry.FETCH_CYCLES.observe(report.duration)
        if report.unfinished:
            telemetry.FETCH_UNFINISHED.inc(report.unfinished)
            logger.warning(
                "%d metric(s) not fetched within %gs; they go first next cycle",
                report.unfinished,
                self.config_of().fetcher_max_runtime,
            )
        fetched = report.fetched
        points = sum(len(r.points) for r in fetched)
        level = (
            logging.INFO
            if (fetched or report.errors) and self.config_of().verbose_logging
            else logging.DEBUG
        )
        logger.log(
            level,
            "cycle: %d due, %d with new points (%d points), %d errors, %.2fs",
            to_fetch,
            len(fetched),
            points,
            len(report.errors),
            report.duration,
        )
        values: dict[str, float] = {
            "fetcher.time_to_fetch": round(report.duration, 3),
            "fetcher.metrics_to_fetch": to_fetch,
            "fetcher.metrics_fetched": len(fetched),
            "fetcher.sent_to_flux": len(fetched),
            "fetcher.points_fetched": points,
            "fetcher.unfinished": report.unfinished,
        }
        errors_by_host: dict[str, int] = {}
        for r in report.errors:
            errors_by_host[r.entry.host] = errors_by_host.get(r.entry.host, 0) + 1
        for host in {e.host for e in self.state.owned}:
            values[f"fetcher.errors.{telemetry.graphite_safe(host)}"] = errors_by_host.get(host, 0)
        await asyncio.to_thread(self.self_metrics_of().send, values, report.started)

    async def remember_names(self, fetch: FetchCycle, report: CycleReport) -> None:
        seen = {r.metric: r.seen for r in report.results if r.seen}
        if not seen or fetch.queue is None:
            return
        try:
            await expand.remember(fetch.queue.client, seen, report.started)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning("could not record the series of templated entries: %s", exc)
        for r in report.results:
            fresh = [n for n in r.seen if n not in fetch.expansion_known.get(r.metric, ())]
            if fresh:
                held = " (pre-populated next cycle)" if r.held_new else ""
                logger.info(
                    "%s: %d new series: %s%s", r.metric, len(fresh), ", ".join(fresh[:10]), held
                )


def log_holes(result: MetricResult) -> None:
    """One line per window that failed while newer points went, and per window given up."""
    entry = result.entry
    for hole in result.new_holes:
        logger.warning(
            "%s %s: window %s..%s failed (%s); newer points are delivered, the window is "
            "retried with backoff (next in %.0fs)",
            entry.host,
            entry.metric,
            _when(hole.start),
            _when(hole.end),
            hole.error,
            hole.next_try - hole.since,
        )
    for hole in result.given_up:
        logger.error(
            "%s %s: giving up window %s..%s after %d failed attempts since %s (last: %s); "
            "its points are not fetched",
            entry.host,
            entry.metric,
            _when(hole.start),
            _when(hole.end),
            hole.attempts,
            _when(int(hole.since)),
            hole.error,
        )
        telemetry.WINDOWS_GIVEN_UP.inc()
    if result.refilled:
        logger.info(
            "%s %s: %d point(s) of failed windows fetched again",
            entry.host,
            entry.metric,
            result.refilled,
        )


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
