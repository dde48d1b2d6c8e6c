"""``vista jobs`` (every kind, with progress) and ``vista jobs cancel JOB``; also the
submit-and-wait step that job-adding commands (``vista backfill``, ``vista bq``) share."""

from __future__ import annotations

import sys
from typing import TextIO

import redis

from skyline.vista import constants, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.jobs import display
from skyline.vista.jobs.record import JobRecord, Status
from skyline.vista.jobs.registry import KINDS, JobKind
from skyline.vista.jobs.store import JobStore


def stores(client: redis.Redis, kinds: tuple[JobKind, ...] = KINDS) -> list[JobStore]:
    return [JobStore(client, k.name, k.keys) for k in kinds]


def find(client: redis.Redis, job_id: str, kinds: tuple[JobKind, ...] = KINDS) -> JobStore | None:
    """The store of the kind that knows ``job_id``."""
    for store in stores(client, kinds):
        if store.get(job_id) is not None:
            return store
    return None


def list_jobs(
    client: redis.Redis,
    out: TextIO = sys.stdout,
    kinds: tuple[JobKind, ...] = KINDS,
    kind: str | None = None,
) -> int:
    records: list[JobRecord] = []
    for store in stores(client, kinds):
        if kind is None or store.kind == kind:
            records += store.all()
    records.sort(key=lambda r: (r.created, r.id))
    if not records:
        print("no jobs", file=out)
        return constants.EXIT_OK
    for line in display.table(records):
        print(line, file=out)
    return constants.EXIT_OK


def cancel(
    client: redis.Redis, job_id: str, out: TextIO = sys.stdout, kinds: tuple[JobKind, ...] = KINDS
) -> int:
    store = find(client, job_id, kinds)
    if store is None:
        print(f"no job {job_id}", file=out)
        return constants.EXIT_FAILURE
    result = store.cancel(job_id)
    messages = {
        "cancelled": f"job {job_id} cancelled (it had not started)",
        "requested": f"job {job_id}: cancel requested; it stops after its current chunk",
        "finished": f"job {job_id} has already finished",
    }
    print(messages.get(result, f"job {job_id}: {result}"), file=out)
    return constants.EXIT_OK if result != "unknown" else constants.EXIT_FAILURE


def wait_exit_code(record: JobRecord | None) -> int:
    if record is None:
        return constants.EXIT_FAILURE
    return constants.EXIT_OK if record.status is Status.DONE else constants.EXIT_FAILURE


def jobs_command(config: VistaConfig, action: str, job_id: str | None, kind: str | None) -> int:
    client = redisconn.connect(config.redis)
    try:
        if action == "cancel":
            if not job_id:
                print("vista jobs cancel: which job? (vista jobs lists them)", file=sys.stderr)
                return constants.EXIT_USAGE
            return cancel(client, job_id)
        if action == "wait":
            if not job_id:
                print("vista jobs wait: which job?", file=sys.stderr)
                return constants.EXIT_USAGE
            store = find(client, job_id)
            if store is None:
                print(f"no job {job_id}", file=sys.stderr)
                return constants.EXIT_FAILURE
            return wait_exit_code(display.wait(store, job_id))
        return list_jobs(client, kind=kind)
    except redisconn.REDIS_ERRORS as exc:
        print(f"vista: Redis at {config.redis.describe()} is unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    finally:
        client.close()
