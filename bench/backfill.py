"""Benchmark: a history backfill of N series x 30 days at 60 s from a source answering like
Prometheus' ``query_range`` (at most 11,000 points per series per request), into a counting
sink.

The backfill runs as the job's code runs in the agent (:class:`skyline.vista.backfill.Backfill`:
the plan, ``VISTA_BACKFILL_CONCURRENCY`` requests in flight, JSON decoding, validation,
in-order delivery and one checkpoint write per chunk to a real redis-server), in this process;
only the sink is replaced by one that counts points. The source runs in a process of its own
(aiohttp); it caches each window's answer, so its CPU is mostly sending bytes.

Printed: points/s, requests/s, the job's CPU seconds (and per million points), the source's
CPU, peak RSS and RSS at each quarter of the run (flat = memory does not grow with the length of
the history). Then the same with a request budget (``requests_per_second`` in
``VISTA_REMOTE_HOSTS``) on a smaller number of series: its time is set by the budget.

    .venv/bin/python bench/backfill.py                    # 1,000 series (43.2 M points)
    .venv/bin/python bench/backfill.py --series 10000     # the full 432 M points
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import gc
import json
import multiprocessing.connection
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bench.common import (
    _Child,
    loadavg,
    proc_usage,
    self_cpu,
    self_peak_mb,
    table,
    wait_for_low_load,
)
from skyline.vista import config, constants
from skyline.vista.backfill import Backfill, BackfillRequest, resolve
from skyline.vista.backfill_fetch import ChunkResult
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.context import JobContext
from skyline.vista.jobs.record import new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore
from skyline.vista.sinks import Progress, SinkPoint, SinkResult
from skyline.vista.testing.servers import RedisServer
from tests.support.web import LocalApp

DAYS = 30
STEP = 60
AIM_PPS = 720_000

# ------------------------------------------------------------------------------ the source


class _State:
    def __init__(self) -> None:
        self.requests = 0
        self.points = 0
        self.cache: dict[tuple[int, int, int], tuple[bytes, bytes, int]] = {}


def _window_body(start: int, end: int, step: int) -> tuple[bytes, bytes, int]:
    """The answer around the series' labels: (before, after, points); values follow the time
    (the same for every series: the client cannot tell, the server need not recompute)."""
    values = ",".join(
        f'[{ts},"{(ts // STEP) % 997 * 0.25 + 0.125!r}"]' for ts in range(start, end + 1, step)
    )
    before = b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":'
    after = f',"values":[{values}]}}]}}}}'.encode()
    return before, after, (end - start) // step + 1


def _app(state: _State) -> web.Application:
    async def query_range(request: web.Request) -> web.Response:
        query = request.query
        try:
            start, end = int(float(query["start"])), int(float(query["end"]))
            step = int(float(query.get("step", "60s").rstrip("s")))
        except (KeyError, ValueError):
            return web.json_response({"status": "error", "errorType": "bad_data"}, status=400)
        if (end - start) // step + 1 > 11_000:
            error = {
                "status": "error",
                "errorType": "bad_data",
                "error": "exceeded maximum resolution of 11,000 points per timeseries",
            }
            return web.json_response(error, status=400)
        key = (start, end, step)
        cached = state.cache.get(key)
        if cached is None:
            cached = state.cache[key] = _window_body(start, end, step)
        before, after, points = cached
        labels = json.dumps({"__name__": "bench", "query": query.get("query", "")}).encode()
        state.requests += 1
        state.points += points
        return web.Response(body=before + labels + after, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query_range", query_range, allow_head=False)
    return app


async def _serve(conn: multiprocessing.connection.Connection) -> None:
    state = _State()
    local = await LocalApp(_app(state)).start(backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        command, _ = conn.recv()
        if command == "stop":
            stop.set()
        conn.send((state.requests, state.points))

    loop.add_reader(conn.fileno(), on_command)
    conn.send(local.port)
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await local.stop()


def serve(conn: multiprocessing.connection.Connection) -> None:
    asyncio.run(_serve(conn))


class PromSource(_Child):
    target = serve
    name = "bench-prom-source"

    def counts(self) -> tuple[int, int]:
        requests, points = self.call("counts")
        return int(requests), int(points)


# ------------------------------------------------------------------------------ the sink


class CountingSink:
    """Takes every point; counts points and batches."""

    name = "count"

    def __init__(self) -> None:
        self.points = 0
        self.batches = 0

    def submit(
        self, points: Sequence[SinkPoint], now: float, progress: Progress | None = None
    ) -> SinkResult:
        self.points += len(points)
        self.batches += 1
        return SinkResult(handled=len(points))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ a run


@dataclass
class Run:
    label: str
    series: int
    points: int = 0
    requests: int = 0
    seconds: float = 0.0
    job_cpu: float = 0.0
    source_cpu: float = 0.0
    peak_mb: float = 0.0
    rss_quarters: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def pps(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def settings(
    redis_url: str, source_url: str, series: int, tmp: Path, budget: float | None
) -> VistaConfig:
    entries = [
        {
            "remote_host": source_url,
            "remote_host_type": "prometheus",
            "frequency": STEP,
            "remote_target": f'bench{{n="{n}"}}',
            "graphite_target": f"m{n:05d}",
            "uri": "default",
            "namespace_prefix": "bench",
        }
        for n in range(series)
    ]
    hosts: dict[str, Any] = {}
    if budget:
        hosts[source_url] = {"requests_per_second": budget}
    values = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": tuple(entries),
        "REDIS_URL": redis_url,
        "VISTA_SINK": "graphite",
        "CARBON_HOST": "127.0.0.1",
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": 1e12,
        "VISTA_REMOTE_HOSTS": hosts,
        "LOG_PATH": str(tmp),
        "PID_PATH": str(tmp),
    }
    return config.validate(values, str(tmp / "settings.py"))


def rss_mb() -> float:
    return proc_usage(_self_pid()).rss_mb


def _self_pid() -> int:
    import os

    return os.getpid()


def run(
    label: str, redis_server: RedisServer, source: PromSource, series: int, budget: float | None
) -> Run:
    result = Run(label, series)
    client = redis_server.client()
    client.flushall()
    with tempfile.TemporaryDirectory(prefix="vista-bench-backfill-") as tmp:
        cfg = settings(redis_server.url, source.url, series, Path(tmp), budget)
        now = time.time()
        until = int(now) // STEP * STEP - STEP
        request = BackfillRequest(all_=True, start=until - DAYS * 86400 + STEP, until=until)
        params = resolve(cfg, request, {}, now)
        assert not isinstance(params, str), params
        job_kind = kind("backfill")
        store = JobStore(client, job_kind.name, job_kind.keys)
        store.submit(new_job("backfill", params.as_json()))
        claimed = store.claim()
        assert claimed is not None
        record, token = claimed
        ctx = JobContext(record, cfg, client, store, token)
        sink = CountingSink()
        quarters: set[int] = set()

        def on_chunk(chunk_result: ChunkResult) -> None:
            if chunk_result.chunk.index + 1 in quarters:
                result.rss_quarters.append(rss_mb())

        backfill = Backfill(ctx, params, sink, on_chunk=on_chunk)
        total = len(backfill.chunks)
        quarters.update(total * q // 4 for q in (1, 2, 3, 4))
        requests0, _ = source.counts()
        source0 = source.usage()
        cpu0 = self_cpu()
        began = time.perf_counter()
        asyncio.run(backfill.run())
        result.seconds = time.perf_counter() - began
        result.job_cpu = self_cpu() - cpu0
        result.source_cpu = source.usage().minus(source0)
        requests1, _ = source.counts()
        result.requests = requests1 - requests0
        result.points = sink.points
        result.peak_mb = self_peak_mb()
        expected = series * DAYS * 1440
        if sink.points != expected:
            result.problems.append(f"the sink got {sink.points:,} points of {expected:,}")
        if ctx.current_progress.done != total:
            result.problems.append(f"{ctx.current_progress.done}/{total} chunks checkpointed")
    client.close()
    return result


def row(r: Run) -> list[str]:
    quarters = " / ".join(f"{mb:.0f}" for mb in r.rss_quarters)
    return [
        r.label,
        f"{r.series:,}",
        f"{r.points:,}",
        f"{r.seconds:.1f}",
        f"{r.pps:,.0f}",
        f"{r.requests:,}",
        f"{r.rps:,.1f}",
        f"{r.job_cpu:.1f}",
        f"{r.job_cpu / (r.points / 1e6) if r.points else 0:.2f}",
        f"{r.source_cpu:.1f}",
        f"{r.peak_mb:.0f}",
        quarters,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000, help="series (full run: 10,000)")
    parser.add_argument("--budget", type=float, default=20.0, help="requests/s of the budgeted run")
    parser.add_argument("--budget-series", type=int, default=50, help="series of the budgeted run")
    parser.add_argument("--max-load", type=float, default=3.0, help="first wait for load below")
    args = parser.parse_args()
    # As in a job process (procutil.start_child): the GC's youngest generation less often.
    gc.set_threshold(constants.GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    print(f"start: {wait_for_low_load(args.max_load, 60)}")
    began = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vista-bench-redis-") as tmp:
        with RedisServer(Path(tmp), unix_socket=True) as redis_server, PromSource() as source:
            runs.append(run("unbudgeted", redis_server, source, args.series, None))
            if args.budget_series:
                label = f"{args.budget:g} req/s budget"
                runs.append(run(label, redis_server, source, args.budget_series, args.budget))
    headers = [
        "run", "series", "points", "s", "points/s", "requests", "req/s", "job cpu s",
        "cpu s/M pts", "source cpu s", "peak MB", "RSS MB at 1/4..4/4",
    ]  # fmt: skip
    print()
    print(table(headers, [row(r) for r in runs]))
    print()
    main_run = runs[0]
    full = 10_000 * DAYS * 1440
    print(
        f"unbudgeted: {main_run.pps:,.0f} points/s (aim >= {AIM_PPS:,}: "
        f"{'met' if main_run.pps >= AIM_PPS else 'MISSED'}, {main_run.pps / AIM_PPS:.2f}x); "
        f"the full 10,000 series (432 M points) at this rate: {full / main_run.pps / 60:.1f} min"
        if main_run.pps
        else "unbudgeted: no points"
    )
    for r in runs[1:]:
        print(
            f"{r.label}: {r.rps:.1f} requests/s, {r.pps:,.0f} points/s: the time is set by the "
            f"budget (10,000 series = 40,000 requests: {40_000 / args.budget / 60:.0f} min)"
        )
    for r in runs:
        for problem in r.problems:
            print(f"PROBLEM {r.label}: {problem}")
    summary = {
        "bench": "backfill",
        "series": main_run.series,
        "points_per_s": round(main_run.pps),
        "requests_per_s": round(main_run.rps, 1),
        "job_cpu_s": round(main_run.job_cpu, 1),
        "peak_mb": round(main_run.peak_mb),
        "load_end": loadavg(),
        "seconds": round(time.monotonic() - began, 1),
    }
    print(f"\nend: load average {loadavg()}")
    print("SUMMARY " + json.dumps(summary, separators=(",", ":")))
    return 1 if any(r.problems for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
