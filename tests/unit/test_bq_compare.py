"""bq_update's value-by-value comparison (skyline/vista/bq_update.py compare)."""

from __future__ import annotations

from skyline.vista.bq_update import compare, percent_different
from skyline.vista.sinks import SinkPoint


def test_new_changed_removed_and_tolerance() -> None:
    old = {("m.a", 1): 10.0, ("m.b", 1): 0.1 + 0.2, ("m.c", 1): 5.0, ("m.z", 1): 0.0}
    new = {("m.a", 1): 12.5, ("m.b", 1): 0.3, ("m.c", 1): 5.0, ("m.d", 1): 7.0, ("m.z", 1): 3.0}
    added, changed, removed = compare(old, new)
    assert added == [SinkPoint("m.d", 1, 7.0)]
    assert [(c["metric"], c["old"], c["new"], c["percent"]) for c in changed] == [
        ("m.a", 10.0, 12.5, 25.0),
        ("m.z", 0.0, 3.0, 100.0),
    ]
    assert removed == 0
    _, _, gone = compare(old, {})
    assert gone == 4


def test_percent_different() -> None:
    assert percent_different(0.0, 5.0) == 100.0
    assert percent_different(-4.0, -3.0) == 25.0
