"""Several Vista hosts on one Redis: who is alive, and which host fetches which metric.

Each agent keeps a member key ``vista.member.<VISTA_HOSTNAME>`` alive (``SET … EX
VISTA_MEMBER_TTL``, renewed every third of it) and its name in the set ``vista.members``. The
live members are the names whose key still exists (one Lua step, which also forgets the dead);
Redis expires the keys itself, so no host's clock matters. The key holds the agent's own token
(pid, machine, random hex) and each beat reads what it held: another token, after this agent's
first beat, means a second agent uses the same VISTA_HOSTNAME (agent/presence.py tells it).
With ``VISTA_SHARDS`` the agent is no live member: it beats the claim key
``vista.claim.<VISTA_HOSTNAME>`` instead, the same way, for the same check.

A metric is fetched by its owner: rendezvous (highest random weight) hashing of the metric name
over the live members. When a host dies only its metrics move (each to the host with the next
highest weight), spread over the others; when a host joins it takes about 1/n of each host's
metrics and nothing else moves.

Hand-over: for a moment two hosts may both believe they own a metric (one has not yet seen
the change, or is still in a cycle it began before). A metric is never fetched by two hosts at
once: a fetcher takes a **fetch lease** on each metric it is about to fetch (the hash
``vista.fetching``, metric -> "expiry_ms|host", one Lua step over the cycle's metrics, expiry
from Redis' own clock) and fetches only those it got; it renews them every cycle while it owns
them and gives them back when its cycle has pushed their points. A lease outlives a cycle's
deadline (``VISTA_FETCHER_PROCESS_MAX_RUNTIME`` + :data:`LEASE_MARGIN`), so the previous owner's
fetch, and its push, are over before the new owner starts: the new owner then reads the
watermark, the pending mark and the failed windows that fetch left behind. Below that, the
queue holds too: one item per metric, a push for a pending metric refused in the same Lua step,
points at or below the watermark dropped when a worker claims an item; and the new owner's
window starts at the watermark, so no minute is skipped.

``VISTA_SHARDS`` (a fixed list of host names) overrides live membership: each host then fetches
the metrics whose name hashes to it in that list, alive or not.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
import redis.asyncio

from skyline.vista import constants
from skyline.vista.config import VistaConfig
from skyline.vista.durations import short
from skyline.vista.entries import FetchEntry
from skyline.vista.redisconn import text

T = TypeVar("T")

LEASE_MARGIN = 15.0
"""Seconds a fetch lease lasts beyond the cycle deadline (the final push after it)."""

# KEYS: 1 the leases hash. ARGV: 1 host, 2 lease in ms, 3.. metrics. Takes (or renews) the lease
# of each metric that is free, expired or already this host's; returns the metrics granted.
LEASE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local host, ms = ARGV[1], tonumber(ARGV[2])
local granted = {}
for i = 3, #ARGV do
  local metric = ARGV[i]
  local current = redis.call('HGET', KEYS[1], metric)
  local free = true
  if current then
    local sep = string.find(current, '|', 1, true)
    if sep then
      local expiry, holder = tonumber(string.sub(current, 1, sep - 1)), string.sub(current, sep + 1)
      free = holder == host or (not expiry) or expiry <= now
    end
  end
  if free then
    redis.call('HSET', KEYS[1], metric, (now + ms) .. '|' .. host)
    table.insert(granted, metric)
  end
end
return granted
"""

# KEYS: 1 the leases hash. ARGV: 1 host, 2.. metrics. Gives back this host's leases of these
# metrics (another host's are left alone). Returns how many were given back.
UNLEASE = r"""
local n = 0
for i = 2, #ARGV do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current and string.sub(current, -(#ARGV[1] + 1)) == '|' .. ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: 1 this host's member (or claim) key, 2 (optional) the members set. ARGV: 1 this agent's
# token, 2 the TTL in ms, 3 the host name. Renews the key, joins the members set if given, and
# returns the value the key held (GET then SET in one step: SET ... GET needs Redis 6.2).
BEAT = r"""
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then
  redis.call('SADD', KEYS[2], ARGV[3])
end
return previous
"""

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


def _names(values: Sequence[bytes | str]) -> tuple[str, ...]:
    return tuple(text(v) for v in values)


def _chunks(metrics: Sequence[str], size: int = 5000) -> Iterator[list[str]]:
    """``metrics`` in parts of at most ``size``: one script call each (bounded arguments)."""
    for start in range(0, len(metrics), size):
        yield list(metrics[start : start + size])


def member_key(hostname: str) -> str:
    return constants.MEMBER_KEY_PREFIX + hostname


def claim_key(hostname: str) -> str:
    return constants.CLAIM_KEY_PREFIX + hostname


def heartbeat(
    client: redis.Redis, hostname: str, ttl: float, token: str = "1", *, member: bool = True
) -> str | None:
    """Keep this host in the live members for ``ttl`` seconds more; returns what the member key
    held just before (None: absent), read in the same step. ``member=False`` (VISTA_SHARDS):
    the same on the claim key instead, which no one counts as a live member."""
    keys = [member_key(hostname), constants.MEMBERS_KEY] if member else [claim_key(hostname)]
    previous = client.register_script(BEAT)(
        keys=keys, args=[token, max(1, int(ttl * 1000)), hostname]
    )
    return None if previous is None else text(previous)


def instance_token(pid: int) -> str:
    """What one agent writes into its member key: ``<pid>@<machine>#<random hex>``, unique to
    this agent (another agent with the same VISTA_HOSTNAME writes another one)."""
    return f"{pid}@{socket.gethostname()}#{secrets.token_hex(8)}"


@dataclass(frozen=True)
class OtherAgent:
    """Another agent found writing this host's member key (its token, or an older Vista's pid)."""

    pid: str
    machine: str

    @classmethod
    def of(cls, token: str) -> OtherAgent:
        pid, at, rest = token.partition("@")
        if not at:
            return cls(pid, "an unknown machine (an older Vista)")
        return cls(pid, rest.rpartition("#")[0] or rest)


DUPLICATE_TTL = 600
"""Seconds ``vista status`` keeps saying that another agent used this VISTA_HOSTNAME."""


def record_duplicate(client: redis.Redis, hostname: str, other: OtherAgent) -> None:
    """For ``vista status``: another agent wrote this host's member key (now)."""
    record = {"pid": other.pid, "machine": other.machine, "seen": time.time()}
    pipe = client.pipeline(transaction=True)
    pipe.hset(constants.DUPLICATE_HOSTS_KEY, hostname, json.dumps(record))
    pipe.expire(constants.DUPLICATE_HOSTS_KEY, DUPLICATE_TTL)
    pipe.execute()


def duplicate_records(client: redis.Redis) -> dict[str, bytes | str]:
    """Every host name with a duplicate record -> the record, whichever host ``vista status``
    runs on (records older than :data:`DUPLICATE_TTL` are left out by :func:`duplicate_line`)."""
    found: dict[bytes | str, bytes | str] = client.hgetall(constants.DUPLICATE_HOSTS_KEY)
    return {text(host): raw for host, raw in found.items()}


def duplicate_lines(records: dict[str, bytes | str], now: float) -> list[str]:
    """The ``vista status`` warnings, one per host name with a record, by name."""
    lines = (duplicate_line(host, records[host], now) for host in sorted(records))
    return [line for line in lines if line]


def duplicate_line(hostname: str, raw: bytes | str | None, now: float) -> str | None:
    """The ``vista status`` warning from the record :func:`record_duplicate` wrote, if any."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        pid, machine, seen = str(record["pid"]), str(record["machine"]), float(record["seen"])
    except (ValueError, KeyError, TypeError):
        return None
    if now - seen > DUPLICATE_TTL:
        return None  # the hash lives on while another host's record is fresh
    return (
        f"WARNING: another agent uses VISTA_HOSTNAME {hostname!r} (pid {pid} on {machine}), "
        f"last seen {short(now - seen)} ago: give each host its own VISTA_HOSTNAME"
    )


def leave(client: redis.Redis, hostname: str, *, member: bool = True) -> None:
    """A clean stop: the others take this host's metrics at their next cycle (``member=False``,
    VISTA_SHARDS: only the claim key goes)."""
    if not member:
        client.delete(claim_key(hostname))
        return
    pipe = client.pipeline(transaction=True)
    pipe.delete(member_key(hostname))
    pipe.srem(constants.MEMBERS_KEY, hostname)
    pipe.execute()


def _call_live(script: Callable[..., T]) -> T:
    """Run the LIVE script (a client's or an asyncio client's: then await the answer)."""
    return script(keys=[constants.MEMBERS_KEY], args=[constants.MEMBER_KEY_PREFIX])


def live_members(client: redis.Redis) -> tuple[str, ...]:
    return _names(_call_live(client.register_script(LIVE)))


def lease_seconds(config: VistaConfig) -> float:
    return config.fetcher_max_runtime + LEASE_MARGIN


class AsyncMembers:
    """The fetcher's view of the live members and its fetch leases (its asyncio client)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._live = client.register_script(LIVE)
        self._lease = client.register_script(LEASE)
        self._unlease = client.register_script(UNLEASE)

    async def lease(self, host: str, metrics: Sequence[str], seconds: float) -> set[str]:
        """Take or renew the fetch lease of each metric; returns those this host may fetch."""
        granted: set[str] = set()
        for part in _chunks(metrics):
            args = [host, str(max(1, int(seconds * 1000))), *part]
            found = await self._lease(keys=[constants.FETCH_LEASES_KEY], args=args)
            granted.update(_names(found))
        return granted

    async def unlease(self, host: str, metrics: Sequence[str]) -> int:
        """Give back this host's leases of these metrics (their fetch and push are over)."""
        given = 0
        for part in _chunks(metrics):
            given += int(await self._unlease(keys=[constants.FETCH_LEASES_KEY], args=[host, *part]))
        return given

    async def live(self) -> tuple[str, ...]:
        return _names(await _call_live(self._live))
