"""Carbon's create budget, shared by every process that writes new metric names.

carbon-cache creates the whisper file of a new metric only while its create token bucket
(``MAX_CREATES_PER_MINUTE``; capacity = that number, refilled at number/60 per second, full at
start) has a token; otherwise it *drops every point it holds for that metric* and counts a
``droppedCreates``. So the first write of a metric name must wait for a token, and the same
bucket must pace every writer: the workers of every Vista host, history jobs, BigQuery jobs.

One bucket in Redis (``vista.create_budget``), one Lua step per batch of names:

* a name Vista wrote before (in ``vista.metrics``, or granted earlier) passes, costing nothing;
* a new name takes a token if one is there, and is remembered as granted;
* otherwise it is *deferred*: the caller keeps its points queued and asks again later (the
  answer says when the next token is due). Deferred names are listed in
  ``vista.create_budget.waiting_since`` (name scored by its first deferral) for ``vista
  status``.

The same step keeps the granted and waiting names bounded: a name in ``vista.metrics`` leaves
both, and a name nobody asked for in :data:`FORGET_AFTER` seconds is forgotten.

The bucket mirrors carbon's (same refill rate; a capacity smaller by
:data:`CARBON_DELAY_MARGIN` seconds of refill), so a name granted here finds a token in carbon's
bucket too, as long as Vista is the only writer creating metrics in that carbon: set
``VISTA_CARBON_MAX_CREATES_PER_MINUTE`` lower than carbon's by what other writers create.
``float('inf')`` turns pacing off (as in carbon).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from skyline.vista import constants, redisconn, token_bucket
from skyline.vista.redisconn import text

BUDGET_KEY = constants.CREATE_BUDGET_KEY
"""Hash: ``tokens``, ``at`` (Redis TIME of the last refill), ``granted``, ``deferred`` (totals)."""
GRANTED_KEY = constants.CREATE_BUDGET_GRANTED_KEY
"""Sorted set: new metric name granted a create token -> when it was last asked for (Redis
TIME). A name leaves it once it is in ``vista.metrics``, or when nobody asked for it in
:data:`FORGET_AFTER` seconds (it would then take a token again: one token, never a point)."""
WAITING_KEY = constants.CREATE_BUDGET_WAITING_KEY
"""Sorted set: name waiting for a token -> epoch of its first deferral. A name leaves it when it
gets a token or is known, or :data:`FORGET_AFTER` seconds after its first deferral (a caller
still waiting lists it again at its next ask)."""
FORGET_AFTER = 7 * 86400.0
"""Seconds after which the admission step forgets a granted name nobody asks for, or a waiting
one: what keeps :data:`GRANTED_KEY` and :data:`WAITING_KEY` bounded (by the names in use in
that time), instead of growing with every name Vista ever created or deferred."""

# KEYS: bucket, granted zset, waiting zset, vista.metrics, the two keys of earlier builds
# ARGV: tokens per second, capacity, forget after (seconds), name...
# Returns {status per name ('k' known, 'g' granted, 'd' deferred)..., tokens, wait seconds}.
ADMIT = (
    r"""
local B, GRANTED, WAITING, KNOWN = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rate, cap, forget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
"""
    + token_bucket.REFILL
    + r"""
for _, key in ipairs({GRANTED, WAITING}) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - forget)
end
-- Earlier builds' untrimmed set and hash: hosts not yet upgraded still use them (deleting them
-- would make those hosts grant again), so they are only given a week to live.
for i = 5, 6 do
  if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIRE', KEYS[i], 604800) end
end
local out = {}
local granted, deferred = 0, 0
for i = 4, #ARGV do
  local m = ARGV[i]
  if redis.call('SISMEMBER', KNOWN, m) == 1 then
    redis.call('ZREM', GRANTED, m)
    redis.call('ZREM', WAITING, m)
    out[#out + 1] = 'k'
  elseif redis.call('ZSCORE', GRANTED, m) then
    redis.call('ZADD', GRANTED, now, m)
    out[#out + 1] = 'k'
  elseif tokens >= 1 then
    tokens = tokens - 1
    redis.call('ZADD', GRANTED, now, m)
    redis.call('ZREM', WAITING, m)
    granted = granted + 1
    out[#out + 1] = 'g'
  else
    redis.call('ZADD', WAITING, 'NX', now, m)
    deferred = deferred + 1
    out[#out + 1] = 'd'
  end
end
"""
    + token_bucket.STORE
    + r"""
if granted > 0 then redis.call('HINCRBY', B, 'granted', granted) end
if deferred > 0 then redis.call('HINCRBY', B, 'deferred', deferred) end
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
out[#out + 1] = tostring(tokens)
out[#out + 1] = tostring(wait)
return out
"""
)


CARBON_DELAY_MARGIN = 6.0
"""Seconds of refill kept in reserve. Carbon takes its token when its writer thread reaches the
metric, 0-1 s after receiving it when idle and longer behind a backlog, while Vista takes its
own when it sends: if the first creates of a burst reach carbon's writer later than the
following ones, carbon's bucket runs behind Vista's by rate x that difference (3 of 500 metrics
were lost that way with no margin). Vista's bucket therefore holds this many seconds of tokens
fewer than carbon's (10 %: 5 of Debian's 50), and refills at carbon's rate."""


def bucket_shape(per_minute: float) -> tuple[float, float]:
    """(tokens per second, capacity) of Vista's bucket for carbon's MAX_CREATES_PER_MINUTE."""
    rate = per_minute / 60.0
    return rate, max(1.0, per_minute - rate * CARBON_DELAY_MARGIN)


@dataclass(frozen=True)
class Admission:
    """The answer for one batch of names."""

    known: frozenset[str] = frozenset()
    granted: frozenset[str] = frozenset()
    deferred: frozenset[str] = frozenset()
    tokens: float = math.inf
    wait: float = 0.0  # seconds until the next token (0 when one is there)

    def allowed(self, metric: str) -> bool:
        return metric not in self.deferred


@dataclass(frozen=True)
class BudgetStatus:
    """What ``vista status`` and ``/metrics`` show."""

    per_minute: float
    tokens: float
    granted_total: int
    deferred_total: int
    waiting: int
    oldest_wait: float | None  # seconds the longest-waiting name has waited
    waiting_sample: tuple[str, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        return math.isfinite(self.per_minute)


class CreateBudget:
    """The shared create budget (a no-op when ``per_minute`` is ``inf``)."""

    def __init__(
        self, client: redis.Redis, per_minute: float, forget_after: float = FORGET_AFTER
    ) -> None:
        self.client = client
        self.per_minute = per_minute
        self.forget_after = forget_after
        self._admit = client.register_script(ADMIT)

    @property
    def enabled(self) -> bool:
        return math.isfinite(self.per_minute)

    def admit(self, metrics: Iterable[str]) -> Admission:
        """Which of ``metrics`` may be written now. New names take a token each; the ones
        left without a token are deferred (keep their points queued; ask again after
        ``wait`` seconds)."""
        names = sorted(set(metrics))
        if not self.enabled or not names:
            return Admission(known=frozenset(names))
        keys = [
            BUDGET_KEY,
            GRANTED_KEY,
            WAITING_KEY,
            constants.VISTA_METRICS_KEY,
            *constants.CREATE_BUDGET_OLD_KEYS,
        ]
        rate, capacity = bucket_shape(self.per_minute)
        args = [repr(rate), repr(capacity), repr(self.forget_after), *names]
        reply = self._admit(keys=keys, args=args)
        flags = [text(x) for x in reply[: len(names)]]
        tokens, wait = float(text(reply[-2])), float(text(reply[-1]))
        by: dict[str, set[str]] = {"k": set(), "g": set(), "d": set()}
        for name, flag in zip(names, flags, strict=True):
            by[flag].add(name)
        return Admission(
            known=frozenset(by["k"]),
            granted=frozenset(by["g"]),
            deferred=frozenset(by["d"]),
            tokens=tokens,
            wait=wait,
        )


def read_status(
    client: redis.Redis, per_minute: float, now: float, sample: int = 5
) -> BudgetStatus:
    """The bucket as it would be now (refilled), the totals and the names waiting."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(BUDGET_KEY)
    pipe.zrange(WAITING_KEY, 0, -1, withscores=True)
    raw, waiting_raw = pipe.execute()
    bucket = {text(k): text(v) for k, v in raw.items()}
    waiting = {text(k): float(v) for k, v in waiting_raw}
    rate, capacity = bucket_shape(per_minute) if math.isfinite(per_minute) else (0.0, per_minute)
    tokens = capacity
    if math.isfinite(per_minute) and "tokens" in bucket:
        at = float(bucket.get("at", now))
        tokens = min(capacity, float(bucket["tokens"]) + max(0.0, now - at) * rate)
    oldest = min(waiting.values()) if waiting else None
    order = sorted(waiting, key=lambda m: waiting[m])
    return BudgetStatus(
        per_minute=per_minute,
        tokens=tokens,
        granted_total=int(bucket.get("granted", 0)),
        deferred_total=int(bucket.get("deferred", 0)),
        waiting=len(waiting),
        oldest_wait=None if oldest is None else max(0.0, now - oldest),
        waiting_sample=tuple(order[:sample]),
    )


def status_lines(status: BudgetStatus) -> list[str]:
    if not status.enabled:
        return ["carbon create budget: off (VISTA_CARBON_MAX_CREATES_PER_MINUTE = inf)"]
    line = (
        f"carbon create budget: {status.per_minute:g}/min, {status.tokens:.1f} token(s) now; "
        f"{status.granted_total} new metric(s) granted, {status.deferred_total} deferral(s)"
    )
    lines = [line]
    if status.waiting:
        oldest = status.oldest_wait or 0.0
        eta = (status.waiting - status.tokens) * 60 / status.per_minute
        lines.append(
            f"  {status.waiting} new metric(s) waiting for a create token (oldest {oldest:.0f}s; "
            f"all created in about {max(0.0, eta):.0f}s): {', '.join(status.waiting_sample)}"
            + (", ..." if status.waiting > len(status.waiting_sample) else "")
        )
    return lines


class BudgetCollector(Collector):
    """``/metrics`` gauges read from Redis at scrape time (agent only): tokens left and the new
    names waiting. The grant/deferral counters are in :mod:`skyline.vista.telemetry`."""

    def __init__(self, client: redis.Redis, per_minute: float) -> None:
        self.client = client
        self.per_minute = per_minute

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not math.isfinite(self.per_minute):
            return
        try:
            status = read_status(self.client, self.per_minute, time.time(), sample=0)
        except redisconn.REDIS_ERRORS:
            return
        yield GaugeMetricFamily(
            "vista_carbon_create_tokens",
            "Create tokens left in the shared carbon create budget",
            value=status.tokens,
        )
        yield GaugeMetricFamily(
            "vista_carbon_creates_waiting",
            "New metric names whose points wait for a carbon create token",
            value=status.waiting,
        )
        yield GaugeMetricFamily(
            "vista_carbon_creates_per_minute",
            "VISTA_CARBON_MAX_CREATES_PER_MINUTE",
            value=status.per_minute,
        )
        if status.oldest_wait is not None:
            yield GaugeMetricFamily(
                "vista_carbon_create_oldest_wait_seconds",
                "How long the longest-waiting new metric has waited for a create token",
                value=status.oldest_wait,
            )
