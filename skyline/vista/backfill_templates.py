"""A templated entry's backfill window (one query, many metrics; see
:mod:`skyline.vista.backfill`): every series of the answer, named with the live fetcher's rules
(:mod:`skyline.vista.expand`), each name up to its own last timestamp; a window whose answer is
refused as too large is fetched in halves."""

from __future__ import annotations

import logging
from dataclasses import replace

import aiohttp

from skyline.vista import expand
from skyline.vista.backfill_fetch import Asked, ChunkFetcher, ChunkResult
from skyline.vista.backfill_plan import BackfillMetric, Chunk, TemplateScope, halves, windows
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.sinks import SinkPoint
from skyline.vista.sources import graphite, prometheus
from skyline.vista.validate import clean

logger = logging.getLogger("skyline.vista.backfill")
"""The job's logger: its lines read as the rest of the job's (and tests look for them there)."""


class TemplateFetcher:
    """The windows of one job's templated entries, asked through the job's ChunkFetcher."""

    def __init__(self, requests: ChunkFetcher, job_id: str) -> None:
        self.requests = requests
        self.job_id = job_id
        self._template_windows: dict[str, int] = {}
        """Templated entry -> steps per request that its answers needed (see _expand_window)."""

    async def fetch(
        self, session: aiohttp.ClientSession, chunk: Chunk, asked: Asked
    ) -> ChunkResult:
        (m,) = asked.metrics
        try:
            return await self._fetch_templated(session, chunk, m, asked.errors, asked.message)
        except SourceError as exc:
            return asked.failed(chunk, exc)

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
        entry = self.requests.entries[m.metric]
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
                    self.job_id,
                    m.metric,
                    first,
                    last,
                    self.requests.config.max_response_bytes,
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
            body = await self.requests.get(session, entry, url, at_once)
            return expand.expand_labelled(template, prometheus.parse_series(body))
        url = self.requests.render_url(entry, window, [entry.remote_target])
        body = await self.requests.get(session, entry, url, at_once)
        named = [(s.name, s.points) for s in graphite.parse_render(body)]
        return expand.expand_named(template, named)
