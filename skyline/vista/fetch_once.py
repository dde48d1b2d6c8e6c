"""``vista fetch --once [--dry-run]``: one cycle in the foreground, printed per metric.

Every configured metric is fetched (the schedule is ignored); a metric whose earlier item is
still queued is shown but not queued again. With ``--dry-run`` nothing is written to Redis
(watermarks are still read when Redis answers, so the window is the daemon's).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence

import redis.exceptions

from skyline.vista import constants, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.cycle_setup import Recorded, metric_states, new_cycle, read_recorded
from skyline.vista.fetch_cycle import CycleReport, MetricResult
from skyline.vista.fetchqueue import AsyncFetchQueue, watermark_keys
from skyline.vista.sources.http import new_session

logger = logging.getLogger(__name__)


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def series_lines(result: MetricResult) -> list[str]:
    """A templated entry's series (one metric each) and their queue items."""
    if not result.seen:
        return []
    counts = {name: len(items) for name, items in result.chains}
    lines = [f"    {len(result.seen)} series:"]
    for name in result.seen:
        note = " (new: pre-populated next cycle)" if name in result.held_new else ""
        lines.append(f"      {name}: {counts.get(name, 0)} queue item(s){note}")
    return lines


def describe(result: MetricResult) -> str:
    entry = result.entry
    head = f"{entry.metric}  [{entry.remote_host_type} {entry.host}]"
    if result.skipped == "pending":
        return f"{head}\n    skipped: an earlier item is still queued or in flight"
    if result.skipped:
        return f"{head}\n    skipped: {result.skipped}"
    if not result.done:
        return f"{head}\n    not finished within the cycle deadline"
    lines = [head]
    if result.error is not None:
        lines.append(f"    ERROR ({result.error.kind}): {result.error}")
    lines += series_lines(result)
    if result.points and result.seen:
        lines.append(f"    {len(result.points)} new point(s) in all")
    elif result.points:
        first, last = result.points[0][0], result.points[-1][0]
        lines.append(
            f"    {len(result.points)} new point(s) {_when(first)} .. {_when(last)} "
            f"(last value {result.points[-1][1]!r}); {len(result.items)} queue item(s)"
        )
    elif result.error is None:
        lines.append("    no new points")
    for hole in result.new_holes:
        lines.append(
            f"    window {_when(hole.start)} .. {_when(hole.end)} failed; newer points queued, "
            "it is retried on later cycles"
        )
    if result.refilled:
        lines.append(f"    {result.refilled} point(s) of earlier failed windows fetched again")
    for hole in result.given_up:
        lines.append(f"    GAVE UP window {_when(hole.start)} .. {_when(hole.end)}: {hole.error}")
    dropped = result.dropped.as_dict()
    if dropped:
        lines.append("    dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    mark = "none (never delivered)" if result.watermark is None else _when(result.watermark)
    lines.append(f"    watermark: {mark}; {result.requests} request(s)")
    return "\n".join(lines)


async def _run(config: VistaConfig, dry_run: bool, metrics: Sequence[str]) -> CycleReport:
    entries = [e for e in config.fetch_metrics if not metrics or e.metric in metrics]
    client = redisconn.connect_async(config.redis)
    queue = AsyncFetchQueue(client, watermark_keys(config.sink))
    try:
        recorded = await read_recorded(queue, entries, time.time())
    except redis.exceptions.RedisError as exc:  # unreachable, or e.g. WRONGTYPE
        if not dry_run:
            await client.aclose()
            raise
        print(
            f"(redis: {exc}; fetching as if nothing was ever delivered)",
            file=sys.stderr,
        )
        recorded = Recorded()
    if dry_run:
        recorded.pending = set()  # fetched even while queued: nothing is written
    states = metric_states(entries, recorded)
    try:
        async with new_session() as session:
            cycle = new_cycle(config, session, None if dry_run else queue, recorded)
            if not dry_run:
                await client.set(
                    constants.FETCHER_HEARTBEAT_KEY, int(time.time()), ex=constants.HEARTBEAT_TTL
                )
            return await cycle.run(entries, states=states)
    finally:
        await client.aclose()


def fetch_once(config: VistaConfig, *, dry_run: bool, metrics: Sequence[str] = ()) -> int:
    unknown = set(metrics) - {e.metric for e in config.fetch_metrics}
    if unknown:
        print(
            f"vista fetch: no such metric(s) in the settings: {', '.join(sorted(unknown))}",
            file=sys.stderr,
        )
        return constants.EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = asyncio.run(_run(config, dry_run, metrics))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        print(
            f"vista fetch: Redis unreachable ({exc}); use --dry-run to fetch without it",
            file=sys.stderr,
        )
        return constants.EXIT_FAILURE
    except redisconn.REDIS_ERRORS as exc:  # OOM, MISCONF, WRONGTYPE (a key replaced), ...
        print(f"vista fetch: Redis refused a command: {redisconn.redis_text(exc)}", file=sys.stderr)
        return constants.EXIT_FAILURE
    for result in report.results:
        print(describe(result))
    points = sum(len(r.points) for r in report.results)
    verb = "would queue" if dry_run else "queued"
    print(
        f"\n{len(report.results)} metric(s), {len(report.errors)} error(s), {points} point(s) "
        f"{verb} in {report.duration:.2f}s" + (" (dry run: nothing written)" if dry_run else "")
    )
    return constants.EXIT_FAILURE if report.errors else constants.EXIT_OK
