"""The one way tests, fakes and benchmarks serve an aiohttp application on loopback.

    async with serving(app) as local:        # a free port on 127.0.0.1
        ... local.url ...

:class:`LocalApp` is the same without the ``with``, for servers that live in a thread of their
own (the Flux double) or that stop listening and listen again on the same port (an outage).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

LOOPBACK = "127.0.0.1"


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
        await self.runner.cleanup()
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
