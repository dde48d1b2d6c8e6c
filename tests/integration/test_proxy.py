"""Remote hosts reached through a real forward proxy (tinyproxy, started by the test): a host's
own ``proxy`` option with its credentials, HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the
environment, CONNECT for https to a local TLS server with a self-signed certificate, and the
proxy's credentials masked like every other secret."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from skyline.vista.config import VistaConfig
from skyline.vista.errors import ConfigError
from skyline.vista.fetch_cycle import CycleReport, FetchCycle
from skyline.vista.secret import Redactor
from skyline.vista.sources.http import new_session
from skyline.vista.testing.servers import RedisServer
from tests.support.proxy import Certificate, TinyProxy, self_signed
from tests.support.remotes import Remote, Request, prom_entry, remotes, time_series
from tests.support.settings import make_config
from tests.support.web import serving

PROXY_USER = "vista-proxy"
PROXY_PASSWORD = "pr0xy-SECRET-pw"

ProxyFactory = Callable[..., TinyProxy]


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[ProxyFactory]:
    started: list[TinyProxy] = []

    def make(user: str | None = PROXY_USER, password: str | None = PROXY_PASSWORD) -> TinyProxy:
        proxy = TinyProxy(tmp_path / f"proxy{len(started)}", user, password).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def no_env_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def one_cycle(config: VistaConfig) -> CycleReport:
    now = time.time()
    async with new_session() as session:
        return await FetchCycle(config, session, {}, queue=None, clock=lambda: now).run(
            config.fetch_metrics, {}, set()
        )


def through(proxy: TinyProxy, password: str = PROXY_PASSWORD) -> dict[str, str]:
    """A host's options to go through ``proxy`` as PROXY_USER with ``password``."""
    return {"proxy": proxy.url, "proxy_user": PROXY_USER, "proxy_password": password}


def via_proxy(remote: Remote) -> list[bool]:
    """For each request the remote saw: did it come through tinyproxy (its Via header)?"""
    return ["tinyproxy" in r.headers.get("Via", "") for r in remote.seen]


def assert_fetched(report: CycleReport) -> None:
    for r in report.results:
        assert (r.metric, r.error) == (r.metric, None)
        assert r.points and all(value == float(ts) for ts, value in r.points)


@dataclass
class TlsRemote:
    """A Prometheus-like remote on https://localhost:<port> (a self-signed certificate)."""

    port: int = 0
    seen: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@asynccontextmanager
async def tls_remote(cert: Certificate) -> AsyncIterator[TlsRemote]:
    remote = TlsRemote()

    async def handle(request: web.Request) -> web.StreamResponse:
        params = list(request.query.items())
        remote.seen.append(Request(request.path, params, dict(request.headers), time.monotonic()))
        return await time_series(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app, ssl_context=cert.server_context(), shutdown_timeout=0.5) as local:
        remote.port = local.port
        yield remote


async def fetch_over_tls(
    tmp_path: Path, redis_server: RedisServer, **options: str
) -> tuple[CycleReport, TlsRemote]:
    """One cycle of one metric from a :func:`tls_remote` whose certificate the host's
    ``ca_bundle`` trusts, with the host's other ``options``."""
    cert = self_signed(tmp_path / "tls")
    async with tls_remote(cert) as remote:
        config = make_config(
            tmp_path,
            redis_server,
            [prom_entry(remote.url, "tls")],
            VISTA_REMOTE_HOSTS={remote.url: {"ca_bundle": str(cert.cert), **options}},
        )
        return await one_cycle(config), remote


# --------------------------------------------------------------------------------- tests


@pytest.mark.usefixtures("no_env_proxy")
async def test_a_host_with_its_own_proxy_goes_through_it_with_its_credentials(
    tmp_path: Path, redis_server: RedisServer, proxies: ProxyFactory
) -> None:
    proxy = proxies()
    async with remotes() as start:
        proxied, direct = await start(time_series), await start(time_series)
        config = make_config(
            tmp_path,
            redis_server,
            [prom_entry(proxied.url, "proxied"), prom_entry(direct.url, "direct")],
            VISTA_REMOTE_HOSTS={proxied.url: through(proxy)},
        )
        report = await one_cycle(config)
    assert_fetched(report)
    assert (via_proxy(proxied), via_proxy(direct)) == ([True], [False])
    assert "Proxy-Authorization" not in proxied.seen[0].headers  # the proxy took it
    assert f"GET {proxied.url}/api/v1/query_range" in proxy.log()
    # The proxy's credentials are secrets: listed for masking, never in the options' repr.
    secrets = config.secrets()
    assert PROXY_PASSWORD in secrets and f"{PROXY_USER}:{PROXY_PASSWORD}" in secrets
    assert PROXY_PASSWORD not in repr(config.remote_hosts)


@pytest.mark.usefixtures("no_env_proxy")
async def test_wrong_proxy_credentials_are_an_error_without_the_password(
    tmp_path: Path, redis_server: RedisServer, proxies: ProxyFactory
) -> None:
    proxy = proxies()
    async with remotes() as start:
        remote = await start(time_series)
        config = make_config(
            tmp_path,
            redis_server,
            [prom_entry(remote.url, "m")],
            VISTA_REMOTE_HOSTS={remote.url: through(proxy, "wrong-SECRET-pw")},
        )
        report = await one_cycle(config)
    error = report.results[0].error
    # tinyproxy answers 407 to a request without credentials and 401 to wrong ones.
    assert error is not None and error.kind == "http_401", error
    assert str(error) == "HTTP 401: HTML page titled '401 Unauthorized'"
    assert "wrong-SECRET-pw" not in str(error) and remote.seen == []


async def test_the_environment_proxy_and_no_proxy_are_honoured(
    tmp_path: Path,
    redis_server: RedisServer,
    proxies: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = proxies()
    env_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    monkeypatch.setenv("HTTP_PROXY", env_url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    async with remotes() as start:
        proxied, bypassed = await start(time_series), await start(time_series)
        direct_url = bypassed.url.replace("127.0.0.1", "localhost")
        config = make_config(
            tmp_path,
            redis_server,
            [prom_entry(proxied.url, "proxied"), prom_entry(direct_url, "bypassed")],
        )
        report = await one_cycle(config)
    assert_fetched(report)
    assert (via_proxy(proxied), via_proxy(bypassed)) == ([True], [False])
    # The environment proxy's password is masked like the settings' secrets.
    assert PROXY_PASSWORD in config.secrets()
    assert PROXY_PASSWORD not in Redactor(config.secrets()).redact(f"proxy {env_url}")


@pytest.mark.usefixtures("no_env_proxy")
async def test_https_through_the_proxy_uses_connect_and_verifies_the_remote(
    tmp_path: Path, redis_server: RedisServer, proxies: ProxyFactory
) -> None:
    proxy = proxies()
    report, remote = await fetch_over_tls(tmp_path, redis_server, **through(proxy))
    assert_fetched(report)
    assert len(remote.seen) == 1
    assert f"CONNECT localhost:{remote.port}" in proxy.log()


async def test_https_proxy_from_the_environment_tunnels_too(
    tmp_path: Path,
    redis_server: RedisServer,
    proxies: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = proxies(user=None, password=None)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    report, remote = await fetch_over_tls(tmp_path, redis_server)
    assert_fetched(report)
    assert f"CONNECT localhost:{remote.port}" in proxy.log()


def test_proxy_options_are_checked(tmp_path: Path, redis_server: RedisServer) -> None:
    host = "http://prom:9090"
    with pytest.raises(ConfigError) as caught:
        make_config(
            tmp_path,
            redis_server,
            [prom_entry(host, "m")],
            VISTA_REMOTE_HOSTS={
                host: {"proxy": "http://u:pw-SECRET@proxy:3128"},
                "http://b:1": {"proxy": "socks5://proxy:1080"},
                "http://c:1": {"proxy": "http://proxy:3128", "proxy_user": "u"},
            },
        )
    problems = "\n".join(caught.value.problems)
    assert "pw-SECRET" not in problems
    assert (
        "VISTA_REMOTE_HOSTS['http://prom:9090'] option 'proxy': carries credentials; give "
        "them as 'proxy_user' and 'proxy_password'"
    ) in problems
    assert "option 'proxy': got 'socks5://proxy:1080', expected an http:// URL" in problems
    assert "VISTA_REMOTE_HOSTS['http://c:1'] option 'proxy_user': needs 'proxy_password'" in (
        problems
    )
