"""``vista backfill ...`` and ``vista backfill cancel JOB``: add a history job (or show its plan
with ``--dry-run``), and follow it with ``--wait``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import redis

from skyline.vista import constants, expand, redisconn
from skyline.vista.backfill import (
    KIND,
    BackfillParams,
    BackfillRequest,
    chunks_of,
    resolve,
)
from skyline.vista.backfill_plan import BackfillMetric
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import read_watermarks_sync, watermark_keys
from skyline.vista.history import history_carbon, history_path
from skyline.vista.jobs import commands, display
from skyline.vista.jobs.record import new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def describe_plan(config: VistaConfig, params: BackfillParams, out: TextIO) -> None:
    chunks = chunks_of(config, params)
    points = sum(c.expected_points() for c in chunks)
    sources = sorted({m.source for m in params.metrics})
    print(
        f"{len(params.metrics)} metric(s) ({', '.join(sources)}), from {_utc(params.start)} to "
        f"{_utc(params.until)} UTC: {len(chunks):,} chunk(s) (one request each), "
        f"up to {points:,} points",
        file=out,
    )
    print(f"history goes {history_path(config).description}", file=out)
    for m in params.metrics:
        if m.template is not None:
            print(
                describe_template(config, m, len([c for c in chunks if m in c.metrics])), file=out
            )
    clamped = [m for m in params.metrics if m.until < params.until and m.template is None]
    if clamped:
        print(
            f"{len(clamped)} metric(s) stop at their watermark (newer points are the live "
            "fetcher's)",
            file=out,
        )


def describe_template(config: VistaConfig, m: BackfillMetric, windows: int) -> str:
    """What a templated entry's part of the job asks for, and which names it delivers."""
    assert m.template is not None
    entry = next((e for e in config.fetch_metrics if e.metric == m.metric), None)
    query = entry.remote_target if entry is not None else "?"
    asks = (
        f"{windows} Prometheus query_range request(s) of {query!r} at step {m.step}s"
        if m.source == "prometheus"
        else f"{windows} Graphite render request(s) of {query!r}"
    )
    names = m.template.known()
    shown = ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")
    which = (
        f"only the series named {' or '.join(m.template.patterns)}"
        if m.template.patterns
        else "every series of the answer"
    )
    return (
        f"{m.metric}: {asks}, {which}, each by the template; names known so far: "
        f"{shown or 'none'} (each stops at its watermark)"
    )


def backfill_command(
    config: VistaConfig,
    request: BackfillRequest,
    *,
    dry_run: bool,
    wait: bool,
    out: TextIO = sys.stdout,
) -> int:
    path = history_path(config)
    if path.kind == "carbon-beside-flux" and not history_carbon(config).host:
        print(
            "vista backfill: FLUX_CHECK_LAST_TIMESTAMP is False and no carbon is set "
            "(FLUX_CARBON_HOST or CARBON_HOST): history would be dropped by Flux",
            file=sys.stderr,
        )
        return constants.EXIT_FAILURE
    client = redisconn.connect(config.redis)
    try:
        return _submit(config, client, request, dry_run=dry_run, wait=wait, out=out)
    except redisconn.REDIS_ERRORS as exc:
        print(f"vista: Redis at {config.redis.describe()} is unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    finally:
        client.close()


def _submit(
    config: VistaConfig,
    client: redis.Redis,
    request: BackfillRequest,
    *,
    dry_run: bool,
    wait: bool,
    out: TextIO,
) -> int:
    now = time.time()
    templated = [e.metric for e in config.fetch_metrics if e.name_template is not None]
    expanded = {m: sorted(names) for m, names in expand.known_sync(client, templated).items()}
    names = [e.metric for e in config.fetch_metrics] + [n for ns in expanded.values() for n in ns]
    marks = read_watermarks_sync(client, names, watermark_keys(config.sink))
    watermarks = {m: w.timestamp for m, w in marks.items()}
    params = resolve(config, request, watermarks, now, expanded)
    if isinstance(params, str):
        print(f"vista backfill: {params}", file=sys.stderr)
        return constants.EXIT_FAILURE
    describe_plan(config, params, out)
    if dry_run:
        print("dry run: no job added", file=out)
        return constants.EXIT_OK
    job_kind = kind(KIND)
    store = JobStore(client, job_kind.name, job_kind.keys)
    record = store.submit(new_job(KIND, params.as_json(), now))
    print(
        f"job {record.id} added; `vista jobs` lists it, `vista backfill cancel {record.id}` "
        "cancels it",
        file=out,
        flush=True,
    )
    if not wait:
        return constants.EXIT_OK
    return commands.wait_exit_code(display.wait(store, record.id, out))


def cancel_command(config: VistaConfig, job_id: str) -> int:
    client = redisconn.connect(config.redis)
    try:
        return commands.cancel(client, job_id, kinds=(kind(KIND),))
    except redisconn.REDIS_ERRORS as exc:
        print(f"vista: Redis at {config.redis.describe()} is unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    finally:
        client.close()
