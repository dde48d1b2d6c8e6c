"""Benchmark: the fetcher's peak memory for one big Prometheus answer (issue 8.3).

A local server (its own process) answers every ``query_range`` with one valid matrix of about
``--body-mb`` MB: one series of minute points going back years, far outside the 5-minute
window Vista asks for, and the last 5 minutes. ONE real
:class:`~skyline.vista.fetch_cycle.FetchCycle` fetches it in a fresh process that queues into
a real redis-server; the process' peak RSS (and its RSS before the cycle), the cycle time, the
points queued and the points dropped are printed.

    .venv/bin/python bench/big_answer.py                      # 50 MB, the default body cap
    .venv/bin/python bench/big_answer.py --cap-mb 64          # as the original default cap
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import tempfile
import time
from typing import Any

from aiohttp import web

from bench.common import proc_usage
from skyline.vista import config, constants, redisconn
from skyline.vista.fetch_cycle import FetchCycle
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.sources.http import new_session
from skyline.vista.testing.servers import RedisServer, free_port

STEP = 60


def make_body(now: int, size_mb: float) -> bytes:
    """A matrix of one series whose points end at the last complete minute before ``now``."""
    last = now // STEP * STEP - STEP
    per_point = len(f'[{last},"12345.678"],')
    count = int(size_mb * 1024 * 1024 / per_point)
    first = last - (count - 1) * STEP
    values = ",".join(f'[{ts},"{ts % 100000 / 8:.3f}"]' for ts in range(first, last + 1, STEP))
    head = '{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":['
    return (head + values + "]}]}}").encode()


def serve(path: str, port: int) -> None:
    body = Path(path).read_bytes()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query_range", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def one_cycle(source: str, redis_url: str, cap_mb: float | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": (
            (source, "prometheus", 60, "big", "big", "default", "bench", *[None] * 4, ()),
        ),
        "REDIS_URL": redis_url,
        "VISTA_SINK": "flux",
        "FLUX_SELF_API_KEY": "f" * 32,
        "LOG_PATH": tempfile.gettempdir(),
        "PID_PATH": tempfile.gettempdir(),
    }
    if cap_mb is not None:
        values["VISTA_MAX_RESPONSE_BYTES"] = int(cap_mb * 1024 * 1024)
    cfg = config.validate(values, "bench")
    client = redisconn.connect_async(cfg.redis)
    await client.ping()
    before = proc_usage(os.getpid()).rss_mb
    began = time.monotonic()
    async with new_session() as session:
        cycle = FetchCycle(cfg, session, {}, queue=AsyncFetchQueue(client))
        report = await cycle.run(cfg.fetch_metrics, {}, set())
    took = time.monotonic() - began
    queued = 0
    for raw in await client.smembers(constants.QUEUE_KEY):
        queued += len(json.loads(raw)["points"])
    chained = 0
    for key in await client.keys(constants.CHAIN_KEY_PREFIX + "*"):
        chained += await client.llen(key) if await client.type(key) == b"list" else 0
    await client.aclose()
    result = report.results[0]
    return {
        "cap_mb": cfg.max_response_bytes / 1024 / 1024,
        "rss_before_mb": round(before, 1),
        "peak_mb": round(proc_usage(os.getpid()).peak_mb, 1),  # VmHWM: reset at exec
        "seconds": round(took, 2),
        "points_kept": len(result.points),
        "points_queued": queued,  # the first item; the rest waits in the chain
        "items_chained": chained,
        "dropped": result.dropped.as_dict(),
        "error": None if result.error is None else f"{result.error.kind}: {result.error}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body-mb", type=float, default=50.0)
    parser.add_argument("--cap-mb", type=float, default=None, help="default: Vista's default")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = asyncio.run(one_cycle(args.child[0], args.child[1], args.cap_mb))
        print(json.dumps(out))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        body = make_body(int(time.time()), args.body_mb)
        path = Path(tmp) / "answer.json"
        path.write_bytes(body)
        size, points = len(body), body.count(b"],[") + 1
        del body
        port = free_port()
        server = multiprocessing.get_context("spawn").Process(
            target=serve, args=(str(path), port), daemon=True
        )
        server.start()
        redis_server = RedisServer(Path(tmp) / "redis", unix_socket=True)
        redis_server.start()
        try:
            time.sleep(1.0)
            cmd = [sys.executable, __file__, "--child", f"http://127.0.0.1:{port}"]
            cmd.append(redis_server.url)
            if args.cap_mb is not None:
                cmd += ["--cap-mb", str(args.cap_mb)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
            if done.returncode != 0:
                print(done.stderr)
                return 1
            figures = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            redis_server.stop()
            server.terminate()
            server.join(5)
    print(f"answer: {size / 1024 / 1024:.1f} MB, {points:,} points, step {STEP} s")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
