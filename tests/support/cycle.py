"""Running one :class:`FetchCycle` with a fixed clock, and reading back what it queued.

report = await run_cycle(cfg, now, watermarks, seen=requests)   # into cfg's Redis
items = queued_chain(client, "gw.single")                       # head, then its chain
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import aiohttp
import redis

from skyline.vista import codec, constants, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.fetch_cycle import CycleReport, FetchCycle, MetricResult
from skyline.vista.fetchqueue import AsyncFetchQueue
from skyline.vista.model import Point, QueueItem


@dataclass
class Requests:
    """The URLs the cycle asked for, in order."""

    urls: list[str] = field(default_factory=list)

    def targets(self) -> list[list[str]]:
        return [parse_qs(urlsplit(u).query)["target"] for u in self.urls]

    def params(self, n: int) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.urls[n]).query)


@asynccontextmanager
async def traced_session(seen: Requests) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that records every request's URL in ``seen``."""
    trace = aiohttp.TraceConfig()

    async def on_start(
        session: aiohttp.ClientSession,
        context: object,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        seen.urls.append(str(params.url))

    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session


@asynccontextmanager
async def fetch_queue(cfg: VistaConfig) -> AsyncIterator[AsyncFetchQueue]:
    """The fetch queue on ``cfg``'s Redis, closed after the block."""
    client = redisconn.connect_async(cfg.redis)
    try:
        yield AsyncFetchQueue(client)
    finally:
        await client.aclose()


async def run_cycle(
    cfg: VistaConfig,
    now: float,
    watermarks: dict[str, int] | None = None,
    *,
    queue: AsyncFetchQueue | None = None,
    seen: Requests | None = None,
) -> CycleReport:
    """One cycle over every configured metric with the clock fixed at ``now``, queuing through
    ``queue`` (None: a dry run that writes nothing); the URLs asked for go to ``seen``."""
    async with traced_session(seen or Requests()) as session:
        cycle = FetchCycle(cfg, session, {}, queue=queue, clock=lambda: now)
        return await cycle.run(cfg.fetch_metrics, watermarks or {}, set())


async def cycle_into_redis(
    cfg: VistaConfig,
    now: float,
    watermarks: dict[str, int] | None = None,
    *,
    seen: Requests | None = None,
) -> CycleReport:
    """:func:`run_cycle` queuing into ``cfg``'s Redis."""
    async with fetch_queue(cfg) as queue:
        return await run_cycle(cfg, now, watermarks, queue=queue, seen=seen)


def queued_chain(client: redis.Redis, metric: str) -> list[QueueItem]:
    """The metric's items in delivery order: the queued head, then its chain list."""
    head = client.hget(constants.PENDING_KEY, metric)
    assert isinstance(head, bytes), f"{metric} has no pending item"
    assert client.sismember(constants.QUEUE_KEY, head.decode())
    rest = client.lrange(constants.CHAIN_KEY_PREFIX + metric, 0, -1)
    return [codec.decode_item(raw) for raw in [head, *rest]]


def queued_points(client: redis.Redis, metric: str) -> list[Point]:
    return [p for item in queued_chain(client, metric) for p in item.points]


def queued_metrics(client: redis.Redis) -> set[str]:
    return {codec.decode_item(raw).metric for raw in client.smembers(constants.QUEUE_KEY)}


def by_metric(report: CycleReport) -> dict[str, MetricResult]:
    return {r.metric: r for r in report.results}
