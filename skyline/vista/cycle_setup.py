"""Setting up a fetch cycle, the same for the Fetcher thread and ``vista fetch --once``: read
what Redis holds of the metrics (watermarks, pending items, failed windows, the names templated
entries made), make each metric's MetricState of it, and build the FetchCycle."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from skyline.vista import expand
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.fetch_cycle import FetchCycle, MetricResult
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.holes import Hole
from skyline.vista.model import Watermark
from skyline.vista.schedule import MetricState
from skyline.vista.sources.http import HostState, SharedLimit


@dataclass
class Recorded:
    """What Redis holds of a cycle's metrics when it starts."""

    watermarks: dict[str, Watermark] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    holes: dict[str, tuple[Hole, ...]] = field(default_factory=dict)
    known: dict[str, dict[str, float]] = field(default_factory=dict)  # templated: names seen
    name_watermarks: dict[str, int] = field(default_factory=dict)  # of those names


async def read_recorded(
    queue: AsyncFetchQueue, entries: Sequence[FetchEntry], now: float
) -> Recorded:
    """Redis errors are the caller's."""
    names = [e.metric for e in entries]
    recorded = Recorded(
        dict(await queue.watermarks(names)), await queue.pending(names), await queue.holes(names)
    )
    await _read_expansions(queue, entries, now, recorded)
    return recorded


async def _read_expansions(
    queue: AsyncFetchQueue, entries: Sequence[FetchEntry], now: float, recorded: Recorded
) -> None:
    """Templated entries (expand.py): the names each made, and their watermarks. The entry's
    own watermark becomes the oldest of its recent names' (none while one of them was never
    delivered: its window is then the populate/default one), and the entry is pending while
    any of its names is."""
    templated = [e.metric for e in entries if e.name_template is not None]
    if not templated:
        return
    known = await expand.known(queue.client, templated)
    recent = {m: expand.recent(found, now) for m, found in known.items()}
    names = sorted({n for found in recent.values() for n in found})
    found_marks = await queue.watermarks(names)
    busy = await queue.pending(names)
    name_marks = {n: w.timestamp for n, w in found_marks.items()}
    marks = recorded.watermarks
    for metric, own in recent.items():
        start, _new = expand.entry_watermark(own, name_marks)
        marks.pop(metric, None)
        if start is not None:
            marks[metric] = Watermark(start)
        if any(n in busy for n in own):
            recorded.pending.add(metric)
    recorded.known, recorded.name_watermarks = known, name_marks


def metric_states(
    entries: Sequence[FetchEntry],
    recorded: Recorded,
    *,
    last_attempt: Mapping[str, float] | None = None,
    carried: set[str] | None = None,
    scan_from: Mapping[str, int] | None = None,
    busy: set[str] | None = None,
) -> dict[str, MetricState]:
    """What schedule.plan_metric needs to know of each metric (it alone decides): what Redis
    holds, and what the Fetcher remembers between cycles (``vista fetch --once`` has none)."""
    last_attempt, scan_from = last_attempt or {}, scan_from or {}
    carried, busy = carried or set(), busy or set()
    states = {}
    for entry in entries:
        metric = entry.metric
        mark = recorded.watermarks.get(metric)
        states[metric] = MetricState(
            watermark=mark.timestamp if mark is not None else None,
            last_attempt=last_attempt.get(metric),
            carried=metric in carried,
            pending=metric in recorded.pending,
            in_flight=metric in busy,
            scan_from=scan_from.get(metric),
            holes=recorded.holes.get(metric, ()),
        )
    return states


def new_cycle(
    config: VistaConfig,
    session: aiohttp.ClientSession,
    queue: AsyncFetchQueue | None,
    recorded: Recorded,
    *,
    hosts: dict[str, HostState] | None = None,
    clock: Callable[[], float] = time.time,
    on_error: Callable[[MetricResult], None] | None = None,
    shared: SharedLimit | None = None,
    on_done: Callable[[MetricResult, float], None] | None = None,
) -> FetchCycle:
    """The cycle over ``recorded`` (``queue`` None: a dry run, nothing is written)."""
    fetch = FetchCycle(
        config,
        session,
        hosts if hosts is not None else {},
        queue=queue,
        clock=clock,
        on_error=on_error,
        shared=shared,
        on_done=on_done,
    )
    fetch.expansion_known = {m: set(found) for m, found in recorded.known.items()}
    fetch.name_watermarks = recorded.name_watermarks
    return fetch
