"""Failed windows ("holes"): spans of a metric's history that a fetch could not get while
newer points of the metric were delivered. Pure logic; the records live in Redis
(``constants.HOLES_KEY``, read and written by ``fetchqueue.AsyncFetchQueue``).

A window that fails before a window that answered would otherwise hold every newer point
back (the watermark must not move past a hole). Instead the newer points are delivered, the
failed span is remembered here and retried on later cycles with backoff, in smaller chunks
after a timeout, and its points are queued as replay items (delivered below the watermark).
A hole that keeps failing is given up after :data:`MAX_ATTEMPTS` attempts, with a log line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

MAX_ATTEMPTS = 8
"""A hole is given up after this many failed attempts (the first failure included)."""

RETRY_BASE = 60.0
RETRY_MAX = 3600.0
"""Backoff between attempts: 60 s, 120 s, ... at most an hour (about 4 h from first failure
to giving up)."""

MIN_SPLIT = 600
"""A hole that timed out is split in two for its retry, down to spans of this many seconds."""

SPLIT_KINDS = frozenset({"timeout", "too_large"})
"""Error kinds after which a hole is retried in smaller chunks."""


@dataclass(frozen=True)
class Hole:
    start: int
    end: int
    attempts: int  # failed attempts so far
    next_try: float  # epoch: not retried before this
    since: float  # epoch of the first failure
    error: str  # the last error, one line (never a secret: SourceError texts are redacted)
    kind: str = ""
    # Points at or below this were delivered before the hole was found (a gap window starts
    # a little before the watermark): a refill never sends them again.
    after: int | None = None

    def due(self, now: float) -> bool:
        return now >= self.next_try


def retry_delay(attempts: int) -> float:
    return float(min(RETRY_MAX, RETRY_BASE * 2 ** max(0, attempts - 1)))


def new_hole(
    start: int, end: int, now: float, kind: str, error: str, after: int | None = None
) -> Hole:
    return Hole(start, end, 1, now + retry_delay(1), now, error, kind, after)


def failed_again(hole: Hole, now: float, kind: str, error: str, step: int = 0) -> list[Hole]:
    """The hole after one more failed attempt: split in halves after a timeout.

    ``step``: Prometheus windows hold both ends and are evaluated every ``step`` seconds from
    their start, so the halves break on a multiple of it and do not share an end; Graphite
    windows (``step`` 0) exclude their start and share the edge.
    """
    attempts = hole.attempts + 1
    retry_at = now + retry_delay(attempts)
    again = replace(hole, attempts=attempts, next_try=retry_at, error=error, kind=kind)
    if kind in SPLIT_KINDS and hole.end - hole.start >= 2 * MIN_SPLIT:
        unit = max(step, 1)
        middle = hole.start + (hole.end - hole.start) // 2 // unit * unit
        return [replace(again, end=middle), replace(again, start=middle + step)]
    return [again]


def given_up(hole: Hole) -> bool:
    return hole.attempts >= MAX_ATTEMPTS


def encode(holes: Sequence[Hole]) -> str:
    return json.dumps([asdict(h) for h in holes], separators=(",", ":"))


def decode(raw: bytes | str | None) -> list[Hole]:
    """The holes of one metric; an unreadable record reads as none (it is rewritten)."""
    if raw is None:
        return []
    try:
        records = json.loads(raw)
        return [
            Hole(
                int(r["start"]),
                int(r["end"]),
                int(r["attempts"]),
                float(r["next_try"]),
                float(r["since"]),
                str(r.get("error", "")),
                str(r.get("kind", "")),
                None if r.get("after") is None else int(r["after"]),
            )
            for r in records
        ]
    except (ValueError, TypeError, KeyError):
        return []
