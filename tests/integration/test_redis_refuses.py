"""A Redis that answers but refuses commands: OOM (``maxmemory`` with ``noeviction``) and MISCONF
(a failed background save with ``stop-writes-on-bgsave-error yes``). The daemon must survive both
like an outage: every loop logs it once with Redis' own text, backs off, says when Redis is
back, and afterwards every point reaches the sink exactly.

Real servers: a private redis-server put into each state, Prometheus scraping itself, the daemon
(``vista run``, 2 workers) and the Flux double writing flux.last into the same Redis.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import redis

from skyline.vista import codec, constants
from skyline.vista.model import DeadLetter
from skyline.vista.redisconn import redis_text
from skyline.vista.testing.servers import PrometheusServer, poll_until
from skyline.vista.validate import current_minute_start
from tests.conftest import RedisFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.daemon import VistaHarness

QUERIES = {"up": "sum(up)", "samples": "sum(scrape_samples_scraped)", "count": "count(up)"}
STEP = 10
HOLD = 12.0  # seconds in each refusing state


def refused(client: redis.Redis, code: str) -> bool:
    """Whether a write is refused with the given error code (OOM, MISCONF). Both writes are
    probes: a background save may fail between them, and then the DEL is refused."""
    try:
        client.set("vista.test.probe", "x")
        client.delete("vista.test.probe")
    except redis.exceptions.ResponseError as exc:
        return redis_text(exc).startswith(code)
    return False


@pytest.mark.slow
def test_daemon_survives_redis_oom_and_misconf_and_delivers_everything_after(
    tmp_path: Path, tmp_redis: RedisFactory, prometheus_server: PrometheusServer
) -> None:
    prometheus_server.wait_for_series("up")
    server = tmp_redis()
    client = server.client()
    names = {key: f"refuse.{key}" for key in QUERIES}
    with FluxServer(redis=client) as flux:
        settings: dict[str, object] = {
            "VISTA_ENABLED": True,
            "REDIS_URL": server.url,
            "VISTA_SINK": "flux",
            "FLUX_IP": "127.0.0.1",
            "FLUX_PORT": flux.port,
            "FLUX_SELF_API_KEY": DEFAULT_KEY,
            "VISTA_WORKER_PROCESSES": 2,
            "VISTA_FETCH_METRICS": tuple(
                (prometheus_server.url, "prometheus", STEP, query, key, "default", "refuse")
                + (None,) * 5
                for key, query in QUERIES.items()
            ),
        }
        harness = VistaHarness(tmp_path / "vista", settings)
        try:
            popen, agent = harness.run_foreground(tmp_path / "vista.stderr")
            workers = {w.pid for w in harness.wait_workers(agent, 2)}
            poll_until(
                lambda: (
                    True
                    if all(flux.worker.forwarded_timestamps().get(m) for m in names.values())
                    else None
                ),
                # the first closed minute with data: up to ~80 s when this test is the first
                # on a fresh session Prometheus (pytest-xdist runs it first, see conftest.py)
                150,
                what="first points at Flux",
            )

            # OOM: every write that may grow memory is refused.
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            assert refused(client, "OOM")
            time.sleep(HOLD)
            assert popen.poll() is None, harness.log_tail()
            client.config_set("maxmemory", 0)
            harness.wait_log(": Redis is back after", count=1, timeout=30)

            # MISCONF: a save point, and a background save that cannot write its file.
            client.config_set("save", "3600 1")
            shutil.rmtree(server.data_dir)
            client.bgsave()
            poll_until(lambda: True if refused(client, "MISCONF") else None, 15, what="MISCONF")
            time.sleep(HOLD)
            assert popen.poll() is None, harness.log_tail()
            client.config_set("save", "")
            client.config_set("stop-writes-on-bgsave-error", "no")
            assert not refused(client, "MISCONF")
            back_at = time.time()

            def caught_up() -> bool | None:
                last = current_minute_start(time.time()) - STEP
                if last < back_at:
                    return None  # a minute that closed after Redis was back
                stamps = flux.worker.forwarded_timestamps()
                for metric in names.values():
                    got = stamps.get(metric, set())
                    if not got or max(got) < last:
                        return None
                return True

            poll_until(caught_up, 150, what="every closed minute at Flux", interval=1.0)
            assert popen.poll() is None and agent.alive()
            assert {w.pid for w in harness.workers(agent)} == workers  # none died
            assert harness.stop_foreground(popen) == 0, harness.log_tail()
        finally:
            harness.cleanup()
        flux.wait_processed()
        forwarded = flux.forwarded_by_metric()
        twice = flux.forwarded_twice
    log = harness.log()
    client.close()

    assert "Traceback" not in log, log[-4000:]
    assert " exited with code " not in log, log[-4000:]
    # Each state is logged with Redis' own text, and the return is said.
    assert "(OutOfMemoryError: OOM command not allowed when used memory > 'maxmemory'" in log
    assert "(ResponseError: MISCONF " in log
    unavailable = [line for line in log.splitlines() if "Redis unavailable" in line]
    per_who: dict[str, int] = {}
    for line in unavailable:
        who = re.search(r"\] [\w.]+: (.*?): Redis unavailable", line)
        key = who.group(1) if who else line
        per_who[key] = per_who.get(key, 0) + 1
    assert per_who and all(n <= 2 for n in per_who.values()), unavailable  # once a state
    assert "Redis is back after" in log

    # Every point from the first one on: no gap, exact values, none twice.
    assert twice == 0
    for key, query in QUERIES.items():
        metric = names[key]
        stamps = sorted(ts for ts, _ in forwarded[metric])
        first, last = stamps[0], stamps[-1]
        assert stamps == list(range(first, last + STEP, STEP)), metric
        body = prometheus_server.query_range(query, first, last, STEP)
        (series,) = body["data"]["result"]
        want = {int(ts): float(v) for ts, v in series["values"]}
        assert dict(forwarded[metric]) == want, metric


def test_cli_commands_report_a_refusing_redis_in_one_line(
    tmp_path: Path, tmp_redis: RedisFactory
) -> None:
    """`vista queue requeue-dead` writes: with Redis in OOM it says so, with Redis' text, and
    exits 1 (no traceback); `vista queue` and `vista status` only read, and still work."""
    server = tmp_redis()
    client = server.client()
    letter = DeadLetter("d1", "test", time.time(), "w", '{"v": 0}', "refuse.m")
    client.hset(constants.DEAD_KEY, letter.id, codec.encode_dead(letter))
    harness = VistaHarness(
        tmp_path / "vista",
        {
            "VISTA_ENABLED": True,
            "REDIS_URL": server.url,
            "VISTA_SINK": "graphite",
            "CARBON_HOST": "127.0.0.1",
        },
    )
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        requeue = harness.cli("queue", "requeue-dead")
        counts = harness.cli("queue")
        status = harness.cli("status")
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    assert requeue.returncode == 1, str(requeue)
    assert "redis error at" in requeue.stdout and " OOM " in requeue.stdout, str(requeue)
    assert "command not allowed when used memory > 'maxmemory'" in requeue.stdout
    assert "Traceback" not in requeue.stderr + requeue.stdout, str(requeue)
    assert counts.returncode == 0 and "dead:        1" in counts.stdout, str(counts)
    assert "Traceback" not in status.stderr, str(status)
