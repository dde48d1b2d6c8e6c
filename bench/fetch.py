"""Benchmark: one fetch cycle over N metrics (1,000 and 10,000).

A local server (its own process) answers like Graphite's ``/render`` and Prometheus'
``/api/v1/query_range``, with a configurable delay per request (``--delays``, default 0 and
20 ms). Each scenario runs ONE real
:class:`~skyline.vista.fetch_cycle.FetchCycle` over N configured metrics in a fresh process
(so its CPU seconds and peak memory are its own), pushing the items into a real redis-server
through :class:`~skyline.vista.fetchqueue.AsyncFetchQueue` (or with ``queue=None``, no Redis).

The cycle time is measured the way the Fetcher runs a cycle: read the watermarks and pending
marks of every metric from Redis, then ``FetchCycle.run`` (fetch, validate, encode, push).

The original's method (one blocking ``requests`` GET per metric, in sequence, and one SADD per
metric) is re-enacted against the same server for 1,000 Graphite metrics.

Aims: 10,000 Graphite metrics in under 1 s, 10,000 Prometheus metrics in under 5 s per cycle,
under 200 MB (2-core machine). Not a test: it prints figures and ratios.

    .venv/bin/python bench/fetch.py            # every scenario (about 2 minutes)
    .venv/bin/python bench/fetch.py --quick    # a smoke run (about 15 s)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
import requests

from bench.common import (
    SourceServer,
    load1,
    loadavg,
    proc_usage,
    self_peak_mb,
    table,
    wait_for_low_load,
)
from skyline.vista import config, constants, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.fetch_cycle import FetchCycle
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.sources.http import HostState, new_session
from skyline.vista.testing.servers import RedisServer

GRAPHITE_AIM = 1.0  # seconds per cycle, 10,000 metrics
PROMETHEUS_AIM = 5.0
MEMORY_AIM = 200.0  # MB
FLUX_KEY = "a" * 32
GRAPHITE_URI = "/render/?from=-10minutes&format=json&target="


@dataclass(frozen=True)
class Scenario:
    source: str  # graphite | prometheus
    metrics: int
    delay: float = 0.0  # seconds the server waits before each answer
    batch: int = 20  # VISTA_GRAPHITE_BATCH_SIZE
    redis: bool = True  # push into Redis (False: queue=None, a dry run)
    concurrency: int = 10  # VISTA_MAX_CONCURRENCY_PER_HOST
    method: str = "vista"  # vista | original (one blocking GET per metric)

    @property
    def label(self) -> str:
        n = f"{self.metrics // 1000}k" if self.metrics % 1000 == 0 else str(self.metrics)
        parts = [self.source, n]
        if self.method == "original":
            parts.append("ORIGINAL 1 GET/metric")
        elif self.source == "graphite":
            parts.append(f"batch {self.batch}")
        parts.append(f"delay {self.delay * 1000:g}ms")
        if self.concurrency != 10:
            parts.append(f"conc {self.concurrency}")
        if not self.redis:
            parts.append("no Redis")
        return " ".join(parts)


@dataclass
class Result:
    scenario: Scenario
    run: int
    cycle: float = 0.0  # FetchCycle.run, push to Redis included (first cycle: "cold")
    total: float = 0.0  # watermark + pending reads, then the cycle (what the Fetcher does)
    cpu: float = 0.0  # CPU seconds of the fetching process during ``total``
    warm_cycle: float = 0.0  # the same for the second cycle of the process ("warm")
    warm_total: float = 0.0
    warm_cpu: float = 0.0
    warm_points: int = 0
    cycles: int = 1
    peak_mb: float = 0.0  # ru_maxrss of the fetching process (fresh per scenario)
    rss_before_mb: float = 0.0  # RSS after start-up, before the cycle
    config_s: float = 0.0  # time to validate the settings (start-up, not in the cycle)
    metrics_with_items: int = 0
    points: int = 0
    items: int = 0
    queued: int = 0  # metrics whose items reached Redis
    errors: int = 0
    unfinished: int = 0
    requests: int = 0  # counted by the server
    series: int = 0  # series the server answered
    server_cpu: float = 0.0
    redis_cpu: float = 0.0
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the child process


def entries_for(scenario: Scenario, source_url: str) -> tuple[tuple[object, ...], ...]:
    out: list[tuple[object, ...]] = []
    for i in range(scenario.metrics):
        if scenario.source == "graphite":
            target = f"bench.host{i % 100:02d}.cpu.user.m{i:05d}"
            out.append(
                (source_url, "graphite", 60, target, f"g{i:05d}", GRAPHITE_URI, "remote")
                + (None, None, None, None, ())
            )
        else:
            target = f'bench_metric{{instance="host{i % 100:02d}",n="{i}"}}'
            out.append(
                (source_url, "prometheus", 60, target, f"p{i:05d}", "default", "prom")
                + (None, None, None, None, ())
            )
    return tuple(out)


def build_config(scenario: Scenario, source_url: str, redis_url: str, tmp: str) -> VistaConfig:
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": entries_for(scenario, source_url),
        "VISTA_GRAPHITE_BATCH_SIZE": scenario.batch,
        "VISTA_MAX_CONCURRENCY_PER_HOST": scenario.concurrency,
        "REDIS_URL": redis_url,
        "VISTA_SINK": "flux",
        "FLUX_SELF_API_KEY": FLUX_KEY,
        "LOG_PATH": tmp,
        "PID_PATH": tmp,
    }
    return config.validate(values, f"{tmp}/settings.py")


async def run_vista(cfg: VistaConfig, scenario: Scenario, out: dict[str, Any]) -> None:
    """Two cycles, as a long-lived Fetcher runs them: the first in a fresh process ("cold"),
    the second with the same session and host state ("warm"); Redis is emptied in between."""
    client = redisconn.connect_async(cfg.redis) if scenario.redis else None
    queue = AsyncFetchQueue(client) if client is not None else None
    names = [e.metric for e in cfg.fetch_metrics]
    hosts: dict[str, HostState] = {}
    problems: list[str] = []
    try:
        async with new_session() as session:
            if client is not None:
                await client.ping()  # connected before the clock starts, as in a long-lived fetcher
            out["rss_before_mb"] = proc_usage_self_rss()
            for prefix in ("", "warm_"):
                if client is not None:
                    await client.flushall()
                cpu0, t0 = time.process_time(), time.perf_counter()
                watermarks: dict[str, int] = {}
                pending: set[str] = set()
                if queue is not None:
                    marks = await queue.watermarks(names)
                    watermarks = {m: w.timestamp for m, w in marks.items()}
                    pending = await queue.pending(names)
                cycle = FetchCycle(cfg, session, hosts, queue=queue)
                report = await cycle.run(cfg.fetch_metrics, watermarks, pending)
                t1, cpu1 = time.perf_counter(), time.process_time()
                out[prefix + "cycle"] = report.duration
                out[prefix + "total"] = t1 - t0
                out[prefix + "cpu"] = cpu1 - cpu0
                out[prefix + "points"] = sum(len(r.points) for r in report.results)
                out.update(
                    metrics_with_items=len(report.fetched),
                    items=sum(len(r.items) for r in report.results),
                    queued=report.queued,
                    errors=len(report.errors),
                    unfinished=report.unfinished,
                )
                problems += [f"{r.metric}: {r.error}" for r in report.errors[:3]]
                if len(report.fetched) != scenario.metrics:
                    problems.append(f"{len(report.fetched)} of {scenario.metrics} metrics fetched")
                if client is not None:
                    in_redis = int(await client.scard(constants.QUEUE_KEY))
                    if in_redis != len(report.fetched) or report.queued != len(report.fetched):
                        problems.append(
                            f"{in_redis} items in Redis, {report.queued} reported queued, "
                            f"{len(report.fetched)} expected"
                        )
            out["cycles"] = 2
            out["problems"] = problems
    finally:
        if client is not None:
            await client.aclose()


def run_original(cfg: VistaConfig, out: dict[str, Any]) -> None:
    """The original fetcher's method: per metric, a blocking GET, parse, SADD the item."""
    client = redis.Redis.from_url(cfg.redis.url)
    client.ping()
    session = requests.Session()
    out["rss_before_mb"] = proc_usage_self_rss()
    cpu0, t0 = time.process_time(), time.perf_counter()
    points = fetched = 0
    problems: list[str] = []
    minute = int(time.time()) // 60 * 60
    for entry in cfg.fetch_metrics:
        url = entry.remote_host + entry.uri + entry.remote_target
        response = session.get(url, timeout=(5, 45))
        if response.status_code != 200:
            problems.append(f"{entry.metric}: HTTP {response.status_code}")
            continue
        body = response.json()
        kept = [(ts, v) for v, ts in body[0]["datapoints"] if v is not None and ts < minute]
        if kept:
            item = [entry.remote_host_type, entry.remote_target, entry.metric, "remote", kept]
            client.sadd("bench.original.metrics.json", str(item))
            fetched += 1
            points += len(kept)
    t1, cpu1 = time.perf_counter(), time.process_time()
    out.update(
        cycle=t1 - t0,
        total=t1 - t0,
        cpu=cpu1 - cpu0,
        metrics_with_items=fetched,
        points=points,
        items=fetched,
        queued=fetched,
        problems=problems[:3],
    )
    session.close()
    client.close()


def proc_usage_self_rss() -> float:
    return proc_usage(os.getpid()).rss_mb


def child_main(spec: str, source_url: str, redis_url: str) -> None:
    scenario = Scenario(**json.loads(spec))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vista-bench-fetch-") as tmp:
        began = time.perf_counter()
        cfg = build_config(scenario, source_url, redis_url, tmp)
        out["config_s"] = time.perf_counter() - began
        if scenario.method == "original":
            run_original(cfg, out)
        else:
            asyncio.run(run_vista(cfg, scenario, out))
    out["peak_mb"] = self_peak_mb()
    print("RESULT " + json.dumps(out))


# --------------------------------------------------------------------------- the parent process


def scenarios(quick: bool, delays: list[float]) -> list[Scenario]:
    out: list[Scenario] = []
    if quick:
        for delay in delays:
            out += [
                Scenario("graphite", 1000, delay=delay),
                Scenario("graphite", 1000, delay=delay, batch=100),
                Scenario("prometheus", 1000, delay=delay),
            ]
        return out + [
            Scenario("graphite", 1000, redis=False),
            Scenario("graphite", 1000, method="original"),
        ]
    for delay in delays:
        for n in (1000, 10_000):
            out.append(Scenario("graphite", n, delay=delay))
            out.append(Scenario("graphite", n, delay=delay, batch=100))
        for n in (1000, 10_000):
            out.append(Scenario("prometheus", n, delay=delay))
    if any(delays):
        # The per-host limit (10 requests at once) bounds a slow host: 10,000 requests of
        # 20 ms take at least 20 s at 10, 4 s at 50.
        out.append(Scenario("prometheus", 10_000, delay=max(delays), concurrency=50))
    out += [
        Scenario("graphite", 10_000, redis=False),
        Scenario("prometheus", 10_000, redis=False),
    ]
    out += [Scenario("graphite", 1000, delay=delay, method="original") for delay in delays]
    return out


def run_scenario(
    scenario: Scenario, run: int, source: SourceServer, redis_server: RedisServer
) -> Result:
    client = redis_server.client()
    client.flushall()
    client.close()
    source.set_delay(scenario.delay)
    source.reset()
    assert redis_server.pid is not None
    server0, redis0 = source.usage(), proc_usage(redis_server.pid)
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            json.dumps(asdict(scenario)),
            "--source-url",
            source.url,
            "--redis-url",
            redis_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    server1, redis1 = source.usage(), proc_usage(redis_server.pid)
    result = Result(scenario, run)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        result.problems.append(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return result
    for key, value in json.loads(lines[-1][len("RESULT ") :]).items():
        setattr(result, key, value)
    result.requests, result.series = source.counts()
    result.server_cpu = server1.minus(server0)
    result.redis_cpu = redis1.minus(redis0)
    if result.errors or result.unfinished:
        result.problems.append(f"{result.errors} errors, {result.unfinished} unfinished")
    if result.metrics_with_items != scenario.metrics:
        result.problems.append(
            f"only {result.metrics_with_items} of {scenario.metrics} metrics got points"
        )
    if proc.stderr.strip():
        result.problems.append("stderr: " + proc.stderr.strip()[-300:])
    return result


def row(r: Result) -> list[str]:
    s = r.scenario
    per = max(r.cycles, 1)
    return [
        s.label + (f" #{r.run}" if r.run > 1 else ""),
        f"{r.total:.3f}",
        f"{r.warm_total:.3f}" if r.cycles > 1 else "-",
        f"{r.requests / per:.0f}",
        f"{r.cpu:.2f}",
        f"{r.warm_cpu:.2f}" if r.cycles > 1 else "-",
        f"{r.peak_mb:.0f}",
        f"{r.rss_before_mb:.0f}",
        f"{r.points}",
        f"{r.server_cpu / per:.2f}",
        f"{r.redis_cpu / per:.2f}",
        "ok" if not r.problems else "PROBLEM",
    ]


HEADERS = [
    "scenario",
    "cold s",
    "warm s",
    "requests",
    "cold cpu",
    "warm cpu",
    "peak MB",
    "base MB",
    "points",
    "srv cpu",
    "redis cpu",
    "check",
]

NOTES = """\
cold s / warm s: one cycle as the Fetcher runs it (read the watermarks and pending marks, then
  FetchCycle.run: fetch, validate, encode, push to Redis), wall time; "cold" is the first cycle
  of a fresh process, "warm" the second (same HTTP session and host state, Redis emptied first).
requests: HTTP requests per cycle, counted by the server. cold cpu / warm cpu: CPU seconds of
  the fetching process during that cycle. peak MB: its ru_maxrss; base MB: its RSS before the
  first cycle. srv cpu / redis cpu: CPU seconds per cycle of the source server and of
  redis-server. The original method fetches in a fresh process each run, so it has one cycle."""


def vista_runs(results: list[Result], **match: Any) -> list[Result]:
    def fits(s: Scenario) -> bool:
        return s.method == "vista" and all(getattr(s, k) == v for k, v in match.items())

    return [r for r in results if fits(r.scenario)]


def aim_line(label: str, rs: list[Result], aim: float) -> tuple[str, float, float]:
    cold = max(r.total for r in rs)
    warm = max(r.warm_total for r in rs)
    colds = " / ".join(f"{r.total:.2f}" for r in rs)
    warms = " / ".join(f"{r.warm_total:.2f}" for r in rs)

    def verdict(x: float) -> str:
        return f"{'MET' if x < aim else 'MISSED'} ({x / aim:.2f} of the aim)"

    return (
        f"{label}: cold {colds} s, warm {warms} s (aim < {aim:g} s): "
        f"cold {verdict(cold)}, warm {verdict(warm)}",
        cold,
        warm,
    )


def summarise(results: list[Result]) -> tuple[list[str], dict[str, Any]]:
    lines: list[str] = []
    summary: dict[str, Any] = {"bench": "fetch"}
    g10 = vista_runs(results, source="graphite", metrics=10_000, delay=0.0, batch=20, redis=True)
    p10 = vista_runs(results, source="prometheus", metrics=10_000, delay=0.0, redis=True)
    p10 = [r for r in p10 if r.scenario.concurrency == 10]
    for key, label, rs, aim in (
        ("graphite_10k", "10k graphite (batch 20, delay 0, into Redis)", g10, GRAPHITE_AIM),
        ("prometheus_10k", "10k prometheus (delay 0, into Redis)", p10, PROMETHEUS_AIM),
    ):
        if rs:
            line, cold, warm = aim_line(label, rs, aim)
            lines.append(line)
            summary[f"{key}_cold_s"] = round(cold, 3)
            summary[f"{key}_warm_s"] = round(warm, 3)
    peak = max((r.peak_mb for r in results), default=0.0)
    lines.append(
        f"peak memory of any fetching process: {peak:.0f} MB (aim < {MEMORY_AIM:g} MB): "
        + ("MET" if peak < MEMORY_AIM else "MISSED")
    )
    summary["peak_mb"] = round(peak)
    originals = [r for r in results if r.scenario.method == "original"]
    for delay in sorted({r.scenario.delay for r in originals}):
        for orig in [r for r in originals if r.scenario.delay == delay][:1]:
            n = orig.scenario.metrics
            mine = vista_runs(results, source="graphite", metrics=n, delay=delay, batch=20)
            mine = [r for r in mine if r.scenario.redis and r.scenario.concurrency == 10]
            if not mine:
                continue
            cold = max(r.total for r in mine)
            warm = max(r.warm_total for r in mine)
            lines.append(
                f"original method, {n} graphite metrics, delay {delay * 1000:g} ms: "
                f"{orig.total:.2f} s ({orig.requests} GETs) vs Vista cold {cold:.3f} s / warm "
                f"{warm:.3f} s ({mine[0].requests // max(mine[0].cycles, 1)} requests): "
                f"{orig.total / cold:.0f}x / {orig.total / warm:.0f}x faster"
            )
            summary[f"original_ratio_delay{delay * 1000:g}ms"] = round(orig.total / cold, 1)
    p20 = vista_runs(results, source="prometheus", metrics=10_000, delay=0.02, redis=True)
    for r in p20:
        key = f"prometheus_10k_delay20ms_conc{r.scenario.concurrency}_s"
        summary[key] = round(max(r.total, r.warm_total, summary.get(key, 0.0)), 3)
    return lines, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 metrics only (smoke run)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument(
        "--delays", default="0,20", help="server delays per request to run, in ms (e.g. 0,20)"
    )
    parser.add_argument(
        "--only", default="", help="run only scenarios whose label contains this text"
    )
    parser.add_argument(
        "--max-load", type=float, default=0.0, help="first wait (<= 60 s) for load below this"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--source-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.source_url, args.redis_url)
        return 0

    delays = [float(x) / 1000 for x in args.delays.split(",") if x]
    chosen = [s for s in scenarios(args.quick, delays) if args.only in s.label]
    print(f"vista fetch benchmark: {len(chosen)} scenario(s) x {args.repeat} run(s)")
    if args.max_load:
        print(wait_for_low_load(args.max_load, 60.0))
    print(f"start: load average {loadavg()}")
    began = time.monotonic()
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="vista-bench-") as tmp,
        RedisServer(Path(tmp) / "redis", unix_socket=True) as redis_server,
        SourceServer() as source,
    ):
        for scenario in chosen:
            for run in range(1, args.repeat + 1):
                result = run_scenario(scenario, run, source, redis_server)
                results.append(result)
                print(f"  {' | '.join(row(result))}  (load {load1():.2f})", flush=True)
                for problem in result.problems:
                    print(f"    problem: {problem}")
    print()
    print(table(HEADERS, [row(r) for r in results]))
    print()
    print(NOTES)
    print()
    lines, summary = summarise(results)
    for line in lines:
        print(line)
    summary["load_end"] = loadavg()
    summary["seconds"] = round(time.monotonic() - began, 1)
    print(f"\nend: load average {loadavg()}; {time.monotonic() - began:.0f} s in all")
    print("SUMMARY " + json.dumps(summary, separators=(",", ":")))
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
