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
which names are delivered and where each stops. A window refused as too large is fetched in
parts, each delivered as it answers in its chunk's turn (a chunk fetched ahead holds one part
until then: one part per chunk in flight, never a whole chunk); the chunk is checkpointed once
every part is delivered, so a stop between two parts sends that chunk's earlier parts again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from skyline.vista import redisconn
from skyline.vista.backfill_fetch import Asked, ChunkFetcher, ChunkResult, Stopped
from skyline.vista.backfill_plan import (
    GRAPHITE_POINTS,
    BackfillMetric,
    Chunk,
    backfill_metrics,
    plan,
    range_too_long,
    select_entries,
)
from skyline.vista.backfill_templates import TemplateFetcher
from skyline.vista.backoff import Backoff
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import CreateBudget
from skyline.vista.errors import VistaError
from skyline.vista.history import build_history_sink, history_path
from skyline.vista.jobs.context import JobContext
from skyline.vista.sinks import Sink, SinkPoint
from skyline.vista.sources.http import new_connector
from skyline.vista.validate import current_minute_start

logger = logging.getLogger(__name__)

KIND = "backfill"
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


# --- running ----------------------------------------------------------------------------------


class BackfillFailed(VistaError):
    """The job ran to its last chunk but some chunks failed (as a BigQuery job whose intervals
    failed: skyline/vista/bq/runner.py): it ends ``failed``, naming how many and the last error;
    the points of the chunks that succeeded were delivered."""


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
        self.fetcher = ChunkFetcher(config, ctx.should_stop)
        learned = ctx.record.checkpoint.get("windows", {})
        self.templates = TemplateFetcher(
            self.fetcher,
            ctx.record.id,
            self._deliver_part,
            {str(k): int(v) for k, v in learned.items()} if isinstance(learned, dict) else {},
        )
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
        self._turn = -1
        """The chunk whose parts may be delivered now (see _deliver_part)."""
        self._turns = asyncio.Condition()
        self._windows_saved = dict(self.templates.learned)
        # Carbon's create budget, shared with the workers, when history goes to a carbon.
        self.create_budget = (
            CreateBudget(ctx.client, config.carbon_max_creates_per_minute)
            if history_path(config).kind != "flux-fill"
            else None
        )

    async def fetch(self, session: aiohttp.ClientSession, chunk: Chunk) -> ChunkResult:
        """The chunk's points: a templated entry's window, delivered part by part as it is
        fetched (backfill_templates.py), and plain metrics (backfill_fetch.py), returned for
        delivery; the metrics no longer in the fetch list count as errors. A templated entry's
        part waits for its chunk's turn (_deliver_part): chunks are delivered in order."""
        asked = self.fetcher.asked(chunk)
        templated = self.fetcher.templated(asked.metrics)
        if not templated:
            return await self.fetcher.fetch(session, chunk, asked)
        plain = [m for m in asked.metrics if m not in templated]
        results = [await self.templates.fetch(session, chunk, m) for m in templated]
        if plain:  # a batch whose entry became templated after the job was added
            results.append(await self.fetcher.fetch(session, chunk, Asked(plain, 0, "")))
        said = [r.message for r in results if r.message]
        return ChunkResult(
            chunk,
            [e for r in results for e in r.entries],
            asked.errors + sum(r.errors for r in results),
            "; ".join([asked.message, *said] if asked.message else said),
            sum(r.sent for r in results),
            sum(r.rejected for r in results),
        )

    async def _deliver_part(self, chunk: Chunk, entries: list[SinkPoint]) -> int:
        """A part of a templated entry's window, delivered in its chunk's turn (see _run): a
        chunk fetched ahead holds one part until then."""
        async with self._turns:
            await self._turns.wait_for(lambda: self._turn >= chunk.index)
        return await asyncio.to_thread(self.deliver, entries)

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
                    raise Stopped
                time.sleep(0.05)

    def deliver(self, entries: list[SinkPoint]) -> int:
        """Hand the points to the history sink, retrying until it takes them; returns how many
        it rejected for good. Raises Stopped when told to stop while retrying."""
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
                    raise Stopped
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
            self.fetcher.budget_client = redisconn.connect_async(self.config.redis)
        try:
            await self._run(start, total, concurrency)
        finally:
            self._flush()  # what was delivered is recorded, however the run ends
            if self.fetcher.budget_client is not None:
                await self.fetcher.budget_client.aclose()
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
                    async with self._turns:  # the chunk's parts may now be delivered
                        self._turn = index
                        self._turns.notify_all()
                    result = await pending.pop(index)
                    rejected = result.rejected
                    if result.entries:
                        rejected += await asyncio.to_thread(self.deliver, result.entries)
                    self._checkpoint(result, rejected)
            except Stopped:
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
        points = len(result.entries) + result.sent - rejected
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
            and self.templates.learned == self._windows_saved
        ):
            return
        checkpoint: dict[str, Any] = {"next": self._next}
        if self.templates.learned:  # a resumed job starts with the windows its answers needed
            checkpoint["windows"] = dict(self.templates.learned)
        self._windows_saved = dict(self.templates.learned)
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
