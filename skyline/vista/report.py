"""Text reports for the CLI: the settings summary, processes, queue counts and metric lag."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from skyline.vista import (
    constants,
    create_budget,
    expand,
    lag,
    membership,
    procutil,
    prune,
    redisconn,
)
from skyline.vista.config import VistaConfig
from skyline.vista.durations import short
from skyline.vista.fetchqueue import FetchQueue, QueueCounts, watermark_keys
from skyline.vista.history import history_path
from skyline.vista.holes import Hole
from skyline.vista.model import Watermark


def config_summary(config: VistaConfig) -> str:
    lines = [f"{config.path}: valid"]
    if not config.enabled:
        lines.append("  VISTA_ENABLED is False: 'vista start' and 'vista run' will refuse to start")
    per_host = Counter((e.remote_host, e.remote_host_type) for e in config.fetch_metrics)
    lines.append(f"  {len(config.fetch_metrics)} metric(s) on {len(per_host)} remote host(s):")
    for (host, kind), count in sorted(per_host.items()):
        lines.append(f"    {host} ({kind}): {count}")
    if config.sink == "flux":
        lines.append(
            f"  sink: Skyline Flux at {config.flux.url} (batches of {config.flux.batch_size})"
        )
    else:
        host, port = config.carbon.address
        lines.append(f"  sink: carbon {config.carbon.protocol} at {host}:{port}")
    lines += budget_summary(config)
    lines.append(f"  redis: {config.redis.describe()}")
    from skyline.vista.history import history_path

    lines.append(f"  history (vista backfill): {history_path(config).description}")
    if config.shards:
        mine, total = len(config.shard_metrics), len(config.fetch_metrics)
        lines.append(f"  shard: {config.hostname} fetches {mine} of the {total} metrics "
                     f"({len(config.shards)} hosts)")  # fmt: skip
    else:
        lines.append(f"  fetch list: shared with the live Vista hosts on this Redis, as "
                     f"{config.hostname!r} (VISTA_MEMBER_TTL {config.member_ttl:g}s)")  # fmt: skip
    lines.append(
        f"  workers: {config.worker_processes}; cycle deadline {config.fetcher_max_runtime:g}s"
    )
    lines.append(f"  log: {config.logfile}; pidfile: {config.pidfile}")
    for name, path in (("LOG_PATH", config.log_path), ("PID_PATH", config.pid_path)):
        if not os.path.isdir(path):
            lines.append(f"  note: {name} {path} does not exist yet; vista start creates it")
    if config.metrics_address:
        host, port = config.metrics_address
        lines.append(f"  /metrics on {host}:{port}")
    if config.bq_accounts:
        lines.append(f"  BigQuery accounts: {', '.join(sorted(config.bq_accounts))}")
    for warning in config.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def budget_summary(config: VistaConfig) -> list[str]:
    """The carbon create budget and the request budgets (check-config)."""
    rate = config.carbon_max_creates_per_minute
    if rate == float("inf"):
        lines = ["  carbon create budget: off (VISTA_CARBON_MAX_CREATES_PER_MINUTE = inf)"]
    else:
        lines = [f"  carbon create budget: {rate:g} new metric names a minute (shared in Redis)"]
    for host, options in sorted(config.remote_hosts.items()):
        if options.requests_per_second:
            burst = options.burst or max(1, math.ceil(options.requests_per_second))
            lines.append(
                f"  request budget {host}: {options.requests_per_second:g}/s, burst {burst} "
                "(shared in Redis, live fetching first)"
            )
    return lines


def process_lines(pid: int) -> list[str]:
    lines = []
    for child in procutil.children_of(pid):
        command = procutil.cmdline(child)
        kind = "worker" if "multiprocessing" in command else "child"
        if "resource_tracker" in command:
            kind = "resource tracker"
        lines.append(f"{kind} pid {child}")
    return lines


def job_lines(client: redis.Redis) -> list[str]:
    """Running jobs with their progress and the number queued, per kind (none: no line)."""
    from skyline.vista.jobs.commands import stores
    from skyline.vista.jobs.display import describe
    from skyline.vista.jobs.record import Status

    lines: list[str] = []
    for store in stores(client):
        records = store.all()
        running = [r for r in records if r.status is Status.RUNNING]
        queued = [r for r in records if r.status is Status.PENDING]
        if not running and not queued:
            continue
        lines.append(f"jobs {store.kind}: {len(running)} running, {len(queued)} queued")
        for r in running + queued[:5]:
            p = r.progress
            done = f"{p.done}/{p.total} ({p.percent:.0f}%)" if p.total else "not started"
            lines.append(
                f"  {r.id} {r.status.value} {done}, {p.points:,} points, {p.errors} error(s)"
                f" - {describe(r)}"
            )
    return lines


@dataclass(frozen=True)
class _Status:
    """What ``vista status`` reads from Redis, in one go (the connection is closed after)."""

    counts: QueueCounts
    agent: bytes | str | None  # this host's agent record (JSON)
    duplicates: dict[str, bytes | str]  # host name -> another agent seen using it (JSON)
    members: tuple[str, ...]
    fetcher_beat: bytes | str | None
    worker_beat: bytes | str | None
    expansions: dict[str, dict[str, float]]  # a template's metric -> its names, last seen
    plain: list[str]  # the metrics that are not templates
    expanded: list[str]  # the names the templates expanded to
    marks: dict[str, Watermark]
    budget: create_budget.BudgetStatus
    lag_summary: lag.LagSummary
    failing: dict[str, list[Hole]]
    configured: dict[str, float]
    jobs: list[str]


def _read_status(config: VistaConfig, client: redis.Redis) -> _Status:
    queue = FetchQueue(client, watermark_keys(config.sink))
    counts = queue.counts()
    agent = client.get(f"{constants.AGENT_KEY_PREFIX}{config.hostname}")
    members = membership.live_members(client)
    duplicates = membership.duplicate_records(client)
    fetcher_beat = client.get(constants.FETCHER_HEARTBEAT_KEY)
    worker_beat = client.get(constants.WORKER_HEARTBEAT_KEY)
    templated = [e.metric for e in config.fetch_metrics if e.name_template is not None]
    expansions = expand.known_sync(client, templated)
    plain = [e.metric for e in config.fetch_metrics if e.name_template is None]
    expanded = sorted({n for found in expansions.values() for n in found})
    return _Status(
        counts=counts,
        agent=agent,
        duplicates=duplicates,
        members=members,
        fetcher_beat=fetcher_beat,
        worker_beat=worker_beat,
        expansions=expansions,
        plain=plain,
        expanded=expanded,
        marks=queue.watermarks(plain + expanded),
        budget=create_budget.read_status(client, config.carbon_max_creates_per_minute, time.time()),
        lag_summary=lag.summarise(lag.read_counts(client, time.time())),
        failing=queue.failing_windows(),
        configured=prune.parse_configured(client.hgetall(constants.CONFIGURED_KEY)),
        jobs=job_lines(client),
    )


def redis_report(config: VistaConfig, worst: int = 10) -> list[str]:
    """Queue counts, heartbeats and the most lagging metrics; one line if Redis is down."""
    client = redisconn.connect(config.redis)
    try:
        status = _read_status(config, client)
    except redisconn.REDIS_ERRORS as exc:
        return [f"redis: error at {config.redis.describe()} ({redisconn.redis_text(exc)})"]
    finally:
        client.close()
    now = time.time()
    lines = _share_lines(config, status.members)
    lines += membership.duplicate_lines(status.duplicates, now)
    lines += _agent_lines(status, now)
    lines += _queue_lines(status.counts)
    lines += create_budget.status_lines(status.budget)
    lines.append(lag.status_line(status.lag_summary))
    lines += failing_window_lines(status.failing, now)
    if config.prune_removed_after > 0:
        names = [e.metric for e in config.fetch_metrics] + status.expanded
        removals = prune.pending_removal(status.configured, names, now, config.prune_removed_after)
        lines += prune.removal_lines(removals, now)
    lines += status.jobs
    lines += expansion_lines(config, status.expansions, now)
    lines += _lag_lines(status.plain + status.expanded, status.marks, now, worst)
    return lines


def _share_lines(config: VistaConfig, members: tuple[str, ...]) -> list[str]:
    if config.shards:
        return [f"fetch list: VISTA_SHARDS, this host {config.hostname}"]
    mine = len(membership.owned(config.fetch_metrics, members, config.hostname))
    return [
        f"live Vista hosts: {', '.join(members) or 'none'}; this host ({config.hostname}) "
        f"fetches {mine} of {len(config.fetch_metrics)} metric(s)"
    ]


def _agent_lines(status: _Status, now: float) -> list[str]:
    """The agent's fetcher thread and workers, and the two heartbeats."""
    lines = []
    if status.agent:
        record = json.loads(status.agent)
        alive = "alive" if record.get("fetcher") else "NOT RUNNING"
        lines.append(f"fetcher thread: {alive}")
        for w in record.get("workers", []):
            lines.append(f"worker {w['index']}: pid {w['pid']} ({w['wid']})")
    for name, beat in (("fetcher", status.fetcher_beat), ("worker", status.worker_beat)):
        text = f"{short(now - int(beat))} ago" if beat else "missing (thunder would alert)"
        lines.append(f"heartbeat vista.{name}: {text}")
    return lines


def _queue_lines(counts: QueueCounts) -> list[str]:
    lines = [
        f"queue: {counts.queued} queued, {counts.inflight} in flight, {counts.dead} dead-lettered, "
        f"{counts.pending_metrics} metric(s) pending"
    ]
    for wid, n in sorted(counts.inflight_by_worker.items()):
        lines.append(f"  in flight at {wid}: {n}")
    return lines


def _lag_lines(
    metrics: list[str], marks: Mapping[str, Watermark], now: float, worst: int
) -> list[str]:
    """The ``worst`` metrics by lag (now - last delivered point), never delivered first."""
    lags = []
    for metric in metrics:
        mark = marks.get(metric)
        lags.append((float("inf") if mark is None else now - mark.timestamp, metric, mark))
    lags.sort(key=lambda x: -x[0])
    if not lags:
        return []
    lines = [f"lag (now - last delivered point), worst {min(worst, len(lags))} of {len(lags)}:"]
    for metric_lag, metric, mark in lags[:worst]:
        shown = "never delivered" if mark is None else short(metric_lag)
        lines.append(f"  {shown:>16}  {metric}")
    return lines


def failing_window_lines(failing: Mapping[str, list[Hole]], now: float) -> list[str]:
    """Windows that failed while newer points were delivered, retried with backoff."""
    found = sorted((h.start, metric, h) for metric, hs in failing.items() for h in hs)
    if not found:
        return []
    lines = [f"failing windows (retried, newer points delivered): {len(found)}"]
    for _, metric, hole in found:
        wait = max(0.0, hole.next_try - now)
        lines.append(
            f"  {metric}  {_utc(hole.start)} .. {_utc(hole.end)}  {hole.attempts} attempt(s), "
            f"failing for {short(now - hole.since)}, next try in {short(wait)}: {hole.error}"
        )
    return lines


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z"


def expansion_lines(
    config: VistaConfig, expansions: dict[str, dict[str, float]], now: float, show: int = 20
) -> list[str]:
    """The metrics each templated entry (one query -> many metrics) has made."""
    lines = []
    for entry in config.fetch_metrics:
        if entry.name_template is None:
            continue
        found = expansions.get(entry.metric, {})
        stale = [n for n in found if now - found[n] > expand.STALE_AFTER]
        head = f"{entry.describe()}: {len(found)} series"
        if stale:
            head += f" ({len(stale)} not seen for over {expand.STALE_AFTER // 60} min)"
        lines.append(head + (":" if found else " yet"))
        for name in sorted(found)[:show]:
            lines.append(f"  {name}  (last seen {short(max(0.0, now - found[name]))} ago)")
        if len(found) > show:
            lines.append(f"  ... and {len(found) - show} more")
    return lines


def queue_command(config: VistaConfig, action: str, ids: list[str]) -> int:
    client = redisconn.connect(config.redis)
    try:
        queue = FetchQueue(client, watermark_keys(config.sink))
        if action == "requeue-dead":
            moved = queue.requeue_dead(ids)
            print(f"requeued {moved} dead-lettered item(s)")
            if moved:
                # Their points are usually below the watermark now: the live sink could
                # discard them, so workers deliver them by the history path.
                print(f"their points go {history_path(config).description}")
            return constants.EXIT_OK
        if action == "dead":
            letters = queue.dead_letters()
            print(f"{len(letters)} dead-lettered item(s)")
            for letter in letters:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.dead_at))
                print(f"  {letter.id}  {when}Z  {letter.metric or '?'}  {letter.reason}")
            return constants.EXIT_OK
        counts = queue.counts()
        print(f"queued:      {counts.queued}")
        print(f"in flight:   {counts.inflight}")
        for wid, n in sorted(counts.inflight_by_worker.items()):
            print(f"  {wid}: {n}")
        print(f"dead:        {counts.dead}")
        print(f"pending metrics: {counts.pending_metrics}")
        return constants.EXIT_OK
    except redisconn.REDIS_ERRORS as exc:
        print(f"redis error at {config.redis.describe()}: {redisconn.redis_text(exc)}")
        return constants.EXIT_FAILURE
    finally:
        client.close()
