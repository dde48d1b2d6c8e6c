"""A sleep in an asyncio loop that another thread (or a callback in the loop) can cut short:
the fetcher thread sleeps to its next tick, and is woken when it must stop or a cycle crashed."""

from __future__ import annotations

import asyncio


class LoopWaker:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def bind(self) -> None:
        """Called in the running loop, before any sleep."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """In the loop: end the current (and the next) sleep."""
        if self._wake is not None:
            self._wake.set()

    def wake_threadsafe(self) -> None:
        """From any thread; nothing if the loop has not started or has closed."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the loop has already closed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._wake is None:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
