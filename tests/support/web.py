"""The one way tests, fakes and benchmarks serve an aiohttp application on loopback.

    async with serving(app) as local:        # a free port on 127.0.0.1
        ... local.url ...

:class:`LocalApp` is the same without the ``with``, for servers that stop listening and listen
again on the same port (an outage). :class:`ThreadedApp` serves a :class:`LocalApp` from an event
loop in a daemon thread of its own, for doubles that synchronous code starts and calls (the Flux
and BigQuery doubles).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web

LOOPBACK = "127.0.0.1"

_T = TypeVar("_T")


class LocalApp:
    """``app`` served on 127.0.0.1; ``port`` and ``url`` are known once :meth:`start` returns.

    ``handler_cancellation``: a request whose client gave up stops waiting at once (slow
    handlers). Other keywords go to :class:`aiohttp.web.AppRunner`.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        handler_cancellation: bool = False,
        shutdown_timeout: float = 1.0,
        **runner_options: Any,
    ) -> None:
        self.runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=handler_cancellation,
            shutdown_timeout=shutdown_timeout,
            **runner_options,
        )
        self._site: web.TCPSite | None = None
        self._ssl: ssl.SSLContext | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    async def start(
        self, port: int = 0, *, backlog: int = 128, ssl_context: ssl.SSLContext | None = None
    ) -> LocalApp:
        """Listen on ``port`` (0: a free one); with ``ssl_context``, over TLS."""
        await self.runner.setup()
        self._ssl = ssl_context
        await self.listen(port, backlog=backlog)
        return self

    async def listen(self, port: int, *, backlog: int = 128) -> None:
        """Listen (again) on ``port``; the address is reused, so a port just left is free."""
        self._site = web.TCPSite(
            self.runner,
            LOOPBACK,
            port,
            backlog=backlog,
            reuse_address=True,
            ssl_context=self._ssl,
        )
        await self._site.start()
        self.port = self._site.port

    async def unlisten(self) -> None:
        """Stop listening and cut the open connections (clients see a connection error)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self.runner.server
        for connection in server.connections if server is not None else []:
            connection.force_close()

    async def stop(self) -> None:
        """Stop serving; every connection's socket is closed when this returns. (A TLS
        connection's close waits for the peer's close_notify: through a proxy's tunnel that can
        outlive the test's event loop, and its socket was then closed only by the garbage
        collector, with a ResourceWarning in whichever later test that happened.)"""
        server = self.runner.server
        open_transports = [
            c.transport for c in (server.connections if server is not None else []) if c.transport
        ]
        await self.runner.cleanup()
        for transport in open_transports:
            transport.abort()  # a no-op for one already closed
        self._site = None


@asynccontextmanager
async def serving(
    app: web.Application,
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[LocalApp]:
    """``app`` served on 127.0.0.1 for the ``with`` block (see :class:`LocalApp`); with
    ``ssl_context``, over TLS."""
    local = await LocalApp(app, **options).start(port, ssl_context=ssl_context)
    try:
        yield local
    finally:
        await local.stop()


class ThreadedApp:
    """The app that ``make_app`` builds, served by a :class:`LocalApp` on an event loop that runs
    in a daemon thread named ``name``; :meth:`start` and :meth:`stop` block until done, and
    :meth:`call` runs a coroutine on that loop from any other thread."""

    def __init__(self, name: str, make_app: Callable[[], web.Application], **options: Any) -> None:
        self.name = name
        self._make_app = make_app
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.local: LocalApp | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def port(self) -> int:
        return self.local.port if self.local is not None else 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ThreadedApp:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, name=self.name, daemon=True)
        self._thread.start()
        self.local = self.call(self._start_app())
        return self

    async def _start_app(self) -> LocalApp:
        return await LocalApp(self._make_app(), **self._options).start()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        """Run ``coro`` on the server's loop and wait for its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=timeout)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self.local is not None:
            self.call(self.local.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None
        self.local = None

    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
