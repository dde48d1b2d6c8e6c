"""Points and queue items for the queue and worker tests, and draining the queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import redis

from skyline.vista import codec
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.model import Point, QueueItem
from skyline.vista.worker import WorkerLoop


def points(start: int, count: int, *, step: int = 60, first_value: float = 0.5) -> list[Point]:
    """``count`` points from ``start``, ``step`` apart, valued ``first_value``, +1, +2..."""
    return [(start + step * i, first_value + i) for i in range(count)]


def make_item(
    metric: str,
    pts: Iterable[Point],
    *,
    seq: int = 0,
    frequency: int = 60,
    replay: bool = False,
    target: str | None = None,
) -> str:
    """An encoded queue item of ``metric`` (a fresh id, fetched now from a Prometheus, by the
    query ``target``: ``<metric>_query`` unless given)."""
    return codec.encode_item(
        QueueItem(
            id=uuid.uuid4().hex,
            metric=metric,
            source="prometheus",
            host="http://prometheus.example:9090",
            target=f"{metric}_query" if target is None else target,
            points=tuple(pts),
            fetched_at=time.time(),
            frequency=frequency,
            seq=seq,
            replay=replay,
        )
    )


def drained(client: redis.Redis) -> bool:
    """Nothing queued, in flight or pending any more."""
    counts = FetchQueue(client).counts()
    return counts.queued == counts.inflight == counts.pending_metrics == 0


def run_until_drained(loop: WorkerLoop, client: redis.Redis, timeout: float) -> None:
    """Run ``loop`` until the queue is drained or ``timeout`` s have passed, then shut it down."""
    deadline = time.monotonic() + timeout
    while not drained(client) and time.monotonic() < deadline:
        loop.run_once()
    loop.shutdown()
