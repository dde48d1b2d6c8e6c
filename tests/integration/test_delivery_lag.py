"""Delivery lag: a worker records now - newest point of each delivered item, in the
/metrics histogram and in Redis, where ``vista status`` reads the p50/p99 of the last hour."""

from __future__ import annotations

import os
import time

from prometheus_client import REGISTRY

from skyline.vista import lag, report
from skyline.vista.sinks.carbon import CarbonSink
from skyline.vista.testing.servers import CarbonServer
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import WorkerLoop
from tests.integration.test_worker import carbon_config, push_series
from tests.support.items import run_until_drained
from tests.support.rig import Rig


def histogram_count() -> float:
    value = REGISTRY.get_sample_value("vista_delivery_lag_seconds_count")
    return value or 0.0


def test_lag_of_delivered_items_reaches_metrics_and_status(
    rig: Rig, carbon_server: CarbonServer, metric_prefix: str
) -> None:
    closed = current_minute_start(time.time())
    # 9 fresh items (newest point 1-2 minutes old) and one 3 hours old, each its own metric.
    series = {
        f"{metric_prefix}.fresh{i}": [(closed - 120, 1.0), (closed - 60, 2.0)] for i in range(9)
    }
    series[f"{metric_prefix}.old"] = [(closed - 3 * 3600, 5.0)]
    push_series(rig.redis, series, per_item=10)
    cfg = carbon_config(rig.tmp_path, rig.redis_server.url, carbon_server, "pickle")
    before = histogram_count()
    loop = WorkerLoop(
        cfg, f"test:{os.getpid()}:0", rig.redis_server.client(), CarbonSink(cfg.carbon)
    )
    run_until_drained(loop, rig.redis, 20)
    acked = time.time()
    assert histogram_count() - before == 10
    counts = lag.read_counts(rig.redis, acked)
    assert sum(counts) == 10
    fresh = acked - (closed - 60)
    assert counts[lag.bucket_of(fresh)] >= 9 - 1  # the ack may straddle a bucket bound
    assert counts[lag.bucket_of(3 * 3600 + fresh - 60)] == 1
    summary = lag.summarise(counts)
    assert summary.p50 is not None and summary.p99 is not None
    assert 60 <= summary.p50 <= 180 and summary.p99 > 3600
    lines = report.redis_report(cfg)
    assert any(
        line.startswith("delivery lag (point -> acknowledged), last hour: p50 ")
        and "over 10 item(s)" in line
        for line in lines
    ), lines
    # Counts older than an hour no longer count.
    assert sum(lag.read_counts(rig.redis, acked + 3660)) == 0
