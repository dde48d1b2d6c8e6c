"""Sinks: where validated points go (Skyline Flux over HTTP, or carbon over TCP).

A sink takes a flat, ordered list of :class:`SinkPoint` (each metric's points contiguous and in
time order) and reports how far it got: ``handled`` points from the start were accepted or
permanently rejected (``rejected`` says which, with the sink's reason). When it stops early on a
transient failure it sets ``error``; the worker acknowledges what was handled and gives the rest
back to the queue, so nothing is lost and nothing handled is sent again.

A sink that answers request by request (Flux) calls ``progress`` after each answer with the
result so far, so that the worker acknowledges each request as soon as the sink has taken it:
a worker that dies can then have at most the one request it was waiting for sent again. When
``progress`` returns False (the worker is stopping) the sink sends nothing more and returns
with ``stopped`` set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from skyline.vista.errors import SinkError


class SinkPoint(NamedTuple):
    """One point for the sink. A NamedTuple: a worker makes one per point delivered, and it is
    the cheapest immutable record to create."""

    metric: str
    timestamp: int
    value: float


@dataclass
class SinkResult:
    handled: int = 0
    rejected: dict[int, str] = field(default_factory=dict)  # point index -> reason
    error: SinkError | None = None
    stopped: bool = False  # progress() asked the sink to stop before its next request

    @property
    def delivered(self) -> int:
        return self.handled - len(self.rejected)


Progress = Callable[[SinkResult], bool]
"""Called after each request a sink had answered, with its result so far (indexes into the
points given to submit). Returns whether to go on."""


class Sink(Protocol):
    name: str

    def submit(
        self, points: Sequence[SinkPoint], now: float, progress: Progress | None = None
    ) -> SinkResult: ...

    def close(self) -> None: ...
