"""History backfill jobs: ``vista backfill`` adds one, the agent runs it (:func:`run_job`).

A job walks its plan (see :mod:`skyline.vista.backfill_plan`) chunk by chunk, oldest window
first: fetch the chunk from the source (a few requests in flight, ``VISTA_BACKFILL_CONCURRENCY``),
validate the points (finite values, one per timestamp, never the open minute, within the
chunk's window), hand them to the history path (:mod:`skyline.vista.history`) and, once the sink
has taken them, checkpoint the next chunk with the progress in one write. Chunks are delivered
and checkpointed strictly in order, so a job killed at any moment resumes at the first chunk
not yet delivered: nothing is missing, and only the chunk in flight at the kill can be sent
again (whisper, behind carbon or Flux, keeps one value per metric and timestamp; Flux itself
forwards a resent ``fill`` point to carbon again: docs/skyline-compatibility.md).

History does not go through the live queue and never writes a watermark: the live fetcher and
workers are not slowed or disturbed by it, and no watermark ever moves backwards.

An entry with a name template (one query, many metrics) is one metric of the plan: each of its
windows asks for every series of the query and names them with the live fetcher's rules
(:mod:`skyline.vista.expand`); its :class:`~skyline.vista.backfill_plan.TemplateScope` says
which names are delivered and where each stops.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from typing import Any

import aiohttp
import msgspec
import redis.asyncio

from skyline.vista import expand, redisconn
from skyline.vista.backfill_plan import (
    GRAPHITE_POINTS,
    BackfillMetric,
    Chunk,
    TemplateScope,
    backfill_metrics,
    halves,
    plan,
    range_too_long,
    select_entries,
    windows,
)
from skyline.vista.backoff import Backoff
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import CreateBudget
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError, VistaError
from skyline.vista.history import build_history_sink, history_path
from skyline.vista.jobs.context import JobContext
from skyline.vista.sinks import Sink, SinkPoint
from skyline.vista.sources import graphite, prometheus
from skyline.vista.sources.http import (
    Answer,
    Credentials,
    HostState,
    Redact,
    host_state_of,
    judge,
    new_connector,
    scrubbed,
)
from skyline.vista.sources.http import fetch as fetch_answer
from skyline.vista.validate import clean, current_minute_start

logger = logging.getLogger(__name__)

KIND = "backfill"
FETCH_ATTEMPTS = 4
"""Tries of one chunk's request before the chunk is counted as an error and skipped."""
CHECKPOINT_EVERY = 0.5
"""Seconds between two checkpoint writes while chunks are delivered (see Backfill._checkpoint):
a job killed at any moment sends again at most the chunks of that last half second."""

_RELATIVE = re.compile(r"^-(\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?|w|weeks?)$")
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- parameters ---------------------------------------------------------------------------------


def parse_time(text: str, now: float) -> int:
    """Epoch seconds from 'now', '-30d' / '-2h' / '-90m', an epoch, or ISO 8601 (UTC unless
    it says otherwise). ValueError when none of those."""
    text = text.strip()
    if text == "now":
        return int(now)
    match = _RELATIVE.match(text)
    if match:
        return int(now) - int(match.group(1)) * _UNITS[match.group(2)[0]]
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use now, -30d, -12h, an epoch or 2026-01-31T00:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())


def parse_duration(text: str) -> int:
    """Seconds from '60', '60s', '5m', '1h', '1d'."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a resolution: use e.g. 60, 60s, 5m, 1h")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class BackfillRequest:
    """What ``vista backfill`` asks for, before it is resolved against the fetch list."""

    metrics: tuple[str, ...] = ()
    match: str | None = None
    all_: bool = False
    start: int = 0
    until: int = 0
    resolution: int | None = None


@dataclass(frozen=True)
class BackfillParams:
    """A job's parameters (JSON in the record; no secret)."""

    metrics: tuple[BackfillMetric, ...]
    start: int
    until: int
    resolution: int | None
    asked: str  # what the user asked for, for `vista jobs`
    graphite_batch: int = 20
    """Graphite targets per render request, fixed when the job is added: the plan (and so the
    meaning of the checkpoint) must not change if the settings do."""

    def as_json(self) -> dict[str, Any]:
        return {
            "metrics": [m.as_json() for m in self.metrics],
            "from": self.start,
            "until": self.until,
            "resolution": self.resolution,
            "metric": self.asked,
            "graphite_batch": self.graphite_batch,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BackfillParams:
        return cls(
            metrics=tuple(BackfillMetric.from_json(m) for m in raw["metrics"]),
            start=int(raw["from"]),
            until=int(raw["until"]),
            resolution=raw.get("resolution"),
            asked=str(raw.get("metric", "")),
            graphite_batch=int(raw.get("graphite_batch", 20)),
        )


def resolve(
    config: VistaConfig,
    request: BackfillRequest,
    watermarks: dict[str, int],
    now: float,
    expanded: Mapping[str, Sequence[str]] | None = None,
) -> BackfillParams | str:
    """The job's parameters, or why there is nothing to do. ``expanded``: each templated
    entry's names made so far (``vista.expanded.<entry>``), whose watermarks are in
    ``watermarks`` too."""
    selection = select_entries(
        config.fetch_metrics,
        metrics=request.metrics,
        match=request.match,
        all_=request.all_,
        expanded=expanded,
    )
    if selection.unknown:
        return (
            f"not in VISTA_FETCH_METRICS (nor a name a template has made): "
            f"{', '.join(selection.unknown)}"
        )
    entries = selection.entries
    if not entries:
        return "no metric matches"
    until = request.until
    if config.do_not_submit_current_minute:
        until = min(until, current_minute_start(now) - 1)  # never the open minute
    if request.start > until:
        shown = [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) for t in (request.start, until)]
        return f"--from ({shown[0]} UTC) is after --until ({shown[1]} UTC)"
    too_long = range_too_long(request.start, until, config.backfill_max_range)
    if too_long:
        return too_long
    metrics = backfill_metrics(
        entries,
        until,
        resolution=request.resolution,
        watermarks=watermarks,
        expanded=expanded,
        patterns=selection.patterns,
        max_bytes=config.max_response_bytes,
    )
    asked = request.match or ("--all" if request.all_ else " ".join(request.metrics))
    # A render answer of a full batch stays within VISTA_MAX_RESPONSE_BYTES (about 40 bytes
    # a point in graphite-web's JSON).
    fits = max(1, config.max_response_bytes // (GRAPHITE_POINTS * 40))
    batch = max(1, min(config.graphite_batch_size, fits))
    return BackfillParams(tuple(metrics), request.start, until, request.resolution, asked, batch)


def chunks_of(config: VistaConfig, params: BackfillParams) -> list[Chunk]:
    return plan(params.metrics, params.start, params.graphite_batch)


# --- the usual answer, quickly -------------------------------------------------------------------


class _MatrixSeries(msgspec.Struct):
    values: list[tuple[int, float]] = []


class _MatrixData(msgspec.Struct):
    resultType: str
    result: list[_MatrixSeries]


class _MatrixAnswer(msgspec.Struct):
    status: str
    data: _MatrixData


_MATRIX = msgspec.json.Decoder(_MatrixAnswer, strict=False)
"""Prometheus' query_range answer decoded straight into (int, float) pairs, in C (msgspec:
lax mode turns the "1.25" value strings into floats); 8 times less CPU than json.loads and a
conversion per point."""


def matrix_values(answer: Answer) -> list[tuple[int, float]] | None:
    """The (timestamp, value) pairs of a successful one-series matrix answer, or None for
    anything else (a warning, several series, a timestamp with a fraction, "+Inf", another
    shape), which then goes through the full parser and its error messages."""
    if answer.status != 200 or "json" not in answer.content_type:
        return None
    try:
        decoded = _MATRIX.decode(answer.body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    data = decoded.data
    if decoded.status != "success" or data.resultType != "matrix" or len(data.result) > 1:
        return None
    return data.result[0].values if data.result else []


def fast_points(
    metric: str, values: list[tuple[int, float]] | None, first: int, last: int
) -> list[SinkPoint] | None:
    """The points of a Prometheus matrix series as sink points, when they are what Prometheus
    sends (timestamps strictly increasing within [first, last], finite values); None as soon as
    one is not, and the caller then validates with ``clean``. History runs through here at
    hundreds of thousands of points a second, so every pass is a C-level ``map`` (a Python loop
    or a NamedTuple's ``__new__`` per point cost twice as much)."""
    if values is None:
        return None
    if not values:
        return []
    stamps = list(map(_FIRST, values))
    if stamps[0] < first or stamps[-1] > last or not all(map(operator.lt, stamps, stamps[1:])):
        return None
    if not all(map(math.isfinite, map(_SECOND, values))):
        return None
    return list(map(_NEW_TUPLE, repeat(SinkPoint), map(tuple.__add__, repeat((metric,)), values)))


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_NEW_TUPLE = tuple.__new__


# --- running ----------------------------------------------------------------------------------


class _Stopped(Exception):
    """The job was told to stop (SIGTERM, cancel) while waiting to retry."""


class BackfillFailed(VistaError):
    """The job ran to its last chunk but some chunks failed (as a BigQuery job whose intervals
    failed: skyline/vista/bq/runner.py): it ends ``failed``, naming how many and the last error;
    the points of the chunks that succeeded were delivered."""


@dataclass
class ChunkResult:
    chunk: Chunk
    entries: list[SinkPoint]
    errors: int
    message: str


class Backfill:
    """One job's run: fetch chunks a few at a time, deliver and checkpoint them in order."""

    def __init__(
        self,
        ctx: JobContext,
        params: BackfillParams,
        sink: Sink,
        *,
        clock: Callable[[], float] = time.time,
        on_chunk: Callable[[ChunkResult], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = config = ctx.config
        self.params = params
        self.sink = sink
        self.clock = clock
        self.on_chunk = on_chunk
        """Called after each chunk is delivered and checkpointed (benchmarks, tests)."""
        self.entries = {e.metric: e for e in config.fetch_metrics}
        self.hosts: dict[str, HostState] = {}
        self._template_windows: dict[str, int] = {}
        """Templated entry -> steps per request that its answers needed (see _expand_window)."""
        self.chunks = chunks_of(config, params)
        progress = ctx.current_progress
        self._next = int(ctx.record.checkpoint.get("next", 0))
        self._points, self._errors, self._message = (
            progress.points,
            progress.errors,
            progress.message,
        )
        self._failed = int(ctx.record.checkpoint.get("failed", 0))
        """Chunks with at least one metric that could not be fetched (kept in the checkpoint)."""
        self._last_error = str(ctx.record.checkpoint.get("last_error", ""))
        self._written = 0.0
        self.budget_client: redis.asyncio.Redis | None = None
        # Carbon's create budget, shared with the workers, when history goes to a carbon.
        self.create_budget = (
            CreateBudget(ctx.client, config.carbon_max_creates_per_minute)
            if history_path(config).kind != "flux-fill"
            else None
        )

    # --- fetching ---------------------------------------------------------------------------

    def _host(self, entry: FetchEntry) -> HostState:
        # The host's request budget, shared with the live fetcher, which goes first.
        return host_state_of(
            self.hosts, entry, self.config.host_options, self.budget_client, "history"
        )

    async def _answer(
        self,
        session: aiohttp.ClientSession,
        entry: FetchEntry,
        url: str,
        at_once: frozenset[str] = frozenset(),
    ) -> tuple[Answer, Redact]:
        """The source's answer to one request (a 200, or Prometheus' JSON error), retried with
        backoff on transient failures; raises SourceError (secrets masked) after the last try,
        or at the first for an error of a kind in ``at_once`` (the caller has a better way)."""
        state = self._host(entry)
        credentials = Credentials.of(entry)
        redact = credentials.redactor(state.options)
        prometheus_host = entry.remote_host_type == "prometheus"
        backoff = Backoff(base=1.0, cap=30.0)
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                answer = await fetch_answer(
                    session,
                    state,
                    url,
                    credentials,
                    max_bytes=self.config.max_response_bytes,
                    redact=redact,
                )
                if answer.status != 200:
                    judge(answer, accept_error_json=prometheus_host, redact=redact)
                return answer, redact
            except SourceError as exc:
                state.record_error(exc.kind)
                if attempt == FETCH_ATTEMPTS or exc.kind in at_once:
                    raise scrubbed(exc, redact) from exc
                delay = backoff.failure(at_least=exc.retry_after or 0.0)
                if exc.retry_after:
                    state.hold(exc.retry_after)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _get(
        self,
        session: aiohttp.ClientSession,
        entry: FetchEntry,
        url: str,
        at_once: frozenset[str] = frozenset(),
    ) -> object:
        answer, redact = await self._answer(session, entry, url, at_once)
        try:
            return judge(
                answer, accept_error_json=entry.remote_host_type == "prometheus", redact=redact
            )
        except SourceError as exc:
            raise scrubbed(exc, redact) from exc

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.ctx.should_stop():
                raise _Stopped
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def fetch(self, session: aiohttp.ClientSession, chunk: Chunk) -> ChunkResult:
        known = [m for m in chunk.metrics if m.metric in self.entries]
        missing = [m.metric for m in chunk.metrics if m.metric not in self.entries]
        errors = len(missing)
        message = f"no longer in the fetch list: {', '.join(missing)}" if missing else ""
        raw: dict[str, list[Any]] = {}
        try:
            if known and self.entries[known[0].metric].name_template is not None:
                (m,) = known
                return await self._fetch_templated(session, chunk, m, errors, message)
            if known and known[0].source == "prometheus":
                (m,) = known
                entry = self.entries[m.metric]
                url = prometheus.query_range_url(
                    entry.remote_host, entry.remote_target, chunk.start, chunk.end, m.step
                )
                answer, redact = await self._answer(session, entry, url)
                last = min(chunk.end, m.until)
                fast = fast_points(m.metric, matrix_values(answer), chunk.start, last)
                if fast is not None:
                    return ChunkResult(chunk, fast, errors, message)
                try:
                    body = judge(answer, accept_error_json=True, redact=redact)
                except SourceError as exc:
                    raise scrubbed(exc, redact) from exc
                raw[m.metric] = prometheus.parse_result(body)
            elif known:
                raw = await self._graphite(session, chunk, known)
        except SourceError as exc:
            names = ", ".join(m.metric for m in known)
            return ChunkResult(chunk, [], errors + len(known), f"{names}: {exc}")
        entries: list[SinkPoint] = []
        for m in known:
            series = clean(
                raw.get(m.metric, ()), after=chunk.start - 1, before=min(chunk.end, m.until) + 1
            )
            entries += [SinkPoint(m.metric, ts, value) for ts, value in series.points]
        return ChunkResult(chunk, entries, errors, message)

    async def _fetch_templated(
        self,
        session: aiohttp.ClientSession,
        chunk: Chunk,
        m: BackfillMetric,
        errors: int,
        message: str,
    ) -> ChunkResult:
        """A templated entry's window: every series of the answer, named by the template with
        the live fetcher's rules (skyline/vista/expand.py); each name up to its own last
        timestamp. A series the template cannot name, or two on one name, count as errors."""
        entry = self.entries[m.metric]
        template, scope = entry.name_template, m.template
        assert template is not None
        if scope is None:  # the entry became templated after the job was added
            scope = TemplateScope(default_cap=m.until)
        expansion = await self._expand_window(session, entry, chunk, m)
        points: list[SinkPoint] = []
        for name in sorted(expansion.series):
            if not scope.wants(name):
                continue
            last = min(chunk.end, scope.last(name))
            series = clean(expansion.series[name], after=chunk.start - 1, before=last + 1)
            points += [SinkPoint(name, ts, value) for ts, value in series.points]
        problems = expansion.problems_for(scope.wants) if scope.patterns else expansion.problems
        if problems:
            errors += len(problems)
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            said = f"{m.metric}: " + "; ".join(problems[:3]) + more
            message = f"{message}; {said}" if message else said
        return ChunkResult(chunk, points, errors, message)

    async def _expand_window(
        self, session: aiohttp.ClientSession, entry: FetchEntry, chunk: Chunk, m: BackfillMetric
    ) -> expand.Expansion:
        """Every series of the templated entry's answers for the chunk's window, named. The
        window was sized for the names known when the job was added; when the query returns
        more series and an answer is refused as too large (VISTA_MAX_RESPONSE_BYTES), that
        window is fetched in halves, again and again down to one step, and later chunks of the
        entry start at the smallest window that was needed. The chunk is still delivered and
        checkpointed as a whole, once every part has answered: the plan, and so the meaning of
        the checkpoint, does not change."""
        learned = self._template_windows.get(m.metric)
        todo = [(chunk.start, chunk.end)]
        if learned is not None:
            todo = windows(chunk.start, chunk.end, m.step, learned)
        merged = expand.Expansion()
        while todo:
            first, last = todo.pop(0)
            cut = halves(first, last, m.step)
            try:
                part = await self._expand_answer(
                    session, entry, replace(chunk, start=first, end=last), m, cut is not None
                )
            except SourceError as exc:
                if exc.kind != "too_large" or cut is None:
                    raise
                steps = (cut[0][1] - cut[0][0]) // m.step + 1
                if steps < self._template_windows.get(m.metric, steps + 1):
                    self._template_windows[m.metric] = steps
                logger.info(
                    "backfill %s: %s: the answer for %d..%d is too large "
                    "(VISTA_MAX_RESPONSE_BYTES = %d); fetched in halves of %d step(s)",
                    self.ctx.record.id,
                    m.metric,
                    first,
                    last,
                    self.config.max_response_bytes,
                    steps,
                )
                todo[:0] = list(cut)
                continue
            for name, pairs in part.series.items():
                merged.series.setdefault(name, []).extend(pairs)
            for name, problem in part.about.items():
                merged.about.setdefault(name, problem)
            merged.problems += [p for p in part.problems if p not in merged.problems]
        for name in merged.about:  # as one answer: a name with a problem is not delivered
            merged.series.pop(name, None)
        return merged

    async def _expand_answer(
        self,
        session: aiohttp.ClientSession,
        entry: FetchEntry,
        window: Chunk,
        m: BackfillMetric,
        divisible: bool,
    ) -> expand.Expansion:
        """One request of a templated entry, named; a window that can still be halved is not
        retried when its answer is too large (the caller halves it)."""
        template = entry.name_template
        assert template is not None
        at_once = frozenset({"too_large"}) if divisible else frozenset()
        if entry.remote_host_type == "prometheus":
            url = prometheus.query_range_url(
                entry.remote_host, entry.remote_target, window.start, window.end, m.step
            )
            body = await self._get(session, entry, url, at_once)
            return expand.expand_labelled(template, prometheus.parse_series(body))
        url = self._render_url(entry, window, [entry.remote_target])
        body = await self._get(session, entry, url, at_once)
        named = [(s.name, s.points) for s in graphite.parse_render(body)]
        return expand.expand_named(template, named)

    def _render_url(self, first: FetchEntry, chunk: Chunk, targets: Sequence[str]) -> str:
        params = tuple((k, v) for k, v in first.uri_params if k not in ("from", "until"))
        # graphite-web returns the points after `from` up to `until` included.
        return graphite.render_url(
            first.remote_host,
            first.uri_path,
            params,
            targets,
            from_=str(chunk.start - 1),
            until=str(chunk.end),
        )

    async def _graphite(
        self, session: aiohttp.ClientSession, chunk: Chunk, members: Sequence[BackfillMetric]
    ) -> dict[str, list[tuple[object, object]]]:
        first = self.entries[members[0].metric]
        aliased = len(members) > 1
        targets = [
            graphite.wrap_target(self.entries[m.metric].remote_target, n)
            if aliased
            else self.entries[m.metric].remote_target
            for n, m in enumerate(members)
        ]
        body = await self._get(session, first, self._render_url(first, chunk, targets))
        mapped = graphite.map_batch(graphite.parse_render(body), len(members), aliased=aliased)
        found: dict[str, list[tuple[object, object]]] = {}
        for n, m in enumerate(members):
            series = mapped.get(n)
            if isinstance(series, SourceError):
                raise series
            if series is not None:
                found[m.metric] = series.points
        return found

    # --- delivering -------------------------------------------------------------------------

    def _wait_for_creates(self, entries: list[SinkPoint]) -> None:
        """Carbon drops the points of a metric it may not create yet: wait until the shared
        create budget grants every new name of the chunk (names written before pass)."""
        if self.create_budget is None or not self.create_budget.enabled or not entries:
            return
        names = {e.metric for e in entries}
        while True:
            admission = self.create_budget.admit(names)
            if not admission.deferred:
                return
            names = set(admission.deferred)
            deadline = time.monotonic() + min(max(admission.wait, 0.05), 5.0)
            while time.monotonic() < deadline:
                if self.ctx.should_stop():
                    raise _Stopped
                time.sleep(0.05)

    def deliver(self, entries: list[SinkPoint]) -> int:
        """Hand the points to the history sink, retrying until it takes them; returns how many
        it rejected for good. Raises _Stopped when told to stop while retrying."""
        self._wait_for_creates(entries)
        backoff = Backoff(base=1.0, cap=30.0)
        rejected = 0
        while entries:
            result = self.sink.submit(entries, self.clock())
            rejected += len(result.rejected)
            entries = entries[result.handled :]
            if result.error is None:
                return rejected
            delay = backoff.failure()
            logger.warning("history sink failed (%s); retrying in %.1fs", result.error, delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self.ctx.should_stop():
                    raise _Stopped
                time.sleep(0.1)
        return rejected

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        start = int(self.ctx.record.checkpoint.get("next", 0))
        total = len(self.chunks)
        self.ctx.progress(total=total)
        if start >= total:
            return
        concurrency = max(1, self.config.backfill_concurrency)
        options = [self.config.default_host_options, *self.config.remote_hosts.values()]
        if any(o.requests_per_second for o in options):
            self.budget_client = redisconn.connect_async(self.config.redis)
        try:
            await self._run(start, total, concurrency)
        finally:
            self._flush()  # what was delivered is recorded, however the run ends
            if self.budget_client is not None:
                await self.budget_client.aclose()
        if self._next >= total and self._failed:
            raise BackfillFailed(
                f"{self._failed} of {total} chunk(s) failed, {self._points:,} point(s) "
                f"delivered; last error: {self._last_error}"[:500]
            )

    async def _run(self, start: int, total: int, concurrency: int) -> None:
        async with aiohttp.ClientSession(connector=new_connector()) as session:
            pending: dict[int, asyncio.Task[ChunkResult]] = {}
            following = start
            try:
                for index in range(start, total):
                    while following < total and following < index + concurrency:
                        chunk = self.chunks[following]
                        pending[following] = asyncio.create_task(self.fetch(session, chunk))
                        following += 1
                    if self.ctx.should_stop():
                        return
                    result = await pending.pop(index)
                    rejected = await asyncio.to_thread(self.deliver, result.entries)
                    self._checkpoint(result, rejected)
            except _Stopped:
                return
            finally:
                for task in pending.values():
                    task.cancel()
                await asyncio.gather(*pending.values(), return_exceptions=True)

    def _checkpoint(self, result: ChunkResult, rejected: int) -> None:
        """Count a delivered chunk; save the checkpoint and progress (one write) at most every
        CHECKPOINT_EVERY seconds, at once after an error, and always for the last chunk (and
        when the run ends: _flush). The job record carries the job's whole metric list, so a
        write per chunk cost more than the chunk itself with thousands of metrics."""
        chunk = result.chunk
        points = len(result.entries) - rejected
        self._next = chunk.index + 1
        self._points += points
        self._errors += result.errors + rejected
        if result.errors:
            self._failed += 1
            self._last_error = result.message
        if result.message:
            self._message = result.message
            logger.warning(
                "backfill %s chunk %d: %s", self.ctx.record.id, chunk.index, result.message
            )
        now = time.monotonic()
        if result.message or rejected or self._next == len(self.chunks):
            self._flush()
        elif now - self._written >= CHECKPOINT_EVERY:
            self._flush()
        logger.info(
            "backfill %s: chunk %d/%d done (%d metric(s), %d..%d): %d point(s), %d in all",
            self.ctx.record.id,
            chunk.index + 1,
            len(self.chunks),
            len(chunk.metrics),
            chunk.start,
            chunk.end,
            points,
            self._points,
        )
        if self.on_chunk is not None:
            self.on_chunk(result)

    def _flush(self) -> None:
        if (
            self._next == self.ctx.current_progress.done
            and self._points == self.ctx.current_progress.points
            and self._errors == self.ctx.current_progress.errors
        ):
            return
        checkpoint: dict[str, Any] = {"next": self._next}
        if self._failed:
            checkpoint |= {"failed": self._failed, "last_error": self._last_error[:300]}
        self.ctx.checkpoint(
            checkpoint,
            done=self._next,
            points=self._points,
            errors=self._errors,
            message=self._message,
        )
        self._written = time.monotonic()


def run_job(ctx: JobContext) -> None:
    """The entry point of the 'backfill' job kind (see skyline/vista/jobs/registry.py)."""
    params = BackfillParams.from_json(ctx.params)
    sink = build_history_sink(ctx.config)
    logger.info(
        "backfill %s: %d metric(s) from %d to %d; history %s",
        ctx.record.id,
        len(params.metrics),
        params.start,
        params.until,
        history_path(ctx.config).description,
    )
    try:
        asyncio.run(Backfill(ctx, params, sink).run())
    finally:
        sink.close()
