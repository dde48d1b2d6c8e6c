"""A templated entry's backfill window (one query, many metrics; see
:mod:`skyline.vista.backfill`): every series of the answer, named with the live fetcher's rules
(:mod:`skyline.vista.expand`), each name up to its own last timestamp; a window whose answer is
refused as too large is fetched in halves, each part delivered as it answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import aiohttp

from skyline.vista import expand
from skyline.vista.backfill_fetch import ChunkFetcher, ChunkResult, Stopped
from skyline.vista.backfill_plan import BackfillMetric, Chunk, TemplateScope, halves, windows
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.sinks import SinkPoint
from skyline.vista.sources import graphite, prometheus
from skyline.vista.validate import clean

logger = logging.getLogger("skyline.vista.backfill")
"""The job's logger: its lines read as the rest of the job's (and tests look for them there)."""


Deliver = Callable[[Chunk, list[SinkPoint]], Awaitable[int]]
"""Hands a chunk's points to the job's history sink in the chunk's turn (Backfill.deliver);
returns how many it rejected."""


@dataclass
class _Sent:
    """What the parts of one window delivered so far, and the names withheld."""

    points: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)
    withheld: set[str] = field(default_factory=set)
    """Names with a problem (two series on one name) in a part: not delivered from then on."""


class TemplateFetcher:
    """The windows of one job's templated entries, asked through the job's ChunkFetcher and
    delivered part by part through ``deliver``."""

    def __init__(
        self,
        requests: ChunkFetcher,
        job_id: str,
        deliver: Deliver,
        learned: Mapping[str, int] | None = None,
    ) -> None:
        self.requests = requests
        self.job_id = job_id
        self.deliver = deliver
        self.learned: dict[str, int] = dict(learned or {})
        """Templated entry -> steps per request that its answers needed (see _fetch_window);
        kept in the job's checkpoint, so a resumed job starts with it."""

    async def fetch(
        self, session: aiohttp.ClientSession, chunk: Chunk, m: BackfillMetric
    ) -> ChunkResult:
        """A templated entry's window, delivered: every series of the answer, named by the
        template with the live fetcher's rules (skyline/vista/expand.py); each name up to its
        own last timestamp. A series the template cannot name, or two on one name, count as
        errors; a source that does not answer makes the entry an error."""
        entry = self.requests.entries[m.metric]
        scope = m.template
        if scope is None:  # the entry became templated after the job was added
            scope = TemplateScope(default_cap=m.until)
        sent = _Sent()
        errors, message = 0, ""
        try:
            await self._fetch_window(session, entry, chunk, m, scope, sent)
        except SourceError as exc:
            errors, message = 1, f"{m.metric}: {exc}"
        problems = sent.problems
        if problems:
            errors += len(problems)
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            said = f"{m.metric}: " + "; ".join(problems[:3]) + more
            message = f"{message}; {said}" if message else said
        return ChunkResult(chunk, [], errors, message, sent.points, sent.rejected)

    async def _fetch_window(
        self,
        session: aiohttp.ClientSession,
        entry: FetchEntry,
        chunk: Chunk,
        m: BackfillMetric,
        scope: TemplateScope,
        sent: _Sent,
    ) -> None:
        """Every series of the templated entry's answers for the chunk's window, named and
        delivered. The window was sized for the names known when the job was added; when the
        query returns more series and an answer is refused as too large
        (VISTA_MAX_RESPONSE_BYTES), that window is fetched in halves, again and again down to
        one step, and later chunks of the entry start at the smallest window that was needed.
        Each part is delivered as soon as it answers (in its chunk's turn: Backfill._deliver_part),
        so one part's points are held at a time, never the chunk's; the chunk is checkpointed
        (by the caller) once every part is delivered, so a job stopped (Stopped, between two
        parts) or killed sends that chunk's earlier parts again on resume, and the resumed job
        asks in the windows learned (kept in its checkpoint): the bound of
        skyline/vista/backfill.py, "only the chunk in flight can be sent again".

        A name with a problem in a part (two series on one name) is not delivered in that part
        nor in the later parts of the window; its earlier parts, where it named one series,
        were delivered already and stay so (as before, two parts naming different series for a
        name were never a problem: each part is judged as one answer)."""
        learned = self.learned.get(m.metric)
        todo = [(chunk.start, chunk.end)]
        if learned is not None:
            todo = windows(chunk.start, chunk.end, m.step, learned)
        while todo:
            if sent.points and self.requests.should_stop():
                raise Stopped  # the chunk is not checkpointed: its parts are sent again
            first, last = todo.pop(0)
            cut = halves(first, last, m.step)
            window = replace(chunk, start=first, end=last)
            try:
                part = await self._expand_answer(session, entry, window, m, cut is not None)
            except SourceError as exc:
                if exc.kind != "too_large" or cut is None:
                    raise
                steps = (cut[0][1] - cut[0][0]) // m.step + 1
                if steps < self.learned.get(m.metric, steps + 1):
                    self.learned[m.metric] = steps
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
            sent.withheld.update(part.about)
            found = part.problems_for(scope.wants) if scope.patterns else part.problems
            sent.problems += [p for p in found if p not in sent.problems]
            points = self._points(part, window, scope, sent.withheld)
            del part  # one part held at a time
            if points:
                sent.rejected += await self.deliver(chunk, points)
                sent.points += len(points)

    @staticmethod
    def _points(
        part: expand.Expansion, window: Chunk, scope: TemplateScope, withheld: set[str]
    ) -> list[SinkPoint]:
        """The part's points to deliver: the names the scope wants, each up to its own last
        timestamp, within the part's window; none of a withheld name."""
        points: list[SinkPoint] = []
        for name in sorted(part.series):
            if name in withheld or not scope.wants(name):
                continue
            last = min(window.end, scope.last(name))
            series = clean(part.series[name], after=window.start - 1, before=last + 1)
            points += [SinkPoint(name, ts, value) for ts, value in series.points]
        return points

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
