"""Small remotes for fetch tests: loopback aiohttp servers that answer through a handler and
record every request (path, query, headers, arrival time), and fetch-entry builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.web import LocalApp

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Request:
    """One request a remote received."""

    path: str
    params: list[tuple[str, str]]  # the query string's pairs, in order, repeats kept
    headers: dict[str, str]
    at: float  # time.monotonic() of arrival

    @property
    def query(self) -> dict[str, str]:
        return dict(self.params)

    @property
    def targets(self) -> list[str]:
        """Graphite's ``target`` parameters, in order."""
        return [v for k, v in self.params if k == "target"]

    @property
    def promql(self) -> str:
        return self.query["query"]


@dataclass
class Remote:
    """A loopback HTTP server answering every GET through ``handler``; ``seen`` lists its
    requests; ``release`` is set when it stops (slow handlers wait on it)."""

    handler: Handler
    seen: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    local: LocalApp | None = None

    @property
    def url(self) -> str:
        return self.local.url if self.local is not None else ""

    async def start(self) -> Remote:
        async def handle(request: web.Request) -> web.StreamResponse:
            params = list(request.query.items())
            self.seen.append(Request(request.path, params, dict(request.headers), time.monotonic()))
            return await self.handler(request)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self.local = await LocalApp(app, handler_cancellation=True, shutdown_timeout=0.5).start()
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.local is not None:
            await self.local.stop()


@asynccontextmanager
async def remotes() -> AsyncIterator[Callable[[Handler], Awaitable[Remote]]]:
    started: list[Remote] = []

    async def make(handler: Handler) -> Remote:
        remote = await Remote(handler).start()
        started.append(remote)
        return remote

    try:
        yield make
    finally:
        for remote in started:
            await remote.stop()


def matrix(values: list[list[Any]]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]},
    }


async def time_series(request: web.Request) -> web.Response:
    """``query_range`` of ``time()``: every step of the asked window, valued its timestamp."""
    start, end = int(request.query["start"]), int(request.query["end"])
    step = int(request.query["step"].rstrip("s"))
    return web.json_response(matrix([[ts, str(ts)] for ts in range(start, end + 1, step)]))


def prom_entry(host: str, name: str, query: str = "time()", **extra: object) -> dict[str, object]:
    return {
        "remote_host": host,
        "remote_host_type": "prometheus",
        "frequency": 60,
        "remote_target": query,
        "graphite_target": name,
        "uri": "default",
        "namespace_prefix": "remote",
        **extra,
    }


def graphite_entry(host: str, name: str, target: str, **extra: object) -> dict[str, object]:
    return {
        "remote_host": host,
        "remote_host_type": "graphite",
        "frequency": 60,
        "remote_target": target,
        "graphite_target": name,
        "namespace_prefix": "remote",
        **extra,
    }
