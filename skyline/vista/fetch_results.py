"""What a fetch cycle makes of each metric's answers, without I/O.

:class:`MetricResult` is one metric's part of a cycle (its plan, its windows' raw outcomes, and
once finished its points, queue items and failed windows); :class:`CycleReport` is the cycle's.
:class:`Finisher` turns a metric's raw outcomes into points and items: merge, validate
(validate.py), failed windows kept as holes (holes.py), chunk into queue items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from skyline.vista import codec, expand, holes
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.holes import Hole
from skyline.vista.model import DropCounts, Point, QueueItem, new_id
from skyline.vista.schedule import Limits, MetricState, Plan, Window, plan_metric, scanned_to
from skyline.vista.sources.http import HostState
from skyline.vista.validate import clean, current_minute_start

Outcome = list[tuple[object, object]] | SourceError | expand.Expansion
"""What one window's request gave: raw pairs, an error, or (templated entries) named series."""


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


Member = tuple[MetricResult, int]
"""One window of a metric in a cycle: its result and the window's index."""

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


def plan_results(
    entries: Sequence[FetchEntry],
    states: Mapping[str, MetricState],
    now: float,
    limits: Limits,
    available: Mapping[str, bool],
    ignore_schedule: bool,
) -> list[MetricResult]:
    """The results of a cycle's metrics, with their windows (schedule.plan_metric decides;
    ``available``: whether each remote_host takes requests now)."""
    results = []
    for entry in entries:
        state = states.get(entry.metric, NO_STATE)
        plan = plan_metric(
            entry,
            now,
            state,
            limits,
            host_available=available[entry.remote_host],
            ignore_schedule=ignore_schedule,
        )
        if plan.skipped in ("not_due", "in_flight"):
            continue  # not part of this cycle
        result = MetricResult(entry, watermark=state.watermark, plan=plan, holes_before=state.holes)
        if plan.skipped:
            result.skipped = plan.skipped
            result.done = True
        else:
            result.windows = list(plan.windows)
        results.append(result)
    return results


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
class Finisher:
    """Finishes the metrics of one cycle started at ``now``.

    ``before``: points at or after it are the open minute (None: sent too); ``known`` and
    ``name_watermarks``: templated entries' names seen before, and those names' watermarks.
    """

    now: float
    before: int | None
    item_points: int
    known: Mapping[str, set[str]] = field(default_factory=dict)
    name_watermarks: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        config: VistaConfig,
        now: float,
        known: Mapping[str, set[str]],
        name_watermarks: Mapping[str, int],
    ) -> Finisher:
        """The finisher of a cycle of ``config`` started at ``now``."""
        before = current_minute_start(now) if config.do_not_submit_current_minute else None
        return cls(now, before, config.queue_item_max_points, known, name_watermarks)

    def finish(self, result: MetricResult, step: int) -> None:
        """Merge the windows that answered, validate and chunk them into items (``step``: what
        a failed window of this entry is split on, 0 for any second).

        A window that failed before a window whose points are delivered becomes a hole
        (holes.py): the newer points are not held back, the hole is retried on later cycles.
        A window that failed after the last point delivered needs nothing: the next fetch
        starts at the watermark, before it. Retried holes' points go as replay items.
        """
        if result.entry.name_template is not None:
            self._finish_expanded(result, step)
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
        cleaned = clean(raw, after=result.watermark, before=self.before)
        result.points = cleaned.points
        result.dropped = cleaned.dropped
        result.dropped["outside_window"] += result.outside_window
        result.done = True
        if failed:
            result.error = failed[0][1]
        self._new_holes(result, failed, cleaned.points[-1][0] if cleaned.points else None)
        refill = self._retried(result, fresh, step).get(None, ())
        if not cleaned.points and not failed and fresh:
            result.scan_to = scanned_to(result.windows[:fresh], self.now)
        result.items = self.items(result, result.points)
        if refill:
            result.items += self.items(result, refill, replay=True, seq=len(result.items))

    def _new_holes(
        self, result: MetricResult, failed: list[tuple[Window, SourceError]], last: int | None
    ) -> None:
        """The failed windows older than the newest point delivered become holes (with the
        watermarks of a templated entry's names, each refilled only past its own)."""
        names = None
        if result.entry.name_template is not None:
            marks = self.name_watermarks
            known = self.known.get(result.entry.metric, set())
            names = {n: marks[n] for n in known if n in marks}
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
                            names=names,
                        )
                    )

    def _retried(
        self, result: MetricResult, fresh: int, step: int
    ) -> dict[str | None, tuple[Point, ...]]:
        """Settle the holes retried this cycle; returns their points (by name for a templated
        entry, else under None). Sets ``result.holes`` when the metric's list of holes
        changes. A templated entry's name gets a hole's points only when its watermark is past
        the hole: a name still before it gets them from the entry's next windows, which start
        at the oldest watermark of its names. Each name's points are cleaned against its own
        watermark from when the hole was found (``Hole.after_for``), not the entry's oldest:
        replay items skip the watermark check, what a name had is not sent again."""
        plan = result.plan
        outcome: dict[Hole, list[tuple[Window, Outcome]]] = {}
        for i, hole in enumerate(plan.retries):
            n = fresh + i
            outcome.setdefault(hole, []).append((result.windows[n], result.raw[n]))
        if not outcome and not result.new_holes:
            return {}
        kept = [h for h in result.holes_before if h not in outcome]
        found: dict[str | None, dict[int, Point]] = {}
        for hole, answers in outcome.items():
            raw: dict[str | None, list[tuple[object, object]]] = {}
            for window, answer in answers:
                if not isinstance(answer, SourceError):
                    self._refill_pairs(answer, hole, raw)
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
            for key, pairs in raw.items():
                into = found.setdefault(key, {})
                after = hole.after_for(key)
                for ts, value in clean(pairs, after=after, before=self.before).points:
                    into[ts] = (ts, value)
        result.holes = kept + result.new_holes
        points = {key: tuple(by_ts[ts] for ts in sorted(by_ts)) for key, by_ts in found.items()}
        result.refilled = sum(len(p) for p in points.values())
        return points

    def _refill_pairs(
        self,
        answer: list[tuple[object, object]] | expand.Expansion,
        hole: Hole,
        into: dict[str | None, list[tuple[object, object]]],
    ) -> None:
        """A retried hole's answer, by name (a templated entry's names past the hole only)."""
        if not isinstance(answer, expand.Expansion):
            into.setdefault(None, []).extend(answer)
            return
        for name, pairs in answer.series.items():
            mark = self.name_watermarks.get(name)
            if mark is not None and mark >= hole.end:
                into.setdefault(name, []).extend(pairs)

    def _finish_expanded(self, result: MetricResult, step: int) -> None:
        """A templated entry: merge each name's windows, clean each against its own watermark
        and make one chain of items per name. A window that failed before a window whose
        points are delivered becomes a hole of the entry (holes.py), as a plain entry's: the
        newer points are not held back, the hole is retried on later cycles and its points go
        as replay items of each name past it (see :meth:`_retried`). A name seen for the
        first time while the entry asks for pre-populating (and this window was not already
        the populate window) is held back: without a watermark, the next cycle fetches the
        populate window for it."""
        entry = result.entry
        plan = result.plan
        fresh = plan.fresh if plan.windows else len(result.windows)
        merged: dict[str, list[tuple[object, object]]] = {}
        problems: list[str] = []
        failed: list[tuple[Window, SourceError]] = []
        for n in range(fresh):
            outcome = result.raw[n]
            if isinstance(outcome, SourceError):
                failed.append((result.windows[n], outcome))
                continue
            assert isinstance(outcome, expand.Expansion)
            for name, pairs in outcome.series.items():
                merged.setdefault(name, []).extend(pairs)
            problems += [p for p in outcome.problems if p not in problems]
        if failed:
            result.error = failed[0][1]
        elif problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            result.error = SourceError("expansion", "; ".join(problems[:3]) + more)
        known = self.known.get(entry.metric, set())
        populate_next = bool(entry.populate_seconds) and result.watermark is not None
        everything: list[Point] = []
        chains: dict[str, list[str]] = {}
        for name in sorted(merged):
            if all(value is None for _, value in merged[name]):
                continue  # Graphite lists a matching series even where it has no data yet
            result.seen.append(name)
            if populate_next and name not in known:
                result.held_new.append(name)
                continue
            cleaned = clean(merged[name], after=self.name_watermarks.get(name), before=self.before)
            result.dropped.update(cleaned.dropped)
            if cleaned.points:
                everything += cleaned.points
                chains[name] = self.items(result, cleaned.points, metric=name)
        result.dropped["outside_window"] += result.outside_window
        self._new_holes(result, failed, max((ts for ts, _ in everything), default=None))
        for owner, refill in self._retried(result, fresh, step).items():
            if owner is not None and refill:
                items = chains.setdefault(owner, [])
                items += self.items(result, refill, replay=True, seq=len(items), metric=owner)
        result.chains = [(name, chains[name]) for name in sorted(chains)]
        result.points = tuple(everything)
        result.items = [item for _, items in result.chains for item in items]
        result.done = True

    def items(
        self,
        result: MetricResult,
        points: tuple[Point, ...],
        *,
        replay: bool = False,
        seq: int = 0,
        metric: str | None = None,
    ) -> list[str]:
        """``points`` as encoded queue items of at most ``item_points`` points each."""
        if not points:
            return []
        entry = result.entry
        size = self.item_points
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
