"""Pure delivery logic for a worker's batch: which points to send, and what to acknowledge,
advance or give back once the sink has answered. No I/O and no clock (the caller passes
``now``): tested with tables. Its records (Ack, DeadLetter) and builders come from model.py.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

from skyline.vista import codec
from skyline.vista.errors import PayloadError
from skyline.vista.model import (
    Ack,
    DeadLetter,
    DropCounts,
    Point,
    QueueItem,
    Watermark,
    dead_letter,
    new_id,
)
from skyline.vista.sinks import SinkPoint, SinkResult
from skyline.vista.validate import clean, current_minute_start, detect_resolution

FUTURE_LIMIT = 60
"""Seconds ahead of the clock that a point may be (Flux refuses more). Further ahead, a point is
held back like the open minute: not sent, the watermark stays below it, a later cycle delivers
it. Sent, it would be rejected and move the watermark past the points that arrive meanwhile."""


@dataclass
class Planned:
    """One claimed item, validated: its points occupy sink_points[start:end] of the batch.

    ``acked``/``settled``/``delivered`` record what :func:`settle` has already acknowledged, so
    that a batch can be settled request by request: sink_points[start:acked] are acknowledged,
    and a settled item is acknowledged in full."""

    raw: str
    item: QueueItem
    points: tuple[Point, ...]
    dropped: DropCounts
    resolution: int | None
    start: int = 0
    end: int = 0
    acked: int = 0
    settled: bool = False
    delivered: int = 0


@dataclass
class Settlement:
    acks: list[Ack] = field(default_factory=list)
    release: list[str] = field(default_factory=list)  # raw items to give back untouched/partial
    delivered_points: int = 0
    rejected_points: int = 0
    delivered_items: int = 0
    dead_letters: int = 0


def plan_batch(
    items: Sequence[tuple[str, QueueItem]],
    watermarks: Mapping[str, Watermark],
    now: float,
    *,
    skip_current_minute: bool,
    progress: Mapping[str, int] | None = None,
) -> tuple[list[Planned], list[SinkPoint]]:
    """Validate each item against its metric's watermark and lay all points out in one list.

    A replay item ignores the watermark (its points are below it by design). ``progress``: the
    last timestamp a sink confirmed for an item (by its raw text) that an earlier delivery left
    partly done; its points up to there are dropped too (counted ``at_or_below_watermark``)."""
    before = current_minute_start(now) if skip_current_minute else int(now) + FUTURE_LIMIT + 1
    planned: list[Planned] = []
    sink_points: list[SinkPoint] = []
    for raw, item in items:
        mark = watermarks.get(item.metric)
        after = None if item.replay or mark is None else mark.timestamp
        done = progress.get(raw) if progress else None
        if done is not None:
            after = done if after is None else max(after, done)
        cleaned = clean(item.points, after=after, before=before)
        start = len(sink_points)
        metric = item.metric
        sink_points += [SinkPoint(metric, ts, value) for ts, value in cleaned.points]
        planned.append(
            Planned(
                raw=raw,
                item=item,
                points=cleaned.points,
                dropped=cleaned.dropped,
                # A single point has no step to detect: the metric's configured frequency keeps
                # vista.last.resolution.<metric> alive all the same.
                resolution=detect_resolution(item.points) or item.frequency,
                start=start,
                end=len(sink_points),
                acked=start,
            )
        )
    return planned, sink_points


def _dead_for(
    plan: Planned,
    result: SinkResult,
    sink_points: Sequence[SinkPoint],
    worker: str,
    lo: int,
    upto: int,
    now: float,
) -> tuple[tuple[DeadLetter, ...], int]:
    """One dead letter per distinct reason among sink_points[lo:upto] (of ``plan``), holding
    that reason's rejected points as an item. Returns the letters and the number of points."""
    if not result.rejected:  # the usual case: no need to look at every point
        return (), 0
    by_reason: dict[str, list[Point]] = {}
    for index in range(lo, upto):
        reason = result.rejected.get(index)
        if reason is not None:
            e = sink_points[index]
            by_reason.setdefault(reason, []).append((e.timestamp, e.value))
    letters = []
    for reason, points in by_reason.items():
        item = replace(plan.item, id=new_id(), points=tuple(points), replay=False, seq=0)
        raw = codec.encode_item(item)
        letters.append(dead_letter(raw, reason, worker, plan.item.metric, now=now))
    return tuple(letters), sum(len(p) for p in by_reason.values())


def settle(
    planned: Sequence[Planned],
    sink_points: Sequence[SinkPoint],
    result: SinkResult,
    worker: str,
    now: float,
    *,
    final: bool = True,
) -> Settlement:
    """Turn the sink's answer so far into queue operations, for what is not acknowledged yet.

    * fully handled item → ack: watermark to its last point, rejected points dead-lettered;
    * partly handled (the sink has not got past it, or stopped inside it) → the same for the
      handled points not acknowledged before, but the item is kept held; its points at or below
      the new watermark are dropped when it is claimed again, so nothing handled is sent twice
      and nothing unhandled is lost;
    * nothing new handled → nothing.

    Called after each request the sink answered (``final=False``), then once when the batch
    is over (``final=True``), which also gives back every item that is not settled (partly
    handled or untouched). It records its progress in the ``planned`` records.
    """
    out = Settlement()
    handled = result.handled
    for plan in planned:
        if plan.settled:
            continue
        complete = plan.end <= handled
        upto = min(plan.end, handled)
        if not complete and upto <= plan.acked:
            if final:
                out.release.append(plan.raw)
            continue
        lo = plan.acked
        dead, rejected = _dead_for(plan, result, sink_points, worker, lo, upto, now)
        delivered = (upto - lo) - rejected
        mark = None
        if upto > lo:
            last = sink_points[upto - 1]
            mark = Watermark(last.timestamp, last.value)
        out.acks.append(
            Ack(
                plan.raw,
                plan.item.metric,
                mark,
                plan.resolution,
                delivered > 0,
                dead,
                keep=not complete,
            )
        )
        plan.acked = upto
        plan.delivered += delivered
        if complete:
            plan.settled = True
            out.delivered_items += 1 if plan.delivered > 0 else 0
        elif final:
            out.release.append(plan.raw)
        out.delivered_points += delivered
        out.rejected_points += rejected
        out.dead_letters += len(dead)
    return out


def record_progress(progress: MutableMapping[str, int], acks: Sequence[Ack]) -> None:
    """Keep ``progress`` (raw item -> last timestamp confirmed) as the queue's ACK step keeps
    constants.PROGRESS_KEY: a kept item moves forward, an item acknowledged in full leaves."""
    for ack in acks:
        if not ack.keep:
            progress.pop(ack.raw, None)
        elif ack.watermark is not None:
            progress[ack.raw] = max(progress.get(ack.raw, ack.watermark.timestamp),
                                    ack.watermark.timestamp)  # fmt: skip


def merge_result(total: SinkResult, part: SinkResult, offset: int) -> None:
    """Fold one segment's result (indexes counted from the segment's first point, which is
    sink_points[offset]) into the batch's ``total``."""
    total.handled = max(total.handled, offset + part.handled)
    total.rejected.update({offset + i: reason for i, reason in part.rejected.items()})


def undecodable(raw: str, reason: str, worker: str, now: float) -> DeadLetter:
    metric = codec.item_metric(raw) or ""
    return dead_letter(raw, f"undecodable item: {reason}", worker, metric, now=now)


def decode_batch(
    raws: Sequence[str], worker: str, now: float
) -> tuple[list[tuple[str, QueueItem]], list[tuple[str, DeadLetter]]]:
    """The claimed items decoded, and a dead letter for each one that cannot be."""
    good: list[tuple[str, QueueItem]] = []
    bad: list[tuple[str, DeadLetter]] = []
    for raw in raws:
        try:
            good.append((raw, codec.decode_item(raw)))
        except PayloadError as exc:
            bad.append((raw, undecodable(raw, str(exc), worker, now)))
    return good, bad
