"""Per-source request budget (skyline/vista/request_budget.py): one token bucket per remote host
in Redis, shared by the live fetcher and history fetching, history yielding to live.

A local aiohttp server speaking Prometheus' ``query_range`` counts every request it receives
(with its arrival time and whether it came from the live cycle or the history loop); Redis is
the real redis-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp import web
from prometheus_client import REGISTRY

from skyline.vista import redisconn, request_budget
from skyline.vista.config import HostOptions
from skyline.vista.fetch_cycle import FetchCycle
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.report import config_summary
from skyline.vista.request_budget import LocalBucket
from skyline.vista.sources.http import Credentials, HostState, get_json, host_state_of
from skyline.vista.testing.servers import free_port
from tests.support.rig import Rig
from tests.support.settings import make_config
from tests.support.web import serving

RATE = 20
BURST = 20
LIVE = 40


@dataclass
class CountingPrometheus:
    """``/api/v1/query_range`` answering one series of ``time()``; records every request."""

    port: int = field(default_factory=free_port)
    arrivals: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, 'live'|...)
    too_many: int = 0  # answer this many requests with 429 + Retry-After first
    retry_after: int = 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def query_range(self, request: web.Request) -> web.Response:
        query = request.query["query"]
        self.arrivals.append((time.monotonic(), "history" if "history" in query else "live"))
        if self.too_many > 0:
            self.too_many -= 1
            return web.json_response(
                {"status": "error", "errorType": "busy", "error": "slow down"},
                status=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        start, end = int(request.query["start"]), int(request.query["end"])
        step = int(request.query["step"].rstrip("s"))
        values = [[ts, str(ts)] for ts in range(start, end + 1, step)]
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
            }
        )


@asynccontextmanager
async def serve(source: CountingPrometheus) -> AsyncIterator[CountingPrometheus]:
    app = web.Application()
    app.router.add_get("/api/v1/query_range", source.query_range)
    async with serving(app, source.port):
        yield source


def live_entries(url: str, count: int) -> list[dict[str, object]]:
    return [
        {
            "remote_host": url,
            "remote_host_type": "prometheus",
            "remote_target": f"time() + {i}",
            "graphite_target": f"live{i}",
            "namespace_prefix": "budget",
        }
        for i in range(count)
    ]


async def history_loop(
    session: aiohttp.ClientSession, client: redis.asyncio.Redis, url: str, stop: asyncio.Event
) -> int:
    """What a history job does: GETs one after another, as fast as the budget lets it, with
    its own HostState whose pacer has priority 'history'."""
    options = HostOptions(requests_per_second=RATE, burst=BURST, max_concurrency=4)
    state = HostState(url, options)
    state.pacer = request_budget.pacer_for(url, options, client, "history")
    now = int(time.time()) // 60 * 60
    done = 0

    async def one() -> None:
        nonlocal done
        while not stop.is_set():
            q = f"{url}/api/v1/query_range?query=history&start={now - 600}&end={now}&step=60s"
            await get_json(session, state, q, Credentials(), max_bytes=1 << 20)
            done += 1

    await asyncio.gather(*(one() for _ in range(4)))
    return done


def most_in_any_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] > seconds:
            first += 1
        best = max(best, last - first + 1)
    return best


@pytest.mark.slow
async def test_a_20_per_second_budget_holds_and_live_fetching_comes_first(rig: Rig) -> None:
    async with serve(CountingPrometheus()) as source:
        options = {"requests_per_second": RATE, "burst": BURST}
        cfg = rig.config(
            live_entries(source.url, LIVE),
            VISTA_REMOTE_HOSTS={source.url: options},
        )
        live_client = redisconn.connect_async(cfg.redis)
        history_client = redisconn.connect_async(cfg.redis)
        stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                history = asyncio.ensure_future(
                    history_loop(session, history_client, source.url, stop)
                )
                await asyncio.sleep(2.0)  # history alone: burst, then 20/s
                cycle = FetchCycle(cfg, session, {}, queue=AsyncFetchQueue(live_client))
                began = time.monotonic()
                report = await cycle.run(cfg.fetch_metrics, {}, set(), deadline=20)
                live_took = time.monotonic() - began
                live_end = time.monotonic()
                await asyncio.sleep(1.5)  # history gets the rate back
                stop.set()
                history_done = await asyncio.wait_for(history, 10)
                counts = await request_budget.budget_counts(live_client, source.url)
        finally:
            await live_client.aclose()
            await history_client.aclose()

    arrivals = source.arrivals
    times = [t for t, _ in arrivals]
    span = times[-1] - times[0]
    # The budget holds at the server: never more than burst + rate x t in any t seconds.
    assert len(times) <= BURST + RATE * span + 1, (len(times), span)
    for window in (1.0, 2.0, 4.0):
        assert most_in_any_window(times, window) <= BURST + RATE * window + 1, window
    # Live metrics on time: every one fetched, all within the budget's own pace (40 requests
    # at 20/s = 2 s) rather than sharing it with history (4 s).
    assert report.unfinished == 0 and not report.errors
    assert sum(1 for r in report.results if r.items) == LIVE
    assert live_took < (LIVE / RATE) * 1.5, live_took
    during = [kind for t, kind in arrivals if began + 0.2 < t < live_end - 0.2]
    assert during.count("history") <= 0.1 * len(during), (during.count("history"), len(during))
    # History went on before and after.
    assert history_done >= RATE * 2, history_done
    assert counts["live"] == LIVE and counts["history"] == history_done
    # /metrics: the waits, by host and priority (history waited far more than live).
    waited = {
        p: REGISTRY.get_sample_value(
            "vista_request_budget_wait_seconds_total", {"host": source.url, "priority": p}
        )
        or 0.0
        for p in ("live", "history")
    }
    assert waited["history"] > waited["live"] > 0, waited
    summary = config_summary(cfg)
    assert (
        f"  request budget {source.url}: 20/s, burst 20 (shared in Redis, live fetching first)"
        in summary
    )
    print(
        f"\nrequest budget {RATE}/s (burst {BURST}): {len(times)} requests in {span:.1f}s "
        f"({len(times) / span:.1f}/s); {LIVE} live metrics fetched in {live_took:.2f}s while "
        f"history made {history_done} requests"
    )


async def test_429_retry_after_is_still_honoured_with_a_budget(rig: Rig) -> None:
    async with serve(CountingPrometheus(too_many=1, retry_after=30)) as source:
        cfg = rig.config(
            live_entries(source.url, 3),
            VISTA_REMOTE_HOSTS={source.url: {"requests_per_second": 100, "burst": 100}},
            VISTA_MAX_CONCURRENCY_PER_HOST=1,
        )
        client = redisconn.connect_async(cfg.redis)
        hosts: dict[str, HostState] = {}
        try:
            async with aiohttp.ClientSession() as session:
                first = await FetchCycle(cfg, session, hosts, queue=AsyncFetchQueue(client)).run(
                    cfg.fetch_metrics, {}, set(), deadline=10
                )
                second = await FetchCycle(cfg, session, hosts, queue=AsyncFetchQueue(client)).run(
                    cfg.fetch_metrics, {}, set(), deadline=10
                )
        finally:
            await client.aclose()
    assert len(source.arrivals) == 1  # the 429; nothing after it within Retry-After
    assert {r.error.kind for r in first.results if r.error} == {"http_429", "host_backoff"}
    assert {r.skipped for r in second.results} == {"host_backoff"}
    assert hosts[source.url].remaining() > 25


def test_local_bucket_paces_alone() -> None:
    now = [0.0]
    bucket = LocalBucket(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.take() == 0.0
    now[0] = 100.0
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)  # capped at the burst


def test_hosts_without_a_budget_get_no_pacer() -> None:
    assert request_budget.pacer_for("http://h:1", HostOptions(), None) is None
    pacer = request_budget.pacer_for("http://h:1", HostOptions(requests_per_second=2.5), None)
    assert pacer is not None and (pacer.rate, pacer.burst) == (2.5, 3.0)


def test_live_and_history_share_one_bucket_for_a_remote_host_with_a_path(tmp_path: Path) -> None:
    """The live fetcher and a history job (both through sources/http.host_state_of) key the
    bucket by the same exact remote_host, path included."""
    url = "http://gw.example:8080/proxy/prom"
    cfg = make_config(
        tmp_path,
        entries=live_entries(url, 1),
        VISTA_REMOTE_HOSTS={url: {"requests_per_second": 5}},
    )
    entry = cfg.fetch_metrics[0]
    live = host_state_of({}, entry, cfg.host_options, None).pacer
    history = host_state_of({}, entry, cfg.host_options, None, "history").pacer
    assert isinstance(live, request_budget.RedisPacer)
    assert isinstance(history, request_budget.RedisPacer) and history.keys == live.keys
    assert (live.priority, history.priority) == ("live", "history")
    assert history.keys[0].endswith(url)
