"""A test double of Skyline Flux's HTTP ingestion API.

It copies the behaviour of ``earthgecko/skyline`` ``skyline/flux/listen.py``: the falcon
resources ``MetricData`` (``GET /metric_data``) and ``MetricDataPost``
(``POST /metric_data_post``). The revision read is the newest one available, from 2023-05
(the one that adds ``SAVE_DEBUG_INFO``). Flux runs falcon 3 (it sets ``resp.text``), so
uncaught errors get falcon 3's default answers.

Where the source and Flux's documentation disagree, this double follows the
source. The comments marked ``SOURCE != SPEC`` show where. The main differences are:

* No name normalisation. The listen.py read never replaces ``' '``, ``'..'``, ``'*'`` or
  ``"'"``. A name holding any of them fails validation with ``invalid characters in name``.
* A bad item is *not* all-or-nothing for ingestion. Flux queues each item as it validates
  it, so the items before a bad one are already queued when the 400 is returned. The docs
  say "the entire POST will be rejected", which is only true of the status code.
* The 207 body has one more key, ``"defined skipped_metrics count"``. When the POST holds
  exactly one metric, the same body is returned with code and status 400.
* A GET with no ``key`` parameter raises ``UnboundLocalError`` inside Flux, so falcon answers
  500 ``{"title": "500 Internal Server Error"}``. The "400 no key parameter passed" branch
  can never be reached.
* A GET never validates the metric name: Flux validates the literal ``'metric'``.

What Flux's worker does next (``skyline/flux/worker.py``) is in ``tests/fakes/flux_worker.py``:
each request's accepted items go to it once the answer is written; it checks them against
``flux.last`` by Flux's rules (``check_last_timestamp`` is ``FLUX_CHECK_LAST_TIMESTAMP``, default
True, and ``vista_enabled`` is ``VISTA_ENABLED``), drops a checked point at or below it, writes
``flux.last.metric_data`` / ``flux.last.<metric>`` as Flux does, and counts what it forwards to
carbon, and what it forwards twice. Give it the Redis that Vista uses (``redis=``) so that both
see the same ``flux.last`` and ``vista.metrics``; without one it keeps them in a private
fakeredis. ``accepted`` is what the listener took; ``forwarded`` is what a real Skyline would
store (call :meth:`FluxServer.wait_processed` first).

Not copied: telegraf payloads, SKIP_LIST/DO_NOT_SKIP_LIST, aggregation namespaces,
namespace prefixes on keys (FLUX_API_KEYS), FLUX_PERSIST_QUEUE, zero-fill and last-known-value
metrics, and memcache.

Usage (synchronous)::

    with FluxServer(redis=client) as flux:
        requests.post(f"{flux.url}/metric_data_post", json={...})
        assert flux.points_by_metric() == {...}    # what the listener took
        flux.wait_processed()
        assert flux.forwarded_twice == 0            # what Flux would send to carbon again

The server runs on its own event loop in a daemon thread. Points are recorded on that
thread and can be read from any thread. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import string
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import fakeredis
from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping
from redis import Redis

from skyline.vista.testing.servers import StartStop
from tests.fakes.flux_worker import (
    VISTA_METRICS_EVERY,
    FluxWorker,
    ForwardedPoint,
    QueuedPoint,
)
from tests.support.web import ThreadedApp

__all__ = [
    "DEFAULT_KEY",
    "AcceptedPoint",
    "FluxServer",
    "ForwardedPoint",
    "RequestRecord",
]

DEFAULT_KEY: Final = "VistaFakeFluxKey0123456789abcdef"  # 32 alphanumeric characters

# listen.py ALLOWED_CHARS (':' was added 20220209, Feature #4284).
_ALLOWED_CHARS: Final = frozenset("+-%._/=:" + string.ascii_letters + string.digits)
# listen.py validGetArguments ('test' was added 20230223, Feature #4840).
_VALID_GET_ARGUMENTS: Final = frozenset(
    ("key", "metric", "value", "timestamp", "status", "fill", "test")
)
# listen.py FLUX_GRAPHITE_WHISPER_PATH default. It feeds the 4096-character path check.
_WHISPER_PATH: Final = "/opt/graphite/storage/whisper"
_TEST_ONLY_MESSAGE: Final = (
    "metric ingestion test, no metrics were ingested only counts are reported"
)
_GET_PATHS: Final = ("/metric_data", "/flux/metric_data")
_POST_PATHS: Final = ("/metric_data_post", "/flux/metric_data_post")
_SINGLE_FORM_KEYS: Final = ("metric", "timestamp", "value")
_NAME_CACHE_LIMIT: Final = 200_000
_JSON_HEADERS: Final = {"Content-Type": "application/json"}  # falcon 3 default media type


@dataclass(frozen=True, slots=True)
class AcceptedPoint:
    """One item Flux would have put on ``flux.httpMetricDataQueue``."""

    metric: str
    timestamp: int
    value: float
    fill: bool


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request the double answered, in arrival order."""

    method: str
    path: str
    status: int
    metric_count: int  # items in the body (POST), 1 when a GET carries `metric`
    key_in_query: bool  # a `key` query parameter was sent (it should not be, for POST)
    key_in_header: bool  # a non-empty `key` header was sent
    content_type: str | None
    content_encoding: str | None
    test_only_header: bool  # a non-empty `x-test-only` header was sent
    body_size: int  # bytes on the wire, before any gzip decompression
    number: int = 0  # the request's number for Flux's worker (ForwardedPoint.request); 0: none
    peer: str = ""  # the client's address:port (one per connection)


@dataclass(slots=True)
class _GetState:
    key: str | None = None  # None stands for Flux's unbound local variable
    metric: str = ""
    value: float | None = None
    timestamp: int | None = None


class _Reply(Exception):
    """Raised to end request processing with a given answer."""

    def __init__(self, status: int, body: object = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = b"" if body is None else json.dumps(body).encode()


def _bad(message: str) -> _Reply:
    return _Reply(400, {"code": 400, "message": message})


def _invalid_key() -> _Reply:
    # listen.py: `message = 'invalid key'; body = {"code": 401, ...}; falcon.HTTP_401`
    return _Reply(401, {"code": 401, "message": "invalid key"})


def _unique(items: Iterable[str]) -> list[str]:
    # Flux uses list(set(...)), whose order depends on the hash seed. This keeps the first
    # time each name is seen, so the answers are deterministic.
    return list(dict.fromkeys(items))


def _timestamp_error(timestamp: str, now: int, max_age: int) -> str | None:
    """listen.py validate_timestamp(): the reason string, or None when valid."""
    try:
        value = int(timestamp)
    except ValueError:
        return "timestamp is not an int"
    if len(str(value)) != 10:
        return "timestamp is not a valid current unix timestamp"
    reason = None
    if value < now - max_age:
        reason = f"timestamp is too old, older than {max_age} seconds"
    if value > now + 60:
        reason = "timestamp is more than 1 minute in the future"
    return reason


def _metric_name_error(metric: str) -> str | None:
    """listen.py validate_metric_name(): the reason string, or None when valid."""
    if not _ALLOWED_CHARS.issuperset(metric):
        return "invalid characters in name"
    if len(metric.rsplit(".", 1)[-1]) + 4 > 255:  # + '.wsp'
        return "longer than 255 characters"
    # '%s/%s.wsp' % (FLUX_GRAPHITE_WHISPER_PATH, metric.replace('.', '/'))
    if len(_WHISPER_PATH) + 1 + len(metric) + 4 > 4096:
        return "name too long"
    return None


def _peer(request: web.Request) -> str:
    """The client's address:port, or '' once its connection is gone."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""


def _falcon_params(query: MultiMapping[str]) -> dict[str, str | list[str]]:
    """falcon's req.params: first-seen order, and a repeated name gives a list."""
    params: dict[str, str | list[str]] = {}
    for name, value in query.items():
        if name not in params:
            params[name] = value
            continue
        existing = params[name]
        if isinstance(existing, list):
            existing.append(value)
        else:
            params[name] = [existing, value]
    return params


class FluxServer(StartStop):
    """An in-process Flux listener (GET /metric_data, POST /metric_data_post).

    Both routes are also served under ``/flux/`` (the nginx path). With ``record=False``,
    neither points nor request records are kept (only ``accepted_count`` and
    ``request_count``), so long benchmarks stay small in memory. ``now`` is called once
    per request. Flux calls ``time()`` for each item. ``delay`` (or :meth:`set_delay`)
    answers each processed POST that many seconds late, its points already taken.

    Flux's worker (see ``tests/fakes/flux_worker.py``): ``redis`` holds ``flux.last.*`` and
    ``vista.metrics`` (a private fakeredis when None); ``check_last_timestamp`` and
    ``vista_enabled`` are Flux's ``FLUX_CHECK_LAST_TIMESTAMP`` and ``VISTA_ENABLED``;
    ``vista_metrics_every`` is how often Flux re-reads ``vista.metrics`` (60 s, only when
    ``check_last_timestamp`` is False); ``worker_lag`` delays the worker behind the listener.

    ``emulate_worker=False`` runs the listener alone, as a real Flux's listener process is:
    every rule above (keys, validation, the 400 that leaves the items before a bad one
    accepted, 207 quotas, counts, records) still applies, but nothing is handed to the worker,
    whose thread is never started: nothing is checked against ``flux.last`` or forwarded
    (``forwarded_count`` stays 0). ``bench/deliver.py`` uses it to measure what Vista can push
    without the worker's CPU on the same cores.
    """

    def __init__(
        self,
        *,
        keys: Iterable[str] = (DEFAULT_KEY,),
        max_age: int = 3600,
        now: Callable[[], float] = time.time,
        namespace_quotas: Mapping[str, int] | None = None,
        record: bool = True,
        delay: float = 0.0,
        redis: Redis | None = None,
        check_last_timestamp: bool = True,
        vista_enabled: bool = True,
        vista_metrics_every: float = VISTA_METRICS_EVERY,
        worker_lag: float = 0.0,
        emulate_worker: bool = True,
    ) -> None:
        # listen.py validate_key(): when valid_keys is empty, any 32-character alphanumeric
        # key passes.
        self._keys = frozenset(keys)
        self._max_age = max_age
        self._now = now
        self._quotas = {ns: int(q) for ns, q in (namespace_quotas or {}).items() if int(q)}
        self._record = record
        self.emulate_worker = emulate_worker
        # The server thread appends plain tuples (cheap). `accepted` turns them into
        # AcceptedPoint objects when it is read.
        self._points: list[tuple[str, int, float, bool]] = []
        self._accepted: list[AcceptedPoint] = []
        self.requests: list[RequestRecord] = []
        self._accepted_count = 0
        self._request_count = 0
        self._lock = threading.Lock()
        self._failures: list[tuple[int, bytes]] = []
        self._rejected: set[str] = set()
        self._down = False
        self._delay = float(delay)
        self.worker = FluxWorker(
            redis if redis is not None else fakeredis.FakeRedis(),
            check_last_timestamp=check_last_timestamp,
            vista_enabled=vista_enabled,
            vista_metrics_every=vista_metrics_every,
            lag=worker_lag,
            record=record,
        )
        # The items the request being processed has queued (requests are processed one at a
        # time on the server's loop, without awaiting in between): handed to the worker once
        # the answer is written.
        self._batch: list[QueuedPoint] = []
        self._request_number = 0  # requests that reached processing, in arrival order
        # Stand-ins for the Redis sets flux.quota.namespace_metrics.<ns> (the known metrics)
        # and flux.namespace_quota.<ns>.<minute> (the metrics seen this minute), and the hash
        # flux.prometheus.test_only.<prefix>.<minute>.
        self._ns_metrics: dict[str, set[str]] = {}
        self._ns_minute: dict[str, tuple[int, set[str]]] = {}
        self._test_only: dict[int, list[str]] = {}
        self._name_errors: dict[str, str | None] = {}
        # auto_decompress=False: Flux gunzips the body itself (and ignores a failure to).
        self._app = ThreadedApp("fake-flux", self._make_app, auto_decompress=False)
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FluxServer:
        if self._app.running:
            raise RuntimeError("FluxServer already started")
        if self.emulate_worker:
            self.worker.start()
        self._app.start()
        self.port = self._app.port
        return self

    def stop(self) -> None:
        if not self._app.running:
            return
        self._app.stop()
        self.worker.wait_idle(timeout=10)
        self.worker.stop()

    def _make_app(self) -> web.Application:
        # client_max_size: falcon does not limit the body size.
        app = web.Application(client_max_size=256 * 1024**2)
        for path in _GET_PATHS:
            app.router.add_get(path, self._handle_get, allow_head=False)
        for path in _POST_PATHS:
            app.router.add_post(path, self._handle_post)
        app.router.add_route("*", "/{tail:.*}", self._handle_other)
        return app

    # ------------------------------------------------------------------ controls

    def fail_next(self, status: int, count: int = 1, body: str = "") -> None:
        """Answer the next ``count`` requests with ``status`` and ``body``, unprocessed."""
        with self._lock:
            self._failures.extend([(status, body.encode())] * count)

    def set_down(self, down: bool) -> None:
        """Simulate Flux being down: stop listening and reset open connections.

        While down, new connections are refused (ECONNREFUSED) and kept-alive connections
        are closed, so clients get a connection error and never an answer. Requests that
        are not answered are not in ``requests``. ``set_down(False)`` listens on the same
        port again.
        """
        self._app.call(self._aset_down(down))

    async def _aset_down(self, down: bool) -> None:
        if down == self._down:
            return
        self._down = down
        local = self._app.local
        assert local is not None
        if down:
            await local.unlisten()
        else:
            await local.listen(self.port)

    def set_delay(self, seconds: float) -> None:
        """Answer every POST ``seconds`` late (a slow Flux).

        The points are taken (recorded) when the request arrives, and the answer follows after
        the delay, as with a Flux whose listener queued the items but answers slowly. A client
        that dies while it waits has had its points accepted without knowing it.
        """
        with self._lock:
            self._delay = max(0.0, float(seconds))

    def reject_metric(self, metric: str) -> None:
        """Reject ``metric`` the way Flux rejects a metric over its namespace quota.

        POST: the metric goes into "rejected metrics" of a 207 (400 when it is the only
        item), and the other items are processed. GET: a 400 over-quota answer. The check
        sits where Flux's quota check is: after name validation, before timestamp and value
        validation. It is skipped for test-only POSTs, as quotas are.
        """
        with self._lock:
            self._rejected.add(metric)

    def accept_metric(self, metric: str) -> None:
        """Undo :meth:`reject_metric` (the quota was raised)."""
        with self._lock:
            self._rejected.discard(metric)

    # ------------------------------------------------------------------ results

    @property
    def accepted_count(self) -> int:
        """Points accepted so far. The count is kept even when ``record=False``."""
        return self._accepted_count

    @property
    def request_count(self) -> int:
        """Requests answered so far. The count is kept even when ``record=False``."""
        return self._request_count

    @property
    def accepted(self) -> list[AcceptedPoint]:
        """A snapshot of the accepted points, in arrival order (empty when record=False)."""
        with self._lock:
            points = self._points[len(self._accepted) : len(self._points)]
            self._accepted.extend(AcceptedPoint(*point) for point in points)
            return list(self._accepted)

    def wait_processed(self, timeout: float = 10.0) -> None:
        """Wait until Flux's worker has processed every point taken so far."""
        if not self.worker.wait_idle(timeout):
            raise TimeoutError(f"the Flux worker did not catch up within {timeout:g}s")

    def refresh_vista_metrics(self) -> None:
        """Make Flux's worker re-read vista.metrics now (it does once a minute)."""
        self.worker.refresh_vista_metrics()

    @property
    def forwarded(self) -> list[ForwardedPoint]:
        """What Flux's worker sent on to carbon, in order (empty when record=False)."""
        return self.worker.forwarded

    @property
    def forwarded_count(self) -> int:
        """Points Flux's worker sent on to carbon (kept even when record=False)."""
        return self.worker.forwarded_count

    @property
    def forwarded_twice(self) -> int:
        """Points Flux's worker sent on to carbon again: the same (metric, timestamp) twice."""
        return self.worker.forwarded_twice

    @property
    def dropped_count(self) -> int:
        """Points Flux's worker checked and dropped as at or below flux.last."""
        return self.worker.dropped_count

    def forwarded_by_metric(self) -> dict[str, list[tuple[int, float]]]:
        """Each metric's forwarded ``(timestamp, value)`` pairs, in order (record=True)."""
        return self.worker.forwarded_by_metric()

    def forwarded_again_from(self) -> dict[int, int]:
        """Requests (numbered from 1 in arrival order) whose points Flux forwarded again when
        a later request carried them, with how many: what a client sent twice, as stored."""
        return self.worker.forwarded_again_from()

    def points_by_metric(self) -> dict[str, list[tuple[int, float]]]:
        """The accepted ``(timestamp, value)`` pairs of each metric, in arrival order."""
        result: dict[str, list[tuple[int, float]]] = {}
        for metric, timestamp, value, _fill in self._points[: len(self._points)]:
            result.setdefault(metric, []).append((timestamp, value))
        return result

    # ------------------------------------------------------------------ HTTP handlers

    def _log_request(
        self,
        request: web.Request,
        status: int,
        metric_count: int,
        body_size: int,
        number: int = 0,
        peer: str = "",
    ) -> None:
        self._request_count += 1
        if not self._record:
            return
        headers = request.headers
        self.requests.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                status=status,
                metric_count=metric_count,
                key_in_query="key" in request.query,
                key_in_header=bool(headers.get("key")),
                content_type=headers.get("Content-Type"),
                content_encoding=headers.get("Content-Encoding"),
                test_only_header=bool(headers.get("x-test-only")),
                body_size=body_size,
                number=number,
                peer=peer or _peer(request),
            )
        )

    def _respond(
        self,
        request: web.Request,
        status: int,
        payload: bytes,
        *,
        metric_count: int,
        body_size: int = 0,
        extra_headers: Mapping[str, str] | None = None,
        number: int = 0,
        peer: str = "",
    ) -> web.Response:
        self._log_request(request, status, metric_count, body_size, number, peer)
        if status == 204 or not payload:
            # falcon never sends a body with a 204. A 500 from the POST catch-all has none.
            return web.Response(status=status, headers=extra_headers)
        headers_out = dict(_JSON_HEADERS)
        if extra_headers:
            headers_out.update(extra_headers)
        return web.Response(status=status, body=payload, headers=headers_out)

    def _take_failure(self) -> tuple[int, bytes] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    async def _handle_get(self, request: web.Request) -> web.Response:
        params = _falcon_params(request.query)
        metric_count = 1 if "metric" in params else 0
        failure = self._take_failure()
        if failure is not None:
            return self._failure_response(request, failure, metric_count, 0)
        self._batch = []
        self._request_number += 1
        number = self._request_number
        try:
            self._process_get(params, request.headers, int(self._now()))
        except _Reply as reply:
            self.worker.expect(len(self._batch))
            response = self._respond(
                request, reply.status, reply.payload, metric_count=metric_count, number=number
            )
            return await self._answer_then_hand_over(request, response, self._batch, number)
        raise AssertionError("unreachable: _process_get always replies")  # pragma: no cover

    async def _handle_post(self, request: web.Request) -> web.Response:
        peer = _peer(request)  # before the client can go away
        try:
            raw = await request.read()
        except ConnectionResetError:  # the client died while sending: Flux never saw it
            return web.Response(status=400)
        failure = self._take_failure()
        if failure is not None:
            count = self._count_metrics(raw, request.headers.get("Content-Encoding"))
            return self._failure_response(request, failure, count, len(raw))
        counter = [0]
        self._batch = []
        self._request_number += 1
        number = self._request_number
        try:
            self._process_post(raw, request.headers, int(self._now()), counter)
        except _Reply as reply:
            batch = self._batch
            self.worker.expect(len(batch))
            try:
                if self._delay:
                    await asyncio.sleep(self._delay)
                response = self._respond(
                    request,
                    reply.status,
                    reply.payload,
                    metric_count=counter[0],
                    body_size=len(raw),
                    number=number,
                    peer=peer,
                )
            except BaseException:
                self.worker.hand_over(batch, number)  # Flux queued them, whatever happens next
                raise
            return await self._answer_then_hand_over(request, response, batch, number)
        raise AssertionError("unreachable: _process_post always replies")  # pragma: no cover

    async def _answer_then_hand_over(
        self,
        request: web.Request,
        response: web.Response,
        batch: list[QueuedPoint],
        number: int,
    ) -> web.Response:
        """Write the answer, then give the request's queued items to Flux's worker (which
        moves flux.last): a client never sees flux.last move before its answer. The items go
        to the worker even if the client has gone (Flux queued them when it took them)."""
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client has gone (killed while it waited): Flux goes on all the same
        finally:
            self.worker.hand_over(batch, number)
        return response

    async def _handle_other(self, request: web.Request) -> web.Response:
        # Approximates falcon 3's defaults: 405 for a known route with the wrong method,
        # 404 otherwise, each with a JSON title.
        await request.read()
        if request.path in _GET_PATHS or request.path in _POST_PATHS:
            allow = "GET" if request.path in _GET_PATHS else "POST"
            body = json.dumps({"title": "405 Method Not Allowed"}).encode()
            return self._respond(request, 405, body, metric_count=0, extra_headers={"Allow": allow})
        body = json.dumps({"title": "404 Not Found"}).encode()
        return self._respond(request, 404, body, metric_count=0)

    def _failure_response(
        self, request: web.Request, failure: tuple[int, bytes], metric_count: int, size: int
    ) -> web.Response:
        status, body = failure
        self._log_request(request, status, metric_count, size)
        return web.Response(status=status, body=body, content_type="text/plain")

    @staticmethod
    def _count_metrics(raw: bytes, content_encoding: str | None) -> int:
        try:
            post = FluxServer._decode(raw, content_encoding)
        except _Reply:
            return 0
        return FluxServer._count_post(post)

    @staticmethod
    def _count_post(post: Any) -> int:
        if not isinstance(post, dict):
            return 0
        metrics = post.get("metrics")
        if isinstance(metrics, list) and metrics:
            return len(metrics)
        return 1 if "metric" in post else 0

    # ------------------------------------------------------------------ GET /metric_data

    def _process_get(
        self, params: dict[str, str | list[str]], headers: CIMultiDictProxy[str], now: int
    ) -> None:
        """MetricData.on_get. Always raises _Reply."""
        # The fill parameter is read first, because the timestamp check depends on it.
        backfill = any(name == "fill" and str(v) == "true" for name, v in params.items())
        state = _GetState()
        for name, param in params.items():
            self._get_param(state, name, param, backfill, now)
        if state.key is None:
            # SOURCE != SPEC: the spec says 400. Flux's `if not key:` reads an unassigned
            # local, falcon 3 catches the UnboundLocalError and answers with its default 500.
            raise _Reply(500, {"title": "500 Internal Server Error"})
        if not state.key:
            raise _bad("no key parameter passed")  # unreachable in Flux too
        if not state.metric:
            raise _bad("no metric parameter passed")
        if state.value is None:
            raise _bad("no value parameter passed")
        self._get_quota_check(state.metric, now)
        test_only = bool(headers.get("x-test-only")) or any(
            name == "test" and str(v) == "true" for name, v in params.items()
        )
        if test_only:
            raise _Reply(200, self._test_only_body([state.metric], now, dedupe_first=False))
        self._accept(state.metric, state.timestamp or now, state.value, backfill)
        raise _Reply(204)

    def _get_param(
        self, state: _GetState, name: str, param: str | list[str], backfill: bool, now: int
    ) -> None:
        """One pass of on_get's loop over req.params, with its checks in Flux's order."""
        if name not in _VALID_GET_ARGUMENTS:
            raise _bad(f"Invalid parameter received - {name}")
        if name == "status":
            raise _Reply(200, {"status": "ok"})
        text = param if isinstance(param, str) else str(param)
        if name == "key":
            state.key = text
            if not self._key_valid(text):
                raise _invalid_key()
        elif name == "timestamp":
            if not backfill:
                reason = _timestamp_error(text, now, self._max_age)
                if reason is not None:
                    raise _bad(f"invalid timestamp - {text} - {reason}")
            try:
                state.timestamp = int(text)
            except ValueError:
                raise _bad("invalid timestamp") from None
        elif name == "metric":
            # Flux validates str(request_param_key), the literal 'metric', so a GET metric
            # name is never validated.
            state.metric = text
        elif name == "value":
            try:
                state.value = float(text)
            except ValueError:
                raise _bad(f"invalid value - {text}") from None

    def _get_quota_check(self, metric: str, now: int) -> None:
        # GET's quota check uses the first element of the metric name (a key's namespace
        # prefix is reset to None on each parameter, so it has no effect).
        namespace = metric.split(".", 1)[0]
        quota = self._quotas.get(namespace, 0)
        rejected = metric in self._rejected
        minute_set: set[str] = set()
        known: set[str] = set()
        if quota:
            minute_set = self._minute_set(namespace, now)
            known = self._ns_metrics.setdefault(namespace, set())
            if len(minute_set) >= quota:
                rejected = True
            elif len(known) + (0 if metric in known else 1) > quota:
                rejected = True
        if rejected:
            raise _Reply(
                400,
                {
                    "code": 400,
                    "error": f"over quota - this account is allowed {quota} metrics and an "
                    "additional metric was posted that has been rejected",
                    "rejected metric": metric,
                },
            )
        if quota:
            known.add(metric)
            minute_set.add(metric)

    # ------------------------------------------------------------------ POST /metric_data_post

    @staticmethod
    def _decode(raw: bytes, content_encoding: str | None) -> Any:
        if content_encoding == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                pass  # Flux logs the error and goes on with the raw bytes
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise _bad("invalid json data") from None
        except (ValueError, RecursionError):
            return None  # e.g. not UTF-8: Flux logs it, postData stays None

    def _process_post(
        self, raw: bytes, headers: CIMultiDictProxy[str], now: int, counter: list[int]
    ) -> None:
        """MetricDataPost.on_post. Always raises _Reply."""
        post = self._decode(raw, headers.get("Content-Encoding"))
        counter[0] = self._count_post(post)
        if not post:
            raise _bad("no POST data received")
        if not isinstance(post, dict):
            # postData['status'] raises TypeError, and on_post's catch-all answers a bare 500.
            raise _Reply(500)
        self._post_status(post)
        header_key = headers.get("key")
        if header_key:
            key = header_key
        elif "key" in post:
            key = str(post["key"])
        else:
            raise _bad("no key passed")
        if not self._key_valid(key):
            raise _invalid_key()
        if post.get("validate_key"):
            raise _Reply(200, {"status": "key valid"})
        test_only = bool(headers.get("x-test-only")) or bool(post.get("test"))
        items = self._post_items(post)
        if not items:
            raise _bad("no metric data passed")
        self._post_ingest(items, test_only, now)

    @staticmethod
    def _post_status(post: dict[str, Any]) -> None:
        if "status" not in post or not str(post["status"]):
            return
        status_code = post.get("status_code")
        if not status_code:
            raise _Reply(200, {"status": "ok"})
        try:
            code = int(status_code)
        except (TypeError, ValueError, OverflowError):
            raise _Reply(500) from None
        if code == 207:
            rejected = ["server-1.unknown.metric", "server-1.some-other-unknown.metric"]
            processed = ["server-1.known.metric", "server-1.some-other-known.metric"]
            data = [{"metric": m, "status": 400} for m in rejected]
            data += [{"metric": m, "status": 204} for m in processed]
            body: dict[str, Any] = {
                "code": code,
                "data": data,
                "error": "TEST - over quota - this account is allowed x metrics and an "
                "additional y new metrics were posted that have been rejected",
                "message": "TEST - 2 metrics were processed and 2 metrics were rejected",
                "rejected metrics": rejected,
                "rejected metrics count": 2,
                "processed metrics": processed,
                "processed metrics count": 2,
                "submitted metrics count": 4,
            }
        else:
            body = {"code": code, "data": f"Status code test - {code}"}
        raise _Reply(code if code in (207, 400, 401, 200) else 204, body)

    @staticmethod
    def _post_items(post: dict[str, Any]) -> list[Any]:
        metrics = post.get("metrics", [])
        if not metrics:
            # Only an empty list can take the single form (Flux appends to it). Flux rebuilds
            # the item as a new dict without 'fill': its `'fill' in metric_data` check never
            # matches, so fill is dropped. 'timestamp' is required here, unlike in a list.
            if isinstance(metrics, list) and all(k in post for k in _SINGLE_FORM_KEYS):
                return [
                    {
                        "metric": str(post["metric"]),
                        "timestamp": post["timestamp"],
                        "value": post["value"],
                    }
                ]
            return []
        if isinstance(metrics, list):
            return metrics
        if isinstance(metrics, dict | str):
            # Iterating these gives strings, which fail at item['metric'] ('invalid metric').
            return list(metrics)
        raise _Reply(500)  # a number or true: `for metric_data in metrics` raises TypeError

    def _post_ingest(self, items: list[Any], test_only: bool, now: int) -> None:
        names: list[str] = []
        quota = 0
        namespace = ""
        if self._quotas and not test_only:
            # Flux checks a quota only when every named item shares one first element.
            names = [str(i["metric"]) for i in items if isinstance(i, dict) and "metric" in i]
            namespaces = _unique(n.split(".")[0] for n in names)
            if len(namespaces) == 1:
                namespace = namespaces[0]
                quota = self._quotas.get(namespace, 0)
        known: set[str] = set()
        minute_set: set[str] = set()
        over_quota = 0
        if quota:
            known = self._ns_metrics.setdefault(namespace, set())
            minute_set = self._minute_set(namespace, now)
            # Flux bug kept: the known/new split tests the stale `metric_name` (the last
            # named item) once per unique name, so either 0 or all unique names count as new.
            new_count = 0 if names[-1] in known else len(set(names))
            over_quota = max(0, len(known) + new_count - quota)
        with self._lock:
            rejected_names = frozenset(self._rejected) if not test_only else frozenset()
        rejected: list[str] = []
        processed: list[str] = []
        submitted: list[str] = []
        for item in items:
            metric = self._item_metric(item)
            if (over_quota and len(known) >= quota and metric not in known) or (
                metric in rejected_names
            ):
                rejected.append(metric)
                continue
            timestamp, value, backfill = self._item_point(item, metric, now)
            if test_only:
                submitted.append(metric)
                continue
            if quota:
                known.add(metric)
                minute_set.add(metric)
            # SOURCE != SPEC: each item is queued as soon as it passes, so a later bad item
            # gets a 400 while the items before it have been ingested.
            self._accept(metric, timestamp, value, backfill)
            processed.append(metric)
        if test_only:
            raise _Reply(200, self._test_only_body(submitted, now, dedupe_first=True))
        if rejected:
            code = 400 if len(items) == 1 else 207
            raise _Reply(code, self._quota_body(code, quota, rejected, processed, len(items)))
        raise _Reply(204)

    def _item_metric(self, item: Any) -> str:
        try:
            metric = str(item["metric"])
        except (TypeError, KeyError, IndexError):
            raise _bad(f"invalid metric - {item}") from None
        if metric in self._name_errors:
            reason = self._name_errors[metric]
        else:
            reason = _metric_name_error(metric)
            if len(self._name_errors) >= _NAME_CACHE_LIMIT:
                self._name_errors.clear()
            self._name_errors[metric] = reason
        if reason:
            raise _bad(f"invalid metric - {item} - {reason}")
        return metric

    def _item_point(self, item: dict[str, Any], metric: str, now: int) -> tuple[int, float, bool]:
        backfill = "fill" in item and str(item["fill"]) in ("true", "True")
        timestamp: int | None = None
        timestamp_present = str(item["timestamp"]) if "timestamp" in item else ""
        if timestamp_present:
            if not backfill:
                reason = _timestamp_error(timestamp_present, now, self._max_age)
                if reason is not None:
                    raise _bad(f"invalid timestamp - {timestamp_present} - {reason} - {item}")
            try:
                timestamp = int(timestamp_present)
            except ValueError:
                raise _bad(f"invalid timestamp - {item}") from None
        value_present = str(item["value"]) if "value" in item else ""
        value: float | None = None
        if value_present:
            try:
                value = float(item["value"])  # Flux accepts nan, inf, true, "1e3", ...
            except (TypeError, ValueError, OverflowError):
                raise _bad(f"invalid value - {item}") from None
        if not metric:
            raise _bad(f"invalid metric - {item}")
        if value is None:
            raise _bad(f"no value parameter present - {item}")
        return (timestamp or now), value, backfill

    @staticmethod
    def _quota_body(
        code: int, quota: int, rejected: list[str], processed: list[str], submitted: int
    ) -> dict[str, Any]:
        data = [{"metric": m, "status": 400} for m in rejected]
        data += [{"metric": m, "status": 204} for m in processed]
        return {
            "code": code,
            "data": data,
            "error": f"over quota - this account is allowed {quota} metrics and an additional "
            f"{len(rejected)} new metrics were posted that have been rejected",
            "message": f"{len(processed)} metrics were processed and {len(rejected)} metrics "
            "were rejected",
            "rejected metrics": rejected,
            "rejected metrics count": len(rejected),
            "processed metrics": processed,
            "processed metrics count": len(processed),
            "submitted metrics count": submitted,
            # SOURCE != SPEC: the spec's list leaves this key out. It is always 0 here.
            "defined skipped_metrics count": 0,
        }

    # ------------------------------------------------------------------ shared helpers

    def _key_valid(self, key: str) -> bool:
        # listen.py validate_key(): str.isalnum() (Unicode-aware), exactly 32 characters,
        # and one of the configured keys when any are configured.
        if not (key.isalnum() and len(key) == 32):
            return False
        return not self._keys or key in self._keys

    def _minute_set(self, namespace: str, now: int) -> set[str]:
        minute = now // 60 * 60
        entry = self._ns_minute.get(namespace)
        if entry is None or entry[0] != minute:
            entry = (minute, set())
            self._ns_minute[namespace] = entry
        return entry[1]

    def _test_only_body(
        self, submitted: list[str], now: int, *, dedupe_first: bool
    ) -> dict[str, Any]:
        # The Redis hash flux.prometheus.test_only.None.<minute> gathers the test metrics
        # of one minute. Flux's 'dropped' lookup indexes a str, so drop_count is always 0.
        minute = now // 60 * 60
        existing = self._test_only.get(minute)
        ingested = _unique(submitted + existing) if existing else list(submitted)
        shown = _unique(ingested) if dedupe_first else ingested
        self._test_only = {minute: shown}
        return {
            "namespace": "None",
            "message": _TEST_ONLY_MESSAGE,
            "ingest_count": len(ingested),
            "drop_count": 0,
            "metrics": str(shown),
            "dropped": "[]",
        }

    def _accept(self, metric: str, timestamp: int, value: float, backfill: bool) -> None:
        if self.emulate_worker:  # else the request's batch stays empty: nothing is handed over
            self._batch.append(QueuedPoint(metric, value, timestamp, backfill))
        self._accepted_count += 1
        if self._record:
            self._points.append((metric, timestamp, value, backfill))
