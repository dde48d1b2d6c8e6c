"""Which metrics this Vista host fetches in a cycle: its share of the fetch list among the live
hosts (or its ``VISTA_SHARDS`` shard), narrowed to the metrics whose fetch lease it holds; and
giving the leases back when a cycle ends. The fetcher (``fetcher.py``) calls these each cycle."""

from __future__ import annotations

import logging

from skyline.vista import membership, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry
from skyline.vista.fetch_cycle import CycleReport
from skyline.vista.fetch_log import FetcherState

logger = logging.getLogger("skyline.vista.fetcher")


def describe(config: VistaConfig) -> str:
    """How this host's share is chosen, for the fetcher's start line."""
    if config.shards:
        return f"shard {config.hostname} of {len(config.shards)} (VISTA_SHARDS)"
    return f"host {config.hostname}; shared with the live Vista hosts"


async def this_cycle(
    members: membership.AsyncMembers | None, config: VistaConfig, state: FetcherState
) -> list[FetchEntry]:
    """What this host fetches this cycle: its share among the live hosts (all the fetch list
    when it runs alone, its shard with ``VISTA_SHARDS``), less the metrics whose fetch lease
    another host still holds."""
    live = await members.live() if members is not None and not config.shards else ()
    entries = list(owned(config, live, state))
    if members is not None:
        entries = await leased(members, config, entries, state)
    return entries


def owned(
    config: VistaConfig, live: tuple[str, ...], state: FetcherState
) -> tuple[FetchEntry, ...]:
    """This cycle's fetch list; a change of the live hosts or of the share is logged."""
    entries = membership.fetch_list(config, live)
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


async def leased(
    members: membership.AsyncMembers,
    config: VistaConfig,
    entries: list[FetchEntry],
    state: FetcherState,
) -> list[FetchEntry]:
    """The owned metrics whose fetch lease this host holds (renewed for those a running
    cycle still fetches); the others are still being fetched by their previous owner."""
    seconds = membership.lease_seconds(config)
    granted = await members.lease(config.hostname, [e.metric for e in entries], seconds)
    waiting = len(entries) - len(granted)
    if waiting != state.lease_waiting:
        level = logging.INFO if waiting else logging.DEBUG
        logger.log(
            level,
            "%d metric(s) wait for another host's fetch of them to end (fetch leases)",
            waiting,
        )
        state.lease_waiting = waiting
    return [e for e in entries if e.metric in granted]


async def unlease(
    members: membership.AsyncMembers, hostname: str, report: CycleReport, still: set[str]
) -> None:
    """A cycle's fetches and pushes are over: give their leases back, except for the metrics
    (``still``) a later cycle of this host is fetching now."""
    done = [r.metric for r in report.results if r.metric not in still]
    try:
        await members.unlease(hostname, done)
    except redisconn.REDIS_ERRORS:
        pass  # they expire by themselves
