"""History backfill jobs against real servers: 30 days at 60 s of 50 Prometheus series (loaded
with promtool) and 50 Graphite series (whisper files read by a real graphite-web), into a real
carbon-cache, compared point by point; the job process SIGKILLed mid-way and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista import config
from skyline.vista.backfill import BackfillRequest, resolve
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.record import JobRecord, Status, new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore
from skyline.vista.testing.servers import (
    SYSTEM_PYTHON,
    CarbonServer,
    GraphiteWebServer,
    PrometheusServer,
    RedisServer,
    poll_until,
)
from tests.integration.test_jobs import Supervised, job_pid, wait_status

STEP = 60
DAYS = 30
METRICS = 50
RETENTION = "60s:35d"

_WHISPER_WRITE = r"""
import json, sys, whisper
root, spec = sys.argv[1], json.load(sys.stdin)
for path, points in spec.items():
    full = root + "/" + path
    import os
    os.makedirs(os.path.dirname(full), exist_ok=True)
    whisper.create(full, [(60, 35 * 1440)], xFilesFactor=0, aggregationMethod="average")
    whisper.update_many(full, points)
"""

_WHISPER_READ = r"""
import json, sys, time, whisper
root, start, end, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.load(sys.stdin)
out = {}
for name in names:
    path = root + "/" + name.replace(".", "/") + ".wsp"
    try:
        (first, last, step), values = whisper.fetch(path, start - 1, end)
    except (whisper.WhisperException, OSError):
        out[name] = []
        continue
    out[name] = [[first + i * step, v] for i, v in enumerate(values) if v is not None]
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    @property
    def stamps(self) -> range:
        return range(self.start, self.end + 1, STEP)


def value(source: int, n: int, ts: int) -> float:
    """Exact in binary and in text: whole numbers and quarters."""
    return source * 1_000_000 + n * 10_000 + (ts // STEP) % 10_000 + 0.25 * (n % 4)


def prom_metric(n: int) -> str:
    return f"bf.prom.m{n:02d}"


def graphite_metric(n: int) -> str:
    return f"bf.gw.m{n:02d}"


@pytest.fixture(scope="module")
def span() -> Span:
    now = int(time.time()) // STEP * STEP
    return Span(now - DAYS * 86400, now - 10 * STEP)


@pytest.fixture(scope="module")
def prom_source(tmp_path_factory: pytest.TempPathFactory, span: Span) -> Iterator[PrometheusServer]:
    lines = ["# TYPE bf_m gauge"]
    for n in range(METRICS):
        lines += [f'bf_m{{n="{n}"}} {value(1, n, ts)!r} {ts}' for ts in span.stamps]
    server = PrometheusServer(tmp_path_factory.mktemp("prom-bf"), history="\n".join(lines))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def graphite_source(
    tmp_path_factory: pytest.TempPathFactory, span: Span
) -> Iterator[GraphiteWebServer]:
    carbon = CarbonServer(tmp_path_factory.mktemp("carbon-src"), retentions=RETENTION)
    carbon._prepare()  # whisper files first: carbon only serves them
    spec = {
        f"src/m{n:02d}.wsp": [(ts, value(2, n, ts)) for ts in span.stamps] for n in range(METRICS)
    }
    subprocess.run(
        [SYSTEM_PYTHON, "-c", _WHISPER_WRITE, str(carbon.whisper_dir)],
        input=json.dumps(spec),
        text=True,
        check=True,
        timeout=120,
    )
    carbon.start()
    web = GraphiteWebServer(tmp_path_factory.mktemp("graphite-src"), carbon)
    web.start()
    yield web
    web.stop()
    carbon.stop()


@pytest.fixture
def sink_carbon(tmp_path: Path) -> Iterator[CarbonServer]:
    carbon = CarbonServer(tmp_path / "carbon-sink", retentions=RETENTION)
    carbon.start()
    yield carbon
    carbon.stop()


def settings(
    tmp_path: Path,
    redis_server: RedisServer,
    prom: PrometheusServer,
    web: GraphiteWebServer,
    carbon: CarbonServer,
    **extra: Any,
) -> VistaConfig:
    entries: list[object] = []
    for n in range(METRICS):
        entries.append(
            {
                "remote_host": prom.url,
                "remote_host_type": "prometheus",
                "frequency": STEP,
                "remote_target": f'bf_m{{n="{n}"}}',
                "graphite_target": f"m{n:02d}",
                "uri": "default",
                "namespace_prefix": "bf.prom",
            }
        )
        entries.append(
            {
                "remote_host": web.url,
                "remote_host_type": "graphite",
                "frequency": STEP,
                "remote_target": f"src.m{n:02d}",
                "graphite_target": f"m{n:02d}",
                "uri": "/render/?from=-10minutes&format=json&target=",
                "namespace_prefix": "bf.gw",
            }
        )
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": tuple(entries),
        "REDIS_URL": redis_server.url,
        "VISTA_SINK": "graphite",
        "CARBON_HOST": "127.0.0.1",
        "CARBON_PICKLE_PORT": carbon.pickle_port,
        "CARBON_PORT": carbon.line_port,
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": float("inf"),  # as the test carbon
        "LOG_PATH": str(tmp_path / "log"),
        "PID_PATH": str(tmp_path / "run"),
        **extra,
    }
    return config.validate(values, str(tmp_path / "settings.py"))


def stored(carbon: CarbonServer, names: list[str], span: Span) -> dict[str, list[list[Any]]]:
    proc = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            _WHISPER_READ,
            str(carbon.whisper_dir),
            str(span.start),
            str(span.end),
        ],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    found: dict[str, list[list[Any]]] = json.loads(proc.stdout)
    return found


def expected(span: Span) -> dict[str, list[list[Any]]]:
    found: dict[str, list[list[Any]]] = {}
    for n in range(METRICS):
        found[prom_metric(n)] = [[ts, value(1, n, ts)] for ts in span.stamps]
        found[graphite_metric(n)] = [[ts, value(2, n, ts)] for ts in span.stamps]
    return found


def submit(client: redis.Redis, cfg: VistaConfig, span: Span) -> tuple[JobStore, JobRecord]:
    params = resolve(
        cfg, BackfillRequest(all_=True, start=span.start, until=span.end), {}, time.time()
    )
    assert not isinstance(params, str), params
    job_kind = kind("backfill")
    store = JobStore(client, job_kind.name, job_kind.keys)
    return store, store.submit(new_job("backfill", params.as_json()))


@pytest.mark.slow
def test_thirty_days_of_fifty_prometheus_and_fifty_graphite_series_survive_a_sigkill(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    prom_source: PrometheusServer,
    graphite_source: GraphiteWebServer,
    sink_carbon: CarbonServer,
    span: Span,
) -> None:
    cfg = settings(tmp_path, redis_server, prom_source, graphite_source, sink_carbon)
    store, job = submit(redis_client, cfg, span)
    with Supervised(cfg, redis_client, tmp_path, (kind("backfill"),)) as supervised:
        pid = job_pid(supervised.pool, job.id)

        def midway() -> JobRecord | None:
            record = store.get(job.id)
            p = record.progress if record else None
            return record if p and p.total and p.done >= p.total // 3 else None

        before = poll_until(midway, 120, what="a third of the chunks", interval=0.01)
        os.kill(pid, signal.SIGKILL)
        record = wait_status(store, job.id, Status.DONE, timeout=180)
    assert record.attempts == 2
    assert before.progress.done < record.progress.total
    want = expected(span)
    total = sum(len(points) for points in want.values())
    # Each chunk counted once, the one in flight at the kill included: nothing repeated.
    assert record.progress.points == total and record.progress.errors == 0
    # 50 Prometheus series x 4 windows of <= 11,000 points, 50 Graphite series in 3 batches
    # of 20 (VISTA_GRAPHITE_BATCH_SIZE) x 5 windows of a week.
    assert record.progress.total == 50 * 4 + 3 * 5
    names = sorted(want)
    deadline = time.monotonic() + 60
    while True:
        got = stored(sink_carbon, names, span)
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = {m: len(want[m]) - len(got.get(m, [])) for m in names if got.get(m) != want[m]}
    assert not missing, f"differs from the source (missing points per metric): {missing}"
