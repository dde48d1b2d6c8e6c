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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import aiohttp

from skyline.vista import codec, constants, expand, holes, request_budget
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.fetchqueue import AsyncFetchQueue, new_id
from skyline.vista.holes import Hole
from skyline.vista.model import DropCounts, Point, QueueItem
from skyline.vista.redisconn import REDIS_ERRORS
from skyline.vista.schedule import Limits, MetricState, Plan, Window, plan_metric, scanned_to
from skyline.vista.sources import HOST_LEVEL_ERRORS, graphite, prometheus
from skyline.vista.sources.http import Credentials, HostState, SharedLimit, get_json, scrubbed
from skyline.vista.sources.stream import Bounds, StreamParser
from skyline.vista.validate import clean, current_minute_start

logger = logging.getLogger(__name__)

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
    raw: dict[int, Outcome] = field(default_factory=dict)
    points: tuple[Point, ...] = ()
    dropped: DropCounts = field(default_factory=DropCounts)
    outside_window: int = 0  # points the source sent outside the asked windows (dropped)
    error: SourceError | None = None
    items: list[str] = field(default_factory=list)
    requests: int = 0
    skipped: str | None = None  # why it was not fetched: 'pending', 'host_backoff'
    done: bool = False
    scan_to: int | None = None  # empty history up to here (no late data can arrive)
    plan: Plan = field(default_factory=Plan)
    holes_before: tuple[Hole, ...] = ()
    holes: list[Hole] | None = None  # the metric's failed windows after this cycle (if changed)
    new_holes: list[Hole] = field(default_factory=list)  # failed this cycle, newer points went
    given_up: list[Hole] = field(default_factory=list)
    refilled: int = 0  # points fetched for failed windows (queued as replay items)
    # A templated entry (expand.py): its answer's names and their items, one chain each.
    seen: list[str] = field(default_factory=list)
    chains: list[tuple[str, list[str]]] = field(default_factory=list)
    held_new: list[str] = field(default_factory=list)  # new names kept for pre-populate

    @property
    def metric(self) -> str:
        return self.entry.metric


Outcome = list[tuple[object, object]] | SourceError | expand.Expansion
"""What one window's request gave: raw pairs, an error, or (templated entries) named series."""

NO_STATE = MetricState()


def states_of(
    entries: Sequence[FetchEntry],
    watermarks: Mapping[str, int],
    pending: set[str],
    scan_from: Mapping[str, int],
) -> dict[str, MetricState]:
    return {
        e.metric: MetricState(
            watermark=watermarks.get(e.metric),
            pending=e.metric in pending,
            scan_from=scan_from.get(e.metric),
        )
        for e in entries
    }


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
        # Templated entries (expand.py): the names each made before, and their watermarks.
        self.expansion_known: dict[str, set[str]] = {}
        self.name_watermarks: dict[str, int] = {}
        self._owner: dict[str, str] = {}  # expanded name -> its entry's metric (in_flight)
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
        self._hole_updates: dict[str, list[Hole]] = {}
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
        states: Mapping[str, MetricState],
        *,
        ignore_schedule: bool = True,
    ) -> list[MetricResult]:
        """The due metrics' results, with their windows (schedule.plan_metric decides)."""
        results = []
        for entry in entries:
            state = states.get(entry.metric, NO_STATE)
            plan = plan_metric(
                entry,
                self.now,
                state,
                self.limits,
                host_available=self.host_state(entry).available(),
                ignore_schedule=ignore_schedule,
            )
            if plan.skipped in ("not_due", "in_flight"):
                continue  # not part of this cycle
            result = MetricResult(
                entry, watermark=state.watermark, plan=plan, holes_before=state.holes
            )
            if plan.skipped:
                result.skipped = plan.skipped
                result.done = True
            else:
                result.windows = list(plan.windows)
            results.append(result)
        return results

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
        with fewer_gc_passes():
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

    async def _get(
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
        try:
            body = await get_json(
                self.session,
                state,
                url,
                Credentials.of(entry),
                max_bytes=self.config.max_response_bytes,
                accept_error_json=entry.remote_host_type == "prometheus",
                shared=self.shared,
                stream=stream,
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
        bounds = Bounds.of_window(window.start, window.end, entry.frequency)
        outcome: Outcome
        try:
            if entry.name_template is not None:
                # Every series of the answer, named by the template (decoded whole).
                body = await self._get(result, entry, url)
                series = prometheus.parse_series(body)
                outcome = expand.expand_labelled(entry.name_template, series)
                parsed = prometheus.Parsed([], 0, prometheus.warnings_of(body))
            else:
                body = await self._get(result, entry, url, prometheus.stream_parser(bounds))
                parsed = (
                    body if isinstance(body, prometheus.Parsed) else prometheus.parse(body, bounds)
                )
                result.outside_window += parsed.outside_window
                outcome = parsed.points
            if parsed.warnings:
                redact = Credentials.of(entry).redactor(self.host_state(entry).options)
                for warning in parsed.warnings:
                    logger.warning(
                        "%s %s: Prometheus warning: %s", entry.host, entry.metric, redact(warning)
                    )
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
                if entry.name_template is not None:  # alone: its series keep their names
                    self._spawn(self._graphite_expanded(key, result, n), [(result, n)])
                    continue
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
        window = key.window
        frequency = min(r.entry.frequency for r, _ in members)
        bounds = Bounds.of_window(window.start, window.end, frequency)
        try:
            body = await self._get(
                None,
                members[0][0].entry,
                url,
                graphite.stream_parser(bounds),
            )
            rendered = (
                body
                if isinstance(body, graphite.Rendered)
                else graphite.Rendered(graphite.parse_render_within(body, bounds))
            )
            mapped = graphite.map_batch(rendered.series, len(members), aliased=aliased)
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
                result.outside_window += found.outside_window
                await self._settle(result, n, found.points)

    async def _graphite_expanded(self, key: _GraphiteRequest, result: MetricResult, n: int) -> None:
        """A templated Graphite entry: every series of the answer, by its name's nodes."""
        entry = result.entry
        assert entry.name_template is not None
        outcome: Outcome
        try:
            body = await self._get(result, entry, key.url([entry.remote_target]))
            series = [(s.name, s.points) for s in graphite.parse_render(body)]
            outcome = expand.expand_named(entry.name_template, series)
        except SourceError as exc:
            outcome = exc
        await self._settle(result, n, outcome)

    # --- finishing a metric ---------------------------------------------------------------

    async def _settle(self, result: MetricResult, n: int, outcome: Outcome) -> None:
        if self._settle_now(result, n, outcome):
            await self._flush(final=False)

    def _settle_now(self, result: MetricResult, n: int, outcome: Outcome) -> bool:
        """Record one window's outcome; True when enough finished metrics wait for a push."""
        if isinstance(outcome, SourceError):
            # Its text may quote the remote (a shape error, Prometheus' own error), and a
            # remote may echo our headers: masked before anything (log, hole, Redis) sees it.
            entry = result.entry
            outcome = scrubbed(
                outcome, Credentials.of(entry).redactor(self.host_state(entry).options)
            )
        result.raw[n] = outcome
        if len(result.raw) != len(result.windows):
            return False
        self._finish(result)
        if result.holes is not None:
            self._hole_updates[result.metric] = result.holes
        if not result.items and result.holes is None:
            return False
        if result.items and result.entry.name_template is not None:
            self._to_push += result.chains
            self._owner.update((name, result.metric) for name, _ in result.chains)
        elif result.items:
            self._to_push.append((result.metric, result.items))
        if len(self._to_push) >= 500:
            return True
        if self._flush_timer is None and self.queue is not None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(FLUSH_DELAY, self._flush_soon)
        return False

    def _flush_soon(self) -> None:
        self._flush_timer = None
        if self._to_push or self._hole_updates:
            self._spawn(self._flush(final=False))

    def _finish(self, result: MetricResult) -> None:
        """Merge the windows that answered, validate and chunk them into items.

        A window that failed before a window whose points are delivered becomes a hole
        (holes.py): the newer points are not held back, the hole is retried on later cycles.
        A window that failed after the last point delivered needs nothing: the next fetch
        starts at the watermark, before it. Retried holes' points go as replay items.
        """
        if result.entry.name_template is not None:
            self._finish_expanded(result)
            return
        plan = result.plan
        fresh = plan.fresh if plan.windows else len(result.windows)
        raw: list[tuple[object, object]] = []
        failed: list[tuple[Window, SourceError]] = []
        for n in range(fresh):
            outcome = result.raw[n]
            if isinstance(outcome, SourceError):
                failed.append((result.windows[n], outcome))
            else:
                assert not isinstance(outcome, expand.Expansion)
                raw += outcome
        before = (
            current_minute_start(self.now) if self.config.do_not_submit_current_minute else None
        )
        cleaned = clean(raw, after=result.watermark, before=before)
        result.points = cleaned.points
        result.dropped = cleaned.dropped
        result.dropped.outside_window += result.outside_window
        result.done = True
        if failed:
            result.error = failed[0][1]
        last = cleaned.points[-1][0] if cleaned.points else None
        for window, error in failed:
            if last is not None and window.end is not None and window.start is not None:
                if window.end < last:
                    result.new_holes.append(
                        holes.new_hole(
                            window.start,
                            window.end,
                            self.now,
                            error.kind,
                            str(error),
                            after=result.watermark,
                        )
                    )
        refill = self._retried(result, fresh, before)
        if not cleaned.points and not failed and fresh:
            result.scan_to = scanned_to(result.windows[:fresh], self.now)
        result.items = self._items(result, result.points)
        if refill:
            result.items += self._items(result, refill, replay=True, seq=len(result.items))
        if result.error is not None and self.on_error is not None:
            self.on_error(result)
        if not result.items and result.holes is None:  # else in flight until pushed
            self.in_flight.discard(result.metric)
        if self.on_done is not None:
            self.on_done(result, self.now)

    def _retried(self, result: MetricResult, fresh: int, before: int | None) -> tuple[Point, ...]:
        """Settle the holes retried this cycle; returns their points. Sets ``result.holes``
        when the metric's list of holes changes."""
        plan = result.plan
        outcome: dict[Hole, list[tuple[Window, Outcome]]] = {}
        for i, hole in enumerate(plan.retries):
            n = fresh + i
            outcome.setdefault(hole, []).append((result.windows[n], result.raw[n]))
        if not outcome and not result.new_holes:
            return ()
        kept = [h for h in result.holes_before if h not in outcome]
        step = result.entry.frequency if result.entry.remote_host_type == "prometheus" else 0
        found: dict[int, Point] = {}
        for hole, answers in outcome.items():
            raw: list[tuple[object, object]] = []
            for window, answer in answers:
                if not isinstance(answer, SourceError):
                    assert not isinstance(answer, expand.Expansion)
                    raw += answer
                    continue
                if result.error is None:
                    result.error = answer
                assert window.start is not None and window.end is not None
                part = replace(hole, start=window.start, end=window.end)
                for again in holes.failed_again(part, self.now, answer.kind, str(answer), step):
                    if holes.given_up(again):
                        result.given_up.append(again)
                    else:
                        kept.append(again)
            for ts, value in clean(raw, after=hole.after, before=before).points:
                found[ts] = (ts, value)
        result.holes = kept + result.new_holes
        points = tuple(found[ts] for ts in sorted(found))
        result.refilled = len(points)
        return points

    def _finish_expanded(self, result: MetricResult) -> None:
        """A templated entry: merge each name's windows, clean each against its own watermark
        and make one chain of items per name. A window that failed makes the entry's error and
        ends the merge there (no holes are kept for templated entries: the next cycle starts
        at the oldest watermark of its names, before the failed window). A name seen for the
        first time while the entry asks for pre-populating (and this window was not already
        the populate window) is held back: without a watermark, the next cycle fetches the
        populate window for it."""
        entry = result.entry
        merged: dict[str, list[tuple[object, object]]] = {}
        problems: list[str] = []
        for n in range(len(result.windows)):
            outcome = result.raw[n]
            if isinstance(outcome, SourceError):
                result.error = outcome
                break
            assert isinstance(outcome, expand.Expansion)
            for name, pairs in outcome.series.items():
                merged.setdefault(name, []).extend(pairs)
            problems += [p for p in outcome.problems if p not in problems]
        if problems and result.error is None:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            result.error = SourceError("expansion", "; ".join(problems[:3]) + more)
        before = (
            current_minute_start(self.now) if self.config.do_not_submit_current_minute else None
        )
        known = self.expansion_known.get(entry.metric, set())
        populate_next = bool(entry.populate_seconds) and result.watermark is not None
        everything: list[Point] = []
        for name in sorted(merged):
            if all(value is None for _, value in merged[name]):
                continue  # Graphite lists a matching series even where it has no data yet
            result.seen.append(name)
            if populate_next and name not in known:
                result.held_new.append(name)
                continue
            cleaned = clean(merged[name], after=self.name_watermarks.get(name), before=before)
            result.dropped.add(cleaned.dropped)
            if cleaned.points:
                everything += cleaned.points
                result.chains.append((name, self._items(result, cleaned.points, metric=name)))
        result.points = tuple(everything)
        result.items = [item for _, items in result.chains for item in items]
        result.done = True
        if result.error is not None and self.on_error is not None:
            self.on_error(result)
        if not result.items:
            self.in_flight.discard(result.metric)
        if self.on_done is not None:
            self.on_done(result, self.now)

    def _items(
        self,
        result: MetricResult,
        points: tuple[Point, ...],
        *,
        replay: bool = False,
        seq: int = 0,
        metric: str | None = None,
    ) -> list[str]:
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
                    metric=metric or entry.metric,
                    source=entry.remote_host_type,
                    host=host,
                    target=entry.remote_target,
                    points=points[i : i + size],
                    fetched_at=self.now,
                    frequency=entry.frequency,
                    seq=seq + i // size,
                    replay=replay,
                )
            )
            for i in range(0, len(points), size)
        ]

    async def _flush(self, *, final: bool) -> None:
        """Push the finished metrics' items. If Redis fails mid-cycle they are kept for the
        final flush; if that fails too the error reaches the Fetcher (nothing is lost: the
        watermarks did not move, so the next cycle fetches the same points again)."""
        if not (self._to_push or self._hole_updates) or self.queue is None:
            return
        # Take the list before awaiting: other fetch tasks keep appending finished metrics
        # while the push is in flight, and those must wait for the next push, not be dropped.
        chains, self._to_push = self._to_push, []
        updates, self._hole_updates = self._hole_updates, {}
        pushed = False
        try:
            # The items and the holes they leave behind are written in one transaction.
            queued = await self.queue.push(chains, holes=updates)  # not `+=`: flushes overlap
            self._queued += queued
            pushed = True
            self.in_flight.difference_update(self._owner.get(m, m) for m, _ in chains)
            self.in_flight.difference_update(updates)
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
                self._hole_updates = {**updates, **self._hole_updates}
