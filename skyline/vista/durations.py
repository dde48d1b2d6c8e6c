"""Short durations for status lines ("90s", "45m", "3.5h", "7.0d"): one function, and a scale
per kind of line saying which units it uses and how precisely.

A scale is a list of steps, smallest unit first: a duration is shown in the first step it is
below (the last step takes every longer one), with the step's decimals (``None``: whole units,
rounded down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    suffix: str
    size: float  # seconds per unit
    below: float  # durations shorter than this many seconds use this unit
    decimals: int | None = 0


STATUS: Sequence[Step] = (
    Step("s", 1, 120),
    Step("m", 60, 7200),
    Step("h", 3600, 172800, 1),
    Step("d", 86400, math.inf, 1),
)
"""``vista status``: seconds up to 2 minutes, minutes up to 2 hours, then hours and days."""

FROM_MINUTES: Sequence[Step] = STATUS[1:]
"""Minutes at the least (removals, due in hours or days)."""

UP_TO_HOURS: Sequence[Step] = (
    Step("s", 1, 120),
    Step("m", 60, 7200, 1),
    Step("h", 3600, math.inf, 1),
)
"""Delivery lag: seconds, minutes and hours, a tenth of a minute apart."""

WHOLE: Sequence[Step] = tuple(Step(s.suffix, s.size, s.below, None) for s in STATUS)
"""``vista jobs``: whole units (a narrow column)."""


def short(seconds: float, scale: Sequence[Step] = STATUS) -> str:
    step = next((s for s in scale if seconds < s.below), scale[-1])
    if step.decimals is None:
        return f"{int(max(0, int(seconds)) // step.size)}{step.suffix}"
    return f"{seconds / step.size:.{step.decimals}f}{step.suffix}"
