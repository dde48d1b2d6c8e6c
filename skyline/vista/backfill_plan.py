"""Planning a history backfill: which metrics, which windows, in which order. Pure.

A backfill job's parameters hold the metrics (resolved from ``METRIC``, ``--match`` or
``--all`` against the fetch list when the job is added), each with its step and the last
timestamp it wants. The plan is a function of those parameters alone, so a resumed job (another
process, a restarted agent, reloaded settings) walks exactly the same chunks, and its
checkpoint — the index of the next chunk — stays meaningful.

* Windows are aligned on each metric's step and cut so that a request stays within the source's
  limits: Prometheus answers at most 11,000 points per series (``query_range``), so a window holds
  at most :data:`PROMETHEUS_POINTS` steps; a Graphite window holds at most
  :data:`GRAPHITE_POINTS` steps, and Graphite metrics of one host and step share one render
  request per window (up to ``VISTA_GRAPHITE_BATCH_SIZE`` targets).
* Chunks run **oldest window first**: every metric's first window, then the second ones, ...,
  so an interrupted backfill leaves a contiguous, older-first history behind it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from skyline.vista.constants import PROMETHEUS_MAX_POINTS
from skyline.vista.entries import FetchEntry

PROMETHEUS_POINTS = PROMETHEUS_MAX_POINTS
"""Steps per Prometheus request: the most query_range answers for one series."""
GRAPHITE_POINTS = 10_080
"""Steps per Graphite render request (a week at 60 s). graphite-web answers a window at the
resolution of the finest archive that covers its start; a week keeps each answer small."""


@dataclass(frozen=True)
class TemplateScope:
    """The part of a backfill that belongs to an entry with a name template (one query, many
    metrics: skyline/vista/expand.py). Each window's answer is expanded into names; a name is
    delivered when it matches ``patterns`` (none: every name), up to its own last timestamp:
    its watermark when the job was added (``caps``), and for a name not delivered yet
    ``default_cap`` (the oldest of those watermarks, or --until when there is none)."""

    caps: Mapping[str, int] = field(default_factory=dict)
    default_cap: int = 0
    patterns: tuple[str, ...] = ()
    window_points: int = 0
    """Steps per request (0: the source's own bound): an answer holds every series of the
    query, so the window is cut for the names known when the job was added to fit within
    VISTA_MAX_RESPONSE_BYTES (see :func:`template_window`)."""

    def wants(self, name: str) -> bool:
        return not self.patterns or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def last(self, name: str) -> int:
        return self.caps.get(name, self.default_cap)

    def known(self) -> list[str]:
        """The names known when the job was added that the backfill delivers."""
        return sorted(n for n in self.caps if self.wants(n))

    def as_json(self) -> dict[str, Any]:
        return {
            "caps": dict(self.caps),
            "default": self.default_cap,
            "patterns": self.patterns,
            "window": self.window_points,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TemplateScope:
        caps = {str(k): int(v) for k, v in dict(raw.get("caps", {})).items()}
        patterns = tuple(str(p) for p in raw.get("patterns", ()))
        return cls(caps, int(raw.get("default", 0)), patterns, int(raw.get("window", 0)))


@dataclass(frozen=True)
class BackfillMetric:
    """One metric of a backfill: its name, source type, host (for batching), step, and the
    last timestamp it wants (the older of --until and its watermark when the job was added:
    what is newer is the live fetcher's). A templated entry has a ``template`` scope; its
    ``until`` is then the newest any of its names wants."""

    metric: str
    source: str  # 'prometheus' | 'graphite'
    remote_host: str
    step: int
    until: int
    template: TemplateScope | None = None

    def as_json(self) -> list[Any]:
        found: list[Any] = [self.metric, self.source, self.remote_host, self.step, self.until]
        if self.template is not None:
            found.append(self.template.as_json())
        return found

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> BackfillMetric:
        metric, source, remote_host, step, until = raw[:5]
        template = TemplateScope.from_json(raw[5]) if len(raw) > 5 else None
        return cls(str(metric), str(source), str(remote_host), int(step), int(until), template)


@dataclass(frozen=True)
class Chunk:
    """One unit of a backfill: one request (a window of one Prometheus series, or of a batch
    of Graphite series of one host), delivered and checkpointed as a whole."""

    index: int
    start: int  # first timestamp wanted (inclusive, step-aligned)
    end: int  # last timestamp wanted (inclusive)
    metrics: tuple[BackfillMetric, ...]

    def expected_points(self) -> int:
        """Points in the window if the source has every step."""
        total = 0
        for m in self.metrics:
            last = min(self.end, m.until)
            if last >= self.start:
                # A templated entry: as many series as the names known when the job was added.
                series = max(1, len(m.template.known())) if m.template is not None else 1
                total += ((last - self.start) // m.step + 1) * series
        return total


@dataclass(frozen=True)
class Selection:
    """What a backfill covers: the entries, the names asked for that are nowhere, and for a
    templated entry chosen by some of its names (not as a whole) the names or globs that
    choose which of its series are delivered."""

    entries: list[FetchEntry]
    unknown: list[str]
    patterns: dict[str, tuple[str, ...]]


def select_entries(
    entries: Sequence[FetchEntry],
    *,
    metrics: Sequence[str] = (),
    match: str | None = None,
    all_: bool = False,
    expanded: Mapping[str, Iterable[str]] | None = None,
) -> Selection:
    """The entries a backfill covers. ``METRIC`` or ``--match`` naming an entry (for a
    templated one, its template, e.g. ``nodes.{instance}.load1``) takes the whole entry, every
    series of its answer. A templated entry is also chosen by the names it has made so far
    (``expanded``: entry -> names, those ``vista status`` lists): then only the series whose
    name is one asked for, or matches the glob (a series new in history too), are delivered."""
    made = {m: list(names) for m, names in (expanded or {}).items()}
    if all_:
        return Selection(list(entries), [], {})
    by_name = {e.metric: e for e in entries}
    whole: dict[str, FetchEntry] = {}
    parts: dict[str, list[str]] = {}
    unknown = []

    def part(entry: FetchEntry, pattern: str) -> None:
        found = parts.setdefault(entry.metric, [])
        if pattern not in found:
            found.append(pattern)

    for name in metrics:
        owners = [
            e for e in entries if e.name_template is not None and name in made.get(e.metric, ())
        ]
        if name in by_name:
            whole[name] = by_name[name]
        elif owners:
            for entry in owners:
                part(entry, name)
        else:
            unknown.append(name)
    if match:
        for entry in entries:
            if fnmatch.fnmatchcase(entry.metric, match):
                whole.setdefault(entry.metric, entry)
            elif entry.name_template is not None and any(
                fnmatch.fnmatchcase(n, match) for n in made.get(entry.metric, ())
            ):
                part(entry, match)
    chosen = [e for e in entries if e.metric in whole or e.metric in parts]
    patterns = {m: tuple(p) for m, p in parts.items() if m not in whole}
    return Selection(chosen, unknown, patterns)


def backfill_metrics(
    entries: Iterable[FetchEntry],
    until: int,
    *,
    resolution: int | None = None,
    watermarks: Mapping[str, int] | None = None,
    expanded: Mapping[str, Iterable[str]] | None = None,
    patterns: Mapping[str, tuple[str, ...]] | None = None,
    max_bytes: int = 16 * 1024 * 1024,
) -> list[BackfillMetric]:
    """Each entry as a backfill metric: its step (``resolution`` or the entry's frequency) and
    its last timestamp (``until``, or its watermark when older). A templated entry's names
    (``expanded``) each stop at their own watermark (see :class:`TemplateScope`)."""
    marks = watermarks or {}
    found = []
    for e in entries:
        last = until if e.metric not in marks else min(until, marks[e.metric])
        template = None
        if e.name_template is not None:
            names = list((expanded or {}).get(e.metric, ()))
            template = replace(
                template_scope(names, until, marks, (patterns or {}).get(e.metric, ())),
                window_points=template_window(e.remote_host_type, len(names), max_bytes),
            )
            wanted = [template.last(n) for n in template.known()]
            last = max([*wanted, template.default_cap])
        found.append(
            BackfillMetric(
                e.metric,
                e.remote_host_type,
                e.remote_host,
                resolution or e.frequency,
                last,
                template,
            )
        )
    return found


BYTES_PER_POINT = 40
"""A point in a JSON answer, with room to spare (Prometheus ``[1700000000,"1.25"],`` and
graphite-web ``[1.25, 1700000000],`` are about 22 bytes)."""


def template_window(source: str, series: int, max_bytes: int) -> int:
    """Steps per request of a templated entry whose query returns ``series`` series (the
    names it has made; at least 1): its answer must stay within ``max_bytes``."""
    bound = PROMETHEUS_POINTS if source == "prometheus" else GRAPHITE_POINTS
    return max(1, min(bound, max_bytes // (BYTES_PER_POINT * max(1, series))))


def template_scope(
    names: Iterable[str], until: int, watermarks: Mapping[str, int], patterns: tuple[str, ...]
) -> TemplateScope:
    """Each known name stops at its watermark (newer points are the live fetcher's); a name
    not delivered yet, or new in history, at the oldest of them (or ``until``)."""
    names = list(names)
    marked = [min(until, watermarks[n]) for n in names if n in watermarks]
    default = min([*marked, until])
    caps = {n: min(until, watermarks[n]) if n in watermarks else default for n in names}
    return TemplateScope(caps, default, patterns)


def windows(start: int, until: int, step: int, points: int) -> list[tuple[int, int]]:
    """Step-aligned windows [first, last] covering start..until, at most ``points`` steps each."""
    first = -(-start // step) * step  # the first multiple of step at or after start
    end = until // step * step
    found = []
    while first <= end:
        last = min(first + (points - 1) * step, end)
        found.append((first, last))
        first = last + step
    return found


def halves(first: int, last: int, step: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The step-aligned window ``first..last`` cut in two (the older half holds the odd step),
    or None when it holds a single step. A templated entry's window whose answer is refused as
    too large is fetched in halves (skyline/vista/backfill_templates.py)."""
    steps = (last - first) // step + 1
    if steps <= 1:
        return None
    middle = first + ((steps + 1) // 2 - 1) * step
    return (first, middle), (middle + step, last)


def plan(metrics: Sequence[BackfillMetric], start: int, graphite_batch: int) -> list[Chunk]:
    """Every chunk of the backfill, oldest window first (then in the order of ``metrics``)."""
    order = {m.metric: n for n, m in enumerate(metrics)}
    keyed: list[tuple[int, int, int, tuple[BackfillMetric, ...]]] = []
    for m in metrics:
        if m.source == "prometheus":
            points = (m.template.window_points if m.template else 0) or PROMETHEUS_POINTS
            for first, last in windows(start, m.until, m.step, points):
                keyed.append((first, order[m.metric], last, (m,)))
    groups: dict[tuple[str, int], list[BackfillMetric]] = {}
    for m in metrics:
        if m.source == "graphite" and m.template is not None:
            # A templated entry goes alone: its series keep their names (no alias()).
            points = m.template.window_points or GRAPHITE_POINTS
            for first, last in windows(start, m.until, m.step, points):
                keyed.append((first, order[m.metric], last, (m,)))
        elif m.source == "graphite":
            groups.setdefault((m.remote_host, m.step), []).append(m)
    size = max(1, graphite_batch)
    for (_, step), members in groups.items():
        newest = max(m.until for m in members)
        for first, last in windows(start, newest, step, GRAPHITE_POINTS):
            wanted = [m for m in members if m.until >= first]
            for n in range(0, len(wanted), size):
                batch = tuple(wanted[n : n + size])
                keyed.append((first, order[batch[0].metric], last, batch))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [Chunk(index, first, last, batch) for index, (first, _, last, batch) in enumerate(keyed)]


MAX_RANGE_SETTING = "VISTA_BACKFILL_MAX_RANGE"


def range_too_long(start: int, until: int, bound: int) -> str | None:
    """Why the range ``start``..``until`` (epochs) is refused, or None when it is within
    ``bound`` seconds (``VISTA_BACKFILL_MAX_RANGE``; 0: no bound). A typo such as
    ``--from -100000d`` would otherwise plan tens of thousands of requests per metric."""
    if bound <= 0 or until - start <= bound:
        return None
    shown = [time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in (start, until)]
    return (
        f"the range {shown[0]}..{shown[1]} UTC spans {(until - start) / 86400:,.1f} days, more "
        f"than {MAX_RANGE_SETTING} ({bound / 86400:,.1f} days = {bound} s): ask for a shorter "
        f"range, or raise {MAX_RANGE_SETTING} in the settings (seconds; 0: no bound)"
    )
