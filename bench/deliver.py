"""Benchmark: drain 1,000,000 queued points over 10,000 metrics with 1 and 2 workers.

The queue is filled directly with ``FetchQueue.push`` (10,000 metrics x 100 points at 60 s
steps in the past, one item per metric) in a real redis-server, then real
:class:`~skyline.vista.worker.Worker` processes (spawned, as the agent starts them) deliver it
to

* (a) the Flux double of ``tests/fakes/flux.py`` (``record=False``), in a process of its own so
  that its CPU is not the workers'; the points are older than Flux's max age, so Vista sends
  ``"fill": "true"`` for most of them, as it must;
* (a') the same double's listener alone (``emulate_worker=False``): "Flux listener only:
  what Vista can push; a real Flux runs its worker in other processes". The double emulates
  Flux's worker (per-point ``flux.last`` checks in a private fakeredis) in the listener's
  process, and on this 2-core machine that CPU competes with the Vista worker being measured;
  a real Flux's listener only validates and queues. This scenario keeps every listener rule
  (keys, validation, 400/207 answers, counts) and forwards nothing. (a) stays the default
  figure; (a') says how much of (a) is the double;
* (b) a real carbon-cache (``skyline/vista/testing/servers.py``), fresh for each run;
  afterwards a sample of metrics is read back from carbon (cache-query and whisper) and must
  hold all 100 points.

The time runs from the moment the queue is filled (the workers are already started and idle,
so neither their start-up nor the filling counts) until the queue, the in-flight hash and the
pending marks are empty; then every watermark is checked. CPU seconds and peak RSS of the
workers come from /proc.

The original's method, one HTTP GET to ``/metric_data`` per point, is re-enacted against the
same Flux double (a sample of points, one ``requests.Session``) for the ratio, and against the
listener-only double for (a')'s ratio.

Aims: at least 100,000 points/s into carbon, 50,000 points/s into Flux, and 100 times the
one-GET-per-point rate. Not a test: it prints figures and ratios.

    .venv/bin/python bench/deliver.py            # every scenario (about 1 minute)
    .venv/bin/python bench/deliver.py --quick    # 100,000 points (about 15 s)
    .venv/bin/python bench/deliver.py --sinks flux,flux-listener --workers 1 --repeat 2
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis
import requests

from bench.common import (
    FluxProcess,
    ProcUsage,
    load1,
    loadavg,
    proc_usage,
    table,
    wait_for_low_load,
)
from skyline.vista import codec, config, constants
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FetchQueue, watermark_keys
from skyline.vista.logs import LogSpec
from skyline.vista.model import QueueItem, new_id
from skyline.vista.pool import ProcessPool
from skyline.vista.testing.servers import CarbonServer, RedisServer, poll_until
from skyline.vista.worker import Worker, worker_id
from tests.fakes.flux import DEFAULT_KEY

CARBON_AIM = 100_000.0  # points/s
FLUX_AIM = 50_000.0
RATIO_AIM = 100.0
FLUX_MAX_AGE = 3600
STEP = 60

FLUX_SINKS = ("flux", "flux-listener")
SINK_TITLES = {
    "flux": "Flux double (listener + worker emulation, the default figure)",
    "flux-listener": (
        "Flux listener only: what Vista can push; a real Flux runs its worker in other processes"
    ),
    "carbon": "carbon-cache (pickle)",
}

HOST = socket.gethostname()  # VISTA_HOSTNAME's default: the workers' ids start with it


@dataclass
class Run:
    sink: str  # flux | flux-listener | carbon
    workers: int
    run: int
    metrics: int
    points: int
    fill_s: float = 0.0  # building and pushing the items (not timed as delivery)
    seconds: float = 0.0  # queue filled -> queue, in-flight and pending empty
    first_claim_s: float = 0.0  # queue filled -> first item in flight
    worker_cpu: float = 0.0  # all workers, during the drain
    worker_cpu_total: float = 0.0  # all workers, start-up included
    worker_peak_mb: float = 0.0  # the largest worker's VmHWM
    sink_cpu: float = 0.0
    redis_cpu: float = 0.0
    accepted: int = 0  # Flux: points accepted; carbon: points of the sample found
    requests: int = 0  # Flux: POSTs answered
    checked: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    @property
    def label(self) -> str:
        suffix = f" #{self.run}" if self.run > 1 else ""
        return f"{self.sink} {self.workers} worker{'s' if self.workers > 1 else ''}{suffix}"


# --------------------------------------------------------------------------- the queue


def metric_name(i: int) -> str:
    return f"bench.deliver.host{i % 100:02d}.m{i:05d}"


def value_of(i: int, k: int) -> float:
    return round((i % 1000) * 1.5 + k * 0.25 + 0.125, 3)


def fill_queue(client: redis.Redis, metrics: int, per_metric: int, now: float) -> list[int]:
    """Queue one item of ``per_metric`` points per metric; returns the timestamps used."""
    minute = int(now) // 60 * 60
    stamps = [minute - STEP * (per_metric - k) for k in range(per_metric)]
    chains = []
    for i in range(metrics):
        item = QueueItem(
            id=new_id(),
            metric=metric_name(i),
            source="graphite",
            host="http://bench-source:8080",
            target=f"bench.source.m{i:05d}",
            points=tuple((ts, value_of(i, k)) for k, ts in enumerate(stamps)),
            fetched_at=now,
        )
        chains.append((item.metric, [codec.encode_item(item)]))
    queued = FetchQueue(client).push(chains)  # one atomic script: the drain starts after it
    if queued != metrics:
        raise RuntimeError(f"pushed {queued} of {metrics} metrics")
    return stamps


def queue_state(client: redis.Redis) -> tuple[int, int, int]:
    pipe = client.pipeline(transaction=False)
    pipe.scard(constants.QUEUE_KEY)
    pipe.hlen(constants.INFLIGHT_KEY)
    pipe.hlen(constants.PENDING_KEY)
    queued, inflight, pending = pipe.execute()
    return int(queued), int(inflight), int(pending)


def check_watermarks(client: redis.Redis, sink: str, metrics: int, last_ts: int) -> list[str]:
    """Every metric's watermark at its last point, in the hash Vista writes for ``sink`` (with
    Flux: vista.last.metric_data; Flux itself writes flux.last.*)."""
    problems = []
    marks = client.hgetall(watermark_keys(sink).write)
    if len(marks) != metrics:
        problems.append(f"{len(marks)} watermarks for {metrics} metrics")
    wrong = 0
    for raw in marks.values():
        mark = codec.decode_watermark_hash(raw)
        if mark is None or mark.timestamp != last_ts:
            wrong += 1
    if wrong:
        problems.append(f"{wrong} watermarks are not at the last point ({last_ts})")
    members = int(client.scard(constants.VISTA_METRICS_KEY))
    if members != metrics:
        problems.append(f"vista.metrics holds {members} metrics, {metrics} expected")
    dead = int(client.hlen(constants.DEAD_KEY))
    if dead:
        problems.append(f"{dead} dead letters")
    return problems


# --------------------------------------------------------------------------- one drain


def settings(
    sink: str, workers: int, redis_url: str, tmp: Path, port: int, line_port: int = 0
) -> VistaConfig:
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_WORKER_PROCESSES": workers,
        "REDIS_URL": redis_url,
        "LOG_PATH": str(tmp),
        "PID_PATH": str(tmp),
        "FLUX_MAX_AGE": FLUX_MAX_AGE,
        # The test carbon creates without limit (MAX_CREATES_PER_MINUTE = inf): no pacing.
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": float("inf"),
    }
    if sink in FLUX_SINKS:
        values.update(
            VISTA_SINK="flux", FLUX_IP="127.0.0.1", FLUX_PORT=port, FLUX_SELF_API_KEY=DEFAULT_KEY
        )
    else:
        values.update(
            VISTA_SINK="graphite",
            CARBON_HOST="127.0.0.1",
            CARBON_PICKLE_PORT=port,
            CARBON_PORT=line_port,
        )
    return config.validate(values, str(tmp / "settings.py"))


def start_workers(cfg: VistaConfig, count: int, log_file: Path) -> ProcessPool:
    """Worker processes in the agent's supervised pool (not respawned: a death is reported)."""
    spec = LogSpec(str(log_file), verbose=False, secrets=tuple(cfg.secrets()))
    pool = ProcessPool()
    for index in range(count):
        pool.start(f"worker-{index}", partial(Worker, os.getpid(), cfg, index, spec))
    return pool


def wait_ready(client: redis.Redis, workers: ProcessPool) -> None:
    """Every worker has written its heartbeat: it is polling the (empty) queue."""

    def probe() -> bool | None:
        for name, worker in workers.running():
            if not worker.is_alive():
                raise RuntimeError(f"{name} died (exit code {worker.exitcode})")
            assert worker.pid is not None
            index = int(name.split("-")[1])
            key = constants.WORKER_HEARTBEAT_PREFIX + worker_id(
                socket.gethostname(), index, worker.pid
            )
            if not client.exists(key):
                return None
        return True

    poll_until(probe, 60.0, what="the workers to start", interval=0.05)


def stop_workers(workers: ProcessPool) -> None:
    """SIGTERM: each worker finishes its batch and leaves (SIGKILL after 30 s)."""
    workers.stop_all(30)


def drain(
    client: redis.Redis,
    workers: ProcessPool,
    metrics: int,
    per_metric: int,
    run: Run,
    timeout: float,
) -> list[int]:
    """Fill the queue and time the drain; returns the timestamps of the points."""
    processes = [process for _, process in workers.running()]
    pids = [w.pid for w in processes if w.pid is not None]
    before = [proc_usage(pid) for pid in pids]
    began = time.perf_counter()
    stamps = fill_queue(client, metrics, per_metric, time.time())
    t0 = time.perf_counter()
    run.fill_s = t0 - began
    first: float | None = None
    usage: list[ProcUsage] = before
    while True:
        queued, inflight, pending = queue_state(client)
        now = time.perf_counter()
        if first is None and (inflight or queued < metrics):
            first = now
        if not (queued or inflight or pending):
            usage = [proc_usage(pid) for pid in pids]
            break
        if now - t0 > timeout:
            run.problems.append(f"not drained after {timeout:.0f} s: {queued}/{inflight} left")
            usage = [proc_usage(pid) for pid in pids]
            break
        if not all(w.is_alive() for w in processes):
            run.problems.append("a worker died")
            break
        time.sleep(0.01)
    run.seconds = time.perf_counter() - t0
    run.first_claim_s = (first or t0) - t0
    run.worker_cpu = sum(u.minus(b) for u, b in zip(usage, before, strict=True))
    run.worker_cpu_total = sum(u.cpu for u in usage)
    run.worker_peak_mb = max((u.peak_mb for u in usage), default=0.0)
    return stamps


def log_problems(log_file: Path) -> list[str]:
    if not log_file.exists():
        return []
    bad = [
        line
        for line in log_file.read_text(errors="replace").splitlines()
        if " ERROR " in line or " WARNING " in line or "Traceback" in line
    ]
    return [f"worker log: {line[:200]}" for line in bad[:3]] + (
        [f"... {len(bad)} warning/error lines in all"] if len(bad) > 3 else []
    )


def run_flux(
    sink: str,
    flux: FluxProcess,
    redis_server: RedisServer,
    workers_n: int,
    run_no: int,
    metrics: int,
    per_metric: int,
    tmp: Path,
) -> Run:
    run = Run(sink, workers_n, run_no, metrics, metrics * per_metric)
    client = redis_server.client()
    client.flushall()
    cfg = settings(sink, workers_n, redis_server.url, tmp, flux.port)
    log_file = tmp / f"{sink}-{workers_n}-{run_no}.log"
    workers = start_workers(cfg, workers_n, log_file)
    try:
        wait_ready(client, workers)
        accepted0, requests0 = flux.counts()
        assert redis_server.pid is not None
        sink0, redis0 = flux.usage(), proc_usage(redis_server.pid)
        stamps = drain(client, workers, metrics, per_metric, run, timeout=600)
        run.sink_cpu = flux.usage().minus(sink0)
        run.redis_cpu = proc_usage(redis_server.pid).minus(redis0)
        accepted1, requests1 = flux.counts()
    finally:
        stop_workers(workers)
    run.accepted, run.requests = accepted1 - accepted0, requests1 - requests0
    if run.accepted != run.points:
        run.problems.append(f"Flux accepted {run.accepted} of {run.points} points")
    run.problems += check_watermarks(client, "flux", metrics, stamps[-1])
    run.problems += log_problems(log_file)
    run.checked = f"Flux accepted {run.accepted:,} in {run.requests:,} POSTs; watermarks"
    client.close()
    return run


def carbon_points(carbon: CarbonServer, metric: str, first: int, last: int) -> set[int]:
    """Timestamps of ``metric`` that carbon holds, in its cache or in whisper."""
    found = {int(ts) for ts, _ in carbon.cache_query(metric)}
    if carbon.whisper_path(metric).exists():
        found |= {ts for ts, v in carbon.fetch(metric, first - STEP, last) if v is not None}
    return found


def check_carbon(
    carbon: CarbonServer, metrics: int, stamps: list[int], sample: int
) -> tuple[int, list[str]]:
    """Read ``sample`` random metrics back: each must hold every point (cache or whisper)."""
    rng = random.Random(7)
    chosen = sorted(rng.sample(range(metrics), min(sample, metrics)))
    want = set(stamps)
    found_total = 0
    problems = []
    for i in chosen:
        metric = metric_name(i)

        def probe(metric: str = metric) -> set[int] | None:
            found = carbon_points(carbon, metric, stamps[0], stamps[-1])
            return found if found >= want else None

        try:
            found_total += len(poll_until(probe, 30.0, what=f"{metric} in carbon") & want)
        except TimeoutError:
            seen = carbon_points(carbon, metric, stamps[0], stamps[-1])
            problems.append(f"carbon holds {len(seen & want)} of {len(want)} points of {metric}")
    return found_total, problems


def wait_for_whisper_files(carbon: CarbonServer, metrics: int, timeout: float) -> tuple[int, float]:
    """Carbon creates a whisper file for each metric it received (asynchronously): wait until
    there is one per metric. Returns (files, seconds waited)."""
    began = time.monotonic()
    files = 0
    while True:
        files = sum(
            1
            for _dir, _subdirs, names in os.walk(carbon.whisper_dir)
            for name in names
            if name.endswith(".wsp")
        )
        if files >= metrics or time.monotonic() - began > timeout:
            return files, time.monotonic() - began
        time.sleep(0.5)


def run_carbon(
    redis_server: RedisServer,
    workers_n: int,
    run_no: int,
    metrics: int,
    per_metric: int,
    tmp: Path,
    sample: int,
) -> Run:
    run = Run("carbon", workers_n, run_no, metrics, metrics * per_metric)
    client = redis_server.client()
    client.flushall()
    carbon_dir = tmp / f"carbon-{workers_n}-{run_no}"
    # 60 s steps over 3 h: the points (at most 100 minutes old) fit, and 10,000 whisper files
    # take 22 MB instead of the 430 MB of the test default.
    carbon = CarbonServer(carbon_dir, retentions="60s:3h")
    carbon.start()
    try:
        cfg = settings(
            "carbon", workers_n, redis_server.url, tmp, carbon.pickle_port, carbon.line_port
        )
        log_file = tmp / f"carbon-{workers_n}-{run_no}.log"
        workers = start_workers(cfg, workers_n, log_file)
        try:
            wait_ready(client, workers)
            assert redis_server.pid is not None and carbon.pid is not None
            sink0, redis0 = proc_usage(carbon.pid), proc_usage(redis_server.pid)
            stamps = drain(client, workers, metrics, per_metric, run, timeout=600)
            run.redis_cpu = proc_usage(redis_server.pid).minus(redis0)
            run.sink_cpu = proc_usage(carbon.pid).minus(sink0)
        finally:
            stop_workers(workers)
        run.problems += check_watermarks(client, "graphite", metrics, stamps[-1])
        run.problems += log_problems(log_file)
        run.accepted, problems = check_carbon(carbon, metrics, stamps, sample)
        run.problems += problems
        files, waited = wait_for_whisper_files(carbon, metrics, 180.0)
        if files != metrics:
            run.problems.append(f"carbon created {files} whisper files for {metrics} metrics")
        expected = min(sample, metrics) * per_metric
        run.checked = (
            f"carbon holds {run.accepted:,}/{expected:,} points of {min(sample, metrics)} "
            f"sampled metrics; {files:,} whisper files ({waited:.0f} s after the drain); "
            "watermarks"
        )
    finally:
        carbon.stop()
        shutil.rmtree(carbon_dir, ignore_errors=True)
        client.close()
    return run


# --------------------------------------------------------------------------- the original method


@dataclass
class GetRun:
    points: int
    seconds: float = 0.0
    cpu: float = 0.0
    flux_cpu: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: int = 0

    @property
    def rate(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0


def one_get_per_point(flux: FluxProcess, points: int) -> GetRun:
    """The original worker's delivery: GET /metric_data?metric=&value=&timestamp=&key= for
    each point, in sequence. The timestamps are within Flux's max age (the original sent no
    fill, so older points would be refused), so every GET is a success."""
    per_metric = 50
    minute = int(time.time()) // 60 * 60
    session = requests.Session()
    result = GetRun(points)
    accepted0, _ = flux.counts()
    flux0 = flux.usage()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for n in range(points):
        i, k = divmod(n, per_metric)
        ts = minute - STEP * (per_metric - k)
        url = (
            f"{flux.url}/metric_data?metric=bench.get.m{i:05d}&value={value_of(i, k)}"
            f"&timestamp={ts}&key={DEFAULT_KEY}"
        )
        response = session.get(url, timeout=(5, 45))
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
    result.seconds = time.perf_counter() - t0
    result.cpu = time.process_time() - cpu0
    result.flux_cpu = flux.usage().minus(flux0)
    result.accepted = flux.counts()[0] - accepted0
    session.close()
    return result


# --------------------------------------------------------------------------- report


HEADERS = [
    "scenario",
    "points",
    "seconds",
    "points/s",
    "1st claim s",
    "wkr cpu s",
    "wkr cpu tot",
    "wkr peak MB",
    "sink cpu s",
    "redis cpu s",
    "fill s",
    "check",
]


NOTES = """\
seconds: from the moment the queue is filled (the workers are already started and idle) until
  the queue, the in-flight hash and the pending marks are empty. 1st claim s: until the first
  item is in flight (the idle workers poll every 0.5 s). wkr cpu s: CPU seconds of all workers
  during the drain (tot: since they started). wkr peak MB: the largest worker's peak RSS.
  sink / redis cpu s: CPU seconds of the Flux double or carbon-cache, and of redis-server,
  during the drain. fill s: building and pushing the items (not counted)."""


def row(r: Run) -> list[str]:
    return [
        r.label,
        f"{r.points:,}",
        f"{r.seconds:.2f}",
        f"{r.rate:,.0f}",
        f"{r.first_claim_s:.2f}",
        f"{r.worker_cpu:.2f}",
        f"{r.worker_cpu_total:.2f}",
        f"{r.worker_peak_mb:.0f}",
        f"{r.sink_cpu:.2f}",
        f"{r.redis_cpu:.2f}",
        f"{r.fill_s:.2f}",
        "ok" if not r.problems else "PROBLEM",
    ]


def summarise(runs: list[Run], gets: dict[str, GetRun]) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {"bench": "deliver"}

    def rates(sink: str, workers: int) -> list[float]:
        return [r.rate for r in runs if r.sink == sink and r.workers == workers]

    for sink, aim in (("carbon", CARBON_AIM), ("flux", FLUX_AIM), ("flux-listener", FLUX_AIM)):
        for workers in (1, 2):
            found = rates(sink, workers)
            if not found:
                continue
            worst = min(found)
            shown = " / ".join(f"{x:,.0f}" for x in found)
            verdict = "MET" if worst >= aim else "MISSED"
            lines.append(
                f"{sink}, {workers} worker(s): {shown} points/s (aim >= {aim:,.0f}): {verdict}, "
                f"{worst / aim:.1f}x the aim"
            )
            summary[f"{sink.replace('-', '_')}_{workers}w_pps"] = round(worst)
    ratios: dict[tuple[str, int], float] = {}
    for sink, get in gets.items():
        key = sink.replace("-", "_")
        lines.append(
            f"original method (1 GET per point to the same double, {sink}): {get.rate:,.0f} "
            f"points/s ({get.points:,} GETs in {get.seconds:.2f} s, client CPU {get.cpu:.2f} s, "
            f"double CPU {get.flux_cpu:.2f} s, statuses {get.statuses})"
        )
        summary["one_get_per_point_pps" if sink == "flux" else f"{key}_get_pps"] = round(get.rate)
        for workers in (1, 2):
            found = rates(sink, workers)
            if found and get.rate:
                ratio = min(found) / get.rate
                ratios[sink, workers] = ratio
                verdict = "MET" if ratio >= RATIO_AIM else "MISSED"
                lines.append(
                    f"{sink}, {workers} worker(s) vs one GET per point to the same double: "
                    f"{ratio:.0f}x (aim >= {RATIO_AIM:.0f}x): {verdict}"
                )
                summary[f"{key}_{workers}w_vs_get"] = round(ratio, 1)
    for workers in (1, 2):
        if ("flux", workers) in ratios and ("flux-listener", workers) in ratios:
            lines.append(
                f"side by side, {workers} worker(s), ratio to one GET per point: "
                f"{ratios['flux', workers]:.0f}x with the double's worker emulation (default "
                f"figure), {ratios['flux-listener', workers]:.0f}x listener only (what Vista "
                "can push; a real Flux runs its worker in other processes)"
            )
    peak = max((r.worker_peak_mb for r in runs), default=0.0)
    lines.append(f"largest worker peak RSS: {peak:.0f} MB")
    summary["worker_peak_mb"] = round(peak)
    return lines, summary


def plan(
    sinks: list[str],
    worker_counts: list[int],
    repeat: int,
    fluxes: dict[str, FluxProcess],
    redis_server: RedisServer,
    metrics: int,
    per_metric: int,
    sample: int,
) -> list[Callable[[Path], Run]]:
    """The runs, in order: each repeat runs every sink in turn, so that the scenarios compared
    side by side (Flux with and without the worker emulation) share the same minutes."""
    jobs: list[Callable[[Path], Run]] = []
    for workers in worker_counts:
        for run_no in range(1, repeat + 1):
            for sink in sinks:
                if sink in fluxes:
                    job = partial(
                        run_flux,
                        sink,
                        fluxes[sink],
                        redis_server,
                        workers,
                        run_no,
                        metrics,
                        per_metric,
                    )
                else:
                    job = partial(
                        run_carbon,
                        redis_server,
                        workers,
                        run_no,
                        metrics,
                        per_metric,
                        sample=sample,
                    )
                jobs.append(job)
    return jobs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 metrics (100,000 points)")
    parser.add_argument("--metrics", type=int, default=0, help="metrics (default 10,000)")
    parser.add_argument("--points", type=int, default=100, help="points per metric")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    parser.add_argument(
        "--sinks",
        default="flux,flux-listener,carbon",
        help="some of flux (the double with its worker emulation), flux-listener (its "
        "listener only), carbon",
    )
    parser.add_argument("--get-points", type=int, default=0, help="GETs for the original method")
    parser.add_argument("--sample", type=int, default=20, help="carbon metrics read back")
    parser.add_argument(
        "--max-load", type=float, default=0.0, help="first wait (<= 60 s) for load below this"
    )
    args = parser.parse_args()
    metrics = args.metrics or (1000 if args.quick else 10_000)
    get_points = args.get_points or (2000 if args.quick else 20_000)
    worker_counts = [int(x) for x in args.workers.split(",") if x]
    sinks = [s for s in args.sinks.split(",") if s]
    unknown = sorted(set(sinks) - set(SINK_TITLES))
    if unknown:
        parser.error(f"--sinks: unknown {unknown}, expected some of {sorted(SINK_TITLES)}")
    total = metrics * args.points
    print(
        f"vista deliver benchmark: {total:,} points ({metrics:,} metrics x {args.points}), "
        f"sinks {sinks}, workers {worker_counts}, {args.repeat} run(s) each"
    )
    for sink in sinks:
        print(f"  {sink}: {SINK_TITLES[sink]}")
    if args.max_load:
        print(wait_for_low_load(args.max_load, 60.0))
    print(f"start: load average {loadavg()}")
    began = time.monotonic()
    runs: list[Run] = []
    gets: dict[str, GetRun] = {}
    with (
        tempfile.TemporaryDirectory(prefix="vista-bench-deliver-") as tmp_name,
        RedisServer(Path(tmp_name) / "redis", unix_socket=True) as redis_server,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        # One double per Flux scenario, each in its own process; the listener-only one never
        # starts the worker emulation.
        fluxes = {
            sink: stack.enter_context(FluxProcess(FLUX_MAX_AGE, sink == "flux"))
            for sink in FLUX_SINKS
            if sink in sinks
        }
        jobs = plan(
            sinks,
            worker_counts,
            args.repeat,
            fluxes,
            redis_server,
            metrics,
            args.points,
            args.sample,
        )
        for job in jobs:
            run = job(tmp)
            runs.append(run)
            print(f"  {' | '.join(row(run))}  (load {load1():.2f})", flush=True)
            for problem in run.problems:
                print(f"    problem: {problem}")
        for sink, flux in fluxes.items():
            get = gets[sink] = one_get_per_point(flux, get_points)
            print(
                f"  one GET per point ({sink}): {get.points:,} GETs in {get.seconds:.2f} s = "
                f"{get.rate:,.0f} points/s (load {load1():.2f})",
                flush=True,
            )
            if get.accepted != get.points:
                print(f"    problem: Flux accepted {get.accepted} of {get.points} GET points")
    print()
    print(table(HEADERS, [row(r) for r in runs]))
    print()
    print(NOTES)
    for r in runs:
        print(f"  {r.label}: {r.checked}")
    print()
    lines, summary = summarise(runs, gets)
    for line in lines:
        print(line)
    summary["load_end"] = loadavg()
    summary["seconds"] = round(time.monotonic() - began, 1)
    print(f"\nend: load average {loadavg()}; {time.monotonic() - began:.0f} s in all")
    print("SUMMARY " + json.dumps(summary, separators=(",", ":")))
    failed = any(r.problems for r in runs) or any(g.accepted != g.points for g in gets.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
