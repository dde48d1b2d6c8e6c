"""One fetch cycle: plan the due metrics' windows, fetch them concurrently, turn each metric's
answer into queue items. I/O is limited to the HTTP session and the (optional) queue.

Used by the Fetcher thread for every cycle and by ``vista fetch --once`` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from skyline.vista import codec, constants, request_budget
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.fetchqueue import AsyncFetchQueue, new_id
from skyline.vista.model import DropCounts, Point, QueueItem
from skyline.vista.redisconn import REDIS_ERRORS
from skyline.vista.schedule import Limits, Window, windows_for
from skyline.vista.sources import HOST_LEVEL_ERRORS, graphite, prometheus
from skyline.vista.sources.http import Credentials, HostState, SharedLimit, get_json
from skyline.vista.validate import clean, current_minute_start

logger = logging.getLogger(__name__)

EMPTY_SCAN_HORIZON = 3600
"""A window that ended this long ago and held nothing will not fill later: skip past it."""

FLUSH_DELAY = 0.2
"""Finished metrics are pushed to the queue within this many seconds, together with whatever
else finished meanwhile: a slow host must not hold back the others' points until the cycle ends."""


@contextlib.contextmanager
def fewer_gc_passes(gen0: int = constants.GC_GEN0_THRESHOLD) -> Iterator[None]:
    """Raise the GC's first threshold to ``gen0`` for the block (never lower it), then restore."""
    saved = gc.get_threshold()
    if 0 < saved[0] < gen0:
        gc.set_threshold(gen0, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@dataclass
class MetricResult:
    """What happened to one metric in a cycle (printed by ``vista fetch --once``)."""

    entry: FetchEntry
    watermark: int | None = None
    windows: list[Window] = field(default_factory=list)
    raw: dict[int, list[tuple[object, object]] | SourceError] = field(default_factory=dict)
    points: tuple[Point, ...] = ()
    dropped: DropCounts = field(default_factory=DropCounts)
    error: SourceError | None = None
    items: list[str] = field(default_factory=list)
    requests: int = 0
    skipped: str | None = None  # why it was not fetched: 'pending', 'host_backoff'
    done: bool = False
    scan_to: int | None = None  # empty history up to here (no late data can arrive)

    @property
    def metric(self) -> str:
        return self.entry.metric


@dataclass
class CycleReport:
    started: float
    results: list[MetricResult]
    duration: float = 0.0
    unfinished: int = 0
    queued: int = 0
    hosts: dict[str, HostState] = field(default_factory=dict)

    @property
    def fetched(self) -> list[MetricResult]:
        return [r for r in self.results if r.items]

    @property
    def errors(self) -> list[MetricResult]:
        return [r for r in self.results if r.error is not None]


@dataclass(frozen=True)
class _GraphiteRequest:
    host: str
    url_base: str
    path: str
    params: tuple[tuple[str, str], ...]
    credentials: Credentials
    window: Window

    def url(self, targets: Sequence[str]) -> str:
        start = self.window.start
        from_ = str(start) if start is not None else dict(self.params).get("from", "-10minutes")
        until = str(self.window.end) if self.window.end is not None else None
        params = tuple((k, v) for k, v in self.params if k != "from")
        return graphite.render_url(
            self.url_base, self.path, params, targets, from_=from_, until=until
        )


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
        self._stopping = False
        self.limits = Limits(
            fetch_max_points=config.fetch_max_points,
            max_backfill=config.max_backfill,
            graphite_chunk_points=config.queue_item_max_points,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._members: dict[asyncio.Task[None], list[tuple[MetricResult, int]]] = {}
        self._idle = asyncio.Event()  # set when the last task has finished
        self._to_push: list[tuple[str, list[str]]] = []
        self._queued = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self.now = 0.0

    # --- planning -----------------------------------------------------------------------

    def host_state(self, entry: FetchEntry) -> HostState:
        """The state of the entry's exact remote_host: two remote_hosts on one server
        (``http://gw/proxy/a`` and ``http://gw/proxy/b``) have their own options, headers and
        credentials; only the connection pool is shared."""
        state = self.hosts.get(entry.remote_host)
        if state is None:
            options = self.config.host_options(entry.remote_host)
            state = HostState(entry.host, options)
            client = self.queue.client if self.queue is not None else None
            state.pacer = request_budget.pacer_for(entry.remote_host, options, client, "live")
            self.hosts[entry.remote_host] = state
        return state

    def plan(
        self,
        entries: Sequence[FetchEntry],
        watermarks: dict[str, int],
        pending: set[str],
        scan_from: dict[str, int],
    ) -> list[MetricResult]:
        results = []
        for entry in entries:
            result = MetricResult(entry, watermark=watermarks.get(entry.metric))
            if entry.metric in pending:
                result.skipped = "pending"
                result.done = True
            elif not self.host_state(entry).available():
                result.skipped = "host_backoff"
                result.done = True
            else:
                result.windows = windows_for(
                    entry, self.now, result.watermark, self.limits, scan_from.get(entry.metric)
                )
            results.append(result)
        return results

    # --- running ------------------------------------------------------------------------

    async def run(
        self,
        entries: Sequence[FetchEntry],
        watermarks: dict[str, int],
        pending: set[str],
        scan_from: dict[str, int] | None = None,
        deadline: float | None = None,
    ) -> CycleReport:
        with fewer_gc_passes():
            return await self._run(entries, watermarks, pending, scan_from or {}, deadline)

    async def _run(
        self,
        entries: Sequence[FetchEntry],
        watermarks: dict[str, int],
        pending: set[str],
        scan_from: dict[str, int],
        deadline: float | None,
    ) -> CycleReport:
        self.now = self.clock()
        started = time.monotonic()
        results = self.plan(entries, watermarks, pending, scan_from)
        self.in_flight = {r.metric for r in results if not r.done}
        for result in results:
            if result.done:
                continue
            if result.entry.remote_host_type == "prometheus":
                for n, window in enumerate(result.windows):
                    self._spawn(self._prometheus(result, n, window), [(result, n)])
        self._spawn_graphite([r for r in results if not r.done])
        await self._wait(deadline)
        self.in_flight = set()
        unfinished = sum(1 for r in results if not r.done)
        await self._flush(final=True)
        report = CycleReport(
            self.now, results, time.monotonic() - started, unfinished, self._queued
        )
        report.hosts = self.hosts
        return report

    def _spawn(self, coro: object, members: Sequence[tuple[MetricResult, int]] = ()) -> None:
        """Run a fetch task; ``members`` are the (metric, window) it answers for, settled with
        an 'internal' error if it fails unexpectedly (a bug must not leave them pending)."""
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        if members:
            self._members[task] = list(members)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A callback per task, not asyncio.wait() over all of them after each completion:
        # that costs O(tasks) per completion, O(n^2) for a cycle of 10,000 requests.
        self._tasks.discard(task)
        members = self._members.pop(task, [])
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            names = ", ".join(sorted({r.metric for r, _ in members})) or "-"
            logger.error("fetch task failed (%s)", names, exc_info=exc)
            error = SourceError("internal", f"internal error: {type(exc).__name__}: {exc}")
            for result, n in members:
                if n not in result.raw:
                    self._settle_now(result, n, error)
        if not self._tasks:
            self._idle.set()

    def stop(self) -> None:
        """End the cycle now, as at its deadline: what did not finish is cancelled and counted
        unfinished; what finished is still pushed."""
        self._stopping = True
        self._idle.set()

    async def _wait(self, deadline: float | None) -> None:
        timeout = deadline if deadline is not None else self.config.fetcher_max_runtime
        if self._tasks and timeout > 0 and not self._stopping:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass
        if self._flush_timer is not None:  # the final flush follows
            self._flush_timer.cancel()
            self._flush_timer = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _get(self, result: MetricResult | None, entry: FetchEntry, url: str) -> object:
        state = self.host_state(entry)
        if not state.available():
            raise state.not_now()
        if result is not None:
            result.requests += 1
        try:
            body = await get_json(
                self.session,
                state,
                url,
                Credentials.of(entry),
                max_bytes=self.config.max_response_bytes,
                accept_error_json=entry.remote_host_type == "prometheus",
                shared=self.shared,
            )
        except SourceError as exc:
            state.record_error(exc.kind)
            if exc.kind == "host_backoff":
                raise  # not sent: the host asked to wait while this request was queued
            if exc.kind in HOST_LEVEL_ERRORS:
                state.backoff.failure(at_least=exc.retry_after or 0.0)
                if exc.retry_after:
                    state.hold(exc.retry_after)
            raise
        state.backoff.success()
        return body

    async def _prometheus(self, result: MetricResult, n: int, window: Window) -> None:
        entry = result.entry
        if window.start is None:
            url = entry.remote_host + entry.request_uri
        else:
            assert window.end is not None
            url = prometheus.query_range_url(
                entry.remote_host, entry.remote_target, window.start, window.end, entry.frequency
            )
        try:
            body = await self._get(result, entry, url)
            for warning in prometheus.warnings_of(body):
                logger.warning("%s %s: Prometheus warning: %s", entry.host, entry.metric, warning)
            outcome: list[tuple[object, object]] | SourceError = prometheus.parse_result(body)
        except SourceError as exc:
            outcome = exc
        await self._settle(result, n, outcome)

    def _spawn_graphite(self, results: list[MetricResult]) -> None:
        groups: dict[_GraphiteRequest, list[tuple[MetricResult, int]]] = {}
        for result in results:
            entry = result.entry
            if entry.remote_host_type != "graphite":
                continue
            for n, window in enumerate(result.windows):
                key = _GraphiteRequest(
                    entry.host,
                    entry.remote_host,
                    entry.uri_path,
                    entry.uri_params,
                    Credentials.of(entry),
                    window,
                )
                groups.setdefault(key, []).append((result, n))
        size = self.config.graphite_batch_size
        for key, members in groups.items():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                self._spawn(self._graphite(key, chunk), chunk)

    async def _graphite(
        self, key: _GraphiteRequest, members: list[tuple[MetricResult, int]]
    ) -> None:
        aliased = len(members) > 1
        targets = [
            graphite.wrap_target(r.entry.remote_target, i) if aliased else r.entry.remote_target
            for i, (r, _) in enumerate(members)
        ]
        url = key.url(targets)
        for result, _ in members:
            result.requests += 1
        try:
            body = await self._get(None, members[0][0].entry, url)
            mapped = graphite.map_batch(graphite.parse_render(body), len(members), aliased=aliased)
        except SourceError as exc:
            if aliased and exc.kind not in HOST_LEVEL_ERRORS:
                # One bad target can fail a whole batch (an unknown function answers 400):
                # fetch each on its own so that the others are not held back by it.
                logger.debug(
                    "%s: batch of %d failed (%s); fetching singly", key.host, len(members), exc
                )
                for member in members:
                    self._spawn(self._graphite(key, [member]), [member])
                return
            for result, n in members:
                await self._settle(result, n, exc)
            return
        for i, (result, n) in enumerate(members):
            found = mapped.get(i)
            if found is None and aliased:
                # Absent from a batch answer: ask for it alone before concluding anything.
                self._spawn(self._graphite(key, [(result, n)]), [(result, n)])
            elif found is None:
                await self._settle(result, n, [])
            elif isinstance(found, SourceError):
                await self._settle(result, n, found)
            else:
                await self._settle(result, n, found.points)

    # --- finishing a metric ---------------------------------------------------------------

    async def _settle(
        self, result: MetricResult, n: int, outcome: list[tuple[object, object]] | SourceError
    ) -> None:
        if self._settle_now(result, n, outcome):
            await self._flush(final=False)

    def _settle_now(
        self, result: MetricResult, n: int, outcome: list[tuple[object, object]] | SourceError
    ) -> bool:
        """Record one window's outcome; True when enough finished metrics wait for a push."""
        result.raw[n] = outcome
        if len(result.raw) != len(result.windows):
            return False
        self._finish(result)
        if not result.items:
            return False
        self._to_push.append((result.metric, result.items))
        if len(self._to_push) >= 500:
            return True
        if self._flush_timer is None and self.queue is not None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(FLUSH_DELAY, self._flush_soon)
        return False

    def _flush_soon(self) -> None:
        self._flush_timer = None
        if self._to_push:
            self._spawn(self._flush(final=False))

    def _finish(self, result: MetricResult) -> None:
        """Merge the windows that answered, in order, up to the first that failed (points after
        a failed window would move the watermark past a hole), then validate and chunk."""
        raw: list[tuple[object, object]] = []
        for n in range(len(result.windows)):
            outcome = result.raw[n]
            if isinstance(outcome, SourceError):
                result.error = outcome
                break
            raw += outcome
        before = (
            current_minute_start(self.now) if self.config.do_not_submit_current_minute else None
        )
        cleaned = clean(raw, after=result.watermark, before=before)
        result.points = cleaned.points
        result.dropped = cleaned.dropped
        result.done = True
        if result.error is not None and self.on_error is not None:
            self.on_error(result)
        if not cleaned.points and result.error is None and result.windows:
            last = result.windows[-1]
            if last.end is not None and last.end < self.now - EMPTY_SCAN_HORIZON:
                result.scan_to = last.end
        result.items = self._items(result)
        if not result.items:  # else in flight until its items are pushed
            self.in_flight.discard(result.metric)
        if self.on_done is not None:
            self.on_done(result, self.now)

    def _items(self, result: MetricResult) -> list[str]:
        points = result.points
        if not points:
            return []
        entry = result.entry
        size = self.config.queue_item_max_points
        host = entry.host
        # QueueItem(...) rather than dataclasses.replace() of a template: a third cheaper, and
        # this runs for every metric of every cycle.
        return [
            codec.encode_item(
                QueueItem(
                    id=new_id(),
                    metric=entry.metric,
                    source=entry.remote_host_type,
                    host=host,
                    target=entry.remote_target,
                    points=points[i : i + size],
                    fetched_at=self.now,
                    frequency=entry.frequency,
                    seq=i // size,
                )
            )
            for i in range(0, len(points), size)
        ]

    async def _flush(self, *, final: bool) -> None:
        """Push the finished metrics' items. If Redis fails mid-cycle they are kept for the
        final flush; if that fails too the error reaches the Fetcher (nothing is lost: the
        watermarks did not move, so the next cycle fetches the same points again)."""
        if not self._to_push or self.queue is None:
            return
        # Take the list before awaiting: other fetch tasks keep appending finished metrics
        # while the push is in flight, and those must wait for the next push, not be dropped.
        chains, self._to_push = self._to_push, []
        pushed = False
        try:
            queued = await self.queue.push(chains)  # not `+= await`: flushes overlap
            self._queued += queued
            pushed = True
            self.in_flight.difference_update(metric for metric, _ in chains)
        except REDIS_ERRORS:
            if final:
                raise
            logger.debug(
                "Redis unavailable mid-cycle; %d metrics wait for the final push",
                len(chains) + len(self._to_push),
            )
        finally:
            if not pushed:  # failed or cancelled: pushed again later (a queued metric is skipped)
                self._to_push = chains + self._to_push
