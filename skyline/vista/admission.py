"""Carbon's create budget seen from a worker: the claimed items of metric names carbon may not
create yet are given back untouched (no attempt counted) and wait for a token
(skyline/vista/create_budget.py); the rest are delivered."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from skyline.vista import telemetry
from skyline.vista.create_budget import CreateBudget
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.model import QueueItem

# The worker's logger: these lines are the worker's, whichever module writes them.
logger = logging.getLogger("skyline.vista.worker")

CREATE_WAIT_MAX = 1.0
"""Longest nap when every claimed item waits for a carbon create token (seconds)."""

Claimed = tuple[str, QueueItem]
"""A claimed item: its raw text (its name in the queue) and its decoded form."""


@dataclass(frozen=True)
class Admitted:
    items: list[Claimed]
    """The items to deliver now."""
    nap: float = 0.0
    """When nothing is left: how long to wait before claiming again (seconds)."""


def split_deferred(
    items: Sequence[Claimed], deferred: Collection[str]
) -> tuple[list[Claimed], list[str]]:
    """The items to keep, and the raw items of the ``deferred`` metrics."""
    keep = [(raw, item) for raw, item in items if item.metric not in deferred]
    wait = [raw for raw, item in items if item.metric in deferred]
    return keep, wait


def nap_for(wait: float) -> float:
    """The nap before the next claim when every item waits for a token ``wait`` s away."""
    return min(max(wait, 0.05), CREATE_WAIT_MAX)


class NewMetricGate:
    """Admits a claimed batch through the create budget, giving back what must wait."""

    def __init__(self, queue: FetchQueue, wid: str, creates_per_minute: float) -> None:
        self.budget = CreateBudget(queue.client, creates_per_minute)
        self.queue = queue
        self.wid = wid

    def admit(self, items: list[Claimed]) -> Admitted:
        if not self.budget.enabled or not items:
            return Admitted(items)
        admission = self.budget.admit(item.metric for _, item in items)
        if admission.granted:
            telemetry.CREATES_GRANTED.inc(len(admission.granted))
        if not admission.deferred:
            return Admitted(items)
        keep, wait = split_deferred(items, admission.deferred)
        self.queue.release(self.wid, wait)
        telemetry.CREATES_DEFERRED.inc(len(wait))
        logger.debug(
            "%d item(s) of %d new metric(s) wait for a carbon create token (next in %.1fs)",
            len(wait),
            len(admission.deferred),
            admission.wait,
        )
        return Admitted(keep, 0.0 if keep else nap_for(admission.wait))
