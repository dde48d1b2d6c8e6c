"""One fetch cycle: plan the due metrics' windows, run their sources' requests concurrently,
push each metric's queue items as it finishes. I/O is limited to the HTTP session and the
(optional) queue.

Each kind of remote is a :class:`~skyline.vista.sources.Source` (sources/registry.py), which
turns windows into requests; fetch_results.py turns the answers into points and items.
Used by the Fetcher thread for every cycle and by ``vista fetch --once`` directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import aiohttp

from skyline.vista import procutil
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.fetch_results import (
    CycleReport,
    Finisher,
    Member,
    MetricResult,
    Outcome,
    plan_results,
    states_of,
)
from skyline.vista.fetch_tasks import FetchTasks
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.outbox import Outbox
from skyline.vista.redisconn import REDIS_ERRORS
from skyline.vista.schedule import Limits, MetricState
from skyline.vista.sources.http import (
    Credentials,
    HostState,
    SharedLimit,
    get_json,
    host_state_of,
    request_json,
    scrubbed,
)
from skyline.vista.sources.registry import SOURCES
from skyline.vista.sources.stream import StreamParser

__all__ = ["CycleReport", "FetchCycle", "MetricResult"]

logger = logging.getLogger(__name__)

FLUSH_DELAY = 0.2
"""Finished metrics are pushed to the queue within this many seconds, together with whatever
else finished meanwhile: a slow host must not hold back the others' points until the cycle ends."""


class FetchCycle:
    """Runs one cycle. ``queue=None`` is a dry run: nothing is written anywhere."""

    def __init__(
        self,
        config: VistaConfig,
        session: aiohttp.ClientSession,
        hosts: dict[str, HostState],
        *,
        queue: AsyncFetchQueue | None,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[MetricResult], None] | None = None,
        shared: SharedLimit | None = None,
        on_done: Callable[[MetricResult, float], None] | None = None,
    ) -> None:
        self.config = config
        self.session = session
        self.hosts = hosts
        self.shared = shared if shared is not None else SharedLimit(config.fetch_concurrency)
        self.queue = queue
        self.clock = clock
        self.on_error = on_error
        self.on_done = on_done
        self.in_flight: set[str] = set()  # metrics of this cycle not finished yet
        # Templated entries (expand.py): the names each made before, and their watermarks.
        self.expansion_known: dict[str, set[str]] = {}
        self.name_watermarks: dict[str, int] = {}
        self.limits = Limits(
            fetch_max_points=config.fetch_max_points,
            max_backfill=config.max_backfill,
            graphite_chunk_points=config.queue_item_max_points,
        )
        self._tasks = FetchTasks(self._task_failed)
        self._finisher: Finisher | None = None  # made when the cycle starts (it knows `now`)
        self._outbox = Outbox()
        self._queued = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.now = 0.0

    # --- planning -----------------------------------------------------------------------

    def host_state(self, entry: FetchEntry) -> HostState:
        client = self.queue.client if self.queue is not None else None
        return host_state_of(self.hosts, entry, self.config.host_options, client)

    def plan(
        self,
        entries: Sequence[FetchEntry],
        states: Mapping[str, MetricState],
        *,
        ignore_schedule: bool = True,
    ) -> list[MetricResult]:
        """The due metrics' results, with their windows (schedule.plan_metric decides)."""
        available = {e.remote_host: self.host_state(e).available() for e in entries}
        return plan_results(entries, states, self.now, self.limits, available, ignore_schedule)

    # --- running ------------------------------------------------------------------------

    async def run(
        self,
        entries: Sequence[FetchEntry],
        watermarks: Mapping[str, int] | None = None,
        pending: set[str] | None = None,
        scan_from: Mapping[str, int] | None = None,
        deadline: float | None = None,
        *,
        states: Mapping[str, MetricState] | None = None,
        ignore_schedule: bool = True,
    ) -> CycleReport:
        """Fetch ``entries``: by default each one (as ``vista fetch --once`` does); with
        ``ignore_schedule=False`` only those that schedule.plan_metric finds due. ``states``
        gives what is known of each metric; else it is built from the other arguments."""
        if states is None:
            states = states_of(entries, watermarks or {}, pending or set(), scan_from or {})
        with procutil.fewer_gc_passes():
            return await self._run(entries, states, ignore_schedule, deadline)

    async def _run(
        self,
        entries: Sequence[FetchEntry],
        states: Mapping[str, MetricState],
        ignore_schedule: bool,
        deadline: float | None,
    ) -> CycleReport:
        self.now = self.clock()
        started = time.monotonic()
        results = self.plan(entries, states, ignore_schedule=ignore_schedule)
        self.in_flight = {r.metric for r in results if not r.done}
        self._finisher = Finisher.of(
            self.config, self.now, self.expansion_known, self.name_watermarks
        )
        by_source: dict[str, list[MetricResult]] = {}
        for result in results:
            if not result.done:
                by_source.setdefault(result.entry.remote_host_type, []).append(result)
        for kind, due in by_source.items():
            SOURCES[kind].start(self, due)
        await self._wait(deadline)
        self.in_flight = set()
        unfinished = sum(1 for r in results if not r.done)
        await self._flush(final=True)
        report = CycleReport(
            self.now, results, time.monotonic() - started, unfinished, self._queued
        )
        report.hosts = self.hosts
        return report

    def _task_failed(self, members: list[Member], exc: BaseException) -> None:
        names = ", ".join(sorted({r.metric for r, _ in members})) or "-"
        logger.error("fetch task failed (%s)", names, exc_info=exc)
        error = SourceError("internal", f"internal error: {type(exc).__name__}: {exc}")
        for result, n in members:
            if n not in result.raw:
                self._settle_now(result, n, error)

    def stop(self) -> None:
        """End the cycle now, as at its deadline: what did not finish is cancelled and counted
        unfinished; what finished is still pushed."""
        self._tasks.stop()

    async def _wait(self, deadline: float | None) -> None:
        await self._tasks.wait(
            deadline if deadline is not None else self.config.fetcher_max_runtime
        )
        if self._flush_timer is not None:  # the final flush follows
            self._flush_timer.cancel()
            self._flush_timer = None
        await self._tasks.cancel()

    # --- what sources may do (sources.Fetching) --------------------------------------------

    def spawn(self, fetch: Coroutine[Any, Any, None], members: Sequence[Member] = ()) -> None:
        self._tasks.spawn(fetch, members)

    async def get(
        self,
        result: MetricResult | None,
        entry: FetchEntry,
        url: str,
        stream: StreamParser | None = None,
    ) -> object:
        state = self.host_state(entry)
        if not state.available():
            raise state.not_now()
        if result is not None:
            result.requests += 1
        get = get_json(
            self.session,
            state,
            url,
            Credentials.of(entry),
            max_bytes=self.config.max_response_bytes,
            accept_error_json=SOURCES[entry.remote_host_type].accepts_error_json,
            shared=self.shared,
            stream=stream,
        )
        return await request_json(state, get)

    def redactor(self, entry: FetchEntry) -> Callable[[str], str]:
        return Credentials.of(entry).redactor(self.host_state(entry).options)

    async def settle(self, result: MetricResult, n: int, outcome: Outcome) -> None:
        if self._settle_now(result, n, outcome):
            await self._flush(final=False)

    # --- finishing a metric ---------------------------------------------------------------

    def _settle_now(self, result: MetricResult, n: int, outcome: Outcome) -> bool:
        """Record one window's outcome; True when enough finished metrics wait for a push."""
        if isinstance(outcome, SourceError):
            # Its text may quote the remote (a shape error, Prometheus' own error), and a
            # remote may echo our headers: masked before anything (log, hole, Redis) sees it.
            entry = result.entry
            outcome = scrubbed(outcome, self.redactor(entry))
        result.raw[n] = outcome
        if len(result.raw) != len(result.windows):
            return False
        self._finish(result)
        if not result.items and result.holes is None:
            return False
        if self._outbox.add(result):
            return True
        if self._flush_timer is None and self.queue is not None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(FLUSH_DELAY, self._flush_soon)
        return False

    def _flush_soon(self) -> None:
        self._flush_timer = None
        if self._outbox:
            self.spawn(self._flush(final=False))

    def _finish(self, result: MetricResult) -> None:
        assert self._finisher is not None
        self._finisher.finish(
            result, SOURCES[result.entry.remote_host_type].split_step(result.entry)
        )
        if result.error is not None and self.on_error is not None:
            self.on_error(result)
        if not result.items and result.holes is None:  # else in flight until pushed
            self.in_flight.discard(result.metric)
        if self.on_done is not None:
            self.on_done(result, self.now)

    async def _flush(self, *, final: bool) -> None:
        """Push the finished metrics' items. If Redis fails mid-cycle they are kept for the
        final flush; if that fails too the error reaches the Fetcher (nothing is lost: the
        watermarks did not move, so the next cycle fetches the same points again)."""
        if not self._outbox or self.queue is None:
            return
        # Taken before awaiting: other fetch tasks keep finishing metrics while the push is in
        # flight, and those must wait for the next push, not be dropped.
        batch = self._outbox.take()
        pushed = False
        try:
            # The items and the holes they leave behind are written in one transaction.
            queued = await self.queue.push(batch.chains, holes=batch.holes)  # flushes overlap
            self._queued += queued
            pushed = True
            self.in_flight.difference_update(batch.metrics(self._outbox.owner))
        except REDIS_ERRORS:
            if final:
                raise
            logger.debug(
                "Redis unavailable mid-cycle; %d metrics wait for the final push",
                len(batch.chains) + len(self._outbox.chains),
            )
        finally:
            if not pushed:  # failed or cancelled: pushed again later (a queued metric is skipped)
                self._outbox.put_back(batch)
