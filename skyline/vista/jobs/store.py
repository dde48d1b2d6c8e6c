"""Job records in Redis, under the keys of their kind.

For a kind with keys ``work``, ``status`` and ``running`` (e.g. ``vista.backfill.work``,
``vista.backfill.job_status``, ``vista.backfill.running``):

* ``work`` (hash id → record): the jobs waiting to run. Skyline's webapp writes its
  BigQuery jobs here as Python-literal dicts; :mod:`skyline.vista.jobs.record` reads both.
* ``status`` (hash id → record): every job's current record, pending to finished, with its
  progress and checkpoint. Finished records are pruned (:meth:`JobStore.prune`).
* ``<running>.<id>`` (string, TTL :data:`MARKER_TTL`): the job is held by the process whose
  claim token is the value. The job process renews it every :data:`HEARTBEAT_EVERY` seconds;
  if it is missing while the record says pending or running and the job is not in ``work``,
  the job was orphaned (its agent was SIGKILLed) and any supervisor puts it back.
* ``vista.jobs.cancel`` (set of ids): cancel requests for running jobs.

Every transition that must not race (claim, write by the holder, give back, cancel, orphan
recovery) is one Lua script; writes by a job process carry its claim token and are refused once
the job is no longer its own, so a job never runs twice at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import redis

from skyline.vista import constants
from skyline.vista.errors import PayloadError
from skyline.vista.jobs.record import JobKeys, JobRecord, Status, decode, encode
from skyline.vista.redisconn import text

logger = logging.getLogger(__name__)

MARKER_TTL = 30
"""Seconds a job's running marker lives without a heartbeat."""
HEARTBEAT_EVERY = 1.0
"""The job process renews its marker and looks for a cancel request this often."""
KEEP_FINISHED = 200
"""Finished records kept per kind (newest first); older ones are pruned."""
KEEP_FINISHED_SECONDS = 30 * 86400
"""Finished records older than this are pruned whatever their number."""
MAX_ATTEMPTS = 5
"""A job whose process died this many times is marked failed instead of being run again."""


# KEYS: work, marker. ARGV: id, token, ttl. Returns the raw record or nil.
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return raw
"""

# KEYS: status, marker. ARGV: id, token, record, ttl (0 = do not renew). 1 if still ours.
_UPDATE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
return 1
"""

# KEYS: status, marker, cancel, work. ARGV: id, token, record, requeue (1/0). 1 if it was ours.
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[3]) end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: work, status, marker. ARGV: id, record. 1 if the orphan was put back.
_REQUEUE_ORPHAN = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: work, status, cancel. ARGV: id, cancelled record. 'cancelled' or 'requested'.
_CANCEL = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 'cancelled'
end
redis.call('SADD', KEYS[3], ARGV[1])
return 'requested'
"""


class JobStore:
    """The jobs of one kind."""

    def __init__(self, client: redis.Redis, kind: str, keys: JobKeys) -> None:
        self.client = client
        self.kind = kind
        self.keys = keys
        self._claim = client.register_script(_CLAIM)
        self._update = client.register_script(_UPDATE)
        self._release = client.register_script(_RELEASE)
        self._requeue = client.register_script(_REQUEUE_ORPHAN)
        self._cancel = client.register_script(_CANCEL)

    # --- submitting and reading --------------------------------------------------------------

    def submit(self, record: JobRecord) -> JobRecord:
        raw = encode(record)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.status, record.id, raw)
        pipe.hset(self.keys.work, record.id, raw)
        pipe.execute()
        return record

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.client.hget(self.keys.status, job_id)
        if raw is None:
            raw = self.client.hget(self.keys.work, job_id)
        if raw is None:
            return None
        return decode(raw, self.kind, job_id)

    def all(self) -> list[JobRecord]:
        """Every known job of this kind, oldest first (undecodable records are logged)."""
        found: dict[str, JobRecord] = {}
        for key in (self.keys.work, self.keys.status):  # status wins: it is the newer
            for job_id, raw in self._records(key):
                found[job_id] = raw
        return sorted(found.values(), key=lambda r: (r.created, r.id))

    def _records(self, key: str) -> Iterator[tuple[str, JobRecord]]:
        for raw_id, raw in self.client.hgetall(key).items():
            job_id = text(raw_id)
            try:
                yield job_id, decode(raw, self.kind, job_id)
            except PayloadError as exc:
                logger.warning("%s: skipping job %s: %s", key, job_id, exc)

    def pending(self) -> list[JobRecord]:
        """The jobs waiting in ``work``, oldest first."""
        jobs = [record for _, record in self._records(self.keys.work)]
        return sorted(jobs, key=lambda r: (r.created, r.id))

    def held(self, job_id: str) -> bool:
        return bool(self.client.exists(self.keys.marker(job_id)))

    # --- the supervisor's side ---------------------------------------------------------------

    def claim(self, now: float | None = None) -> tuple[JobRecord, str] | None:
        """Take the oldest pending job atomically: (its running record, the claim token)."""
        for candidate in self.pending():
            token = uuid.uuid4().hex
            raw = self._claim(
                keys=[self.keys.work, self.keys.marker(candidate.id)],
                args=[candidate.id, token, MARKER_TTL],
            )
            if raw is None:
                continue  # another supervisor took it first
            try:
                record = decode(raw, self.kind, candidate.id)
            except PayloadError:
                record = candidate
            latest = self.get(record.id)
            if latest is not None and latest.checkpoint and not record.checkpoint:
                record = record.with_(checkpoint=latest.checkpoint, progress=latest.progress)
            running = record.with_(
                status=Status.RUNNING,
                started=record.started or (time.time() if now is None else now),
                owner=token,
                attempts=record.attempts + 1,
                error="",
            )
            self.update(running, token)
            return running, token
        return None

    def give_back(self, job_id: str, token: str, reason: str) -> JobRecord | None:
        """The holder's process is gone: put the job back to pending with its checkpoint, or
        mark it failed after MAX_ATTEMPTS. Returns the new record, or None if not held."""
        record = self.get(job_id)
        if record is None or record.status.finished:
            self.client.delete(self.keys.marker(job_id))
            return None
        if record.attempts >= MAX_ATTEMPTS:
            failed = record.with_(
                status=Status.FAILED,
                finished=time.time(),
                owner="",
                error=f"{reason}; given up after {record.attempts} attempt(s)",
            )
            return failed if self.release(failed, token, requeue=False) else None
        pending = record.with_(status=Status.PENDING, owner="", error=reason)
        return pending if self.release(pending, token, requeue=True) else None

    def recover_orphans(self) -> list[str]:
        """Put back the jobs whose holder vanished without a trace (its marker expired)."""
        recovered = []
        work = {text(k) for k in self.client.hkeys(self.keys.work)}
        for job_id, record in self._records(self.keys.status):
            if record.status.finished or job_id in work or self.held(job_id):
                continue
            pending = record.with_(status=Status.PENDING, owner="", error="orphaned")
            done = self._requeue(
                keys=[self.keys.work, self.keys.status, self.keys.marker(job_id)],
                args=[job_id, encode(pending)],
            )
            if done:
                recovered.append(job_id)
        return recovered

    # --- the job process's side ---------------------------------------------------------------

    def update(self, record: JobRecord, token: str, *, renew: bool = True) -> bool:
        """Write the holder's record (progress, checkpoint) and renew its marker; False when
        the job is no longer held by ``token`` (nothing is written then)."""
        return bool(
            self._update(
                keys=[self.keys.status, self.keys.marker(record.id)],
                args=[record.id, token, encode(record), MARKER_TTL if renew else 0],
            )
        )

    def heartbeat(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Renew the marker. Returns (still held, cancel requested)."""
        pipe = self.client.pipeline(transaction=False)
        self._update(
            keys=[self.keys.status, self.keys.marker(job_id)],
            args=[job_id, token, "", MARKER_TTL],
            client=pipe,
        )
        pipe.sismember(constants.JOBS_CANCEL_KEY, job_id)
        held, cancel = pipe.execute()
        return bool(held), bool(cancel)

    def release(self, record: JobRecord, token: str, *, requeue: bool) -> bool:
        """Write the final (or pending, with ``requeue``) record and drop the marker."""
        return bool(
            self._release(
                keys=[
                    self.keys.status,
                    self.keys.marker(record.id),
                    constants.JOBS_CANCEL_KEY,
                    self.keys.work,
                ],
                args=[record.id, token, encode(record), "1" if requeue else "0"],
            )
        )

    # --- cancel and pruning -------------------------------------------------------------------

    def cancel(self, job_id: str) -> str:
        """'cancelled' (it was pending), 'requested' (the running job stops between units),
        'finished' (nothing to do) or 'unknown'."""
        record = self.get(job_id)
        if record is None:
            return "unknown"
        if record.status.finished:
            return "finished"
        cancelled = record.with_(status=Status.CANCELLED, finished=time.time(), owner="")
        result = self._cancel(
            keys=[self.keys.work, self.keys.status, constants.JOBS_CANCEL_KEY],
            args=[job_id, encode(cancelled)],
        )
        return text(result)

    def prune(
        self,
        keep: int = KEEP_FINISHED,
        max_age: float = KEEP_FINISHED_SECONDS,
        now: float | None = None,
    ) -> int:
        """Delete finished records beyond the newest ``keep`` or older than ``max_age``."""
        now = time.time() if now is None else now
        finished = [r for _, r in self._records(self.keys.status) if r.status.finished]
        finished.sort(key=lambda r: r.finished or r.created, reverse=True)
        doomed = [
            r.id
            for index, r in enumerate(finished)
            if index >= keep or (r.finished or r.created) < now - max_age
        ]
        if doomed:
            self.client.hdel(self.keys.status, *doomed)
            self.client.srem(constants.JOBS_CANCEL_KEY, *doomed)
        return len(doomed)
