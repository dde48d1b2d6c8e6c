"""The fetch cycles still running in the fetcher's loop: each cycle runs as its own task, so
that the next tick starts the next cycle even while one waits for a slow host. What they still
fetch (``in_flight``) is not due for a new cycle; a cycle that crashed is kept for the loop to
re-raise (the agent then restarts the fetcher thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from skyline.vista.fetch_cycle import CycleReport, FetchCycle


class RunningCycles:
    """``on_crash`` is called (in the loop) when a cycle task raises."""

    def __init__(self, on_crash: Callable[[], None]) -> None:
        self._cycles: dict[asyncio.Task[CycleReport | None], FetchCycle] = {}
        self._on_crash = on_crash
        self.crash: BaseException | None = None

    def add(self, task: asyncio.Task[CycleReport | None], fetch: FetchCycle) -> None:
        self._cycles[task] = fetch
        task.add_done_callback(self._done)

    def in_flight(self) -> set[str]:
        """Metrics that a running cycle is still fetching (or pushing)."""
        return set().union(*(fetch.in_flight for fetch in self._cycles.values()))

    def _done(self, task: asyncio.Task[CycleReport | None]) -> None:
        self._cycles.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self.crash = task.exception()  # re-raised by the loop: the agent restarts us
            self._on_crash()

    async def stop(self) -> None:
        """End the cycles still running (their finished metrics are still pushed)."""
        for fetch in self._cycles.values():
            fetch.stop()
        if self._cycles:
            await asyncio.gather(*self._cycles, return_exceptions=True)
