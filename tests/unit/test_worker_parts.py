"""The worker's small parts apart from Redis: sink health (sink_health.py), the create-budget
split (admission.py) and the counters (acknowledge.WorkerStats)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from skyline.vista import codec
from skyline.vista.acknowledge import WorkerStats
from skyline.vista.admission import CREATE_WAIT_MAX, nap_for, split_deferred
from skyline.vista.backoff import Backoff
from skyline.vista.delivery import Settlement
from skyline.vista.errors import SinkAuthError, SinkError
from skyline.vista.model import QueueItem
from skyline.vista.sink_health import AUTH_WAIT, SinkHealth
from skyline.vista.worker import stop_patience
from tests.support.settings import make_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health() -> tuple[SinkHealth, Clock]:
    clock = Clock()
    return SinkHealth("flux", Backoff(base=1.0, cap=8.0, jitter=0.0, clock=clock)), clock


def test_a_failing_sink_backs_off_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sink, clock = health()
    sink.failed(SinkError("refused"))
    sink.failed(SinkError("refused"))
    assert not sink.ready() and sink.remaining() == pytest.approx(2.0)
    clock.now += 2.0
    assert sink.ready()
    sink.ok()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "flux sink failed (refused)" in warnings[0].getMessage()
    assert [r.getMessage() for r in caplog.records][-1] == "flux sink accepts points again"
    sink.failed(SinkError("again"))
    assert sink.remaining() == pytest.approx(1.0)  # the backoff started over


def test_refused_credentials_wait_at_least_auth_wait() -> None:
    sink, _ = health()
    sink.auth_failed(SinkAuthError("Flux answered 401"), 3)
    assert sink.remaining() == pytest.approx(AUTH_WAIT)


def queued(metric: str) -> tuple[str, QueueItem]:
    made = QueueItem("id-" + metric, metric, "prometheus", "http://p", "up", ((60, 1.0),), 0.0)
    return codec.encode_item(made), made


def test_items_of_deferred_metrics_are_split_off() -> None:
    a, b, a2 = queued("vista.a"), queued("vista.b"), queued("vista.a")
    keep, wait = split_deferred([a, b, a2], {"vista.a"})
    assert keep == [b] and wait == [a[0], a2[0]]
    assert nap_for(0.0) == 0.05 and nap_for(0.3) == 0.3 and nap_for(9.0) == CREATE_WAIT_MAX


def test_worker_stats_add_up_settlements() -> None:
    stats = WorkerStats()
    stats.record(Settlement(delivered_points=5, rejected_points=1, delivered_items=2))
    stats.record(Settlement(delivered_points=3))
    assert (stats.items, stats.points, stats.rejected) == (2, 8, 1)


def test_a_stopping_worker_waits_for_redis_within_the_drain_and_half_its_lease(
    tmp_path: Path,
) -> None:
    assert stop_patience(make_config(tmp_path)) == 9.0  # 10 s drain, 60 s lease
    assert stop_patience(make_config(tmp_path, VISTA_WORKER_LEASE=8)) == 4.0
    assert stop_patience(make_config(tmp_path, VISTA_SHUTDOWN_TIMEOUT=1)) == 0.0
