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
from collections.abc import Mapping, Sequence
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
    # A templated entry's names (expand.py) delivered further than ``after`` when the hole was
    # found, each with its own watermark then, sorted by name: a refill sends a name only its
    # points past both (the entry's ``after`` is the oldest of its names').
    names: tuple[tuple[str, int], ...] = ()

    def due(self, now: float) -> bool:
        return now >= self.next_try

    def after_for(self, name: str | None) -> int | None:
        """What the refill of ``name`` (None: a plain entry) must not send again."""
        own = dict(self.names).get(name) if name is not None and self.names else None
        if own is None or self.after is None:
            return self.after if own is None else own
        return max(own, self.after)


def retry_delay(attempts: int) -> float:
    return float(min(RETRY_MAX, RETRY_BASE * 2 ** max(0, attempts - 1)))


def new_hole(
    start: int,
    end: int,
    now: float,
    kind: str,
    error: str,
    after: int | None = None,
    names: Mapping[str, int] | None = None,
) -> Hole:
    """``names``: a templated entry's names and their watermarks (those not past ``after``
    are left out)."""
    further = tuple(
        sorted((n, mark) for n, mark in (names or {}).items() if after is None or mark > after)
    )
    return Hole(start, end, 1, now + retry_delay(1), now, error, kind, after, further)


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
    """JSON; ``names`` as an object, and only when there are some (a plain entry's record is
    as it was before templated entries had names in their holes)."""
    records = []
    for hole in holes:
        record: dict[str, object] = asdict(hole)
        del record["names"]
        if hole.names:
            record["names"] = dict(hole.names)
        records.append(record)
    return json.dumps(records, separators=(",", ":"))


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
                tuple(sorted((str(n), int(m)) for n, m in (r.get("names") or {}).items())),
            )
            for r in records
        ]
    except (ValueError, TypeError, KeyError):
        return []
