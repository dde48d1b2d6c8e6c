"""The job record: what a job is, how far it got and where it resumes.

Records are stored as JSON (never a secret: ``params`` hold what the job needs to find its
credentials in the settings, not the credentials). :func:`decode` also reads the Python-literal
dicts that Skyline's webapp writes (``str(dict)``: ``job_id``, ``status`` 'pending' |
'processing' | 'complete' | 'failed', everything else a parameter), so a job added by Skyline
is run like one added by ``vista``.
"""

from __future__ import annotations

import ast
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from skyline.vista import constants
from skyline.vista.errors import PayloadError


@dataclass(frozen=True)
class JobKeys:
    """A job kind's Redis keys (see :mod:`skyline.vista.jobs.store`): the pending work hash,
    the status hash and the prefix of the running markers."""

    work: str
    status: str
    running: str

    @classmethod
    def of_kind(cls, kind: str) -> JobKeys:
        """The keys of a kind of this package (``vista.<kind>.*``, constants.py)."""
        return cls(
            constants.JOB_WORK_KEY.format(kind=kind),
            constants.JOB_STATUS_KEY.format(kind=kind),
            constants.JOB_RUNNING_KEY.format(kind=kind),
        )

    def marker(self, job_id: str) -> str:
        return f"{self.running}.{job_id}"


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELLED)


_SKYLINE_STATUS = {
    "pending": Status.PENDING,
    "processing": Status.RUNNING,
    "running": Status.RUNNING,
    "complete": Status.DONE,
    "completed": Status.DONE,
    "done": Status.DONE,
    "failed": Status.FAILED,
    "cancelled": Status.CANCELLED,
}


@dataclass(frozen=True)
class Progress:
    """How far a job got. ``units`` are the kind's steps (chunks, intervals)."""

    done: int = 0
    total: int = 0
    points: int = 0
    errors: int = 0
    message: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.PENDING
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    progress: Progress = field(default_factory=Progress)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    """Kind-specific: where to resume (e.g. the last finished chunk)."""
    owner: str = ""
    """host:pid of the job process while running."""
    attempts: int = 0
    """Times the job was started (a job process that died counts)."""
    error: str = ""

    def with_(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


def new_job(kind: str, params: dict[str, Any], now: float | None = None) -> JobRecord:
    return JobRecord(
        id=uuid.uuid4().hex[:16],
        kind=kind,
        params=params,
        created=time.time() if now is None else now,
    )


def encode(record: JobRecord) -> str:
    data = asdict(record)
    data["status"] = record.status.value
    data["v"] = 1
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode(raw: str | bytes, kind: str, job_id: str = "") -> JobRecord:
    """A record from JSON (ours) or a Python-literal dict (Skyline's webapp)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise PayloadError(f"job record {job_id or '?'} is neither JSON nor a dict") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"job record {job_id or '?'} is not a dict")
    if data.get("v") == 1:
        return _ours(data)
    return _skyline(data, kind, job_id)


def _ours(data: dict[str, Any]) -> JobRecord:
    try:
        return JobRecord(
            id=str(data["id"]),
            kind=str(data["kind"]),
            params=dict(data.get("params") or {}),
            status=Status(data.get("status", "pending")),
            created=float(data.get("created") or 0.0),
            started=data.get("started"),
            finished=data.get("finished"),
            progress=Progress(**(data.get("progress") or {})),
            checkpoint=dict(data.get("checkpoint") or {}),
            owner=str(data.get("owner") or ""),
            attempts=int(data.get("attempts") or 0),
            error=str(data.get("error") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"bad job record: {exc}") from exc


SKYLINE_SECRET_PARAMS = frozenset(
    ("oauth_credentials", "service_credentials", "flux_api_token", "flux_token", "password")
)
"""Keys Skyline's webapp copies into a job (bq_update copies the whole BigQuery account): they
are dropped on reading, so that the record Vista writes back never holds them (the job looks
its account up in the settings by name)."""


def _skyline(data: dict[str, Any], kind: str, job_id: str) -> JobRecord:
    """Skyline's webapp record: every key is a parameter (but secrets: SKYLINE_SECRET_PARAMS);
    job_id and status are read."""
    status = _SKYLINE_STATUS.get(str(data.get("status", "pending")).lower(), Status.PENDING)
    created = data.get("created") or data.get("added_at") or 0.0
    try:
        created = float(created)
    except (TypeError, ValueError):
        created = 0.0
    percent = data.get("percent_complete") or 0
    try:
        progress = Progress(done=int(float(percent)), total=100 if percent else 0)
    except (TypeError, ValueError):
        progress = Progress()
    return JobRecord(
        id=str(data.get("job_id") or job_id),
        kind=kind,
        params={k: v for k, v in data.items() if k not in SKYLINE_SECRET_PARAMS},
        status=status,
        created=created,
        progress=progress,
    )
