"""Big answers, bounded: parse a JSON body as it arrives (ijson) and keep only the points of
the window that was asked for.

A remote may answer a 5-minute question with 50 MB of points going back years. Decoding that
whole (``json.loads``) costs about twenty times its size in Python objects; here a body over
:data:`STREAM_ABOVE` bytes is never held whole: the source's event parser
(``prometheus.stream_parser``, ``graphite.stream_parser``) reads it from the socket in
chunks, drops (and counts) every point outside :class:`Bounds` before keeping it, and stops at
:attr:`Bounds.max_points` points per series or at the body-size cap. Small answers keep the
plain ``json.loads`` path (faster; the exact error messages of ``http.decode_json``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ijson

from skyline.vista.errors import SourceError

STREAM_ABOVE = 1 << 20
"""Bodies larger than this (bytes) are parsed as they arrive instead of decoded whole."""

MAX_DEPTH = 32
"""Deeper nesting is not an answer of Graphite or Prometheus (and costs the event parser
memory in the square of the depth): refused as invalid JSON."""

UNBOUNDED_MAX_POINTS = 100_000
"""Points kept per series of an answer to a window whose bounds Vista does not know (a custom
Prometheus uri, a Graphite ``from=-N``)."""

SLACK = 3600
"""Points this far (seconds) outside the asked window are still kept: what Vista drops is a
source's answer about another time (years of history to a 5-minute question)."""

Event = tuple[str, Any]
"""(event, value) of ijson's basic parser: start_map, map_key, end_map, start_array, end_array,
null, boolean, number, string."""

StreamParser = Callable[[], "Handler"]
"""Makes the event parser of one answer (``prometheus.StreamParser``, ...)."""

CHUNK = 1 << 16


@dataclass(frozen=True)
class Bounds:
    """The timestamps worth keeping from one answer, and how many points per series at most."""

    low: float | None = None
    high: float | None = None
    max_points: int = UNBOUNDED_MAX_POINTS

    @classmethod
    def of_window(cls, start: int | None, end: int | None, frequency: int) -> Bounds:
        """A window [start, end] with :data:`SLACK` on each side (a source may align its
        points to its own step, or its clock may differ a little from ours); at most ten
        points per ``frequency`` of that span."""
        if start is None or end is None:
            return cls()
        slack = max(SLACK, frequency)
        low, high = start - slack, end + slack
        expected = (high - low) // max(1, frequency) + 1
        return cls(low, high, max(1000, 10 * expected))

    def outside(self, raw_ts: object) -> bool:
        """Whether a raw timestamp is certainly outside (an unreadable one is kept: the
        validation counts it as unparsable)."""
        if self.low is None or self.high is None:
            return False
        ts = as_number(raw_ts)
        return ts is not None and not self.low <= ts <= self.high

    def too_many(self, kept: int) -> SourceError:
        window = (
            f"the asked window [{self.low:.0f}, {self.high:.0f}]"
            if self.low is not None and self.high is not None
            else "one answer"
        )
        return SourceError(
            "too_many_points",
            f"more than {self.max_points} points of one series in {window} (kept {kept}); "
            "the source sends far more points than the metric's frequency",
        )


class Within:
    """The points of one series as an event parser reads them: kept when inside ``bounds``,
    else counted in ``outside``; more than ``bounds.max_points`` kept is refused."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.points: list[tuple[object, object]] = []
        self.outside = 0

    def add(self, ts: object, value: object) -> None:
        if self.bounds.outside(ts):
            self.outside += 1
            return
        self.points.append((ts, value))
        if len(self.points) > self.bounds.max_points:
            raise self.bounds.too_many(len(self.points))


def as_number(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return raw
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None


def keep_within(
    points: list[tuple[object, object]], bounds: Bounds
) -> tuple[list[tuple[object, object]], int]:
    """The points inside ``bounds`` and how many were outside (the ``json.loads`` path)."""
    if bounds.low is None:
        kept = points
    else:
        kept = [p for p in points if not bounds.outside(p[0])]
    if len(kept) > bounds.max_points:
        raise bounds.too_many(len(kept))
    return kept, len(points) - len(kept)


class Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class BodyReader:
    """What ijson reads: the part of the body already read, then the rest from the response,
    counted against the body-size cap (after decompression, as ``http._read_capped`` does)."""

    def __init__(self, content: Readable, head: bytes, max_bytes: int) -> None:
        self._content = content
        self._head = head
        self.size = len(head)
        self.max_bytes = max_bytes

    async def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson first asks for nothing, to learn whether the file gives bytes
            return b""
        if self._head:
            size = len(self._head) if n < 0 else n
            chunk, self._head = self._head[:size], self._head[size:]
            return chunk
        chunk = await self._content.read(n)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise SourceError("too_large", f"body exceeds the {self.max_bytes}-byte cap")
        return chunk


class Handler(Protocol):
    """A source's event parser: fed ijson's events a chunk at a time, then asked for the
    result. It refuses nesting deeper than :data:`MAX_DEPTH` itself (:func:`check_depth`)."""

    def feed(self, events: list[Event]) -> None: ...

    def finish(self) -> Any: ...


def check_depth(levels: int) -> None:
    """Refuse a document nested ``levels`` deep when that is more than :data:`MAX_DEPTH`."""
    if levels > MAX_DEPTH:
        raise SourceError("invalid_json", f"JSON nested deeper than {MAX_DEPTH} levels")


async def parse(make: StreamParser, reader: BodyReader, describe: Callable[[], str]) -> Any:
    """Run a source's event parser over the body as it arrives; a JSON syntax error becomes
    the same SourceError kinds as ``http.decode_json`` (``describe`` gives an excerpt).

    ijson's push interface: each chunk's events are collected in C into a list that the
    handler reads in one plain loop (no await per event); the event loop gets a turn after
    each chunk."""
    handler = make()
    events = ijson.sendable_list()
    coro = ijson.basic_parse_coro(events, use_float=True)
    try:
        while chunk := await reader.read(CHUNK):
            coro.send(chunk)
            handler.feed(events)
            del events[:]
            await asyncio.sleep(0)
        coro.close()  # the end of the document: raises if it is incomplete
        handler.feed(events)
    except ijson.JSONError as exc:
        cut = "premature EOF" in str(exc)
        kind = "truncated_json" if cut else "invalid_json"
        what = "truncated JSON" if cut else "invalid JSON"
        raise SourceError(kind, f"{what} near byte {reader.size}: {describe()}") from exc
    return handler.finish()
