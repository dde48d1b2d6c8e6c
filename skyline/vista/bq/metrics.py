"""BigQuery counters for ``/metrics`` and Skyline-style self-metrics to carbon.

Prometheus (summed over job processes by the agent's multi-process registry):
``vista_bq_rows_read_total{account}``, ``vista_bq_points_sent_total{account,kind}``,
``vista_bq_intervals_total{account,kind,result}`` (done|failed),
``vista_bq_bytes_billed_total{account}``, ``vista_bq_job_seconds{kind}``.

Carbon plaintext at the end of each job run:
``skyline.vista[.<SERVER_METRICS_NAME>].bq.<account>.<kind>.{rows_read, points_sent,
intervals_done, intervals_failed, bytes_billed, job_duration}``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from skyline.vista.config import VistaConfig

if TYPE_CHECKING:
    from skyline.vista.bq.runner import Totals

logger = logging.getLogger(__name__)

ROWS = Counter("vista_bq_rows_read", "Rows read from BigQuery (or archives)", ["account"])
POINTS = Counter("vista_bq_points_sent", "BigQuery points handed to the sink", ["account", "kind"])
INTERVALS = Counter(
    "vista_bq_intervals", "BigQuery job intervals by result", ["account", "kind", "result"]
)
BYTES = Counter("vista_bq_bytes_billed", "Bytes billed as BigQuery reported them", ["account"])
JOB_SECONDS = Histogram(
    "vista_bq_job_seconds",
    "Duration of BigQuery job runs",
    ["kind"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)


def observe_interval(account: str, kind: str, rows: int, points: int, bytes_billed: int) -> None:
    ROWS.labels(account).inc(rows)
    POINTS.labels(account, kind).inc(points)
    if bytes_billed:
        BYTES.labels(account).inc(bytes_billed)


def self_metric_lines(
    config: VistaConfig, account: str, kind: str, totals: Totals, duration: float, now: float
) -> list[str]:
    prefix = f"{config.self_metrics.prefix}.bq.{account}.{kind}"
    values = {
        "rows_read": totals.rows,
        "points_sent": totals.points,
        "intervals_done": totals.done,
        "intervals_failed": len(totals.failed),
        "bytes_billed": totals.bytes_billed,
        "job_duration": round(duration, 3),
    }
    return [f"{prefix}.{name} {value} {int(now)}\n" for name, value in values.items()]


def send_self_metrics(
    config: VistaConfig, account: str, kind: str, totals: Totals, duration: float
) -> None:
    if not config.self_metrics.host:
        return
    from skyline.vista.plaintext import send_plaintext

    lines = self_metric_lines(config, account, kind, totals, duration, time.time())
    try:
        send_plaintext((config.self_metrics.host, config.self_metrics.port), lines)
    except OSError as exc:
        logger.warning("BigQuery self-metrics not sent: %s", exc)
