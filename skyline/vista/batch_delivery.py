"""One claimed batch delivered to one sink: validated (``delivery.plan_batch``), handed to the
sink in segments, each request's points acknowledged as soon as the sink has answered it, and
what is left given back.

What can be sent twice: a worker killed at any moment has at most the one request it was
waiting for sent again; a stop (SIGTERM) ends the batch between two requests. See worker.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from skyline.vista import delivery, redisconn, telemetry
from skyline.vista.acknowledge import Acknowledger
from skyline.vista.config import VistaConfig
from skyline.vista.errors import SinkAuthError
from skyline.vista.model import QueueItem, Watermark
from skyline.vista.sink_health import SinkHealth
from skyline.vista.sinks import Sink, SinkPoint, SinkResult

# The worker's logger: these lines are the worker's, whichever module writes them.
logger = logging.getLogger("skyline.vista.worker")

SEGMENT_POINTS = 5000
"""Points handed to carbon at once (10 pickle messages); the lease is renewed between segments.
The Flux sink gets one request's worth (VISTA_FLUX_BATCH_SIZE) at a time, each bounded by its
timeout, so a slow Flux cannot outlast the lease either."""


class BatchDelivery:
    """Delivers claimed batches for one worker."""

    def __init__(
        self,
        config: VistaConfig,
        acknowledge: Acknowledger,
        health: SinkHealth,
        stopped: Callable[[], bool],
    ) -> None:
        self.config = config
        self.queue, self.wid = acknowledge.queue, acknowledge.wid
        self.acknowledge = acknowledge
        self.health = health
        self.stopped = stopped

    def deliver(
        self, items: Sequence[tuple[str, QueueItem]], watermarks: dict[str, Watermark], sink: Sink
    ) -> None:
        now = time.time()
        planned, sink_points = delivery.plan_batch(
            items,
            watermarks,
            now,
            skip_current_minute=self.config.do_not_submit_current_minute,
            progress=self.acknowledge.progress,
        )
        for plan in planned:
            for reason, count in plan.dropped.as_dict().items():
                telemetry.POINTS_DROPPED.labels(reason).inc(count)
        try:
            result = self._submit(planned, sink_points, now, sink)
        except SinkAuthError as exc:
            held = [p.raw for p in planned if not p.settled]
            self.queue.release(self.wid, held)
            self.health.auth_failed(exc, len(held))
            return
        self.acknowledge(
            delivery.settle(planned, sink_points, result, self.wid, time.time(), final=True)
        )
        if result.error is not None:
            self.health.failed(result.error)
        elif sink_points:
            self.health.ok()

    def _submit(
        self,
        planned: list[delivery.Planned],
        sink_points: list[SinkPoint],
        now: float,
        sink: Sink,
    ) -> SinkResult:
        """Hand the batch to the sink in segments, acknowledging what each request carried as
        soon as the sink has taken it, and renewing the lease between segments, so that a long
        delivery is not mistaken for a dead worker. A stop ends it between two requests; what
        was not sent goes back to the queue."""
        total = SinkResult()
        size = self.config.flux.batch_size if sink.name == "flux" else SEGMENT_POINTS
        offset = 0

        def settle_so_far() -> None:
            self.acknowledge(
                delivery.settle(planned, sink_points, total, self.wid, time.time(), final=False)
            )

        def progress(partial: SinkResult) -> bool:
            delivery.merge_result(total, partial, offset)
            settle_so_far()
            return not self.stopped()

        for offset in range(0, len(sink_points), size):
            segment = sink_points[offset : offset + size]
            started = time.monotonic()
            result = sink.submit(segment, now, progress)
            telemetry.SINK_LATENCY.labels(sink.name).observe(time.monotonic() - started)
            delivery.merge_result(total, result, offset)
            if result.error is not None:
                total.error = result.error
                break
            settle_so_far()
            if self.stopped() or result.stopped:
                break  # draining: the rest goes back to the queue
            if offset + size < len(sink_points):
                try:
                    self.queue.renew(self.wid, self.config.worker_lease)
                except redisconn.REDIS_ERRORS:
                    logger.debug("lease not renewed (Redis unavailable)")
        return total
