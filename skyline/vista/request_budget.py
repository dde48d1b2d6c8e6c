"""Per-source request budget: a token bucket per remote host, shared in Redis by every process
that fetches from it (the live fetcher of every Vista host, history and BigQuery jobs).

Set in ``VISTA_REMOTE_HOSTS[<remote_host>]`` with ``requests_per_second`` (the refill rate)
and ``burst`` (the bucket's size, default: one second's worth). Every GET to the host takes a
token first (:func:`skyline.vista.sources.http.get_json` calls the ``pacer`` of the host's
``HostState``), so the host never sees more than ``burst + requests_per_second × t`` requests
in any ``t`` seconds, whatever the number of processes.

History yields to live fetching: a live request that finds the bucket empty marks the host
``vista.request_budget.<host>.live`` for as long as it waits, and history requests take no
token while that mark exists, so live metrics get the whole rate when they need it and
history gets what they leave. 429/503 with Retry-After are still honoured on top of this (the
host's hold and backoff in ``HostState``).

A host without ``requests_per_second`` costs nothing: no pacer, no Redis call. When Redis is
unreachable a pacer falls back to a bucket of its own process (same rate), so fetching goes on
no faster than the budget from each process.

Usage by a job (priority ``history``), through :func:`skyline.vista.sources.http.host_state_of`::

    state = host_state_of(hosts, entry, config.host_options, async_redis, "history")
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio

from skyline.vista import constants, redisconn, telemetry, token_bucket
from skyline.vista.config import HostOptions

logger = logging.getLogger(__name__)

Priority = Literal["live", "history"]

KEY_PREFIX = constants.REQUEST_BUDGET_KEY_PREFIX
HISTORY_YIELD = 0.1
"""Seconds a history request waits before asking again while live requests are waiting."""

# KEYS: bucket hash, live-waiting marker. ARGV: rate, burst, priority.
# Returns the seconds to wait before asking again, as a string ('0' = token taken).
TAKE = (
    r"""
local B, LIVE = KEYS[1], KEYS[2]
local rate, cap, priority = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
"""
    + token_bucket.REFILL
    + r"""
local wait = 0
if priority ~= 'live' and redis.call('EXISTS', LIVE) == 1 then
  wait = -1
elseif tokens >= 1 then
  tokens = tokens - 1
  redis.call('HINCRBY', B, priority, 1)
else
  wait = (1 - tokens) / rate
  if priority == 'live' then
    redis.call('SET', LIVE, '1', 'PX', math.ceil(wait * 1000) + 250)
  end
end
"""
    + token_bucket.STORE
    + r"""
redis.call('PEXPIRE', B, math.ceil(cap / rate * 1000) + 60000)
return tostring(wait)
"""
)


class Pacer(Protocol):
    """What ``get_json`` awaits before each request to a host."""

    async def wait(self) -> None: ...


@dataclass
class LocalBucket:
    """A token bucket inside one process (pure; the clock is injectable)."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = math.nan
    at: float = math.nan

    def take(self) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is due."""
        now = self.clock()
        if math.isnan(self.tokens):
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RedisPacer:
    """The shared bucket of one host, in Redis."""

    def __init__(
        self,
        client: redis.asyncio.Redis | None,
        host: str,
        rate: float,
        burst: float,
        priority: Priority = "live",
    ) -> None:
        self.client = client
        self.host = host
        self.rate, self.burst, self.priority = rate, burst, priority
        self.keys = [f"{KEY_PREFIX}{host}", f"{KEY_PREFIX}{host}.live"]
        self._take = client.register_script(TAKE) if client is not None else None
        self._local = LocalBucket(rate, burst)
        self._redis_failing = False
        self.waited = 0.0  # seconds spent waiting for tokens (for reports)

    async def _ask(self) -> float:
        if self._take is None:
            return self._local.take()
        try:
            reply = await self._take(
                keys=self.keys, args=[repr(self.rate), repr(self.burst), self.priority]
            )
        except redisconn.REDIS_ERRORS as exc:
            if not self._redis_failing:
                logger.warning(
                    "%s: request budget in Redis unavailable (%s); pacing this process alone",
                    self.host,
                    exc,
                )
                self._redis_failing = True
            return self._local.take()
        self._redis_failing = False
        wait = float(reply.decode() if isinstance(reply, bytes) else reply)
        return HISTORY_YIELD if wait < 0 else wait

    async def wait(self) -> None:
        waited = 0.0
        while True:
            delay = await self._ask()
            if delay <= 0:
                break
            # A little jitter so that the waiters of one host do not all ask at once.
            delay = delay * (1 + 0.1 * random.random())
            waited += delay
            await asyncio.sleep(delay)
        if waited:
            self.waited += waited
            telemetry.BUDGET_WAITS.labels(self.host, self.priority).inc()
            telemetry.BUDGET_WAIT_SECONDS.labels(self.host, self.priority).inc(waited)


def pacer_for(
    host: str,
    options: HostOptions,
    client: redis.asyncio.Redis | None,
    priority: Priority = "live",
) -> RedisPacer | None:
    """The pacer of a remote_host, or None when it has no request budget. ``client=None``
    paces this process alone (``vista fetch --once --dry-run``). Fetching code gets it through
    :func:`skyline.vista.sources.http.host_state_of`, which keys the bucket the same way
    everywhere (the exact remote_host)."""
    rate = options.requests_per_second
    if not rate:
        return None
    size = options.burst if options.burst else max(1.0, math.ceil(rate))
    return RedisPacer(client, host, float(rate), float(size), priority)


async def budget_counts(client: redis.asyncio.Redis, host: str) -> dict[str, int]:
    """Requests granted per priority so far (for reports and tests)."""
    found = await client.hgetall(f"{KEY_PREFIX}{host}")
    out = {}
    for key, value in found.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in ("live", "history"):
            out[name] = int(value)
    return out
