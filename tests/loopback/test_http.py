"""The shared HTTP edge: Retry-After, body snippets, JSON decoding, and a few get_json round
trips against a loopback aiohttp server (the whole fetch cycle against bad remotes is in
tests/integration/test_fetch_cycle_bad_answers.py)."""

from __future__ import annotations

import base64
import email.utils
import gzip
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from skyline.vista.config import HostOptions
from skyline.vista.errors import SourceError
from skyline.vista.sources.http import (
    Credentials,
    HostState,
    decode_json,
    error_from_body,
    get_json,
    parse_retry_after,
    snippet,
)
from tests import data
from tests.support.web import serving

RECORDED_JSON = sorted(name for name in data.manifest()["answers"] if name.endswith(".json"))

# ------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("86400", 86400.0)],
)
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "header",
    [
        email.utils.formatdate(NOW + 90, usegmt=True),  # IMF-fixdate: 'Tue, 14 Nov 2023 ... GMT'
        time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(NOW + 90)),  # RFC 850
        time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(NOW + 90)),  # asctime (no zone)
    ],
)
def test_retry_after_as_http_date(header: str) -> None:
    assert parse_retry_after(header, now=NOW) == 90.0


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_retry_after_http_dates_are_gmt_whatever_the_local_time_zone() -> None:
    """Every HTTP-date is GMT, the zone-less asctime form included (RFC 9110 §5.6.7)."""
    assert time.timezone != 0  # the local zone really is not UTC here
    asctime = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(NOW + 45))
    assert parse_retry_after(asctime, now=NOW) == 45.0
    assert parse_retry_after(email.utils.formatdate(NOW + 45, usegmt=True), now=NOW) == 45.0


def test_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after(email.utils.formatdate(NOW - 3600, usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "1.5", "-5", "12abc", "²", "١٢"])
def test_retry_after_that_is_neither_seconds_nor_a_date_is_ignored(header: str | None) -> None:
    # '²' and '١٢' are str.isdigit() but not ASCII delta-seconds: ignored, never an exception.
    assert parse_retry_after(header, now=NOW) is None


# ------------------------------------------------------------------------------ snippet

BAD_GATEWAY = (
    b"<!DOCTYPE html>\n<html>\n<head>\n  <meta charset='utf-8'>\n"
    b"  <title>\n    502 Bad Gateway\n  </title>\n</head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


def test_snippet_of_an_html_page_is_its_title() -> None:
    assert snippet(BAD_GATEWAY) == "HTML page titled '502 Bad Gateway'"
    assert snippet(b'<HTML><TITLE lang="en">Login \xe2\x80\x93 SSO</TITLE>') == (
        "HTML page titled 'Login \u2013 SSO'"
    )


def test_snippet_of_text_is_one_short_line() -> None:
    text = b"line one\n\tline   two\r\n" + b"x" * 500
    shown = snippet(text)
    assert "\n" not in shown and "\t" not in shown
    assert shown.startswith("'line one line two xxx")
    assert len(shown) <= 160 + 2  # the excerpt and its quotes
    assert snippet(b"\xff\xfe\x00bin") == repr("\ufffd\ufffd\x00bin")


def test_snippet_of_the_recorded_graphite_unknown_function_page() -> None:
    """graphite-web's 400 for an unknown function is text/html without a <title>."""
    page = data.body("graphite_render_unknown_function.html")
    assert data.meta("graphite_render_unknown_function.html")["status"] == 400
    assert b"\n" not in page.strip() and len(page) < 160
    assert snippet(page) == repr(page.decode().strip())
    assert "unknown function: noSuchFunction" in error_from_body(400, page)


def test_error_from_body_quotes_prometheus_own_error() -> None:
    body = data.body("prometheus_query_range_bad_data.json")
    assert error_from_body(400, body) == "bad_data: 1:14: parse error: unclosed left parenthesis"
    assert error_from_body(500, b'{"error": "boom"}') == "boom"
    assert error_from_body(502, BAD_GATEWAY) == "HTML page titled '502 Bad Gateway'"
    assert error_from_body(500, b'{"status": "error"}') == repr('{"status": "error"}')


# --------------------------------------------------------------------------- decode_json


def test_decode_json_of_recorded_answers() -> None:
    for name in RECORDED_JSON:
        assert decode_json(data.body(name), "application/json") == data.answer(name)


def test_html_is_not_json_and_says_what_page_it_was() -> None:
    with pytest.raises(SourceError) as caught:
        decode_json(BAD_GATEWAY, "text/html")
    assert caught.value.kind == "html"
    assert str(caught.value) == "HTML instead of JSON: HTML page titled '502 Bad Gateway'"


@pytest.mark.parametrize("name", RECORDED_JSON)
def test_every_cut_of_a_recorded_answer_is_truncated_json(name: str) -> None:
    """A body cut anywhere (inside a string, a number, ``null``, between tokens) is
    'truncated_json', never 'invalid_json'."""
    whole = data.body(name).rstrip()
    wrong: list[tuple[str, str]] = []
    for cut in range(len(whole)):
        with pytest.raises(SourceError) as caught:
            decode_json(whole[:cut], "application/json")
        if caught.value.kind != "truncated_json":
            wrong.append((caught.value.kind, whole[:cut][-15:].decode()))
        elif "truncated" not in str(caught.value):
            wrong.append(("message", str(caught.value)))
    assert wrong == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": success}',  # bare word
        b'{"status":"success"}}',  # extra data after the object
        b"[[1.5, 1700000000], [nul, 1700000060]]",  # a misspelt literal before the end
        b'{"a": [1, 2,, 3]}',
        b"{'single': 'quotes'}",
        b"<html><title>Oops</title></html>",  # an HTML page labelled as JSON
        b'{"a": "control \x01 char"}',
    ],
)
def test_invalid_json_is_not_called_truncated(body: bytes) -> None:
    with pytest.raises(SourceError) as caught:
        decode_json(body, "application/json")
    assert caught.value.kind == "invalid_json"
    assert str(caught.value).startswith("invalid JSON at ")


def test_invalid_json_message_shows_the_body() -> None:
    with pytest.raises(SourceError) as caught:
        decode_json(b"<html><title>Oops</title></html>", "application/json")
    assert str(caught.value) == "invalid JSON at byte 0 of 32: HTML page titled 'Oops'"


def test_json_with_nan_and_infinity_literals_decodes_to_floats() -> None:
    """Python-made 'JSON' (graphite-web plugins, proxies) may carry NaN/Infinity; they decode
    and are dropped later by validation, not rejected here."""
    parsed = decode_json(b"[[NaN, 1], [Infinity, 2], [-Infinity, 3]]", "application/json")
    assert [str(v) for v, _ in parsed] == ["nan", "inf", "-inf"]


# ------------------------------------------------------- get_json against a local server
# (aioresponses 0.7.9, the newest release, cannot build responses for aiohttp 3.14:
# "ClientResponse.__init__() missing ... 'stream_writer'"; a loopback aiohttp server is as fast.)


@dataclass
class Local:
    url: str
    seen: list[Mapping[str, str]] = field(default_factory=list)


@pytest.fixture
async def local() -> AsyncIterator[Local]:
    """Answers by path: /429, /400-json, /redirect, /gzip-bomb, /ok (records request headers)."""
    bad_data = data.body("prometheus_query_range_bad_data.json")
    bomb = gzip.compress(b'{"pad": "' + b"x" * 200_000 + b'"}')
    server = Local("")

    async def handle(request: web.Request) -> web.StreamResponse:
        server.seen.append(dict(request.headers))
        if request.path == "/429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "30"})
        if request.path == "/400-json":
            return web.Response(status=400, body=bad_data, content_type="application/json")
        if request.path == "/redirect":
            raise web.HTTPFound("http://elsewhere.example:8080/api/v1/query_range?x=1")
        if request.path == "/gzip-bomb":
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            return web.Response(body=bomb, headers=headers)
        return web.json_response({"ok": len(server.seen)})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as local:
        server.url = local.url
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _state(host: str, **options: object) -> HostState:
    host_options = HostOptions(**options)  # type: ignore[arg-type]
    return HostState(host, host_options)


async def test_get_json_429_carries_retry_after(
    local: Local, session: aiohttp.ClientSession
) -> None:
    state = _state(local.url)
    with pytest.raises(SourceError) as caught:
        await get_json(session, state, f"{local.url}/429", Credentials(), max_bytes=1 << 20)
    assert caught.value.kind == "http_429"
    assert caught.value.retry_after == 30.0
    assert str(caught.value) == "HTTP 429; Retry-After 30s: 'slow down'"
    assert state.requests == 1


async def test_get_json_sends_credentials_and_configured_headers(
    local: Local, session: aiohttp.ClientSession
) -> None:
    state = _state(local.url, headers=(("X-Org", "7"),), api_key_header="X-Grafana-Key")
    url = f"{local.url}/ok"
    first = await get_json(
        session, state, url, Credentials(token="tok-123", api_key="key-456"), max_bytes=4096
    )
    second = await get_json(
        session, state, url, Credentials(user="u", password="p:w\u20ac"), max_bytes=4096
    )
    assert (first, second) == ({"ok": 1}, {"ok": 2})
    sent = [{k: v for k, v in h.items() if k.startswith("X-") or k in WANTED} for h in local.seen]
    assert sent[0] == {
        "X-Org": "7",
        "Accept": "application/json",
        "Authorization": "Bearer tok-123",
        "X-Grafana-Key": "key-456",
    }
    basic = base64.b64encode("u:p:w\u20ac".encode()).decode()
    assert sent[1] == {
        "X-Org": "7",
        "Accept": "application/json",
        "Authorization": f"Basic {basic}",
    }
    assert repr(Credentials(user="u", password="p:w", token="t")) == "Credentials(user+token)"


WANTED = {"Accept", "Authorization"}


async def test_get_json_prometheus_400_json_is_returned_for_the_caller(
    local: Local, session: aiohttp.ClientSession
) -> None:
    url = f"{local.url}/400-json"
    state = _state(local.url)
    body = await get_json(
        session, state, url, Credentials(), max_bytes=4096, accept_error_json=True
    )
    with pytest.raises(SourceError) as caught:
        await get_json(session, state, url, Credentials(), max_bytes=4096)
    assert body == data.answer("prometheus_query_range_bad_data.json")
    assert caught.value.kind == "http_400"
    assert str(caught.value) == "HTTP 400: bad_data: 1:14: parse error: unclosed left parenthesis"


async def test_get_json_caps_the_decompressed_body_not_the_compressed_one(
    local: Local, session: aiohttp.ClientSession
) -> None:
    """A gzip body of ~1 KB (its Content-Length) that inflates to 200 KB exceeds a 64 KB cap."""
    with pytest.raises(SourceError) as caught:
        await get_json(
            session, _state(local.url), f"{local.url}/gzip-bomb", Credentials(), max_bytes=65536
        )
    assert caught.value.kind == "too_large"
    assert str(caught.value) == "body exceeds the 65536-byte cap"


async def test_get_json_does_not_follow_redirects_with_credentials(
    local: Local, session: aiohttp.ClientSession
) -> None:
    state = _state(local.url)
    with pytest.raises(SourceError) as caught:
        await get_json(
            session, state, f"{local.url}/redirect", Credentials(api_key="key-456"), max_bytes=4096
        )
    assert caught.value.kind == "redirect"
    assert "HTTP 302 redirect to http://elsewhere.example:8080/api/v1/query_range" in str(
        caught.value
    )
    assert len(local.seen) == 1  # the redirect target was never asked (nor sent the key)
