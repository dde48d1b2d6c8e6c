"""One fetch cycle against remotes that answer well and badly, over real HTTP on loopback.

Each remote is an aiohttp.web server started in the test (port 0) that serves the answers
recorded from a real Prometheus and graphite-web (tests/data) and every kind of bad answer:
HTML pages (200 and 502), truncated and invalid JSON, NaN/Inf/null values, wrong shapes, a
multi-series answer, bodies over VISTA_MAX_RESPONSE_BYTES (with Content-Length, chunked, and
gzip), 429 with Retry-After, 503, an answer slower than the timeout, a connection cut short, a
port with nothing listening, and Graphite batches broken by one target. The cycle queues into
a real Redis (AsyncFetchQueue), and the test reads back exactly what was queued.

What must hold in every case: the bad metric gets an error of the right ``kind`` whose message
names what went wrong; nothing escapes the cycle; every good metric of the same cycle (same
host or another) gets exactly its points; a host that asked to wait is left alone, others not;
no credential appears in a log record, an error message or a queued item.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from aiohttp import web

from skyline.vista import codec, constants
from skyline.vista.config import VistaConfig
from skyline.vista.fetch_cycle import CycleReport, FetchCycle, MetricResult
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.model import Point, QueueItem
from skyline.vista.sources.http import HostState
from skyline.vista.testing.servers import RedisServer, free_port
from tests import data
from tests.data import record
from tests.support import settings as settings_factory
from tests.support.remotes import Handler, Remote, graphite_entry, prom_entry
from tests.support.remotes import remotes as started_remotes
from tests.support.settings import UNUSED_REDIS

PREFIX = "remote"
P_T0 = data.prometheus_t0()
G_T0 = data.graphite_t0()
MAX_BYTES = 8192
SLOW_TIMEOUT = 0.3


# ------------------------------------------------------------------------- the remotes


@dataclass
class CutServer:
    """Raw TCP: announces a 4000-byte JSON body, sends 40 bytes of it and hangs up."""

    url: str = ""
    server: asyncio.Server | None = None
    requests: int = 0

    async def start(self) -> CutServer:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 4000\r\n\r\n"
                + data.body("prometheus_query_range_matrix.json")[:40]
            )
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def remotes() -> AsyncIterator[Callable[[Handler], Awaitable[Remote]]]:
    async with started_remotes() as make:
        yield make


@dataclass
class Net:
    """What a test here fetches with: loopback remotes it starts (``await net.remote(handler)``),
    one client session, and settings in its temp dir."""

    tmp_path: Path
    remote: Callable[[Handler], Awaitable[Remote]]
    session: aiohttp.ClientSession

    def config(self, entries: Iterable[Mapping[str, object]], **settings: object) -> VistaConfig:
        return make_config(self.tmp_path, entries, **settings)

    async def dry_run(
        self, config: VistaConfig, hosts: dict[str, HostState] | None = None
    ) -> CycleReport:
        """One cycle at :func:`recorded_time` that queues nothing."""
        cycle = FetchCycle(
            config, self.session, {} if hosts is None else hosts, queue=None, clock=recorded_time
        )
        return await cycle.run(config.fetch_metrics, {}, set())


@pytest.fixture
async def net(
    tmp_path: Path, remotes: Callable[[Handler], Awaitable[Remote]]
) -> AsyncIterator[Net]:
    async with aiohttp.ClientSession() as session:
        yield Net(tmp_path, remotes, session)


@pytest.fixture
async def queue(
    redis_server: RedisServer, redis_client: redis.Redis
) -> AsyncIterator[AsyncFetchQueue]:
    """A real AsyncFetchQueue on the session's redis-server (FLUSHALLed by redis_client)."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield AsyncFetchQueue(client)
    await client.aclose()


# --------------------------------------------------------------------------- answers

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
LOGIN_PAGE = b"<!doctype html><html><head><title>Sign in - SSO</title></head><body>...</body>"


def recorded(name: str, status: int | None = None) -> web.Response:
    meta = data.meta(name)
    return web.Response(
        status=status or meta["status"],
        body=data.body(name),
        headers={"Content-Type": meta["content_type"]},
    )


def json_response(body: object, status: int = 200) -> web.Response:
    # json.dumps writes NaN/Infinity literals, as Python-made "JSON" does.
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def prom_matrix(series: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": [series]}}


def padded(size: int) -> bytes:
    body = prom_matrix({"metric": {"pad": "x" * size}, "values": [[P_T0, "1"]]})
    return json.dumps(body).encode()


async def chunked_large(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    body = padded(4 * MAX_BYTES)
    for start in range(0, len(body), 1000):
        await response.write(body[start : start + 1000])
    await response.write_eof()
    return response


PROM_B_SERIES = data.answer("prometheus_query_range_multi_series.json")["data"]["result"][1]
PROM_B_VALUES = ["10", "20", "30", "30", "30", "30", "30", "30"]  # 30 repeated by lookback

PROMETHEUS_ANSWERS: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}


def prom_answer(query: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        PROMETHEUS_ANSWERS[query] = handler
        return handler

    return register


def answer_recorded(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return recorded(name)

    return handler


for _query, _name in [
    (record.PROM_MATRIX_QUERY, "prometheus_query_range_matrix.json"),
    (record.PROM_SPECIAL_QUERY, "prometheus_query_range_non_finite.json"),
    (record.PROM_EMPTY_QUERY, "prometheus_query_range_empty.json"),
    (record.PROM_MULTI_QUERY, "prometheus_query_range_multi_series.json"),
    (record.PROM_BAD_QUERY, "prometheus_query_range_bad_data.json"),
]:
    prom_answer(_query)(answer_recorded(_name))


@prom_answer('vista_rec{job="b"}')
async def _good_b(request: web.Request) -> web.StreamResponse:
    return json_response(prom_matrix(PROM_B_SERIES))


@prom_answer("login_page")
async def _html(request: web.Request) -> web.StreamResponse:
    return web.Response(body=LOGIN_PAGE, content_type="text/html")


@prom_answer("truncated")
async def _truncated(request: web.Request) -> web.StreamResponse:
    whole = data.body("prometheus_query_range_matrix.json")
    return web.Response(body=whole[: len(whole) // 2], content_type="application/json")


@prom_answer("invalid")
async def _invalid(request: web.Request) -> web.StreamResponse:
    body = b'{"status":"success","data":{"resultType":"matrix","result":[{"values":[[1,2],]}]}}'
    return web.Response(body=body, content_type="application/json")


@prom_answer("shape")
async def _shape(request: web.Request) -> web.StreamResponse:
    return json_response(prom_matrix({"metric": {}, "values": [[P_T0, "1"], [P_T0 + 60]]}))


@prom_answer("too_large")
async def _too_large(request: web.Request) -> web.StreamResponse:
    return web.Response(body=padded(4 * MAX_BYTES), content_type="application/json")


@prom_answer("too_large_chunked")
async def _too_large_chunked(request: web.Request) -> web.StreamResponse:
    return await chunked_large(request)


@prom_answer("too_large_gzip")
async def _too_large_gzip(request: web.Request) -> web.StreamResponse:
    body = gzip.compress(padded(20 * MAX_BYTES))
    assert len(body) < MAX_BYTES  # only the inflated body is over the cap
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return web.Response(body=body, headers=headers)


async def prometheus(request: web.Request) -> web.StreamResponse:
    assert request.path == "/api/v1/query_range"
    return await PROMETHEUS_ANSWERS[request.query["query"]](request)


# Graphite: what each target answers (series as graphite-web sent them when recording).
ALIAS = re.compile(r'alias\((?P<target>.*),"(?P<alias>vista\.\d+)"\)')
GRAPHITE_SERIES: dict[str, list[dict[str, Any]]] = {
    record.GRAPHITE_PLAIN: data.answer("graphite_render_nulls.json"),
    record.GRAPHITE_SUM: data.answer("graphite_render_sumseries.json"),
    record.GRAPHITE_GLOB: data.answer("graphite_render_glob.json"),
    record.GRAPHITE_MISSING: [],
    "odd.values": [
        {
            "target": "odd.values",
            "tags": {"name": "odd.values"},
            "datapoints": [
                [float("nan"), G_T0],
                [1.0, G_T0 + 60],
                [float("inf"), G_T0 + 120],
                [None, G_T0 + 180],
                [float("-inf"), G_T0 + 240],
                [2.0, G_T0 + 300],
            ],
        }
    ],
    "bad.shape": [{"target": "bad.shape", "datapoints": [[1.0, G_T0], [2.0]]}],
    "shy.metric": [
        {"target": "shy.metric", "datapoints": [[5.5, G_T0], [None, G_T0 + 60], [6.5, G_T0 + 120]]}
    ],
}
BATCH_BREAKERS = {
    record.GRAPHITE_UNKNOWN: lambda: recorded("graphite_render_unknown_function.html"),
    "html.page": lambda: web.Response(body=LOGIN_PAGE, content_type="text/html"),
}


async def graphite(request: web.Request) -> web.StreamResponse:
    """graphite-web's /render: one answer for all targets of the request; an unknown function
    (or a page in front of it) fails the whole request; a batch leaves out 'shy.metric'."""
    assert request.path == "/render/" and request.query["format"] == "json"
    targets = request.query.getall("target")
    answer: list[dict[str, Any]] = []
    for target in targets:
        match = ALIAS.fullmatch(target)
        inner = match["target"] if match else target
        if inner in BATCH_BREAKERS:
            return BATCH_BREAKERS[inner]()
        if inner == "shy.metric" and len(targets) > 1:
            continue
        for series in GRAPHITE_SERIES[inner]:
            answer.append({**series, "target": match["alias"] if match else series["target"]})
    return json_response(answer)


def status_page(status: int, body: bytes, content_type: str, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=status, body=body, headers={"Content-Type": content_type, **headers}
        )

    return handler


def slow(remote_box: list[Remote]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(remote_box[0].release.wait(), timeout=10)
        return recorded("prometheus_query_range_matrix.json")

    return handler


# --------------------------------------------------------------------------- helpers


def make_config(
    tmp_path: Path, entries: Iterable[Mapping[str, object]], **settings: object
) -> VistaConfig:
    """The graphite sink; the queue is passed to the cycle directly (no Redis URL is used).

    Cycles run at :func:`recorded_time`, when the recorded Prometheus answers were made, so
    that the windows Vista asks for hold their points (points outside the asked window are
    dropped). The Graphite entries' windows are the uri's own (``from=-10minutes``), so their
    recorded points, from another day, are kept; the open-minute rule is off for them."""
    return settings_factory.make_config(
        tmp_path,
        UNUSED_REDIS,
        entries,
        VISTA_SINK="graphite",
        CARBON_HOST="127.0.0.1",
        VISTA_MAX_RESPONSE_BYTES=MAX_BYTES,
        VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE=False,
        **settings,
    )


def recorded_time() -> float:
    """A clock in the minutes after the recorded Prometheus answers' last point."""
    return P_T0 + 600.0


def prom_points(values: Iterable[str]) -> tuple[Point, ...]:
    return tuple((P_T0 + 60 * i, float(v)) for i, v in enumerate(values))


def graphite_points(values: Iterable[float | None]) -> tuple[Point, ...]:
    return tuple((G_T0 + 60 * i, float(v)) for i, v in enumerate(values) if v is not None)


GOOD_PROM = prom_points(record.PROM_A)
GOOD_PROM_B = prom_points(PROM_B_VALUES)
SPECIAL_PROM = ((P_T0, 1.0), (P_T0 + 120, 2.0), (P_T0 + 240, 3.0), (P_T0 + 360, 4.0))
GOOD_PLAIN = graphite_points(record.GRAPHITE_PLAIN_VALUES)
GOOD_SUM = graphite_points([11.0, 22.0, 33.0, 44.0, 55.0, 66.0, 77.0, 88.0])
ODD_VALUES = ((G_T0 + 60, 1.0), (G_T0 + 300, 2.0))


def kind_of(result: MetricResult) -> str | None:
    return result.error.kind if result.error is not None else None


def by_metric(report: CycleReport) -> dict[str, MetricResult]:
    return {r.metric.removeprefix(f"{PREFIX}."): r for r in report.results}


def queued_items(client: redis.Redis) -> dict[str, list[QueueItem]]:
    """Every item in Redis (queue set and per-metric chains), by metric, in chain order."""
    items: dict[str, list[QueueItem]] = {}
    heads = [codec.decode_item(raw) for raw in client.smembers(constants.QUEUE_KEY)]
    for head in heads:
        chain = client.lrange(constants.CHAIN_KEY_PREFIX + head.metric, 0, -1)
        items[head.metric.removeprefix(f"{PREFIX}.")] = [
            head,
            *(codec.decode_item(raw) for raw in chain),
        ]
    return items


def all_redis_text(client: redis.Redis) -> str:
    """Every key and value in Redis, decoded (to search for leaked secrets)."""
    raw: list[Any] = []
    for key in client.keys("*"):
        kind = client.type(key)
        raw.append(key)
        if kind == b"string":
            raw.append(client.get(key))
        elif kind == b"set":
            raw += client.smembers(key)
        elif kind == b"hash":
            for pair in client.hgetall(key).items():
                raw += pair
        elif kind == b"list":
            raw += client.lrange(key, 0, -1)
        elif kind == b"zset":
            raw += client.zrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected {kind!r} key {key!r}")
    assert all(isinstance(b, bytes) for b in raw)
    return "\n".join(b.decode(errors="replace") for b in raw)


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for rec in caplog.records:
        lines.append(rec.getMessage())
        if rec.exc_info:
            lines.append(logging.Formatter().formatException(rec.exc_info))
        if rec.exc_text:
            lines.append(rec.exc_text)
    return "\n".join(lines)


def assert_no_crash(report: CycleReport, caplog: pytest.LogCaptureFixture) -> None:
    assert report.unfinished == 0
    assert all(r.done for r in report.results)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# ------------------------------------------------------------------------- the tests


async def test_one_cycle_with_every_kind_of_bad_answer(
    net: Net, queue: AsyncFetchQueue, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    prom = await net.remote(prometheus)
    graph = await net.remote(graphite)
    throttled = await net.remote(
        status_page(
            429, b'{"error":"too many requests"}', "application/json", **{"Retry-After": "120"}
        )
    )
    down = await net.remote(status_page(503, b"Service Unavailable", "text/plain"))
    gateway = await net.remote(status_page(502, NGINX_502, "text/html"))
    slow_box: list[Remote] = []
    stalled = await net.remote(slow(slow_box))
    slow_box.append(stalled)
    cut = await CutServer().start()
    refused = f"http://127.0.0.1:{free_port()}"

    prom_queries = [
        ("good", record.PROM_MATRIX_QUERY), ("good_b", 'vista_rec{job="b"}'),
        ("special", record.PROM_SPECIAL_QUERY), ("empty", record.PROM_EMPTY_QUERY),
        ("multi", record.PROM_MULTI_QUERY), ("bad_query", record.PROM_BAD_QUERY),
        ("html", "login_page"), ("truncated", "truncated"), ("invalid", "invalid"),
        ("shape", "shape"), ("too_large", "too_large"),
        ("too_large_chunked", "too_large_chunked"), ("too_large_gzip", "too_large_gzip"),
    ]  # fmt: skip
    graphite_answers = [
        ("plain", record.GRAPHITE_PLAIN), ("sum", record.GRAPHITE_SUM), ("odd", "odd.values"),
        ("glob", record.GRAPHITE_GLOB), ("unknown", record.GRAPHITE_UNKNOWN),
        ("html", "html.page"), ("shape", "bad.shape"), ("missing", record.GRAPHITE_MISSING),
    ]  # fmt: skip
    entries = [
        *(prom_entry(prom.url, f"prom.{name}", query) for name, query in prom_queries),
        *(graphite_entry(graph.url, f"graphite.{name}", t) for name, t in graphite_answers),
        prom_entry(throttled.url, "throttled", "up"),
        graphite_entry(down.url, "down.a", "a.b"),
        graphite_entry(down.url, "down.b", "c.d"),
        prom_entry(gateway.url, "gateway", "up"),
        prom_entry(stalled.url, "stalled", "up"),
        prom_entry(cut.url, "cut", "up"),
        graphite_entry(refused, "refused", "a.b"),
    ]
    config = net.config(entries, VISTA_REMOTE_HOSTS={stalled.url: {"timeout": SLOW_TIMEOUT}})
    hosts: dict[str, HostState] = {}
    failed: list[str] = []
    cycle = FetchCycle(
        config,
        net.session,
        hosts,
        queue=queue,
        on_error=lambda r: failed.append(r.metric),
        clock=recorded_time,
    )
    began = time.monotonic()
    try:
        report = await cycle.run(config.fetch_metrics, {}, set())
    finally:
        await cut.stop()
    assert time.monotonic() - began < 5

    assert_no_crash(report, caplog)
    results = by_metric(report)
    assert len(results) == len(entries)

    # Good metrics, on the hosts that also answered badly and on others: exact points.
    good = {
        "prom.good": GOOD_PROM,
        "prom.good_b": GOOD_PROM_B,
        "prom.special": SPECIAL_PROM,
        "graphite.plain": GOOD_PLAIN,
        "graphite.sum": GOOD_SUM,
        "graphite.odd": ODD_VALUES,
    }
    for name, points in good.items():
        assert (name, results[name].error, results[name].points) == (name, None, points)
    assert results["prom.special"].dropped.as_dict() == {"non_finite": 3}
    assert results["graphite.odd"].dropped.as_dict() == {"non_finite": 3, "none": 1}
    assert results["graphite.plain"].dropped.as_dict() == {"none": 3}
    # Nothing there is not an error either.
    for name in ("prom.empty", "graphite.missing"):
        assert (results[name].error, results[name].points) == (None, ())

    expected_errors = {
        "prom.multi": (
            "too_many_series",
            "the query returned 2 series; it must return one. Labels that differ: "
            "instance=[h:1, h:2]; job=[a, b].",
        ),
        "prom.bad_query": (
            "prometheus_bad_data",
            "Prometheus error (bad_data): 1:14: parse error: unclosed left parenthesis",
        ),
        "prom.html": ("html", "HTML instead of JSON: HTML page titled 'Sign in - SSO'"),
        "prom.truncated": ("truncated_json", "truncated JSON at byte 144 of 144: "),
        "prom.invalid": ("invalid_json", "invalid JSON at byte 77 of 82: "),
        "prom.shape": ("shape", f'sample [{P_T0 + 60}] is not [timestamp, "value"]'),
        "prom.too_large": ("too_large", f"exceeds the {MAX_BYTES}-byte cap"),
        "prom.too_large_chunked": ("too_large", f"body exceeds the {MAX_BYTES}-byte cap"),
        "prom.too_large_gzip": ("too_large", f"body exceeds the {MAX_BYTES}-byte cap"),
        "graphite.glob": (
            "too_many_series",
            "the target returned 2 series (vista.rec.b.x, vista.rec.c.x); it must return one",
        ),
        "graphite.unknown": (
            "http_400",
            "HTTP 400: 'Invalid parameters (Received request for unknown function: "
            'noSuchFunction); targets: "noSuchFunction(vista.rec.a.plain)"\'',
        ),
        "graphite.html": ("html", "HTML instead of JSON: HTML page titled 'Sign in - SSO'"),
        "graphite.shape": ("shape", "series 'bad.shape': datapoint [2.0] is not [value, ts]"),
        "throttled": ("http_429", "HTTP 429; Retry-After 120s: too many requests"),
        "down.a": ("http_503", "HTTP 503: 'Service Unavailable'"),
        "down.b": ("http_503", "HTTP 503: 'Service Unavailable'"),
        "gateway": ("http_502", "HTTP 502: HTML page titled '502 Bad Gateway'"),
        "stalled": ("timeout", f"no answer within {SLOW_TIMEOUT:g}s"),
        "cut": ("truncated", "body cut short: "),
        "refused": ("connect", "cannot connect: "),
    }
    actual_errors = {
        name: (r.error.kind, str(r.error)) for name, r in results.items() if r.error is not None
    }
    assert set(actual_errors) == set(expected_errors)
    for name, (kind, message) in expected_errors.items():
        assert actual_errors[name][0] == kind, (name, actual_errors[name])
        assert message in actual_errors[name][1], (name, actual_errors[name])
        assert results[name].points == () and results[name].items == []
    assert sorted(failed) == sorted(f"{PREFIX}.{name}" for name in expected_errors)
    assert results["throttled"].error is not None
    assert results["throttled"].error.retry_after == 120.0

    # Requests: one per Prometheus metric; the Graphite batch broken by the unknown function
    # (and the page in front of it) was asked once, then each target alone.
    assert sorted(s.promql for s in prom.seen) == sorted(
        str(e["remote_target"]) for e in entries if e["remote_host"] == prom.url
    )
    graphite_targets = [str(e["remote_target"]) for e in entries if e["remote_host"] == graph.url]
    assert len(graph.seen) == 1 + len(graphite_targets)
    assert graph.seen[0].targets == [
        f'alias({t},"vista.{n}")' for n, t in enumerate(graphite_targets)
    ]
    assert sorted(s.targets[0] for s in graph.seen[1:]) == sorted(graphite_targets)
    assert all(len(s.targets) == 1 for s in graph.seen[1:])
    assert {n: results[n].requests for n in results if n.startswith("graphite.")} == {
        n: 2 for n in results if n.startswith("graphite.")
    }
    assert len(down.seen) == 1  # a 503 says nothing about one target: the batch is not split
    assert down.seen[0].targets == ['alias(a.b,"vista.0")', 'alias(c.d,"vista.1")']
    assert (len(throttled.seen), len(gateway.seen), len(stalled.seen), cut.requests) == (1, 1, 1, 1)

    # Hosts: the one that asked to wait is left alone; the others are not.
    assert not hosts[throttled.url].available()
    assert hosts[throttled.url].backoff.remaining() > 100
    for url in (prom.url, graph.url):
        assert hosts[url].available()
    # Counted per host: what the HTTP edge rejected (parse errors of a decoded body are not).
    assert hosts[prom.url].errors == {
        "html": 1,
        "truncated_json": 1,
        "invalid_json": 1,
        "too_large": 3,
    }
    for url, kind in (
        (down.url, "http_503"),
        (gateway.url, "http_502"),
        (stalled.url, "timeout"),
        (cut.url, "truncated"),
        (refused, "connect"),
        (throttled.url, "http_429"),
    ):
        assert hosts[url].errors == {kind: 1}, url
        assert hosts[url].backoff.attempts == 1, url

    # Exactly the good metrics were queued, with exactly their points.
    queued = queued_items(redis_client)
    assert {name: [i.points for i in items] for name, items in queued.items()} == {
        name: [points] for name, points in good.items()
    }
    assert report.queued == len(good)
    for name, items in queued.items():
        source = "prometheus" if name.startswith("prom.") else "graphite"
        host = prom.url if source == "prometheus" else graph.url
        assert (items[0].source, items[0].host, items[0].seq) == (source, host, 0)


@pytest.mark.parametrize(
    ("breaker", "kind", "message"),
    [
        (record.GRAPHITE_UNKNOWN, "http_400", "unknown function: noSuchFunction"),
        ("html.page", "html", "HTML page titled 'Sign in - SSO'"),
        ("bad.shape", "shape", "series 'bad.shape': datapoint [2.0] is not [value, ts]"),
    ],
)
async def test_graphite_batch_broken_by_one_target_is_fetched_singly(
    net: Net, caplog: pytest.LogCaptureFixture, breaker: str, kind: str, message: str
) -> None:
    caplog.set_level(logging.DEBUG)
    graph = await net.remote(graphite)
    other = await net.remote(graphite)
    targets = [record.GRAPHITE_PLAIN, breaker, record.GRAPHITE_SUM]
    entries = [graphite_entry(graph.url, f"g{n}", t) for n, t in enumerate(targets)]
    entries.append(graphite_entry(other.url, "elsewhere", record.GRAPHITE_PLAIN))
    config = net.config(entries)

    report = await net.dry_run(config)

    assert_no_crash(report, caplog)
    results = by_metric(report)
    assert (results["g0"].error, results["g0"].points) == (None, GOOD_PLAIN)
    assert (results["g2"].error, results["g2"].points) == (None, GOOD_SUM)
    assert (results["elsewhere"].error, results["elsewhere"].points) == (None, GOOD_PLAIN)
    error = results["g1"].error
    assert error is not None and error.kind == kind and message in str(error)
    # One batch, then each of its targets alone; the other host saw one request only.
    assert [s.targets for s in graph.seen[:1]] == [
        [f'alias({t},"vista.{n}")' for n, t in enumerate(targets)]
    ]
    assert sorted(s.targets[0] for s in graph.seen[1:]) == sorted(targets)
    assert [s.targets for s in other.seen] == [[record.GRAPHITE_PLAIN]]
    assert [results[f"g{n}"].requests for n in range(3)] == [2, 2, 2]
    singly = [r.getMessage() for r in caplog.records if "fetching singly" in r.getMessage()]
    assert len(singly) == 1
    assert singly[0].startswith(f"{graph.url}: batch of 3 failed (")
    assert singly[0].endswith("); fetching singly")


async def test_graphite_target_missing_from_a_batch_answer_is_asked_alone(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """'shy.metric' is left out of batch answers but answers alone; the missing metric
    answers nothing either way (no points, and no error: graphite-web says the same for a
    metric without data); a glob in the batch is too many series without a second request."""
    graph = await net.remote(graphite)
    targets = [
        record.GRAPHITE_PLAIN,
        "shy.metric",
        record.GRAPHITE_MISSING,
        record.GRAPHITE_GLOB,
        "odd.values",
        record.GRAPHITE_SUM,
    ]
    entries = [graphite_entry(graph.url, f"g{n}", t) for n, t in enumerate(targets)]
    config = net.config(entries)

    report = await net.dry_run(config)

    assert_no_crash(report, caplog)
    r = [by_metric(report)[f"g{n}"] for n in range(len(targets))]
    assert [(x.points, x.error) for x in (r[0], r[1], r[2], r[4], r[5])] == [
        (GOOD_PLAIN, None),
        (((G_T0, 5.5), (G_T0 + 120, 6.5)), None),
        ((), None),
        (ODD_VALUES, None),
        (GOOD_SUM, None),
    ]
    assert r[3].error is not None and r[3].error.kind == "too_many_series"
    assert r[3].points == ()
    assert [x.requests for x in r] == [1, 2, 2, 1, 1, 1]
    assert [s.targets for s in graph.seen[1:]] in (
        [["shy.metric"], [record.GRAPHITE_MISSING]],
        [[record.GRAPHITE_MISSING], ["shy.metric"]],
    )
    assert len(graph.seen) == 3


async def test_a_host_that_answered_429_is_left_alone_next_cycle(net: Net) -> None:
    throttled = await net.remote(
        status_page(429, b"slow down", "text/plain", **{"Retry-After": "60"})
    )
    prom = await net.remote(prometheus)
    entries = [
        prom_entry(throttled.url, "t1", "up"),
        prom_entry(throttled.url, "t2", "up"),
        prom_entry(prom.url, "good", record.PROM_MATRIX_QUERY),
    ]
    config = net.config(entries)
    hosts: dict[str, HostState] = {}

    first = by_metric(await net.dry_run(config, hosts))
    assert [kind_of(first[m]) for m in ("t1", "t2", "good")] == ["http_429", "http_429", None]
    assert not hosts[throttled.url].available() and hosts[prom.url].available()

    second = by_metric(await net.dry_run(config, hosts))
    assert [(second[m].skipped, second[m].requests) for m in ("t1", "t2")] == [
        ("host_backoff", 0),
        ("host_backoff", 0),
    ]
    assert (second["good"].skipped, second["good"].points) == (None, GOOD_PROM)
    assert (len(throttled.seen), len(prom.seen)) == (2, 2)


async def test_retry_after_holds_even_when_another_request_to_the_host_then_succeeds(
    net: Net,
) -> None:
    """Two metrics of one host are fetched together: the first answer is 429 Retry-After 60,
    the second a good answer a moment later. The host asked us to wait: it stays alone."""
    answered_429 = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query["query"] == "throttled":
            answered_429.set()
            return web.Response(status=429, text="later", headers={"Retry-After": "60"})
        await asyncio.wait_for(answered_429.wait(), timeout=5)
        await asyncio.sleep(0.1)  # the 429 reaches the client first
        return recorded("prometheus_query_range_matrix.json")

    host = await net.remote(handler)
    entries = [
        prom_entry(host.url, "throttled", "throttled"),
        prom_entry(host.url, "good", record.PROM_MATRIX_QUERY),
    ]
    config = net.config(entries)
    hosts: dict[str, HostState] = {}
    results = by_metric(await net.dry_run(config, hosts))
    assert results["good"].points == GOOD_PROM
    assert results["throttled"].error is not None
    assert results["throttled"].error.kind == "http_429"
    assert not hosts[host.url].available()
    assert hosts[host.url].remaining() > 50


SECRETS = {
    "password": "pa:ss w\u00f6rd\u20ac-SECRET",
    "wrong_password": "WRONG-SECRET-pw",
    "token": "tok-SECRET-123",
    "api_key": "key-SECRET-456",
    "graphite_key": "gkey-SECRET-789",
    "bad_key": "BAD-SECRET-key",
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_credentials_are_sent_and_never_logged_or_queued(
    net: Net, queue: AsyncFetchQueue, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    want_prom = {
        "q_basic": ("Authorization", basic("vista-user", SECRETS["password"])),
        "q_wrong": ("Authorization", basic("vista-user", SECRETS["password"])),
        "q_token": ("Authorization", f"Bearer {SECRETS['token']}"),
        "q_key": ("X-Vista-Key", SECRETS["api_key"]),
    }

    async def prom_handler(request: web.Request) -> web.StreamResponse:
        header, value = want_prom[request.query["query"]]
        if request.headers.get(header) != value:
            return web.Response(status=401, text="Unauthorized", content_type="text/plain")
        return recorded("prometheus_query_range_matrix.json")

    async def graphite_handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-Grafana-Key") != SECRETS["graphite_key"]:
            return web.Response(
                status=401, body=b"<title>401 Unauthorized</title>", content_type="text/html"
            )
        return await graphite(request)

    prom = await net.remote(prom_handler)
    graph = await net.remote(graphite_handler)
    user = {"user": "vista-user", "password": SECRETS["password"]}
    entries = [
        prom_entry(prom.url, "p.basic", "q_basic", **user),
        prom_entry(
            prom.url, "p.wrong", "q_wrong", user="vista-user", password=SECRETS["wrong_password"]
        ),
        prom_entry(prom.url, "p.token", "q_token", token=SECRETS["token"]),
        prom_entry(prom.url, "p.key", "q_key", api_key=SECRETS["api_key"]),
        graphite_entry(graph.url, "g.key1", record.GRAPHITE_PLAIN, api_key=SECRETS["graphite_key"]),
        graphite_entry(graph.url, "g.key2", record.GRAPHITE_SUM, api_key=SECRETS["graphite_key"]),
        graphite_entry(graph.url, "g.bad1", record.GRAPHITE_PLAIN, api_key=SECRETS["bad_key"]),
        graphite_entry(graph.url, "g.bad2", record.GRAPHITE_SUM, api_key=SECRETS["bad_key"]),
    ]
    config = net.config(
        entries,
        VISTA_API_KEY_HEADER="X-Vista-Key",
        VISTA_REMOTE_HOSTS={graph.url: {"api_key_header": "X-Grafana-Key"}},
    )
    logger = logging.getLogger("test.fetcher")
    cycle = FetchCycle(
        config,
        net.session,
        {},
        queue=queue,
        on_error=lambda r: logger.warning("%s %s: %s", r.entry.host, r.metric, r.error),
        clock=recorded_time,
    )
    report = await cycle.run(config.fetch_metrics, {}, set())

    assert_no_crash(report, caplog)
    results = by_metric(report)
    for name in ("p.basic", "p.token", "p.key"):
        assert (results[name].error, results[name].points) == (None, GOOD_PROM)
    assert (results["g.key1"].error, results["g.key1"].points) == (None, GOOD_PLAIN)
    assert (results["g.key2"].error, results["g.key2"].points) == (None, GOOD_SUM)
    for name in ("p.wrong", "g.bad1", "g.bad2"):
        error = results[name].error
        assert error is not None and error.kind == "http_401", name
    assert str(results["p.wrong"].error) == "HTTP 401: 'Unauthorized'"
    assert str(results["g.bad1"].error) == "HTTP 401: HTML page titled '401 Unauthorized'"

    # What each request carried: only its own credential, in its own header.
    sent = {s.promql: s.headers for s in prom.seen}
    assert sent["q_basic"]["Authorization"] == basic("vista-user", SECRETS["password"])
    assert sent["q_wrong"]["Authorization"] == basic("vista-user", SECRETS["wrong_password"])
    assert sent["q_token"]["Authorization"] == f"Bearer {SECRETS['token']}"
    assert sent["q_key"]["X-Vista-Key"] == SECRETS["api_key"]
    assert "Authorization" not in sent["q_key"]
    assert not any("X-Vista-Key" in h for q, h in sent.items() if q != "q_key")
    graphite_keys = sorted((len(s.targets), s.headers["X-Grafana-Key"]) for s in graph.seen)
    assert graphite_keys == [
        (1, SECRETS["bad_key"]),  # the failed batch of the bad key, fetched singly
        (1, SECRETS["bad_key"]),
        (2, SECRETS["bad_key"]),
        (2, SECRETS["graphite_key"]),  # one batch for the two entries sharing a key
    ]
    assert not any("Authorization" in s.headers for s in graph.seen)

    # Queued: exactly the good metrics, with their points and no credential anywhere.
    queued = queued_items(redis_client)
    assert {name: [i.points for i in items] for name, items in queued.items()} == {
        "p.basic": [GOOD_PROM],
        "p.token": [GOOD_PROM],
        "p.key": [GOOD_PROM],
        "g.key1": [GOOD_PLAIN],
        "g.key2": [GOOD_SUM],
    }
    secrets = [
        *SECRETS.values(),
        *(basic("vista-user", SECRETS[k]) for k in ("password", "wrong_password")),
    ]
    secrets += [
        base64.b64encode(f"vista-user:{SECRETS[k]}".encode()).decode()
        for k in ("password", "wrong_password")
    ]
    stored = all_redis_text(redis_client)
    assert "vista-user" not in stored and len(stored) > 1000  # really the items' text
    logged = log_text(caplog)
    described = repr(report.results) + "".join(str(r.error) for r in report.results)
    assert "fetching singly" in logged and "HTTP 401" in logged  # the failures were logged
    for secret in secrets:
        assert secret not in stored
        assert secret not in logged
        assert secret not in described
