"""A remote that echoes our request headers back (error pages, Prometheus' own error and
warnings, a title) must not make any credential reach an output: the CLI's
``fetch --once --dry-run``, the daemon's log, Redis (queue, dead letters), ``/metrics``.

Every form of every secret is looked for: as sent, URL-quoted, JSON- and HTML-escaped, the
base64 ``user:password`` of a Basic header and the user:password it decodes to, and any run of
8 characters of a secret (a secret cut in half by an excerpt is still a leak).
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp
import prometheus_client
import pytest
import redis
from aiohttp import web

from skyline.vista import logs, redisconn, secret
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import AsyncFetchQueue, FetchQueue
from skyline.vista.logs import LogSpec
from skyline.vista.model import dead_letter
from skyline.vista.sources.http import new_connector
from skyline.vista.testing.servers import RedisServer
from tests.support.remotes import graphite_entry, prom_entry, remotes
from tests.support.rig import Rig

TOKEN = "tok-SECRET-a1b2c3d4e5"
API_KEY = "key-SECRET-f6g7h8i9j0"
USER = "vista-user"
PASSWORD = "pw SECRET/ö+=&k1l2"
HEADER_TOKEN = "hdr-SECRET-m3n4o5p6"


def leaks(text: str) -> list[str]:
    """Every form of a secret found in ``text`` (empty: none)."""
    pair = f"{USER}:{PASSWORD}"
    values = [TOKEN, API_KEY, PASSWORD, HEADER_TOKEN, pair]
    found = []
    for value in values:
        forms = {
            value,
            quote(value, safe=""),
            quote_plus(value),
            json.dumps(value)[1:-1],
            html.escape(value),
            base64.b64encode(value.encode()).decode(),
        }
        found += [f"{value!r} as {form!r}" for form in forms if form in text]
        if value is not pair:
            found += [
                f"{value!r} in part ({value[i : i + 8]!r})"
                for i in range(len(value) - 7)
                if value[i : i + 8] in text
            ]
    return found


def echo_text(request: web.Request) -> str:
    lines = [f"{k}: {v}" for k, v in request.headers.items()]
    return "\n".join(lines + [quote(line) for line in lines])


async def echo(request: web.Request) -> web.StreamResponse:
    """Each metric's target picks how the remote repeats our headers."""
    what = request.query.get("query") or request.query.get("target", "")
    text = echo_text(request)
    auth = request.headers.get("Authorization", "")
    if what == "title":  # an HTML error page titled with the header, body listing them all
        page = f"<html><title>Denied: {auth}</title><pre>{html.escape(text)}</pre></html>"
        return web.Response(status=502, text=page, content_type="text/html")
    if what == "prom_error":  # Prometheus' own error shape, errorType included
        body = {"status": "error", "errorType": auth, "error": text}
        return web.json_response(body, status=400)
    if what == "warnings":
        answer: dict[str, object] = {
            "status": "success",
            "warnings": [text],
            "data": {"resultType": "matrix", "result": []},
        }
        return web.json_response(answer)
    if what == "cut":  # the secret straddles where an excerpt is cut
        return web.Response(status=500, text="x" * 150 + auth, content_type="text/plain")
    return web.Response(status=401, text=text, content_type="text/plain")  # graphite 'plain'


def entries(url: str) -> list[dict[str, object]]:
    return [
        prom_entry(url, "title", "title", token=TOKEN),
        prom_entry(url, "prom_error", "prom_error", api_key=API_KEY),
        prom_entry(url, "warnings", "warnings", user=USER, password=PASSWORD),
        prom_entry(url, "cut", "cut", token=TOKEN),
        graphite_entry(url, "plain", "plain", user=USER, password=PASSWORD),
        graphite_entry(url, "plain_key", "plain", api_key=API_KEY),
    ]


def host_options(url: str) -> dict[str, object]:
    return {url: {"headers": {"X-Grafana-Token": HEADER_TOKEN}}}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers and handler is not logs.error_counter:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    secret.use_secrets(())


async def test_fetch_once_dry_run_prints_no_echoed_secret(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with remotes() as start:
        host = await start(echo)
        settings = tmp_path / "settings.py"
        settings.write_text(
            "\n".join(
                [
                    "VISTA_ENABLED = True",
                    f"VISTA_FETCH_METRICS = {tuple(entries(host.url))!r}",
                    f"VISTA_REMOTE_HOSTS = {host_options(host.url)!r}",
                    f"REDIS_URL = {redis_server.url!r}",
                    "VISTA_SINK = 'flux'",
                    f"FLUX_SELF_API_KEY = {'f' * 32!r}",
                    f"LOG_PATH = {str(tmp_path)!r}",
                    f"PID_PATH = {str(tmp_path)!r}",
                ]
            )
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "skyline.vista",
            "--settings",
            str(settings),
            "fetch",
            "--once",
            "--dry-run",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    printed = out.decode() + err.decode()
    assert process.returncode == 1, printed  # the metrics failed
    assert len(host.seen) == 6
    # The remotes did echo every secret...
    echoed = "\n".join(echo_text_of(seen.headers) for seen in host.seen)
    assert leaks(echoed)
    # ...and none of it was printed, in any form.
    assert leaks(printed) == [], printed
    assert printed.count("ERROR (") == 5, printed
    assert "HTML page titled 'Denied: Bearer ********'" in printed
    assert "Prometheus warning: " in printed


def echo_text_of(headers: dict[str, str]) -> str:
    lines = [f"{k}: {v}" for k, v in headers.items()]
    return "\n".join(lines + [quote(line) for line in lines])


async def test_daemon_log_redis_and_metrics_hold_no_echoed_secret(
    rig: Rig, restore_logging: None
) -> None:
    async with remotes() as start:
        host = await start(echo)
        config = rig.config(
            entries(host.url),
            VISTA_REMOTE_HOSTS=host_options(host.url),
            VISTA_VERBOSE_LOGGING=True,
        )
        log_file = rig.tmp_path / "vista.log"
        logs.configure(LogSpec(str(log_file), verbose=True, secrets=tuple(config.secrets())))
        fetcher = Fetcher(os.getpid(), config)
        client = redisconn.connect_async(config.redis)
        try:
            async with aiohttp.ClientSession(connector=new_connector()) as session:
                report = await fetcher.cycle(session, AsyncFetchQueue(client))
        finally:
            await client.aclose()
    assert report is not None and len(report.errors) == 5
    # A dead letter whose reason quotes an echo (as a sink's error text may).
    reason = f"HTTP 400: {echo_text_of(host.seen[0].headers)}"
    letter = dead_letter("{}", reason, "w1", "m", now=time.time())
    FetchQueue(rig.redis).dead_letter("w1", [("{}", letter)])
    assert rig.redis.hlen("vista.fetcher.metrics.dead") == 1

    logged = log_file.read_text()
    assert "remote.title" in logged and "remote.plain" in logged
    assert leaks(logged) == [], logged
    stored = "\n".join(
        f"{key!r} {rig.redis.dump(key)!r} {dump(rig.redis, key)}" for key in rig.redis.keys("*")
    )
    assert leaks(stored) == [], stored
    exposed = prometheus_client.generate_latest().decode()
    assert "vista_fetch_errors_total" in exposed
    assert leaks(exposed) == [], exposed
    assert 'kind="prometheus_error"' in exposed  # not the echoed errorType


def dump(client: redis.Redis, key: bytes | str) -> str:
    kind = client.type(key)
    if kind == b"string":
        return repr(client.get(key))
    if kind == b"hash":
        return repr(client.hgetall(key))
    if kind == b"set":
        return repr(client.smembers(key))
    if kind == b"list":
        return repr(client.lrange(key, 0, -1))
    if kind == b"zset":
        return repr(client.zrange(key, 0, -1, withscores=True))
    return repr(kind)
