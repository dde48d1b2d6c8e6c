"""Counters for the Prometheus /metrics endpoint and Skyline-style self-metrics to Graphite.

The counters live in every process; when the agent serves /metrics it runs prometheus_client in
multi-process mode (``PROMETHEUS_MULTIPROC_DIR`` set before any process imports this module), so
worker counters are summed, including those of workers that have died.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from skyline.vista import lag
from skyline.vista.plaintext import send_plaintext
from skyline.vista.validate import format_value

logger = logging.getLogger(__name__)

# Histogram buckets, seconds: one remote request, one fetch cycle, one batch handed to the sink.
REQUEST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CYCLE = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 120)
BATCH = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

POINTS_FETCHED = Counter(
    "vista_points_fetched", "Points fetched from remote sources and queued", ["host"]
)
FETCH_ERRORS = Counter(
    "vista_fetch_errors", "Failed fetches by remote host and kind", ["host", "kind"]
)
FETCH_LATENCY = Histogram(
    "vista_fetch_request_seconds", "Remote HTTP request latency by host", ["host"], buckets=REQUEST
)
FETCH_CYCLES = Histogram("vista_fetch_cycle_seconds", "Duration of fetch cycles", buckets=CYCLE)
FETCH_UNFINISHED = Counter(
    "vista_fetch_unfinished", "Metrics not finished within VISTA_FETCHER_PROCESS_MAX_RUNTIME"
)
WINDOWS_GIVEN_UP = Counter(
    "vista_fetch_windows_given_up", "Failed fetch windows given up after every retry"
)
POINTS_DELIVERED = Counter("vista_points_delivered", "Points accepted by the sink", ["sink"])
POINTS_DROPPED = Counter("vista_points_dropped", "Points removed by validation", ["reason"])
POINTS_DEAD = Counter("vista_points_dead_lettered", "Points the sink rejected permanently")
ITEMS_DEAD = Counter("vista_items_dead_lettered", "Queue items dead-lettered", ["reason"])
SINK_ERRORS = Counter("vista_sink_errors", "Transient sink failures", ["sink", "kind"])
SINK_LATENCY = Histogram(
    "vista_sink_batch_seconds", "Time to hand one batch to the sink", ["sink"], buckets=BATCH
)
CREATES_GRANTED = Counter(
    "vista_carbon_creates_granted", "New metric names granted a carbon create token"
)
CREATES_DEFERRED = Counter(
    "vista_carbon_creates_deferred",
    "Queue items kept queued because their new metric name had no carbon create token yet",
)
DELIVERY_LAG = Histogram(
    "vista_delivery_lag_seconds",
    "Acknowledgement at the sink minus the newest point of each delivered queue item",
    buckets=lag.BUCKETS,
)
BUDGET_WAITS = Counter(
    "vista_request_budget_waits",
    "Requests that waited for a token of their remote host's request budget",
    ["host", "priority"],
)
BUDGET_WAIT_SECONDS = Counter(
    "vista_request_budget_wait_seconds",
    "Seconds requests waited for their remote host's request budget",
    ["host", "priority"],
)
DUPLICATE_HOSTNAME = Counter(
    "vista_duplicate_hostname",
    "Member heartbeats that found another agent's token under this VISTA_HOSTNAME",
)
WORKER_RESTARTS = Counter("vista_worker_restarts", "Worker processes restarted by the agent")


@dataclass(frozen=True)
class QueueSnapshot:
    queued: int
    inflight: int
    dead: int
    pending_metrics: int
    worst_lag: float | None = None
    failing_windows: int = 0


class QueueCollector(Collector):
    """Queue depth gauges, read from Redis at scrape time (agent only)."""

    def __init__(self, read: Callable[[], QueueSnapshot | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self._read()
        if snapshot is None:
            return
        for name, doc, value in (
            ("vista_queue_items", "Items waiting in vista.fetcher.metrics.json", snapshot.queued),
            ("vista_queue_inflight", "Items held by workers", snapshot.inflight),
            ("vista_queue_dead", "Dead-lettered items", snapshot.dead),
            (
                "vista_queue_pending_metrics",
                "Metrics with an item queued or in flight",
                snapshot.pending_metrics,
            ),
            (
                "vista_fetch_windows_failing",
                "Failed fetch windows being retried (vista status lists them)",
                snapshot.failing_windows,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        if snapshot.worst_lag is not None:
            yield GaugeMetricFamily(
                "vista_metric_lag_max_seconds",
                "Largest now - watermark over configured metrics",
                value=snapshot.worst_lag,
            )


def start_metrics_server(
    address: tuple[str, int],
    queue_reader: Callable[[], QueueSnapshot | None],
    extra: Sequence[Collector] = (),
) -> object:
    """Serve /metrics on address (multi-process aware when PROMETHEUS_MULTIPROC_DIR is set);
    ``extra`` collectors are read at scrape time too."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(QueueCollector(queue_reader))
    for collector in extra:
        registry.register(collector)
    server, _thread = start_http_server(address[1], addr=address[0], registry=registry)
    return server


def graphite_safe(text: str) -> str:
    """A remote host label as one Graphite path element: http://a.b:9090 → a_b_9090."""
    host = text.split("://", 1)[-1]
    return "".join(c if c.isalnum() or c in "-" else "_" for c in host)


def self_metric_lines(
    prefix: str, values: Mapping[str, float], now: float | None = None
) -> list[str]:
    ts = int(time.time() if now is None else now)
    return [
        f"{prefix}.{name} {format_value(float(v))} {ts}\n" for name, v in sorted(values.items())
    ]


class SelfMetrics:
    """Sends skyline.vista<S>.* lines to carbon plaintext; failures are logged once."""

    def __init__(self, host: str | None, port: int, prefix: str) -> None:
        self.address = (host, port) if host else None
        self.prefix = prefix
        self._failing = False

    def send(self, values: Mapping[str, float], now: float | None = None) -> bool:
        if self.address is None or not values:
            return False
        lines = self_metric_lines(self.prefix, values, now)
        try:
            send_plaintext((str(self.address[0]), self.address[1]), lines, timeout=3.0)
        except (TimeoutError, OSError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "self-metrics to %s:%s not sent: %s", *self.address, exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("self-metrics to %s:%s sent again", *self.address)
        self._failing = False
        return True
