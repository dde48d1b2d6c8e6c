"""The agent's own figures: the /metrics endpoint (VISTA_METRICS_ADDRESS; its queue gauges are
read from Redis at scrape time) and, every minute, the workers' counters sent to carbon as
Skyline's ``skyline.vista<S>.worker.*`` self-metrics."""

from __future__ import annotations

import logging
import time

import redis

from skyline.vista import constants, redisconn, telemetry
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import BudgetCollector
from skyline.vista.errors import ConfigError
from skyline.vista.fetchqueue import FetchQueue

logger = logging.getLogger("skyline.vista.agent")

SELF_METRICS_EVERY = 60.0


class AgentMetrics:
    """The settings are those of the agent's start: /metrics and the self-metrics' carbon do
    not change on reload."""

    def __init__(self, config: VistaConfig, client: redis.Redis, queue: FetchQueue) -> None:
        self.config = config
        self.client = client
        self.queue = queue
        self.hostname = config.hostname
        self.sender = telemetry.SelfMetrics(
            config.self_metrics.host, config.self_metrics.port, config.self_metrics.prefix
        )
        self._next_send = time.monotonic() + SELF_METRICS_EVERY

    def serve(self) -> None:
        """Serve /metrics when VISTA_METRICS_ADDRESS is set; a port in use is a ConfigError."""
        address = self.config.metrics_address
        if not address:
            return
        try:
            telemetry.start_metrics_server(
                address,
                self.queue_snapshot,
                [BudgetCollector(self.client, self.config.carbon_max_creates_per_minute)],
            )
        except OSError as exc:
            raise ConfigError(
                [
                    f"VISTA_METRICS_ADDRESS: cannot serve /metrics on {address[0]}:{address[1]}: "
                    f"{exc.strerror or exc}"
                ],
                self.config.path,
            ) from None
        logger.info("serving /metrics on %s:%d", *address)

    def tick(self) -> None:
        """Send the workers' counters every SELF_METRICS_EVERY seconds."""
        now = time.monotonic()
        if now >= self._next_send:
            self.send_worker_self_metrics()
            self._next_send = now + SELF_METRICS_EVERY

    def send_worker_self_metrics(self) -> None:
        key = f"{constants.HOST_STATS_KEY_PREFIX}{self.hostname}"
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(key)
            pipe.delete(key)
            pipe.scard(constants.QUEUE_KEY)
            stats, _, queued = pipe.execute()
        except redisconn.REDIS_ERRORS:
            return
        values = {k.decode(): float(v) for k, v in stats.items()}
        self.sender.send(
            {
                "worker.metrics_sent_to_flux": values.get("metrics_sent", 0.0),
                "worker.points_sent": values.get("points_sent", 0.0),
                "worker.vista.fetcher.metrics.json": float(queued),
            }
        )

    def queue_snapshot(self) -> telemetry.QueueSnapshot | None:
        """The queue's counts for the /metrics gauges; None when Redis is unavailable."""
        try:
            counts = self.queue.counts()
            failing = self.queue.failing_windows()
        except redisconn.REDIS_ERRORS:
            return None
        return telemetry.QueueSnapshot(
            counts.queued,
            counts.inflight,
            counts.dead,
            counts.pending_metrics,
            failing_windows=sum(len(h) for h in failing.values()),
        )
