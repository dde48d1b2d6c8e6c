"""Exponential backoff with jitter and a cap; the Backoff counter on a fake clock."""

from __future__ import annotations

import random

import pytest

from skyline.vista.backoff import Backoff, compute_backoff


@pytest.mark.parametrize(
    ("attempt", "no_jitter"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 60.0), (7, 32.0), (100, 60.0), (10_000, 60.0)],
)
def test_compute_backoff_doubles_up_to_the_cap(attempt: int, no_jitter: float) -> None:
    assert compute_backoff(attempt, rand=lambda: 0.0) == no_jitter
    # the largest jitter takes off half
    assert compute_backoff(attempt, rand=lambda: 1.0) == no_jitter / 2
    assert compute_backoff(attempt, jitter=0.0, rand=lambda: 0.999) == no_jitter


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_compute_backoff_no_delay_before_the_first_failure(attempt: int) -> None:
    assert compute_backoff(attempt, rand=lambda: 0.5) == 0.0


def test_compute_backoff_custom_parameters() -> None:
    assert compute_backoff(3, base=1.0, factor=3.0, cap=100.0, rand=lambda: 0.0) == 9.0
    assert compute_backoff(6, base=1.0, factor=3.0, cap=100.0, rand=lambda: 0.0) == 100.0
    assert compute_backoff(2, base=2.0, factor=2.0, jitter=0.25, rand=lambda: 1.0) == 3.0


def test_compute_backoff_jitter_range_with_random_draws() -> None:
    rng = random.Random(42)
    for attempt in range(1, 30):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [compute_backoff(attempt, rand=rng.random) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert max(delays) <= 60.0
        assert len(set(delays)) > 1  # jitter spreads them


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_backoff_with_a_fake_clock() -> None:
    clock = FakeClock()
    backoff = Backoff(jitter=0.0, clock=clock)
    assert backoff.ready()
    assert backoff.remaining() == 0.0

    assert backoff.failure() == 0.5
    assert backoff.attempts == 1
    assert backoff.not_before == 1000.5
    assert not backoff.ready()
    assert backoff.remaining() == 0.5

    clock.now = 1000.4
    assert not backoff.ready()
    assert backoff.remaining() == pytest.approx(0.1)
    clock.now = 1000.5
    assert backoff.ready()
    assert backoff.remaining() == 0.0

    assert [backoff.failure() for _ in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.attempts == 9
    assert backoff.not_before == 1060.5

    backoff.success()
    assert backoff.attempts == 0
    assert backoff.ready()
    assert backoff.failure() == 0.5  # starts over


def test_backoff_at_least_honours_retry_after() -> None:
    clock = FakeClock(50.0)
    backoff = Backoff(jitter=0.0, clock=clock)
    assert backoff.failure(at_least=30.0) == 30.0
    assert backoff.remaining() == 30.0
    assert backoff.failure(at_least=0.1) == 1.0  # the computed delay when it is longer
    assert backoff.not_before == 51.0


def test_backoff_jitter_stays_in_range() -> None:
    clock = FakeClock(0.0)
    backoff = Backoff(base=1.0, cap=10.0, clock=clock)
    for attempt in range(1, 12):
        delay = backoff.failure()
        ceiling = min(10.0, 2.0 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
        assert backoff.remaining() == delay
