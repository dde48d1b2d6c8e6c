"""History backfill jobs against real servers: 30 days at 60 s of 50 Prometheus series (loaded
with promtool) and 50 Graphite series (whisper files read by a real graphite-web), into a real
carbon-cache, compared point by point; the job process SIGKILLed mid-way and resumed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista.fetchqueue import read_watermarks_sync
from skyline.vista.jobs.record import Status
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore
from skyline.vista.testing.servers import (
    CarbonServer,
    GraphiteWebServer,
    PrometheusServer,
    poll_until,
)
from tests.support import whisper
from tests.support.daemon import VISTA_CMD, VistaHarness
from tests.support.rig import Rig
from tests.support.whisper import RETENTION

STEP = 60
DAYS = 30
METRICS = 50


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
    history = "\n".join(lines)
    with PrometheusServer(
        tmp_path_factory.mktemp("prom-bf"), history=history, scrape_self=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def graphite_source(
    tmp_path_factory: pytest.TempPathFactory, span: Span
) -> Iterator[GraphiteWebServer]:
    spec = {
        f"src/m{n:02d}.wsp": [(ts, value(2, n, ts)) for ts in span.stamps] for n in range(METRICS)
    }
    with whisper.graphite_source(
        tmp_path_factory.mktemp("carbon-src"), tmp_path_factory.mktemp("graphite-src"), spec
    ) as web:
        yield web


@pytest.fixture
def sink_carbon(tmp_path: Path) -> Iterator[CarbonServer]:
    carbon = CarbonServer(tmp_path / "carbon-sink", retentions=RETENTION)
    carbon.start()
    yield carbon
    carbon.stop()


LIVE = {
    "live.up": 'up{job="prometheus"}',
    "live.samples": "sum(prometheus_tsdb_head_samples_appended_total)",
}
LIVE_FREQUENCY = 10


def fetch_list(prom: PrometheusServer, web: GraphiteWebServer) -> tuple[object, ...]:
    entries: list[object] = [
        {
            "remote_host": prom.url,
            "remote_host_type": "prometheus",
            "frequency": LIVE_FREQUENCY,
            "remote_target": query,
            "graphite_target": name.split(".", 1)[1],
            "uri": "default",
            "namespace_prefix": "live",
        }
        for name, query in LIVE.items()
    ]
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
    return tuple(entries)


def stored(carbon: CarbonServer, names: list[str], span: Span) -> dict[str, list[list[Any]]]:
    return whisper.stored(carbon, names, span.start, span.end)


def expected(span: Span) -> dict[str, list[list[Any]]]:
    found: dict[str, list[list[Any]]] = {}
    for n in range(METRICS):
        found[prom_metric(n)] = [[ts, value(1, n, ts)] for ts in span.stamps]
        found[graphite_metric(n)] = [[ts, value(2, n, ts)] for ts in span.stamps]
    return found


def watermarks(client: redis.Redis, names: list[str]) -> dict[str, int]:
    return {m: w.timestamp for m, w in read_watermarks_sync(client, names).items()}


class LagSampler:
    """Samples the live metrics' lag (now - watermark) twice a second in a thread."""

    def __init__(self, client: redis.Redis, names: list[str]) -> None:
        self.client = client
        self.names = names
        self.lags: list[float] = []
        self.seen: dict[str, set[int]] = {name: set() for name in names}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.5):
            now = time.time()
            for name, ts in watermarks(self.client, self.names).items():
                self.lags.append(now - ts)
                self.seen[name].add(ts)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


@pytest.mark.slow
def test_thirty_days_of_100_series_backfilled_by_the_agent_through_a_sigkill_live_on_time(
    rig: Rig,
    prom_source: PrometheusServer,
    graphite_source: GraphiteWebServer,
    sink_carbon: CarbonServer,
    span: Span,
) -> None:
    """The real agent (`vista run`) fetches two live series every 10 s while `vista backfill
    --wait` loads 30 days at 60 s of 50 Prometheus and 50 Graphite series. The job process is
    SIGKILLed a third of the way: the agent resumes it from its checkpoint, carbon then holds
    exactly the source's points (compared point by point), each chunk is counted once, the
    live watermarks keep advancing and their lag stays within one interval plus one cycle."""
    harness = VistaHarness(
        rig.tmp_path / "vista",
        {
            "VISTA_ENABLED": True,
            "REDIS_URL": rig.redis_server.url,
            "VISTA_SINK": "graphite",
            "CARBON_HOST": "127.0.0.1",
            "CARBON_PICKLE_PORT": sink_carbon.pickle_port,
            "CARBON_PORT": sink_carbon.line_port,
            "VISTA_CARBON_MAX_CREATES_PER_MINUTE": 1e12,  # the test carbon creates freely
            "VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE": False,
            "VISTA_FETCH_METRICS": fetch_list(prom_source, graphite_source),
        },
    )
    live = sorted(LIVE)
    job_kind = kind("backfill")
    store = JobStore(rig.redis, job_kind.name, job_kind.keys)
    log = rig.tmp_path / "vista-run.log"
    try:
        harness.run_foreground(log)
        poll_until(
            lambda: True if len(watermarks(rig.redis, live)) == len(live) else None,
            60,
            what="the first live points",
        )
        argv = [
            *VISTA_CMD, "--settings", str(harness.settings_path), "backfill", "--match", "bf.*",
            "--from", str(span.start), "--until", str(span.end), "--wait",
        ]  # fmt: skip
        with LagSampler(rig.redis, live) as sampler:
            began = time.monotonic()
            cli = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

            def a_third() -> tuple[str, int] | None:
                for record in store.all():
                    p = record.progress
                    if p.total and p.done >= p.total // 3:
                        started = re.findall(
                            rf"job {record.id} \(backfill\) started in pid (\d+)", log.read_text()
                        )
                        return record.id, int(started[-1])
                return None

            job_id, pid = poll_until(a_third, 120, what="a third of the chunks", interval=0.05)
            os.kill(pid, signal.SIGKILL)
            out, err = cli.communicate(timeout=300)
            took = time.monotonic() - began
    finally:
        if "cli" in locals() and cli.poll() is None:
            cli.kill()
        harness.cleanup()
    assert cli.returncode == 0, f"{out}\n{err}"
    lines = out.splitlines()
    assert lines[0].startswith("100 metric(s) (graphite, prometheus)"), lines[0]
    assert "215 chunk(s)" in lines[0]
    assert lines[-1] == f"job {job_id} done"
    assert any("215/215 chunks (100.0%)" in line for line in lines)
    record = store.get(job_id)
    assert record is not None and record.status is Status.DONE and record.attempts == 2
    want = expected(span)
    # Each chunk counted once, the one in flight at the kill included: nothing repeated.
    assert record.progress.points == sum(len(p) for p in want.values())
    assert record.progress.errors == 0
    names = sorted(want)
    deadline = time.monotonic() + 60
    while True:
        got = stored(sink_carbon, names, span)
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = {m: len(want[m]) - len(got.get(m, [])) for m in names if got.get(m) != want[m]}
    assert not missing, f"differs from the source (missing points per metric): {missing}"
    # Live points kept flowing, never later than the interval a point needs to be complete
    # plus one fetch cycle (and 5 s of slack).
    assert took > 2 * LIVE_FREQUENCY, f"the backfill took only {took:.1f}s: not a test of overlap"
    for name, seen in sampler.seen.items():
        # At least every other cycle on this loaded 2-core machine (each delivery then brings
        # the points of both intervals): the lag below is what is asserted.
        assert len(seen) >= took / (2 * LIVE_FREQUENCY) - 1, (name, len(seen), took)
    worst = max(sampler.lags)
    print(
        f"backfill {took:.1f}s; live lag during it: max {worst:.1f}s, {len(sampler.lags)} samples"
    )
    assert worst < 2 * LIVE_FREQUENCY + 5, f"max live lag {worst:.1f}s during the backfill"
