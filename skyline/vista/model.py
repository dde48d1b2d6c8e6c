"""Typed records that travel between the fetcher, Redis and the workers."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from skyline.vista import secret

Point = tuple[int, float]
"""(epoch seconds UTC, finite value)."""

ITEM_VERSION = 1


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queued time series chunk: what a worker validates and delivers.

    Never carries a credential: the host is ``scheme://netloc`` and the worker looks up
    anything secret in its own settings.
    """

    id: str
    metric: str
    source: Literal["graphite", "prometheus", "replay"]
    host: str
    target: str
    points: tuple[Point, ...]
    fetched_at: float
    frequency: int = 60
    seq: int = 0  # position in a chain of items for one long window (0 = first)
    replay: bool = False  # requeued dead letter: deliver even at or below the watermark
    version: int = ITEM_VERSION

    @property
    def first_ts(self) -> int | None:
        return self.points[0][0] if self.points else None

    @property
    def last_ts(self) -> int | None:
        return self.points[-1][0] if self.points else None


@dataclass(frozen=True, slots=True)
class Watermark:
    """The last point delivered to the sink for one metric (flux.last.metric_data)."""

    timestamp: int
    value: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An item (or the points of one) that cannot be delivered, with the reason."""

    id: str
    reason: str
    dead_at: float
    worker: str
    item: str  # the raw item text (for requeue), or the encoded item of the rejected points
    metric: str = ""


DropReason = Literal[
    "none",
    "non_finite",
    "unparsable",
    "duplicate_ts",
    "at_or_below_watermark",
    "current_minute",
    "outside_window",  # sent by the source outside the window Vista asked for
]
"""Why validation removed a point."""


class DropCounts(Counter[DropReason]):
    """Points removed by validation, by reason (pure accounting, no I/O)."""

    def as_dict(self) -> dict[str, int]:
        """The reasons that removed any point, and how many."""
        return {reason: count for reason, count in self.items() if count}


@dataclass(frozen=True, slots=True)
class CleanSeries:
    points: tuple[Point, ...]
    dropped: DropCounts = field(default_factory=DropCounts)


@dataclass(frozen=True)
class Ack:
    """What a worker reports for one processed item."""

    raw: str  # the item exactly as claimed
    metric: str
    watermark: Watermark | None  # advance to this (None: nothing new delivered or dead)
    resolution: int | None = None
    delivered: bool = False
    dead: tuple[DeadLetter, ...] = ()
    keep: bool = False  # partly delivered: advance the watermark but leave the item held


@dataclass(frozen=True, slots=True)
class Claim:
    """An item a worker has just claimed, with how far an earlier delivery of it got."""

    raw: str  # the item exactly as queued
    progress: int | None = None  # timestamp of its last point a sink confirmed (None: none)


def new_id() -> str:
    """A fresh id for an item or a dead letter."""
    return uuid.uuid4().hex


def dead_letter(raw: str, reason: str, worker: str, metric: str = "", *, now: float) -> DeadLetter:
    """A dead letter of ``raw`` dated ``now``. The reason may quote a sink's or a remote's
    answer, which may echo a credential: it is redacted."""
    return DeadLetter(
        id=new_id(),
        reason=secret.redact(reason),
        dead_at=now,
        worker=worker,
        item=raw,
        metric=metric,
    )
