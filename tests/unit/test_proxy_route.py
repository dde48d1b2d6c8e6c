"""Which proxy a host's requests take: its own option, else the environment, once per host."""

from __future__ import annotations

import base64

import pytest

from skyline.vista.config import HostOptions
from skyline.vista.secret import Secret
from skyline.vista.sources.http import HostState, ProxyRoute, proxy_route


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def basic(pair: str) -> tuple[tuple[str, str], ...]:
    return (("Proxy-Authorization", "Basic " + base64.b64encode(pair.encode()).decode()),)


def test_no_proxy_anywhere_is_direct() -> None:
    assert proxy_route("https://prom:9090", HostOptions()) == ProxyRoute()


def test_the_environment_by_scheme_with_its_credentials_taken_out_of_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://us%40er:p%C3%A4ss@proxy.corp:3128")
    monkeypatch.setenv("http_proxy", "http://plain:8080")
    assert proxy_route("https://prom:9090", HostOptions()) == ProxyRoute(
        "http://proxy.corp:3128", basic("us@er:p\u00e4ss")
    )
    assert proxy_route("http://graphite", HostOptions()) == ProxyRoute("http://plain:8080")
    assert "p\u00e4ss" not in repr(proxy_route("https://prom:9090", HostOptions()))


def test_no_proxy_names_the_hosts_that_go_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.svc")
    assert proxy_route("https://a.internal.example:443", HostOptions()) == ProxyRoute()
    assert proxy_route("https://prom.monitoring.svc", HostOptions()) == ProxyRoute()
    assert proxy_route("https://public.example", HostOptions()).url == "http://proxy:3128"


def test_a_host_option_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    options = HostOptions(proxy="http://mine:3128", proxy_user="u", proxy_password=Secret("pw"))
    assert proxy_route("https://prom", options) == ProxyRoute("http://mine:3128", basic("u:pw"))
    assert HostState("https://prom", options).route.url == "http://mine:3128"
