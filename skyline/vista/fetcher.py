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

from skyline.vista import constants, membership, prune, redisconn, telemetry
from skyline.vista.config import VistaConfig
from skyline.vista.cycle_setup import metric_states, new_cycle, read_recorded
from skyline.vista.entries import FetchEntry
from skyline.vista.fetch_cycle import CycleReport, FetchCycle
from skyline.vista.fetch_log import CycleLog, FetcherState
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.procutil import parent_alive
from skyline.vista.schedule import MetricState, cycle_tick, next_tick
from skyline.vista.sources.http import SharedLimit, new_session

logger = logging.getLogger(__name__)

RECONCILE_EVERY = 300.0


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.outage = redisconn.RedisOutage(logger, "fetcher")
        self.self_metrics = telemetry.SelfMetrics(
            config.self_metrics.host, config.self_metrics.port, config.self_metrics.prefix
        )
        self._next_reconcile = 0.0
        self._cycles: dict[asyncio.Task[CycleReport | None], FetchCycle] = {}
        self._crash: BaseException | None = None

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
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the loop has already closed

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
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        config = self.config
        client = redisconn.connect_async(config.redis)
        queue = AsyncFetchQueue(client, watermark_keys(config.sink))
        members = membership.AsyncMembers(client)
        if config.shards:
            shard = f"shard {config.hostname} of {len(config.shards)} (VISTA_SHARDS)"
        else:
            shard = f"host {config.hostname}; shared with the live Vista hosts"
        logger.info("fetcher started: %d metric(s), %s", len(config.fetch_metrics), shard)
        try:
            async with new_session() as session:
                while not self.stopping():
                    started = self.clock()
                    planned = await self._begin(session, queue, members)
                    if planned is not None:
                        # Not awaited: the next tick starts the next cycle even if this one
                        # still waits for a slow host (whose metrics are not due meanwhile).
                        task = asyncio.ensure_future(self._complete(planned, members))
                        self._cycles[task] = planned.fetch
                        task.add_done_callback(self._cycle_done)
                    tick = cycle_tick([e.frequency for e in self.config.fetch_metrics])
                    await self._sleep(next_tick(max(started, self.clock()), tick) - self.clock())
                    if self._crash is not None:
                        raise self._crash
                await self._stop_cycles()
        finally:
            await client.aclose()
            logger.info("fetcher stopped")

    def _cycle_done(self, task: asyncio.Task[CycleReport | None]) -> None:
        self._cycles.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self._crash = task.exception()  # re-raised by the loop: the agent restarts us
            if self._wake is not None:
                self._wake.set()

    async def _stop_cycles(self) -> None:
        """End the cycles still running (their finished metrics are still pushed)."""
        for fetch in self._cycles.values():
            fetch.stop()
        if self._cycles:
            await asyncio.gather(*self._cycles, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or self._wake is None:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

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
        return set().union(*(fetch.in_flight for fetch in self._cycles.values()))

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
            await queue.client.set(
                constants.FETCHER_HEARTBEAT_KEY, int(begin), ex=constants.HEARTBEAT_TTL
            )
            if time.monotonic() >= self._next_reconcile:
                fixed = await queue.reconcile()
                if fixed:
                    logger.warning(
                        "cleared %d stale pending mark(s) (their items were gone)", fixed
                    )
                # Every Vista host's metrics are remembered; what none has any more is pruned
                # after VISTA_PRUNE_REMOVED_AFTER (prune.py).
                await prune.maintain(queue.client, config, begin)
                self._next_reconcile = time.monotonic() + RECONCILE_EVERY
            live = await members.live() if members is not None and not config.shards else ()
            entries = list(self._ownership(config, live))
            if members is not None:
                entries = await self._leased(members, config, entries)
            recorded = await read_recorded(queue, entries, begin)
            self.outage.ok()
        except redisconn.REDIS_ERRORS as exc:
            delay = self.outage.failed(exc)
            await self._sleep(delay)
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
            shared=self._shared_limit(),
            on_done=self.log.remember_metric,
        )
        # Marked in flight now, before the cycle task first runs (it narrows this to the
        # metrics it finds due as it starts).
        fetch.in_flight = {e.metric for e in entries if e.metric not in busy}
        return _Planned(fetch, entries, states)

    async def _leased(
        self, members: membership.AsyncMembers, config: VistaConfig, entries: list[FetchEntry]
    ) -> list[FetchEntry]:
        """The owned metrics whose fetch lease this host holds (renewed for those a running
        cycle still fetches); the others are still being fetched by their previous owner."""
        seconds = membership.lease_seconds(config)
        granted = await members.lease(config.hostname, [e.metric for e in entries], seconds)
        waiting = len(entries) - len(granted)
        if waiting != self.state.lease_waiting:
            level = logging.INFO if waiting else logging.DEBUG
            logger.log(
                level,
                "%d metric(s) wait for another host's fetch of them to end (fetch leases)",
                waiting,
            )
            self.state.lease_waiting = waiting
        return [e for e in entries if e.metric in granted]

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
            await self._unlease(members, report)
        self.log.remember(report)
        await self.log.remember_names(fetch, report)
        await self.log.report(report, len(report.results))
        return report

    def _ownership(self, config: VistaConfig, live: tuple[str, ...]) -> tuple[FetchEntry, ...]:
        """This cycle's fetch list; a change of the live hosts or of the share is logged."""
        entries = membership.fetch_list(config, live)
        state = self.state
        if config.shards:
            state.owned = entries
            return entries
        everyone = tuple(sorted({*live, config.hostname}))
        before = {e.metric for e in state.owned}
        after = {e.metric for e in entries}
        if everyone != state.members or before != after:
            logger.info(
                "live Vista hosts: %s; this host (%s) fetches %d of %d metric(s) "
                "(%d taken over, %d handed over)",
                ", ".join(everyone),
                config.hostname,
                len(entries),
                len(config.fetch_metrics),
                len(after - before) if state.members else 0,
                len(before - after),
            )
        state.forget(before - after)
        state.members, state.owned = everyone, entries
        return entries

    async def _unlease(self, members: membership.AsyncMembers, report: CycleReport) -> None:
        """This cycle's fetches and pushes are over: give their leases back, except for the
        metrics a later cycle of this host is fetching now."""
        still = self.in_flight()
        done = [r.metric for r in report.results if r.metric not in still]
        try:
            await members.unlease(self.config.hostname, done)
        except redisconn.REDIS_ERRORS:
            pass  # they expire by themselves

    def _shared_limit(self) -> SharedLimit:
        shared = self.state.shared
        if shared is None or shared.limit != self.config.fetch_concurrency:
            shared = self.state.shared = SharedLimit(self.config.fetch_concurrency)
        return shared


def parent_alive_or_self(parent_pid: int) -> bool:
    """The fetcher is a thread of the agent: its 'parent' is the agent process itself."""
    import os

    return parent_pid == os.getpid() or parent_alive(parent_pid)
