"""The fetch tasks of one cycle: started as the sources ask, waited for until the cycle's
deadline (or its stop), and cancelled past it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from skyline.vista.fetch_results import Member


class FetchTasks:
    """``on_failure(members, exc)`` is called for a task that raised: ``members`` are the
    (metric, window) it answered for, which must not be left pending by a bug."""

    def __init__(self, on_failure: Callable[[list[Member], BaseException], None]) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[None]] = set()
        self._members: dict[asyncio.Task[None], list[Member]] = {}
        self._idle = asyncio.Event()  # set when the last task has finished
        self._stopping = False

    def spawn(self, fetch: Coroutine[Any, Any, None], members: Sequence[Member] = ()) -> None:
        task = asyncio.ensure_future(fetch)
        self._tasks.add(task)
        if members:
            self._members[task] = list(members)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        # A callback per task, not asyncio.wait() over all of them after each completion:
        # that costs O(tasks) per completion, O(n^2) for a cycle of 10,000 requests.
        self._tasks.discard(task)
        members = self._members.pop(task, [])
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self._on_failure(members, exc)
        if not self._tasks:
            self._idle.set()

    def stop(self) -> None:
        """Stop waiting now, as at the deadline."""
        self._stopping = True
        self._idle.set()

    async def wait(self, timeout: float) -> None:
        """Until every task has finished, ``timeout`` seconds have passed or :meth:`stop`."""
        if self._tasks and timeout > 0 and not self._stopping:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass

    async def cancel(self) -> None:
        """Cancel what is still running, and wait for it to end."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
