"""Failed windows (holes.py): backoff, splitting after a timeout, giving up, the Redis form."""

from __future__ import annotations

import pytest

from skyline.vista import holes
from skyline.vista.holes import Hole

NOW = 1_718_000_000.0


def test_a_new_hole_is_retried_after_a_minute_then_with_doubling_backoff() -> None:
    hole = holes.new_hole(100, 200, NOW, "http_500", "HTTP 500")
    assert (hole.attempts, hole.next_try, hole.since) == (1, NOW + 60, NOW)
    assert not hole.due(NOW + 59) and hole.due(NOW + 60)
    delays = [holes.retry_delay(n) for n in range(1, 9)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_an_error_other_than_a_timeout_keeps_the_hole_whole() -> None:
    hole = holes.new_hole(0, 86_400, NOW, "http_500", "HTTP 500")
    [again] = holes.failed_again(hole, NOW + 60, "http_500", "HTTP 500 again", 60)
    assert (again.start, again.end, again.attempts) == (0, 86_400, 2)
    assert again.since == NOW and again.error == "HTTP 500 again"
    assert again.next_try == NOW + 60 + 120


@pytest.mark.parametrize(("step", "second"), [(60, 43_260), (0, 43_200)])
def test_a_timeout_splits_the_hole_on_the_step(step: int, second: int) -> None:
    hole = holes.new_hole(0, 86_400, NOW, "timeout", "no answer")
    first, last = holes.failed_again(hole, NOW, "timeout", "no answer", step)
    assert (first.start, first.end) == (0, 43_200)
    assert (last.start, last.end) == (second, 86_400)  # Prometheus: no shared end point
    assert first.attempts == last.attempts == 2


def test_a_short_hole_is_not_split_further() -> None:
    hole = holes.new_hole(0, holes.MIN_SPLIT, NOW, "timeout", "no answer")
    assert len(holes.failed_again(hole, NOW, "timeout", "no answer", 60)) == 1


def test_given_up_after_max_attempts() -> None:
    hole = holes.new_hole(0, 600, NOW, "http_500", "x")
    for _ in range(holes.MAX_ATTEMPTS - 2):
        [hole] = holes.failed_again(hole, NOW, "http_500", "x")
    assert not holes.given_up(hole)
    [hole] = holes.failed_again(hole, NOW, "http_500", "x")
    assert holes.given_up(hole) and hole.attempts == holes.MAX_ATTEMPTS


def test_encode_decode_round_trip_and_garbage_reads_as_none() -> None:
    found = [Hole(1, 2, 3, 4.5, 5.5, "err", "timeout", 0), Hole(10, 20, 1, 0.0, 0.0, "", "")]
    assert holes.decode(holes.encode(found)) == found
    assert holes.decode(None) == []


def test_a_template_hole_keeps_each_name_past_its_after_and_reads_old_records() -> None:
    hole = holes.new_hole(0, 3600, NOW, "http_500", "x", after=100, names={"b": 500, "a": 100})
    assert hole.names == (("b", 500),)  # a's watermark is the hole's own
    assert (hole.after_for("a"), hole.after_for("b"), hole.after_for(None)) == (100, 500, 100)
    assert '"names":{"b":500}' in holes.encode([hole])
    assert holes.decode(holes.encode([hole])) == [hole]
    [half, _] = holes.failed_again(hole, NOW, "timeout", "slow")
    assert half.after_for("b") == 500  # kept when split
    plain = holes.new_hole(0, 600, NOW, "http_500", "x", after=100)
    assert "names" not in holes.encode([plain])  # records written before read as they were
    assert holes.decode(holes.encode([plain])) == [plain] and plain.names == ()
    assert holes.new_hole(0, 600, NOW, "k", "x", names={"a": 5}).after_for("a") == 5
    assert holes.decode(b"not json") == []
    assert holes.decode('[{"start": 1}]') == []
