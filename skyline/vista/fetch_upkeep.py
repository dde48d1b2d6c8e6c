"""The fetcher's upkeep at the start of each cycle: its heartbeat, and every
``RECONCILE_EVERY`` seconds the queue's stale pending marks cleared and the removed metrics'
keys pruned (``prune.py``)."""

from __future__ import annotations

import logging
import time

from skyline.vista import constants, prune
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import AsyncFetchQueue

logger = logging.getLogger("skyline.vista.fetcher")

RECONCILE_EVERY = 300.0


class Upkeep:
    def __init__(self) -> None:
        self._next_reconcile = 0.0

    async def run(self, queue: AsyncFetchQueue, config: VistaConfig, now: float) -> None:
        """Heartbeat at ``now``, then reconcile and prune when they are due (Redis errors
        propagate: the cycle does not start)."""
        await queue.client.set(
            constants.FETCHER_HEARTBEAT_KEY, int(now), ex=constants.HEARTBEAT_TTL
        )
        if time.monotonic() < self._next_reconcile:
            return
        fixed = await queue.reconcile()
        if fixed:
            logger.warning("cleared %d stale pending mark(s) (their items were gone)", fixed)
        # Every Vista host's metrics are remembered; what none has any more is pruned
        # after VISTA_PRUNE_REMOVED_AFTER (prune.py).
        await prune.maintain(queue.client, config, now)
        self._next_reconcile = time.monotonic() + RECONCILE_EVERY
