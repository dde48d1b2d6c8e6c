"""Redis can fail over: Vista follows a Redis Sentinel failover by itself.

A real redis-server primary and replica and three real ``redis-sentinel`` processes (quorum 2,
passwords on the data nodes and on the sentinels; ``sentinel_set`` in tests/conftest.py).
``vista run`` with ``VISTA_REDIS_SENTINELS`` fetches 8 series from a real Prometheus into a real
carbon-cache through the recording proxy. Mid-run the primary is SIGKILLed; the sentinels
promote the replica, and Vista, without being told anything, goes on with the new primary: every
10 s slot of every metric is in whisper with its exact value, once. The primary is killed right
after a delivery (when the test sees every metric caught up), the worst moment: the batch whose
acknowledgement died with the primary is sent again after the failover (carbon overwrites the
slot with the same value); nothing else may be sent twice.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from skyline.vista import config, constants, redisconn
from skyline.vista.testing.servers import LOOPBACK, CarbonServer, SentinelSet
from tests.conftest import PrometheusFactory
from tests.support.carbon_proxy import PickleRecorder
from tests.support.daemon import VistaHarness, wait_for
from tests.support.ha import caught_up, check_delivered, vector_entries

STEP = 10
COUNT = 8


def sentinel_settings(servers: SentinelSet) -> dict[str, object]:
    return {
        "VISTA_REDIS_SENTINELS": servers.addresses,
        "VISTA_REDIS_SENTINEL_SERVICE": servers.service,
        "VISTA_REDIS_SENTINEL_PASSWORD": servers.sentinel_password,
        "REDIS_PASSWORD": servers.password,
    }


def test_a_sentinel_client_finds_the_primary_and_follows_a_failover(
    sentinel_set: SentinelSet,
) -> None:
    """redisconn.connect: the primary by name, with both passwords; a write after the kill
    reaches the promoted replica (retrying through the errors Vista retries on)."""
    values = {"VISTA_SINK": "graphite", "CARBON_HOST": LOOPBACK, **sentinel_settings(sentinel_set)}
    loaded = config.validate(values)
    client = redisconn.connect(loaded.redis)
    try:
        client.set("before", "1")
        assert sentinel_set.replica is not None
        replica = sentinel_set.replica.client()
        wait_for(lambda: replica.get("before"), 10, "the replica to have the write")
        sentinel_set.primary.kill()
        began = time.monotonic()

        def write() -> bool | None:
            try:
                client.set("after", "1")
            except redisconn.REDIS_ERRORS:
                return None
            return True

        wait_for(write, 30, "a write after the failover")
        print(f"failover: writes work again after {time.monotonic() - began:.1f} s")
        assert sentinel_set.primary_port() == sentinel_set.replica.port
        assert replica.get("after") == b"1" and replica.get("before") == b"1"
        replica.close()
    finally:
        client.close()


@pytest.mark.slow
def test_vista_follows_a_failover_and_carbon_gets_every_point(
    tmp_path: Path,
    tmp_prometheus: PrometheusFactory,
    sentinel_set: SentinelSet,
    carbon_server: CarbonServer,
    recorder: PickleRecorder,
    metric_prefix: str,
) -> None:
    prom = tmp_prometheus()
    names, entries = vector_entries(prom.url, metric_prefix, COUNT, STEP)
    harness = VistaHarness(
        tmp_path / "vista",
        {
            "VISTA_ENABLED": True,
            "VISTA_VERBOSE_LOGGING": True,
            **sentinel_settings(sentinel_set),
            "VISTA_SINK": "graphite",
            "CARBON_HOST": LOOPBACK,
            "CARBON_PORT": carbon_server.line_port,
            "CARBON_PICKLE_PORT": recorder.port,
            "VISTA_WORKER_PROCESSES": 2,
            "VISTA_WORKER_LEASE": 10,
            "VISTA_FETCH_METRICS": entries,
        },
    )
    log = tmp_path / "vista.stderr"
    assert sentinel_set.replica is not None
    try:
        popen, _agent = harness.run_foreground(log)
        now = time.time
        wait_for(lambda: caught_up(recorder, names, now(), STEP), 90, "every metric delivered")

        sentinel_set.primary.kill()
        killed = time.time()
        wait_for(
            lambda: sentinel_set.primary_port() == sentinel_set.replica.port or None,  # type: ignore[union-attr]
            30,
            "the sentinels to promote the replica",
        )
        promoted = time.time()
        print(f"replica promoted {promoted - killed:.1f} s after the primary was killed")
        # Vista goes on by itself: a minute that closes after the promotion is delivered.
        end = wait_for(
            lambda: caught_up(recorder, names, max(now(), promoted + 60), STEP),
            150,
            "every metric delivered after the failover",
        )
        # ... and its bookkeeping is on the new primary.
        with sentinel_set.replica.client() as client:
            marks = client.hgetall(constants.WATERMARK_HASH)
        assert {k.decode() for k in marks} == set(names)
        popen.send_signal(signal.SIGTERM)
        assert popen.wait(30) == 0, harness.log_tail()
    finally:
        harness.cleanup()
    text = harness.log(log)
    assert "Traceback" not in text, text[-3000:]
    assert re.search(r"Redis unavailable \((\w+)", text), text[-3000:]
    assert "Redis is back" in text
    # Only what was in flight when the primary died may be sent again (its acknowledgement
    # was lost with the primary): points first sent in the last seconds before the kill.
    twice = check_delivered(
        recorder, carbon_server, names, end, STEP, resent_window=(killed - 5, killed)
    )
    print(f"points sent again after the failover (in flight at the kill): {twice}")
