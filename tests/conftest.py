"""Shared fixtures: real servers on loopback (see skyline/vista/testing/servers.py), started lazily.

Session-scoped, started the first time a test asks for them and stopped at the end:
``redis_server`` (unix socket), ``prometheus_server`` (scraping itself every 2 s),
``carbon_server`` and ``graphite_web`` (reading that carbon's whisper files).

Function-scoped: ``redis_client`` (FLUSHALL before each test), the factories ``tmp_redis`` and
``tmp_prometheus`` for tests that need a server of their own (stop/restart/kill it, history,
basic auth), ``sentinel_set`` (a primary, a replica and three sentinels, for failover), and
``metric_prefix`` for unique Graphite metric names on the shared carbon.

A missing binary fails the test loudly ("run `make install`"); nothing is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
import redis

from skyline.vista.testing.servers import (
    CarbonServer,
    GraphiteWebServer,
    MissingBinaryError,
    PrometheusServer,
    RedisServer,
    SentinelSet,
    Server,
)

_S = TypeVar("_S", bound=Server)

_started: list[Server] = []
"""Every server a fixture started this session, for the timing summary."""


def _start(server: _S) -> _S:
    try:
        server.start()
    except MissingBinaryError as exc:
        pytest.fail(f"{type(server).__name__}: {exc}", pytrace=False)
    _started.append(server)
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A session-wide redis-server on a unix socket (no persistence)."""
    server = _start(RedisServer(tmp_path_factory.mktemp("redis"), unix_socket=True))
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``redis_server`` (bytes replies); the server is FLUSHALLed first."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


class RedisFactory(Protocol):
    def __call__(
        self,
        *,
        unix_socket: bool = False,
        appendonly: bool = False,
        password: str | None = None,
        start: bool = True,
    ) -> RedisServer: ...


@pytest.fixture
def tmp_redis(tmp_path: Path) -> Iterator[RedisFactory]:
    """Factory of private redis-servers (stopped after the test); ``start=False`` to defer."""
    servers: list[RedisServer] = []

    def make(
        *,
        unix_socket: bool = False,
        appendonly: bool = False,
        password: str | None = None,
        start: bool = True,
    ) -> RedisServer:
        server = RedisServer(
            tmp_path / f"redis{len(servers)}",
            unix_socket=unix_socket,
            appendonly=appendonly,
            password=password,
        )
        servers.append(server)
        return _start(server) if start else server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A private primary + replica + three redis-sentinel processes
    (skyline/vista/testing/servers.py)."""
    servers = SentinelSet(tmp_path / "sentinel-set")
    try:
        servers.start()
    except MissingBinaryError as exc:
        servers.stop()
        pytest.fail(f"SentinelSet: {exc}", pytrace=False)
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A session-wide Prometheus scraping itself every 2 s (first sample ~6 s after start:
    use ``prometheus_server.wait_for_series("up")``)."""
    server = _start(PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_self=True))
    yield server
    server.stop()


class PrometheusFactory(Protocol):
    def __call__(
        self,
        *,
        history: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        scrape_self: bool = False,
        scrape_interval: str = "2s",
        start: bool = True,
    ) -> PrometheusServer: ...


@pytest.fixture
def tmp_prometheus(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Factory of private Prometheus servers (history, basic auth), stopped after the test."""
    servers: list[PrometheusServer] = []

    def make(
        *,
        history: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        scrape_self: bool = False,
        scrape_interval: str = "2s",
        start: bool = True,
    ) -> PrometheusServer:
        server = PrometheusServer(
            tmp_path / f"prometheus{len(servers)}",
            history=history,
            basic_auth=basic_auth,
            scrape_self=scrape_self,
            scrape_interval=scrape_interval,
        )
        servers.append(server)
        return _start(server) if start else server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def carbon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarbonServer]:
    """A session-wide carbon-cache (retentions 10s:6h,60s:1d for every metric)."""
    server = _start(CarbonServer(tmp_path_factory.mktemp("carbon")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def graphite_web(
    tmp_path_factory: pytest.TempPathFactory, carbon_server: CarbonServer
) -> Iterator[GraphiteWebServer]:
    """A session-wide graphite-web reading ``carbon_server``'s whisper files."""
    server = _start(GraphiteWebServer(tmp_path_factory.mktemp("graphite-web"), carbon_server))
    yield server
    server.stop()


_prefixes: set[str] = set()


@pytest.fixture
def metric_prefix(request: pytest.FixtureRequest) -> str:
    """A Graphite path prefix unique to this test in the session (``test.<name>``)."""
    base = "test." + re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name).strip("_")
    prefix, n = base, 1
    while prefix in _prefixes:
        n += 1
        prefix = f"{base}_{n}"
    _prefixes.add(prefix)
    return prefix


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _started:
        return
    parts = []
    for server in _started:
        part = f"{type(server).__name__} {server.ready_seconds or 0:.2f}s"
        if server.startup_seconds is not None and server.ready_seconds is not None:
            if server.startup_seconds - server.ready_seconds > 0.05:
                part += f" (start() {server.startup_seconds:.2f}s)"
        parts.append(part)
    terminalreporter.write_line("real servers ready in: " + ", ".join(parts))
