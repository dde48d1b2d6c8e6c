"""How the fetcher talks to remote hosts: Retry-After for queued requests, limits per host and
per remote_host, state that survives a fetcher restart, hostile bodies. Against small aiohttp
servers on loopback and a real Prometheus, queueing into a real Redis where a cycle needs one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis
import redis.asyncio
from aiohttp import web

from skyline.vista import redisconn, request_budget
from skyline.vista.fetch_cycle import CycleReport, FetchCycle, MetricResult
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.sources.http import HostState, new_connector
from skyline.vista.testing.servers import PrometheusServer, RedisServer
from tests.support.remotes import graphite_entry, matrix, prom_entry, remotes, time_series
from tests.support.rig import Rig
from tests.support.settings import make_config


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=new_connector()) as s:
        yield s


def by_metric(report: CycleReport) -> dict[str, MetricResult]:
    return {r.metric.removeprefix("remote."): r for r in report.results}


def kind(result: MetricResult) -> str | None:
    return None if result.error is None else result.error.kind


# ------------------------------------------------------------- Retry-After while queued


async def test_a_retry_after_stops_the_requests_already_waiting_for_the_host(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """max_concurrency 1 and four metrics: the first answer is 429 Retry-After 7. The three
    requests queued for the host's one slot must not be sent when they get it."""

    async def throttled(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})

    async with remotes() as start:
        host = await start(throttled)
        config = make_config(
            tmp_path,
            redis_server,
            [prom_entry(host.url, f"m{i}") for i in range(4)],
            VISTA_REMOTE_HOSTS={host.url: {"max_concurrency": 1}},
        )
        hosts: dict[str, HostState] = {}
        report = await FetchCycle(config, session, hosts, queue=None).run(
            config.fetch_metrics, {}, set()
        )
    assert len(host.seen) == 1
    assert sorted(str(kind(r)) for r in report.results) == ["host_backoff"] * 3 + ["http_429"]
    assert 6 < hosts[host.url].remaining() <= 7
    # A request that was never sent does not make the host's backoff grow.
    assert hosts[host.url].backoff.attempts == 1


# ------------------------------------------------------------------- hostile bodies


async def test_json_nested_200000_deep_is_one_clear_error_line(
    rig: Rig, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000

    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    async with remotes() as start:
        host = await start(nested)
        config = rig.config(
            [prom_entry(host.url, "deep.prom"), graphite_entry(host.url, "deep.graphite", "a.b")],
        )
        fetcher = Fetcher(os.getpid(), config)
        client = redisconn.connect_async(config.redis)
        caplog.set_level(logging.DEBUG)
        try:
            report = await fetcher.cycle(session, AsyncFetchQueue(client))
        finally:
            await client.aclose()
    assert report is not None
    results = by_metric(report)
    assert [kind(results[m]) for m in ("deep.prom", "deep.graphite")] == ["invalid_json"] * 2
    for name in ("deep.prom", "deep.graphite"):
        assert str(results[name].error) == "JSON nested too deeply to decode (400000 bytes)"
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sorted(problems) == [
        f"{host.url} remote.deep.graphite (target 'a.b'): JSON nested too deeply to decode "
        "(400000 bytes)",
        f"{host.url} remote.deep.prom (target 'time()'): JSON nested too deeply to decode "
        "(400000 bytes)",
    ]


# ---------------------------------------------------------- options per remote_host


async def test_each_remote_host_on_one_server_gets_its_own_headers_and_credentials(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """``http://gw/proxy/a``, ``/proxy/b`` and ``/proxy/c`` are one scheme://host:port. Each
    request carries the headers and api key header name configured for its own path."""
    async with remotes() as start:
        gw = await start(time_series)
        a, b, c = (f"{gw.url}/proxy/{x}" for x in "abc")
        config = make_config(
            tmp_path,
            redis_server,
            [
                prom_entry(a, "a", api_key="key-of-a"),
                prom_entry(b, "b"),
                prom_entry(c, "c", api_key="key-of-c"),
                prom_entry(a, "a2"),
                prom_entry(b, "b2", token="token-of-b"),
            ],
            VISTA_REMOTE_HOSTS={
                a: {"headers": {"X-Scope-OrgID": "tenant-a"}},
                b: {"headers": {"X-Scope-OrgID": "tenant-b", "X-Only-B": "1"}},
                c: {"api_key_header": "X-C-Key", "max_concurrency": 1},
            },
        )
        hosts: dict[str, HostState] = {}
        report = await FetchCycle(config, session, hosts, queue=None).run(
            config.fetch_metrics, {}, set()
        )
    assert all(r.error is None for r in report.results), [r.error for r in report.results]
    wanted = ("X-Scope-Orgid", "X-Only-B", "X-Api-Key", "X-C-Key", "Authorization")
    sent = sorted(
        (
            (
                r.path,
                r.query["query"],
                {k.title(): v for k, v in r.headers.items() if k.title() in wanted},
            )
            for r in gw.seen
        ),
        key=lambda seen: (seen[0], len(seen[2])),
    )
    assert sent == [
        ("/proxy/a/api/v1/query_range", "time()", {"X-Scope-Orgid": "tenant-a"}),
        (
            "/proxy/a/api/v1/query_range",
            "time()",
            {"X-Scope-Orgid": "tenant-a", "X-Api-Key": "key-of-a"},
        ),
        ("/proxy/b/api/v1/query_range", "time()", {"X-Scope-Orgid": "tenant-b", "X-Only-B": "1"}),
        (
            "/proxy/b/api/v1/query_range",
            "time()",
            {"X-Scope-Orgid": "tenant-b", "X-Only-B": "1", "Authorization": "Bearer token-of-b"},
        ),
        ("/proxy/c/api/v1/query_range", "time()", {"X-C-Key": "key-of-c"}),
    ]
    assert sorted(hosts) == [a, b, c]
    assert [hosts[h].options.max_concurrency for h in (a, b, c)] == [10, 10, 1]
    assert {hosts[h].host for h in hosts} == {gw.url}  # one label for counters and logs


# ------------------------------------------------------------------ limits per host

SLOW_HOSTS = 10
PER_SLOW_HOST = 10


@pytest.mark.slow
async def test_ten_slow_hosts_do_not_starve_the_others(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """Ten hosts that hold each of their 10 connections for 4 s fill the default limit of 100
    requests in flight; a fast host's metrics must still be fetched at once."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(4.0)
        return await time_series(request)

    finished: dict[str, float] = {}

    class Timed(FetchCycle):
        def _finish(self, result: MetricResult) -> None:
            super()._finish(result)
            finished[result.metric] = time.monotonic()

    async with remotes() as start:
        slow_hosts = [await start(slow) for _ in range(SLOW_HOSTS)]
        fast = await start(time_series)
        entries = [
            prom_entry(h.url, f"slow{n}.m{i}")
            for n, h in enumerate(slow_hosts)
            for i in range(PER_SLOW_HOST)
        ]
        entries += [prom_entry(fast.url, f"fast.m{i}") for i in range(5)]
        config = make_config(tmp_path, redis_server, entries)
        assert config.fetch_concurrency == 100
        began = time.monotonic()
        report = await Timed(config, session, {}, queue=None).run(config.fetch_metrics, {}, set())
    assert all(r.error is None and r.points for r in report.results)
    fast_done = max(finished[f"remote.fast.m{i}"] for i in range(5)) - began
    slow_done = min(t for m, t in finished.items() if ".slow" in m) - began
    assert slow_done >= 4.0
    assert fast_done < 2.0, fast_done


# -------------------------------------------------------------- restarted fetcher


@pytest.mark.parametrize("budget", [False, True])
def test_a_restarted_fetcher_fetches_every_metric_in_its_first_cycle(
    rig: Rig, prometheus_server: PrometheusServer, caplog: pytest.LogCaptureFixture, budget: bool
) -> None:
    """The agent hands a new fetcher thread the old one's state. Each thread has its own event
    loop (asyncio.run here): nothing of the old loop may be used by the new one (an
    asyncio.Semaphore waited on in one loop refuses every other; a request budget's Redis
    client belongs to the old loop's connection)."""
    prometheus_server.wait_for_series("up")
    now = [time.time()]
    options: dict[str, object] = {"max_concurrency": 2}
    if budget:
        options.update(requests_per_second=1000, burst=1000)
    config = rig.config(
        [prom_entry(prometheus_server.url, f"m{i}", f"up + {i}") for i in range(6)],
        VISTA_REMOTE_HOSTS={prometheus_server.url: options},
    )

    clients: list[redis.asyncio.Redis] = []

    async def one_cycle(fetcher: Fetcher) -> CycleReport | None:
        client = redis.asyncio.Redis.from_url(rig.redis_server.url)
        clients.append(client)
        try:
            async with aiohttp.ClientSession(connector=new_connector()) as session:
                return await fetcher.cycle(session, AsyncFetchQueue(client))
        finally:
            await client.aclose()

    first = Fetcher(os.getpid(), config, clock=lambda: now[0])
    before = asyncio.run(one_cycle(first))
    assert before is not None and [kind(r) for r in before.results] == [None] * 6

    rig.redis.flushall()  # nothing pending: every metric is due again
    now[0] += 60
    restarted = Fetcher(os.getpid(), config, clock=lambda: now[0])
    restarted.state = first.state  # as Agent._start_fetcher does
    after = asyncio.run(one_cycle(restarted))
    assert after is not None
    assert [(r.metric, kind(r), r.skipped, r.requests) for r in after.results] == [
        (f"remote.m{i}", None, None, 1) for i in range(6)
    ]
    if budget:  # the budget in Redis was used by the new loop, not given up for a local one
        assert not [r for r in caplog.records if "request budget" in r.getMessage()]
        counts = rig.redis.hgetall(f"{request_budget.KEY_PREFIX}{prometheus_server.url}")
        assert counts.get(b"live") == b"6", counts
        # ...through the new fetcher's own client, not the old loop's (closed) one.
        pacer = restarted.state.hosts[prometheus_server.url].pacer
        assert isinstance(pacer, request_budget.RedisPacer) and pacer.client is clients[1]


# ---------------------------------------------------------------------- a hung host


@pytest.mark.slow
async def test_a_hung_host_delays_only_its_own_metrics(rig: Rig) -> None:
    """Two hosts at frequency 10 s; one never answers (the default 30 s timeout). The fetcher
    thread must keep asking the healthy host every 10 s while the hung host's requests wait,
    and must not ask the hung host again while its first requests are still in flight."""

    async def empty(request: web.Request) -> web.Response:
        return web.json_response(matrix([]))

    async with remotes() as start:
        healthy = await start(empty)

        async def never(request: web.Request) -> web.Response:
            await healthy.release.wait()  # set only when the test stops the servers
            return web.Response(status=500)

        hung = await start(never)
        config = rig.config(
            [prom_entry(hung.url, f"hung{i}", frequency=10) for i in range(2)]
            + [prom_entry(healthy.url, f"ok{i}", frequency=10) for i in range(2)],
        )
        assert config.default_host_options.timeout == 30
        fetcher = Fetcher(os.getpid(), config)
        began = time.monotonic()
        fetcher.start()
        try:
            await asyncio.sleep(25)
        finally:
            fetcher.stop()
            await asyncio.to_thread(fetcher.join, 10)
        assert not fetcher.is_alive()

    asked = [round(r.at - began, 1) for r in healthy.seen]
    # Every 10 s tick (the first cycle at once): 2 metrics a cycle, 3 cycles or more.
    assert len(asked) >= 6, asked
    gaps = [b - a for a, b in zip(asked[::2], asked[2::2], strict=False)]
    assert max(gaps) < 11, asked
    assert len(hung.seen) == 2  # in flight all along: not asked again
    # Stopping the fetcher ended the hung host's cycle at once (not after its 30 s timeout).
    assert time.monotonic() - began < 30


# ------------------------------------------------------------------------ big answers

OLD_POINTS = 300_000  # minute points ending a day before the asked window: ~7 MB of JSON


def big_answer(
    source: str, now: int, *, old: int = OLD_POINTS, names: tuple[str, ...] = ("big",)
) -> tuple[bytes, dict[str, list[tuple[int, float]]]]:
    """A Prometheus matrix (series labelled ``i``) or graphite-web render answer (targets
    ``<name>.big``) of ``old`` points years back per series, then the last 5 complete
    minutes; and each series' recent points."""
    last = now // 60 * 60 - 60
    recent = list(range(last - 240, last + 1, 60))
    ancient = range(last - 86_400 - 60 * old, last - 86_400, 60)
    parts = []
    for n, name in enumerate(names):
        stamps = [*ancient, *recent]
        if source == "prometheus":
            values = ",".join(f'[{ts},"{ts % 1000 + n}.5"]' for ts in stamps)
            parts.append(f'{{"metric":{{"i":"{name}"}},"values":[{values}]}}')
        else:
            points = ",".join(f"[{ts % 1000 + n}.5,{ts}]" for ts in stamps)
            parts.append(f'{{"target":"{name}.big","tags":{{}},"datapoints":[{points}]}}')
    body = ",".join(parts)
    if source == "prometheus":
        body = '{"status":"success","data":{"resultType":"matrix","result":[' + body + "]}}"
    else:
        body = "[" + body + "]"
    want = {name: [(ts, ts % 1000 + n + 0.5) for ts in recent] for n, name in enumerate(names)}
    return body.encode(), want


async def fetch_big(
    tmp_path: Path,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
    now: int,
    body: bytes,
    entry: dict[str, object],
    watermark: int,
) -> tuple[MetricResult, int]:
    """One fetch cycle of ``entry`` from a host that answers ``body``: its result and the
    peak of memory traced meanwhile."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with remotes() as start:
        host = await start(big)
        entry = {**entry, "remote_host": host.url}
        config = make_config(tmp_path, redis_server, [entry])
        # A watermark gives Graphite a window of its own (from= the watermark).
        marks = {config.fetch_metrics[0].metric: watermark}
        tracemalloc.start()
        try:
            report = await FetchCycle(config, session, {}, queue=None, clock=lambda: now).run(
                config.fetch_metrics,
                marks if entry["remote_host_type"] == "graphite" else {},
                set(),
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return report.results[0], peak


@pytest.mark.parametrize("source", ["prometheus", "graphite"])
async def test_a_big_answer_keeps_only_the_asked_window_in_bounded_memory(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession, source: str
) -> None:
    """A 7 MB answer about years of history to a question about the last minutes: only the
    asked window's points are kept, the rest counted, and the parse never holds it whole."""
    now = int(time.time())
    body, wants = big_answer(source, now)
    want = wants["big"]
    if source == "prometheus":
        entry = prom_entry("", "big")
    else:
        entry = graphite_entry("", "big", "big.big")
    result, peak = await fetch_big(
        tmp_path, redis_server, session, now, body, entry, want[0][0] - 60
    )
    assert result.error is None, result.error
    assert list(result.points) == want
    assert result.dropped["outside_window"] == OLD_POINTS
    assert len(body) > 5_000_000
    # Decoding it whole took ~20 times its size; streamed, about the part read before the
    # parse starts (1 MiB) and the server's own copy of the body (this process serves it).
    assert peak < 3 * len(body), (peak, len(body))


@pytest.mark.parametrize("source", ["prometheus", "graphite"])
async def test_a_big_answer_to_a_name_template_is_streamed_too(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession, source: str
) -> None:
    """Three series of 200,000 old points each (an answer of 11 to 14 MB) to a templated entry:
    each name keeps only the asked window, the rest is counted, and the parse never holds the
    body whole (before: decoded whole, about 20 times its size, every old point kept)."""
    now = int(time.time())
    names = ("a", "b", "c")
    body, want = big_answer(source, now, old=200_000, names=names)
    if source == "prometheus":
        entry = prom_entry("", "{i}", query="big")
    else:
        entry = graphite_entry("", "{node[0]}", "*.big")
    first = want["a"][0][0]
    result, peak = await fetch_big(tmp_path, redis_server, session, now, body, entry, first - 60)
    assert result.error is None, result.error
    # Every name's points, names in order (fetch_results.py makes them so).
    assert list(result.points) == [p for n in names for p in want[n]]
    assert sorted(name for name, _ in result.chains) == [f"remote.{n}" for n in names]
    assert result.dropped["outside_window"] == 3 * 200_000
    assert len(body) > 10_000_000
    assert peak < 3 * len(body), (peak, len(body))


async def test_more_points_in_the_window_than_the_frequency_allows_is_an_error(
    tmp_path: Path, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """60,000 samples all within a 5-minute window (big enough to be streamed): refused."""
    now = int(time.time())
    ts = now // 60 * 60 - 120
    values = ",".join(f'[{ts},"{i}"]' for i in range(60_000))
    body = (
        '{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":['
        + values
        + "]}]}}"
    ).encode()
    assert len(body) > 1 << 20

    async def crowded(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with remotes() as start:
        host = await start(crowded)
        config = make_config(tmp_path, redis_server, [prom_entry(host.url, "crowded")])
        report = await FetchCycle(config, session, {}, queue=None, clock=lambda: now).run(
            config.fetch_metrics, {}, set()
        )
    error = report.results[0].error
    assert error is not None and error.kind == "too_many_points", error
    assert str(error).startswith("more than 1260 points of one series in the asked window [")
