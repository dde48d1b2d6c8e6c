"""The HTTP edge shared by the Graphite and Prometheus sources: one GET, politely.

Politeness per remote host: a concurrency limit, a per-request timeout, a body-size cap,
``Retry-After`` honoured on 429/503, and exponential backoff with jitter for a host that keeps
failing (its metrics wait; other hosts are not slowed). Every failure becomes a
:class:`SourceError` with a short ``kind`` used for counting.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import re
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import redis.asyncio

from skyline.vista import request_budget, secret
from skyline.vista.backoff import Backoff
from skyline.vista.config import HostOptions
from skyline.vista.entries import FetchEntry
from skyline.vista.errors import SourceError
from skyline.vista.request_budget import Pacer
from skyline.vista.secret import Redactor, basic_pair, header_secrets
from skyline.vista.sources import HOST_LEVEL_ERRORS, stream
from skyline.vista.sources.stream import StreamParser

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)

Redact = Callable[[str], str]
"""Masks secrets in a text (a remote may echo our request headers in its error page)."""


def _as_is(text: str) -> str:
    return text


@dataclass(frozen=True)
class Credentials:
    """How one fetch entry authenticates. Compared by value to group batchable requests."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    api_key: str | None = None

    @classmethod
    def of(cls, entry: FetchEntry) -> Credentials:
        return cls(
            user=entry.user,
            password=entry.password.reveal() if entry.password else None,
            token=entry.token.reveal() if entry.token else None,
            api_key=entry.api_key.reveal() if entry.api_key else None,
        )

    def __repr__(self) -> str:  # never show the values
        kinds = [k for k in ("user", "token", "api_key") if getattr(self, k)]
        return f"Credentials({'+'.join(kinds) or 'none'})"

    def secrets(self, options: HostOptions) -> list[str]:
        """Every secret a request with these credentials and options carries."""
        found = [v for v in (self.token, self.api_key, self.password) if v]
        if self.user is not None and self.password:
            found.append(basic_pair(self.user, self.password))
        for name, value in options.headers:
            found += header_secrets(name, value)
        if options.proxy_password:
            found.append(options.proxy_password.reveal())
            found.append(basic_pair(options.proxy_user or "", options.proxy_password.reveal()))
        return found

    def redactor(self, options: HostOptions) -> Redact:
        """A function masking these secrets (and the process' own) in a text; the masks are
        worked out on first use (only error texts need them)."""
        made: list[Redactor] = []

        def redact(text: str) -> str:
            if not made:
                made.append(Redactor(self.secrets(options)))
            return secret.redact(made[0].redact(text))

        return redact

    def apply(self, headers: dict[str, str], options: HostOptions) -> None:
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.api_key:
            headers[options.api_key_header] = self.api_key
        if self.user is not None and self.password is not None:
            # RFC 7617 with UTF-8 (aiohttp.BasicAuth is deprecated and latin-1 only: any other
            # character in a password raised inside the fetch task).
            pair = f"{self.user}:{self.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass
class HostState:
    """Per ``remote_host`` (the exact URL configured, path included): its options, its
    concurrency limit, backoff, and counters. ``host`` is the label used in logs and counters
    (scheme://netloc); two remote_hosts on one server share that label, never their options.

    Nothing here is bound to an event loop for good: the concurrency semaphore is made for the
    loop that uses it, and the request budget's pacer for the Redis client that uses it (each
    fetcher thread has its own), so a fetcher thread restarted with this state (a new loop)
    never uses the dead thread's.
    """

    host: str
    options: HostOptions
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=300.0))
    requests: int = 0
    in_flight: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_total: float = 0.0
    hold_until: float = 0.0  # time.monotonic() before which the host asked us not to call
    pacer: Pacer | None = None  # the request budget (skyline/vista/request_budget.py)
    pacer_client: object = field(default=None, repr=False)  # the Redis client of ``pacer``
    route: ProxyRoute = field(init=False)  # direct, or through which proxy
    _slots: LoopSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slots = LoopSemaphore(self.options.max_concurrency)
        self.route = proxy_route(self.host, self.options)

    def slot(self) -> asyncio.Semaphore:
        """The host's concurrency limit, for the running event loop."""
        return self._slots.get()

    def available(self) -> bool:
        return self.backoff.ready() and time.monotonic() >= self.hold_until

    def hold(self, seconds: float) -> None:
        """Honour a Retry-After: no request for ``seconds``, even if a request that was already
        in flight succeeds meanwhile (a success resets the backoff, not this)."""
        self.hold_until = max(self.hold_until, time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.backoff.remaining(), self.hold_until - time.monotonic())

    def record_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def not_now(self) -> SourceError:
        return SourceError(
            "host_backoff",
            f"{self.host} is backing off after errors ({self.remaining():.0f}s left)",
        )


class LoopSemaphore:
    """An asyncio.Semaphore of ``size``, made anew for each event loop that asks for it (an
    asyncio.Semaphore is bound to the first loop that waits on it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._semaphore = asyncio.Semaphore(self.size)
            self._loop = loop
        return self._semaphore


class SharedLimit:
    """``VISTA_ASYNCIO_FETCHER_LIMIT``: requests in flight over every host, shared fairly.

    A host's first request in flight never waits for it; only a host's further requests do. So
    hosts that are slow and hold all their connections cannot starve another host: it always
    has one request going, and its own ``max_concurrency`` as soon as slots are free. At most
    ``limit`` + (number of hosts) requests are in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = LoopSemaphore(limit)

    def slot(self) -> asyncio.Semaphore:
        return self._slots.get()


def new_connector() -> aiohttp.TCPConnector:
    """The connection pool shared by every remote host. It sets no limit of its own: the
    limits are per remote_host (``max_concurrency``) and over all hosts (:class:`SharedLimit`),
    which a host's first request never waits for. aiohttp's own global limit would queue every
    host's requests behind slow hosts' connections, first come first served."""
    return aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
    )


def new_session() -> aiohttp.ClientSession:
    """The fetcher's session: the shared pool (:func:`new_connector`). Proxies are chosen per
    host once (:func:`proxy_route`), not by aiohttp's ``trust_env``, which looks the
    environment and ~/.netrc up in a thread for every request (it tripled the CPU of a cycle
    of 10,000 requests)."""
    return aiohttp.ClientSession(connector=new_connector())


@dataclass(frozen=True)
class ProxyRoute:
    """How requests to one host travel: directly (``url`` None) or through a forward proxy,
    with the Proxy-Authorization header for it (sent to the proxy only)."""

    url: str | None = None
    authorization: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def proxy_route(host_url: str, options: HostOptions) -> ProxyRoute:
    """The host's own ``proxy`` option, else HTTPS_PROXY / HTTP_PROXY from the environment
    (credentials in its URL) unless NO_PROXY names the host. Read once per host."""
    if options.proxy is not None:
        if options.proxy_password is None:
            return ProxyRoute(options.proxy)
        auth = _basic(options.proxy_user or "", options.proxy_password.reveal())
        return ProxyRoute(options.proxy, auth)
    parts = urlsplit(host_url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return ProxyRoute()
    found = urlsplit(proxy)
    if found.username is None and found.password is None:
        return ProxyRoute(proxy)
    host = found.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{found.port}" if found.port else "")
    bare = urlunsplit((found.scheme, netloc, found.path, "", ""))
    return ProxyRoute(bare, _basic(unquote(found.username or ""), unquote(found.password or "")))


def _basic(user: str, password: str) -> tuple[tuple[str, str], ...]:
    """Proxy-Authorization, RFC 7617 with UTF-8 (as for the remote's own basic auth)."""
    pair = basic_pair(user, password).encode()
    return (("Proxy-Authorization", "Basic " + base64.b64encode(pair).decode("ascii")),)


def ssl_option(options: HostOptions) -> ssl.SSLContext | bool:
    if not options.verify_ssl:
        return False
    if options.ca_bundle:
        return ssl.create_default_context(cafile=options.ca_bundle)
    return True


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() alone also accepts '²'
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime form: no zone, but every HTTP-date is GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def snippet(body: bytes, limit: int = 160, redact: Redact = _as_is) -> str:
    """A short, single-line, printable excerpt of a body for a log line. Secrets are masked
    before the excerpt is cut, so that no part of one is left at the cut."""
    head = body[:4096]
    match = _TITLE.search(head)
    if match:
        title = redact(match.group(1).decode(errors="replace").strip())
        return "HTML page titled " + repr(title[:limit])
    text = redact(body[: limit + 1024].decode(errors="replace"))[:limit]
    return repr(" ".join(text.split()))


def error_from_body(status: int, body: bytes, redact: Redact = _as_is) -> str:
    """The remote's own error text when it gives one (Prometheus: {"error": ...})."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return snippet(body, redact=redact)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        kind = parsed.get("errorType")
        text = f"{kind}: {parsed['error']}" if isinstance(kind, str) and kind else parsed["error"]
        return redact(text)
    return snippet(body, redact=redact)


async def _read_capped(
    response: aiohttp.ClientResponse, max_bytes: int, stop_above: int | None = None
) -> tuple[bytes, bool]:
    """The body, and whether it is whole: with ``stop_above``, reading stops once more than
    that many bytes were read (the rest is parsed as it arrives, sources/stream.py)."""
    length = response.content_length
    if length is not None and length > max_bytes:
        raise SourceError("too_large", f"body of {length} bytes exceeds the {max_bytes}-byte cap")
    # Always count what is read: with Content-Encoding (gzip) the length is the compressed
    # size, and the body read is the decompressed one.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise SourceError("too_large", f"body exceeds the {max_bytes}-byte cap")
        chunks.append(chunk)
        if stop_above is not None and size > stop_above:
            return b"".join(chunks), False
    return b"".join(chunks), True


def decode_json(body: bytes, content_type: str, redact: Redact = _as_is) -> Any:
    if "html" in content_type:
        raise SourceError("html", f"HTML instead of JSON: {snippet(body, redact=redact)}")
    try:
        return json.loads(body)
    except RecursionError as exc:
        # json.loads recurses once per nesting level: a hostile body nested 200,000 deep
        # must be one bad answer like any other, not a RecursionError with a traceback.
        raise SourceError(
            "invalid_json", f"JSON nested too deeply to decode ({len(body)} bytes)"
        ) from exc
    except ValueError as exc:
        pos = getattr(exc, "pos", None)
        where = f" at byte {pos} of {len(body)}" if pos is not None else ""
        cut = isinstance(exc, json.JSONDecodeError) and _cut_short(exc)
        kind = "truncated_json" if cut else "invalid_json"
        what = "truncated JSON" if cut else "invalid JSON"
        raise SourceError(kind, f"{what}{where}: {snippet(body, redact=redact)}") from exc


_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_START = re.compile(r"-?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d*)?)?")


def _cut_short(exc: json.JSONDecodeError) -> bool:
    """Whether the document stops where it failed: it ends inside a string, a literal
    (``nu``), a number (``1.``) or between tokens, rather than holding a wrong character."""
    if exc.msg.startswith("Unterminated string"):
        return True
    start = exc.pos
    while start > 0 and exc.doc[start - 1] in "0123456789+-.eE":
        start -= 1  # the parser stops after '1' in '1e+': look at the whole number
    rest = exc.doc[start:].rstrip()
    if not rest:
        return True
    return any(literal.startswith(rest) for literal in _LITERALS) or bool(
        _NUMBER_START.fullmatch(rest)
    )


@dataclass(frozen=True)
class Answer:
    """What a remote sent back, read in full (within the cap)."""

    status: int
    body: bytes
    content_type: str
    location: str = ""
    retry_after: float | None = None
    streamed: bool = False  # parsed as it arrived: ``value`` is what the parser returned
    value: Any = None


def host_state_of(
    hosts: dict[str, HostState],
    entry: FetchEntry,
    options_of: Callable[[str], HostOptions],
    budget_client: redis.asyncio.Redis | None,
    priority: request_budget.Priority = "live",
) -> HostState:
    """The state of the entry's exact remote_host in ``hosts``, made on first use: two
    remote_hosts on one server (``http://gw/proxy/a`` and ``http://gw/proxy/b``) have their own
    options, headers and credentials; only the connection pool is shared. Its pacer takes the
    host's request budget (keyed by the exact remote_host) at ``priority``: ``live`` for the
    fetcher, ``history`` for jobs, which yield to it."""
    state = hosts.get(entry.remote_host)
    if state is None:
        state = HostState(entry.host, options_of(entry.remote_host))
        hosts[entry.remote_host] = state
    if state.pacer is None or state.pacer_client is not budget_client:
        # First use, or a new fetcher (its own loop and Redis client) took this state over.
        state.pacer = request_budget.pacer_for(
            entry.remote_host, state.options, budget_client, priority
        )
        state.pacer_client = budget_client
    return state


async def request_json(state: HostState, get: Awaitable[Any]) -> Any:
    """Await ``get`` (a :func:`get_json` to the host of ``state``), and what its outcome says
    of the host: every error is counted; a host-level one (sources.HOST_LEVEL_ERRORS) backs the
    host off, for at least its Retry-After; a success ends the backoff."""
    try:
        body = await get
    except SourceError as exc:
        state.record_error(exc.kind)
        if exc.kind == "host_backoff":
            raise  # not sent: the host asked to wait while this request was queued
        if exc.kind in HOST_LEVEL_ERRORS:
            state.backoff.failure(at_least=exc.retry_after or 0.0)
            if exc.retry_after:
                state.hold(exc.retry_after)
        raise
    state.backoff.success()
    return body


async def get_json(
    session: aiohttp.ClientSession,
    state: HostState,
    url: str,
    credentials: Credentials,
    *,
    max_bytes: int,
    accept_error_json: bool = False,
    shared: SharedLimit | None = None,
    stream: StreamParser | None = None,
) -> Any:
    """GET url and return its decoded JSON body, or raise SourceError.

    ``accept_error_json``: a 4xx whose body is JSON is returned instead of raised (Prometheus
    answers bad queries with 400 + {"status": "error", ...}, which the caller reports itself).
    ``shared``: the limit over all hosts (see :class:`SharedLimit`).
    ``stream``: a 200 body over ``stream.STREAM_ABOVE`` bytes is not decoded whole but given
    to this parser as it arrives; what it returns is returned instead of the decoded JSON.
    """
    redact = credentials.redactor(state.options)
    try:
        answer = await fetch(
            session,
            state,
            url,
            credentials,
            max_bytes=max_bytes,
            shared=shared,
            stream=stream,
            redact=redact,
        )
        return judge(answer, accept_error_json=accept_error_json, redact=redact)
    except SourceError as exc:
        raise scrubbed(exc, redact) from exc


def scrubbed(exc: SourceError, redact: Redact) -> SourceError:
    """The same error with every secret masked in its text."""
    text = str(exc)
    clean = redact(text)
    if clean == text:
        return exc
    return SourceError(exc.kind, clean, retry_after=exc.retry_after)


async def fetch(
    session: aiohttp.ClientSession,
    state: HostState,
    url: str,
    credentials: Credentials,
    *,
    max_bytes: int,
    shared: SharedLimit | None = None,
    stream: StreamParser | None = None,
    redact: Redact = _as_is,
) -> Answer:
    """GET url within the host's and the shared limits. Raises SourceError("host_backoff")
    without sending anything when the host asked us to wait (Retry-After) or is backing off,
    also when that happened while this request was waiting for a slot."""
    async with state.slot():
        if state.pacer is not None:
            await state.pacer.wait()  # then the check below: a 429 may have come meanwhile
        if not state.available():
            raise state.not_now()
        state.in_flight += 1
        try:
            request = _Request(url, credentials, max_bytes, stream, redact)
            if shared is None or state.in_flight == 1:
                return await _send(session, state, request)
            async with shared.slot():
                if not state.available():
                    raise state.not_now()
                return await _send(session, state, request)
        finally:
            state.in_flight -= 1


@dataclass(frozen=True)
class _Request:
    url: str
    credentials: Credentials
    max_bytes: int
    stream: StreamParser | None
    redact: Redact


async def _send(session: aiohttp.ClientSession, state: HostState, request: _Request) -> Answer:
    url, credentials, max_bytes = request.url, request.credentials, request.max_bytes
    options = state.options
    headers = dict(options.headers)
    headers.setdefault("Accept", "application/json")
    credentials.apply(headers, options)
    route = state.route
    tunnel = url.startswith("https:")
    if route.authorization and not tunnel:
        # Plain http goes to the proxy as is: the proxy reads (and removes) this header.
        # For https it belongs to the CONNECT request only, never inside the tunnel.
        headers.update(route.authorization)
    timeout = aiohttp.ClientTimeout(total=options.timeout)
    started = time.monotonic()
    state.requests += 1
    try:
        # No redirects: following one would send the credentials headers (api key,
        # custom headers) to whatever host it names. A 3xx is reported with its target.
        async with session.get(
            url,
            headers=headers,
            timeout=timeout,
            ssl=ssl_option(options),
            allow_redirects=False,
            proxy=route.url,
            proxy_headers=dict(route.authorization) if tunnel and route.authorization else None,
        ) as response:
            status, content_type = response.status, response.content_type or ""
            streams = request.stream is not None and status == 200 and "html" not in content_type
            body, whole = await _read_capped(
                response, max_bytes, stream.STREAM_ABOVE if streams else None
            )
            value: Any = None
            if not whole:
                assert request.stream is not None
                reader = stream.BodyReader(response.content, body, max_bytes)
                value = await stream.parse(
                    request.stream, reader, lambda: snippet(body, redact=request.redact)
                )
                body = b""
            return Answer(
                status=status,
                body=body,
                content_type=content_type,
                location=response.headers.get("Location", ""),
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                streamed=not whole,
                value=value,
            )
    except TimeoutError as exc:
        raise SourceError("timeout", f"no answer within {options.timeout:g}s") from exc
    except aiohttp.ClientConnectorError as exc:
        raise SourceError("connect", f"cannot connect: {exc.os_error}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise SourceError("truncated", f"body cut short: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise SourceError("client_error", f"{type(exc).__name__}: {exc}") from exc
    finally:
        state.latency_total += time.monotonic() - started


def judge(answer: Answer, *, accept_error_json: bool = False, redact: Redact = _as_is) -> Any:
    """The decoded JSON of a 200 (or of a JSON 4xx with ``accept_error_json``); otherwise a
    SourceError naming the status and the remote's own error text."""
    status, body, content_type = answer.status, answer.body, answer.content_type
    if answer.streamed:
        return answer.value
    if status == 200:
        return decode_json(body, content_type, redact)
    if 300 <= status < 400:
        target = urlsplit(answer.location)
        shown = f"{target.scheme}://{target.netloc}{target.path}" if target.netloc else target.path
        raise SourceError(
            "redirect",
            f"HTTP {status} redirect to {shown or '?'}; Vista does not follow redirects (they "
            "would carry the credentials elsewhere): set remote_host/uri to the final URL",
        )
    retry_after = answer.retry_after
    if status in (429, 503):
        wait = f"; Retry-After {retry_after:g}s" if retry_after is not None else ""
        raise SourceError(
            f"http_{status}",
            f"HTTP {status}{wait}: {error_from_body(status, body, redact)}",
            retry_after=retry_after,
        )
    if accept_error_json and 400 <= status < 500 and "json" in content_type:
        return decode_json(body, content_type, redact)
    raise SourceError(f"http_{status}", f"HTTP {status}: {error_from_body(status, body, redact)}")
