"""Adding BigQuery jobs (CLI and scheduler): records under Skyline's keys and parameter names,
never a credential, and no second job for an account and range already pending or running."""

from __future__ import annotations

import time
from typing import Any

import redis

from skyline.vista.jobs.record import JobRecord, new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore

BACKFILL = "bq_backfill"
UPDATE = "bq_update"


def store(client: redis.Redis, kind_name: str) -> JobStore:
    k = kind(kind_name)
    return JobStore(client, k.name, k.keys)


def _same(record: JobRecord, params: dict[str, Any]) -> bool:
    p = record.params
    return (
        str(p.get("vista_bq_account_key")) == params["vista_bq_account_key"]
        and _num(p.get("from_timestamp")) == _num(params.get("from_timestamp"))
        and _num(p.get("until_timestamp")) == _num(params.get("until_timestamp"))
        and bool(p.get("dry_run")) == bool(params.get("dry_run"))
    )


def _num(value: object) -> int | None:
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def active_duplicate(jobs: JobStore, params: dict[str, Any]) -> JobRecord | None:
    """A pending or running job of the same account and range, if there is one."""
    for record in jobs.all():
        if not record.status.finished and _same(record, params):
            return record
    return None


def submit(
    client: redis.Redis,
    kind_name: str,
    account: str,
    from_ts: int | None,
    until_ts: int | None,
    *,
    added_by: str = "vista",
    now: float | None = None,
    **options: Any,
) -> tuple[JobRecord, bool]:
    """Add a job; returns (the job, True) or (the job already pending/running, False)."""
    params: dict[str, Any] = {
        "vista_bq_account_key": account,
        "from_timestamp": from_ts,
        "until_timestamp": until_ts,
        "added_by": added_by,
        **{k: v for k, v in options.items() if v is not None},
    }
    jobs = store(client, kind_name)
    existing = active_duplicate(jobs, params)
    if existing is not None:
        return existing, False
    record = new_job(kind_name, params, now=time.time() if now is None else now)
    return jobs.submit(record), True
