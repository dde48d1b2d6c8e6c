"""Several Vista hosts on one Redis: who is alive, and which host fetches which metric.

Each agent keeps a member key ``vista.member.<VISTA_HOSTNAME>`` alive (``SET … EX
VISTA_MEMBER_TTL``, renewed every third of it) and its name in the set ``vista.members``. The
live members are the names whose key still exists (one Lua step, which also forgets the dead);
Redis expires the keys itself, so no host's clock matters.

A metric is fetched by its owner: rendezvous (highest random weight) hashing of the metric name
over the live members. When a host dies only its metrics move (each to the host with the next
highest weight), spread over the others; when a host joins it takes about 1/n of each host's
metrics and nothing else moves.

Hand-over is safe by construction of the queue (see fetchqueue.py): a metric has at most one
item queued or in flight, a push for a metric that is already pending is refused in the same Lua
step, and workers drop points at or below the watermark when they claim an item. So two hosts
that both believe they own a metric for a moment (one has not yet seen the change) cannot queue
two items of it at once nor deliver a point twice; and the new owner's window starts at the
metric's watermark, so no minute is skipped.

``VISTA_SHARDS`` (a fixed list of host names) overrides live membership: each host then fetches
the metrics whose name hashes to it in that list, alive or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import redis
import redis.asyncio

from skyline.vista import constants
from skyline.vista.config import VistaConfig
from skyline.vista.entries import FetchEntry

# KEYS: 1 the members set. ARGV: 1 the member key prefix. Returns the sorted live member names
# and forgets (SREM) the names whose member key has expired.
LIVE = r"""
local live = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. name) == 1 then
    table.insert(live, name)
  else
    redis.call('SREM', KEYS[1], name)
  end
end
table.sort(live)
return live
"""


def weight(member: str, metric: str) -> int:
    """The rendezvous weight of (member, metric): the same on every host and Python run."""
    digest = hashlib.blake2b(f"{member}\x00{metric}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(metric: str, members: Iterable[str]) -> str | None:
    """The member that fetches ``metric`` (highest weight; ties by name), None without members."""
    best: tuple[int, str] | None = None
    for member in members:
        key = (weight(member, metric), member)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def owned(entries: Iterable[FetchEntry], members: Iterable[str], me: str) -> tuple[FetchEntry, ...]:
    """The entries whose owner over ``members`` (and ``me``, alive by definition) is ``me``."""
    everyone = sorted({*members, me})
    return tuple(e for e in entries if owner(e.metric, everyone) == me)


def fetch_list(config: VistaConfig, members: Iterable[str]) -> tuple[FetchEntry, ...]:
    """What this host fetches: its VISTA_SHARDS share if set, else its share over the live
    members."""
    if config.shards:
        return config.shard_metrics
    return owned(config.fetch_metrics, members, config.hostname)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _names(values: Sequence[bytes | str]) -> tuple[str, ...]:
    return tuple(_text(v) for v in values)


def member_key(hostname: str) -> str:
    return constants.MEMBER_KEY_PREFIX + hostname


def heartbeat(client: redis.Redis, hostname: str, ttl: float, record: str = "1") -> None:
    """Keep this host in the live members for ``ttl`` seconds more."""
    pipe = client.pipeline(transaction=True)
    pipe.set(member_key(hostname), record, px=max(1, int(ttl * 1000)))
    pipe.sadd(constants.MEMBERS_KEY, hostname)
    pipe.execute()


def leave(client: redis.Redis, hostname: str) -> None:
    """A clean stop: the others take this host's metrics at their next cycle."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(member_key(hostname))
    pipe.srem(constants.MEMBERS_KEY, hostname)
    pipe.execute()


def live_members(client: redis.Redis) -> tuple[str, ...]:
    script = client.register_script(LIVE)
    return _names(script(keys=[constants.MEMBERS_KEY], args=[constants.MEMBER_KEY_PREFIX]))


class AsyncMembers:
    """The fetcher's view of the live members (its own asyncio client)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._live = client.register_script(LIVE)

    async def live(self) -> tuple[str, ...]:
        names = await self._live(keys=[constants.MEMBERS_KEY], args=[constants.MEMBER_KEY_PREFIX])
        return _names(names)
