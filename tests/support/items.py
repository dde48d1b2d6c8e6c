"""Points and queue items for the queue and worker tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from skyline.vista import codec
from skyline.vista.model import Point, QueueItem


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
