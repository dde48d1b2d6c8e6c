"""The Fetcher thread: one asyncio loop, one aiohttp session, cycles aligned to the wall clock.

Each cycle reads every metric's watermark, picks the due metrics (a new complete interval may
exist at the source, and no earlier item of the metric is still queued or in flight), fetches
them all concurrently within ``VISTA_FETCHER_PROCESS_MAX_RUNTIME`` and pushes the new points to
``vista.fetcher.metrics.json``. What did not finish is counted, logged once, and goes first in
the next cycle. Fetching never waits on the workers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from skyline.vista import fetch_share, membership, redisconn, telemetry
from skyline.vista.config import VistaConfig
from skyline.vista.cycle_setup import metric_states, new_cycle, read_recorded
from skyline.vista.entries import FetchEntry
from skyline.vista.fetch_cycle import CycleReport, FetchCycle
from skyline.vista.fetch_log import CycleLog, FetcherState
from skyline.vista.fetch_upkeep import Upkeep
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.loop_waker import LoopWaker
from skyline.vista.procutil import parent_alive
from skyline.vista.running_cycles import RunningCycles
from skyline.vista.schedule import MetricState, cycle_tick, next_tick
from skyline.vista.sources.http import new_session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Planned:
    """A cycle ready to run: its FetchCycle and what was read from Redis for it."""

    fetch: FetchCycle
    entries: list[FetchEntry]  # the cycle picks the due ones (schedule.plan_metric)
    states: dict[str, MetricState]


def order_due(entries: list[FetchEntry], carried: set[str]) -> list[FetchEntry]:
    """Metrics left unfinished by the last cycle go first, so none starves behind a slow host."""
    return sorted(entries, key=lambda e: (e.metric not in carried, e.index))


class Fetcher(threading.Thread):
    def __init__(
        self,
        parent_pid: int,
        config: VistaConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="vista-fetcher", daemon=True)
        self.parent_pid = parent_pid
        self._config = config
        self.clock = clock
        self.log = CycleLog(FetcherState(), lambda: self._config, lambda: self.self_metrics)
        self._stop_requested = threading.Event()
        self._waker = LoopWaker()
        self.outage = redisconn.RedisOutage(logger, "fetcher")
        self.self_metrics = telemetry.SelfMetrics(
            config.self_metrics.host, config.self_metrics.port, config.self_metrics.prefix
        )
        self._upkeep = Upkeep()
        self._cycles = RunningCycles(on_crash=self._waker.wake)

    @property
    def state(self) -> FetcherState:
        return self.log.state

    @state.setter
    def state(self, state: FetcherState) -> None:
        self.log.state = state

    # --- control (any thread) -------------------------------------------------------------

    @property
    def config(self) -> VistaConfig:
        return self._config

    def update_config(self, config: VistaConfig) -> None:
        """Applied from the next cycle on."""
        self._config = config
        self.self_metrics = telemetry.SelfMetrics(
            config.self_metrics.host, config.self_metrics.port, config.self_metrics.prefix
        )

    def stop(self) -> None:
        self._stop_requested.set()
        self._waker.wake_threadsafe()

    def stopping(self) -> bool:
        return self._stop_requested.is_set() or not parent_alive_or_self(self.parent_pid)

    # --- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            logger.exception("the fetcher thread crashed; the agent restarts it")
            raise

    async def _main(self) -> None:
        self._waker.bind()
        config = self.config
        client = redisconn.connect_async(config.redis)
        queue = AsyncFetchQueue(client, watermark_keys(config.sink))
        members = membership.AsyncMembers(client)
        share = fetch_share.describe(config)
        logger.info("fetcher started: %d metric(s), %s", len(config.fetch_metrics), share)
        try:
            async with new_session() as session:
                while not self.stopping():
                    started = self.clock()
                    planned = await self._begin(session, queue, members)
                    if planned is not None:
                        # Not awaited: the next tick starts the next cycle even if this one
                        # still waits for a slow host (whose metrics are not due meanwhile).
                        task = asyncio.ensure_future(self._complete(planned, members))
                        self._cycles.add(task, planned.fetch)
                    tick = cycle_tick([e.frequency for e in self.config.fetch_metrics])
                    wait = next_tick(max(started, self.clock()), tick) - self.clock()
                    await self._waker.sleep(wait)
                    if self._cycles.crash is not None:
                        raise self._cycles.crash
                await self._cycles.stop()
        finally:
            await client.aclose()
            logger.info("fetcher stopped")

    # --- one cycle ------------------------------------------------------------------------

    async def cycle(
        self,
        session: aiohttp.ClientSession,
        queue: AsyncFetchQueue,
        members: membership.AsyncMembers | None = None,
    ) -> CycleReport | None:
        """One whole cycle, awaited to its end (the thread starts each and does not wait)."""
        planned = await self._begin(session, queue, members)
        return None if planned is None else await self._complete(planned, members)

    def in_flight(self) -> set[str]:
        """Metrics that a running cycle is still fetching (or pushing)."""
        return self._cycles.in_flight()

    async def _begin(
        self,
        session: aiohttp.ClientSession,
        queue: AsyncFetchQueue,
        members: membership.AsyncMembers | None = None,
    ) -> _Planned | None:
        """Heartbeat, then read what the cycle needs to pick the due metrics (among those this
        host owns now and a running cycle is not still fetching; schedule.plan_metric
        decides)."""
        config = self.config
        begin = self.clock()
        busy = self.in_flight()
        try:
            await self._upkeep.run(queue, config, begin)
            entries = await fetch_share.this_cycle(members, config, self.state)
            recorded = await read_recorded(queue, entries, begin)
            self.outage.ok()
        except redisconn.REDIS_ERRORS as exc:
            delay = self.outage.failed(exc)
            await self._waker.sleep(delay)
            return None
        state = self.state
        states = metric_states(
            entries,
            recorded,
            last_attempt=state.last_attempt,
            carried=state.carried,
            scan_from=state.scan_from,
            busy=busy,
        )
        entries = order_due(entries, state.carried)
        fetch = new_cycle(
            config,
            session,
            queue,
            recorded,
            hosts=state.hosts,
            clock=self.clock,
            on_error=self.log.on_error,
            shared=self.state.shared_limit(config.fetch_concurrency),
            on_done=self.log.remember_metric,
        )
        # Marked in flight now, before the cycle task first runs (it narrows this to the
        # metrics it finds due as it starts).
        fetch.in_flight = {e.metric for e in entries if e.metric not in busy}
        return _Planned(fetch, entries, states)

    async def _complete(
        self, planned: _Planned, members: membership.AsyncMembers | None = None
    ) -> CycleReport | None:
        fetch = planned.fetch
        try:
            report = await fetch.run(planned.entries, states=planned.states, ignore_schedule=False)
        except redisconn.REDIS_ERRORS as exc:
            self.outage.failed(exc)
            logger.warning("this cycle's items could not be queued; they are fetched again")
            return None
        if members is not None:
            await fetch_share.unlease(members, self.config.hostname, report, self.in_flight())
        self.log.remember(report)
        await self.log.remember_names(fetch, report)
        await self.log.report(report, len(report.results))
        return report


def parent_alive_or_self(parent_pid: int) -> bool:
    """The fetcher is a thread of the agent: its 'parent' is the agent process itself."""
    import os

    return parent_pid == os.getpid() or parent_alive(parent_pid)
