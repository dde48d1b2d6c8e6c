"""Shared fixtures: real servers on loopback (see skyline/vista/testing/servers.py), started lazily.

Session-scoped, started the first time a test asks for them and stopped at the end:
``redis_server`` (unix socket), ``prometheus_server`` (scraping itself every 2 s),
``carbon_server`` and ``graphite_web`` (reading that carbon's whisper files).

Function-scoped: ``redis_client`` (FLUSHALL before each test), the factories ``tmp_redis`` and
``tmp_prometheus`` for tests that need a server of their own (stop/restart/kill it, history,
basic auth), ``sentinel_set`` (a primary, a replica and three sentinels, for failover), and
``metric_prefix`` for unique Graphite metric names on the shared carbon.

A missing binary fails the test loudly ("run `make install`"); nothing is skipped.

`make test` runs the suite on pytest-xdist workers: each worker is a session of its own, with
its own session servers (free ports, its own temporary directories), and is handed one test at
a time, the longest real-time tests first (``_parallel_order`` below).
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


# --- running in parallel (pytest-xdist, `make test`) ------------------------------------------

# The tests that wait longest in real time (seconds of one run on a quiet 2-core machine), by
# file::name (every parametrization). Under pytest-xdist they are sent first, so they run side
# by side on different workers instead of one of them starting last; see _parallel_order.
_LONG_RUNNING: dict[str, float] = {
    "test_flux_kill_storm.py::test_a_killed_worker_resends_at_most_its_one_request_in_flight": 140,
    "test_worker.py::test_flux_down_for_two_minutes_loses_nothing_and_the_queue_stays_bounded": 125,
    "test_backfill.py::test_thirty_days_of_100_series_backfilled_by_the_agent_through_a_sigkill"
    "_live_on_time": 118,
    "test_membership.py::test_three_hosts_share_the_fetch_list_and_survive_a_sigkill": 91,
    "test_redis_refuses.py::test_daemon_survives_redis_oom_and_misconf_and_delivers_everything"
    "_after": 52,
    "test_create_budget.py::test_500_new_metrics_all_land_in_a_carbon_with_a_low_create_budget": 50,
    "test_sentinel.py::test_vista_follows_a_failover_and_carbon_gets_every_point": 45,
    "test_agent.py::test_daemon_survives_a_redis_outage": 28,
    "test_transport.py::test_a_hung_host_delays_only_its_own_metrics": 25,
}


def _expected_seconds(item: pytest.Item) -> float:
    key = item.nodeid.split("[", 1)[0].rsplit("/", 1)[-1]
    return _LONG_RUNNING.get(key, 0.0)


def _parallel_order(items: list[pytest.Item]) -> list[pytest.Item]:
    """The long-running tests first, longest and shortest of them alternating (each xdist
    worker is handed two tests at a time with ``--maxschedchunk 1``: never the two longest to
    one worker), then the ``slow`` ones, then the rest in their usual order."""
    long_ones = sorted((i for i in items if _expected_seconds(i)), key=_expected_seconds)[::-1]
    folded: list[pytest.Item] = []
    while long_ones:
        folded.append(long_ones.pop(0))
        if long_ones:
            folded.append(long_ones.pop())
    chosen = set(folded)
    slow = [i for i in items if i not in chosen and i.get_closest_marker("slow")]
    chosen.update(slow)
    return folded + slow + [i for i in items if i not in chosen]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: every worker orders alike
        items[:] = _parallel_order(items)


def _server_times() -> list[str]:
    parts = []
    for server in _started:
        part = f"{type(server).__name__} {server.ready_seconds or 0:.2f}s"
        if server.startup_seconds is not None and server.ready_seconds is not None:
            if server.startup_seconds - server.ready_seconds > 0.05:
                part += f" (start() {server.startup_seconds:.2f}s)"
        parts.append(part)
    return parts


_worker_servers: list[str] = []
"""The server start-up times the xdist workers reported (in the controller)."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the times to the controller
        workeroutput["vista_servers"] = _server_times()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    _worker_servers.extend(getattr(node, "workeroutput", {}).get("vista_servers", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    parts = _server_times() + _worker_servers
    if parts:
        terminalreporter.write_line(f"real servers ready in ({len(parts)}): " + ", ".join(parts))
