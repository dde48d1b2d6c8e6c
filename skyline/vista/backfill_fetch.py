"""One backfill chunk from its source (see :mod:`skyline.vista.backfill`): the requests,
retried with backoff within the host's request budget (shared with the live fetcher, which goes
first), and the points of a chunk of plain metrics, validated. A templated entry's window is
named in :mod:`skyline.vista.backfill_templates`."""

from __future__ import annotations

import asyncio
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import aiohttp
import msgspec
import redis.asyncio

from skyline.vista.backfill_plan import BackfillMetric, Chunk
from skyline.vista.backoff import Backoff
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.sinks import SinkPoint
from skyline.vista.sources import graphite, prometheus
from skyline.vista.sources.http import (
    Answer,
    Credentials,
    HostState,
    Redact,
    host_state_of,
    judge,
    scrubbed,
)
from skyline.vista.sources.http import fetch as fetch_answer
from skyline.vista.validate import clean

FETCH_ATTEMPTS = 4
"""Tries of one chunk's request before the chunk is counted as an error and skipped."""


class Stopped(Exception):
    """The job was told to stop (SIGTERM, cancel) while waiting to retry."""


@dataclass
class ChunkResult:
    chunk: Chunk
    entries: list[SinkPoint]
    """The points still to deliver."""
    errors: int
    message: str
    sent: int = 0
    """Points the fetch already handed to the sink, part by part (a templated entry's window
    fetched in parts: skyline/vista/backfill_templates.py), and of them the ones it rejected."""
    rejected: int = 0


@dataclass(frozen=True)
class Asked:
    """The metrics of a chunk still in the fetch list, and the errors of those no longer."""

    metrics: list[BackfillMetric]
    errors: int
    message: str

    def failed(self, chunk: Chunk, exc: SourceError) -> ChunkResult:
        """The chunk when its source did not answer: no point, every metric an error."""
        names = ", ".join(m.metric for m in self.metrics)
        return ChunkResult(chunk, [], self.errors + len(self.metrics), f"{names}: {exc}")


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


# --- asking -------------------------------------------------------------------------------------


class ChunkFetcher:
    """The requests of one job's run, and the chunks of plain (not templated) metrics."""

    def __init__(self, config: VistaConfig, should_stop: Callable[[], bool]) -> None:
        self.config = config
        self.should_stop = should_stop
        self.entries = {e.metric: e for e in config.fetch_metrics}
        self.hosts: dict[str, HostState] = {}
        self.budget_client: redis.asyncio.Redis | None = None

    def asked(self, chunk: Chunk) -> Asked:
        known = [m for m in chunk.metrics if m.metric in self.entries]
        missing = [m.metric for m in chunk.metrics if m.metric not in self.entries]
        message = f"no longer in the fetch list: {', '.join(missing)}" if missing else ""
        return Asked(known, len(missing), message)

    def templated(self, metrics: Sequence[BackfillMetric]) -> list[BackfillMetric]:
        """The templated entries among the chunk's metrics: the plan gives a templated entry's
        window a chunk of its own, but an entry that became templated after the job was added
        may sit in a batch of plain Graphite metrics."""
        return [m for m in metrics if self.entries[m.metric].name_template is not None]

    def _host(self, entry: FetchEntry) -> HostState:
        # The host's request budget, shared with the live fetcher, which goes first.
        return host_state_of(
            self.hosts, entry, self.config.host_options, self.budget_client, "history"
        )

    async def answer(
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

    async def get(
        self,
        session: aiohttp.ClientSession,
        entry: FetchEntry,
        url: str,
        at_once: frozenset[str] = frozenset(),
    ) -> object:
        answer, redact = await self.answer(session, entry, url, at_once)
        try:
            return judge(
                answer, accept_error_json=entry.remote_host_type == "prometheus", redact=redact
            )
        except SourceError as exc:
            raise scrubbed(exc, redact) from exc

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.should_stop():
                raise Stopped
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    async def fetch(
        self, session: aiohttp.ClientSession, chunk: Chunk, asked: Asked
    ) -> ChunkResult:
        """A chunk of plain metrics: one Prometheus series, or a Graphite batch."""
        known, errors, message = asked.metrics, asked.errors, asked.message
        raw: dict[str, list[Any]] = {}
        try:
            if known and known[0].source == "prometheus":
                (m,) = known
                entry = self.entries[m.metric]
                url = prometheus.query_range_url(
                    entry.remote_host, entry.remote_target, chunk.start, chunk.end, m.step
                )
                answer, redact = await self.answer(session, entry, url)
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
            return asked.failed(chunk, exc)
        entries: list[SinkPoint] = []
        for m in known:
            series = clean(
                raw.get(m.metric, ()), after=chunk.start - 1, before=min(chunk.end, m.until) + 1
            )
            entries += [SinkPoint(m.metric, ts, value) for ts, value in series.points]
        return ChunkResult(chunk, entries, errors, message)

    def render_url(self, first: FetchEntry, chunk: Chunk, targets: Sequence[str]) -> str:
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
        body = await self.get(session, first, self.render_url(first, chunk, targets))
        mapped = graphite.map_batch(graphite.parse_render(body), len(members), aliased=aliased)
        found: dict[str, list[tuple[object, object]]] = {}
        for n, m in enumerate(members):
            series = mapped.get(n)
            if isinstance(series, SourceError):
                raise series
            if series is not None:
                found[m.metric] = series.points
        return found
