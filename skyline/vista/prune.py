"""State of metrics removed from the settings: remembered, listed, and pruned after a grace
period (``VISTA_PRUNE_REMOVED_AFTER``).

Every fetcher records, every few minutes, each metric of its ``VISTA_FETCH_METRICS`` (all of
them, not only the ones it fetches itself) in ``constants.CONFIGURED_KEY`` with the time. A
metric that no Vista host on this Redis has refreshed for the grace period is no longer in
anyone's settings: its state is removed in one Lua step (queue_scripts.PRUNE) and logged.
Only metrics Vista has managed are ever candidates (those in that hash, and, once, the
members of ``vista.metrics``); Skyline's own keys of other metrics are never touched, and with
the Flux sink neither are ``flux.last.*`` (Flux owns them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio

from skyline.vista import constants, expand, queue_scripts
from skyline.vista.config import VistaConfig
from skyline.vista.durations import FROM_MINUTES, short
from skyline.vista.redisconn import text

logger = logging.getLogger(__name__)

REFRESH_EVERY = 300.0
"""How often each fetcher refreshes its metrics' entries (it does so with its reconcile)."""

STALE_AFTER = 3 * REFRESH_EVERY
"""A metric not refreshed for this long is in no running Vista host's settings."""


@dataclass(frozen=True)
class Removal:
    """A metric no Vista host has in its settings any more, waiting for its grace period."""

    metric: str
    removed_at: float  # last time a Vista host had it in its settings
    prune_at: float


def pending_removal(
    configured: Mapping[str, float], settings: Sequence[str], now: float, grace: int
) -> list[Removal]:
    """The metrics not refreshed for ``STALE_AFTER`` and not in ``settings``, oldest first."""
    mine = set(settings)
    found = [
        Removal(metric, seen, seen + grace)
        for metric, seen in configured.items()
        if metric not in mine and seen < now - STALE_AFTER
    ]
    return sorted(found, key=lambda r: (r.removed_at, r.metric))


async def read_configured(client: redis.asyncio.Redis) -> dict[str, float]:
    return parse_configured(await client.hgetall(constants.CONFIGURED_KEY))


def parse_configured(raw: Mapping[bytes | str, bytes | str]) -> dict[str, float]:
    found = {}
    for metric, seen in raw.items():
        try:
            found[text(metric)] = float(seen)
        except ValueError:
            continue
    return found


def removal_lines(removals: Sequence[Removal], now: float) -> list[str]:
    """For ``vista status``: what is pending removal, and when it goes."""
    if not removals:
        return []
    lines = [f"pending removal (in no Vista host's settings): {len(removals)}"]
    for r in removals[:20]:
        lines.append(
            f"  {r.metric}  removed {short(now - r.removed_at, FROM_MINUTES)} ago, "
            f"state pruned in {short(max(0.0, r.prune_at - now), FROM_MINUTES)}"
        )
    if len(removals) > 20:
        lines.append(f"  ... and {len(removals) - 20} more")
    return lines


async def maintain(client: redis.asyncio.Redis, config: VistaConfig, now: float) -> list[str]:
    """Refresh this host's metrics, then prune what no host has had for the grace period.
    Returns the metrics pruned."""
    names = [e.metric for e in config.fetch_metrics]
    # The metrics a name template made (expand.py) are in the settings through their entry.
    templated = [e.metric for e in config.fetch_metrics if e.name_template is not None]
    if templated:
        made = await expand.known(client, templated)
        names += sorted({n for found in made.values() for n in found})
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        await client.hset(constants.CONFIGURED_KEY, mapping={m: int(now) for m in chunk})
    configured = await read_configured(client)
    # Metrics Vista delivered before this record existed: their grace period starts now.
    legacy = {text(m) for m in await client.smembers(constants.VISTA_METRICS_KEY)}
    for metric in sorted(legacy - configured.keys()):
        await client.hsetnx(constants.CONFIGURED_KEY, metric, int(now))
    grace = config.prune_removed_after
    if grace <= 0:
        return []
    due = [r.metric for r in pending_removal(configured, names, now, grace) if r.prune_at <= now]
    if not due:
        return []
    script = client.register_script(queue_scripts.PRUNE)
    keys = [
        constants.CONFIGURED_KEY,
        constants.PENDING_KEY,
        constants.VISTA_WATERMARK_HASH,
        constants.WATERMARK_HASH,
        constants.VISTA_METRICS_KEY,
        constants.HOLES_KEY,
    ]
    args = [
        str(now - grace),
        "1" if config.sink == "graphite" else "0",
        constants.WATERMARK_KEY_PREFIX,
        constants.RESOLUTION_KEY_PREFIX,
        constants.CHAIN_KEY_PREFIX,
    ]
    pruned: list[str] = []
    for start in range(0, len(due), 500):
        done = await script(keys=keys, args=args + due[start : start + 500])
        pruned += [text(m) for m in done]
    if pruned:
        shown = ", ".join(pruned[:20]) + (
            f" and {len(pruned) - 20} more" if len(pruned) > 20 else ""
        )
        logger.warning(
            "pruned the state of %d metric(s) no Vista host has had in its settings for %ds "
            "(VISTA_PRUNE_REMOVED_AFTER): %s",
            len(pruned),
            grace,
            shown,
        )
    return pruned
