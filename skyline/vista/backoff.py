"""Exponential backoff with jitter and a cap, in one place.

``compute_backoff`` is pure (the random source is injected); :class:`Backoff` keeps the attempt
count for one resource (a Redis connection, a sink, a remote host).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def compute_backoff(
    attempt: int,
    *,
    base: float = 0.5,
    factor: float = 2.0,
    cap: float = 60.0,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (1-based): base·factor^(attempt-1), capped, then
    reduced by up to ``jitter`` of itself so that many clients do not retry in step."""
    if attempt <= 0:
        return 0.0
    delay = min(cap, base * factor ** min(attempt - 1, 64))
    return delay * (1.0 - jitter * rand())


@dataclass
class Backoff:
    """Failure counter with a 'not before' time. ``failure()`` returns the delay it chose."""

    base: float = 0.5
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.5
    clock: Callable[[], float] = time.monotonic
    attempts: int = 0
    not_before: float = field(default=0.0)

    def failure(self, at_least: float = 0.0) -> float:
        self.attempts += 1
        delay = max(
            at_least,
            compute_backoff(
                self.attempts, base=self.base, factor=self.factor, cap=self.cap, jitter=self.jitter
            ),
        )
        self.not_before = self.clock() + delay
        return delay

    def success(self) -> None:
        self.attempts = 0
        self.not_before = 0.0

    def ready(self) -> bool:
        return self.clock() >= self.not_before

    def remaining(self) -> float:
        return max(0.0, self.not_before - self.clock())
