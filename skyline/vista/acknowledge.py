"""A worker's acknowledgements: what the sink took goes to the queue (one Lua step, retried while
Redis is away), to the worker's counters, to telemetry and to the host's stats hash.

The pure part, turning the sink's answer into a :class:`~skyline.vista.delivery.Settlement`, is
``delivery.settle``; this module only records one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skyline.vista import constants, delivery, lag, procutil, redisconn, telemetry
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.model import Claim

# The worker's logger: these lines are the worker's, whichever module writes them.
logger = logging.getLogger("skyline.vista.worker")


@dataclass
class WorkerStats:
    """What one worker has delivered since it started (its heartbeat shows items and points;
    telemetry.py counts dead letters and sink errors)."""

    items: int = 0
    points: int = 0
    rejected: int = 0

    def record(self, settlement: delivery.Settlement) -> None:
        self.items += settlement.delivered_items
        self.points += settlement.delivered_points
        self.rejected += settlement.rejected_points


class Acknowledger:
    """Records settlements for one worker."""

    def __init__(
        self,
        queue: FetchQueue,
        wid: str,
        hostname: str,
        sink_name: str,
        outage: redisconn.RedisOutage,
        stopping: Callable[[], bool],
        *,
        patience: float = 0.0,
    ) -> None:
        self.queue = queue
        self.wid = wid
        self.host_stats_key = f"{constants.HOST_STATS_KEY_PREFIX}{hostname}"
        self.sink_name = sink_name
        self.outage = outage
        self.stopping = stopping
        self.patience = patience
        """Seconds a stopping worker goes on trying while Redis is away (worker.stop_patience)."""
        self._give_up_at: float | None = None
        self.stats = WorkerStats()
        self.progress: dict[str, int] = {}
        """Raw item -> last timestamp confirmed, for the held items delivered in part (set at
        claim from constants.PROGRESS_KEY, kept as the acknowledgements write it)."""

    def claimed(self, claims: Sequence[Claim]) -> list[str]:
        """A new batch: remember how far each item got before. Returns the raw items."""
        self.progress = {c.raw: c.progress for c in claims if c.progress is not None}
        return [c.raw for c in claims]

    def __call__(self, settlement: delivery.Settlement) -> None:
        """Record what the sink handled. Retried while Redis is away: giving the items back
        instead would send them twice. A stopping worker goes on trying for ``patience``
        seconds in all; then it gives up, its items stay held until its lease ends, and what
        the sink took since the last acknowledgement (one request) is sent again."""
        while True:
            try:
                self.queue.ack(self.wid, settlement.acks)
                if settlement.release:
                    self.queue.release(self.wid, settlement.release)
                break
            except redisconn.REDIS_ERRORS as exc:
                delay = self.outage.failed(exc)
                if not self.stopping():
                    procutil.interruptible_sleep(delay, self.stopping)
                    continue
                if self._give_up_at is None:
                    self._give_up_at = time.monotonic() + self.patience
                delay = min(delay, self._give_up_at - time.monotonic())
                if delay <= 0:
                    return  # the items stay held and are recovered with the lease
                time.sleep(delay)
        self.outage.ok()
        delivery.record_progress(self.progress, settlement.acks)
        self.stats.record(settlement)
        self._report(settlement)

    def _report(self, s: delivery.Settlement) -> None:
        telemetry.POINTS_DELIVERED.labels(self.sink_name).inc(s.delivered_points)
        if s.rejected_points:
            telemetry.POINTS_DEAD.inc(s.rejected_points)
            telemetry.ITEMS_DEAD.labels("rejected").inc(s.dead_letters)
            logger.error(
                "the sink rejected %d point(s); dead-lettered (see 'vista queue dead')",
                s.rejected_points,
            )
        if s.delivered_items or s.delivered_points:
            acked_at = time.time()
            lags = [acked_at - a.watermark.timestamp for a in s.acks if a.delivered and a.watermark]
            for seconds in lags:
                telemetry.DELIVERY_LAG.observe(seconds)
            pipe = self.queue.client.pipeline(transaction=False)
            pipe.hincrby(self.host_stats_key, "metrics_sent", s.delivered_items)
            pipe.hincrby(self.host_stats_key, "points_sent", s.delivered_points)
            lag.record(pipe, lags, acked_at)
            pipe.execute()
