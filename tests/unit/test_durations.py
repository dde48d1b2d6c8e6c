"""Short durations of status lines (skyline/vista/durations.py): each scale's units and
precision, at the edges of its steps."""

from __future__ import annotations

import pytest

from skyline.vista.durations import FROM_MINUTES, STATUS, UP_TO_HOURS, WHOLE, Step, short


@pytest.mark.parametrize(
    ("scale", "seconds", "shown"),
    [
        (STATUS, 119.4, "119s"),
        (STATUS, 120, "2m"),
        (STATUS, 7199, "120m"),
        (STATUS, 7200, "2.0h"),
        (STATUS, 172800, "2.0d"),
        (FROM_MINUTES, 30, "0m"),
        (FROM_MINUTES, 3600, "60m"),
        (FROM_MINUTES, 7 * 86400, "7.0d"),
        (UP_TO_HOURS, 90, "90s"),
        (UP_TO_HOURS, 150, "2.5m"),
        (UP_TO_HOURS, 10 * 86400, "240.0h"),
        (WHOLE, -3, "0s"),
        (WHOLE, 210, "3m"),
        (WHOLE, 7300, "2h"),
        (WHOLE, 3 * 86400 - 1, "2d"),
    ],
)
def test_each_scale_shows_its_units(scale: tuple[Step, ...], seconds: float, shown: str) -> None:
    assert short(seconds, scale) == shown
