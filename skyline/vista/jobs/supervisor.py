"""The agent's side of jobs: claim due jobs for kinds with free capacity and run each in its
own process through the agent's :class:`~skyline.vista.pool.ProcessPool`.

* Every :data:`CLAIM_EVERY` seconds, for each kind, while fewer than its limit
  (``VISTA_JOB_PROCESSES[kind]``, else the kind's ``max_running``) run here, the oldest pending
  job is claimed atomically and started.
* A job process that exits without recording its end (SIGKILL, a crash, a second SIGTERM) has its
  job put back to pending at once; it resumes from its checkpoint (failed after
  ``MAX_ATTEMPTS`` deaths).
* Every :data:`HOUSEKEEPING_EVERY` seconds, jobs orphaned by a vanished agent (their running
  marker expired) are put back, and old finished records are pruned.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import redis

from skyline.vista import redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.process import JobProcess
from skyline.vista.jobs.registry import KINDS, JobKind
from skyline.vista.jobs.store import JobStore
from skyline.vista.logs import LogSpec
from skyline.vista.pool import ChildExit, ProcessPool

logger = logging.getLogger(__name__)

CLAIM_EVERY = 1.0
HOUSEKEEPING_EVERY = 15.0
NAME_PREFIX = "job:"


class JobSupervisor:
    def __init__(
        self,
        config: VistaConfig,
        client: redis.Redis,
        pool: ProcessPool,
        log_spec: LogSpec,
        *,
        kinds: tuple[JobKind, ...] = KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.pool = pool
        self.log_spec = log_spec
        self.kinds = kinds
        self.stores = {k.name: JobStore(client, k.name, k.keys) for k in kinds}
        self.clock = clock
        self._next_claim = 0.0
        self._next_housekeeping = 0.0
        self.outage = redisconn.RedisOutage(logger, "job supervisor")

    def limit(self, kind: JobKind) -> int:
        return self.config.job_processes.get(kind.name, kind.max_running)

    def running(self, kind: JobKind) -> int:
        prefix = f"{NAME_PREFIX}{kind.name}:"
        return sum(1 for name in self.pool.names() if name.startswith(prefix))

    def tick(self, stopping: bool = False) -> None:
        """Called from the agent's supervision loop (the pool is polled there)."""
        now = self.clock()
        if stopping or now < self._next_claim:
            return
        self._next_claim = now + CLAIM_EVERY
        try:
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + HOUSEKEEPING_EVERY
                self.housekeeping()
            for kind in self.kinds:
                while self.running(kind) < self.limit(kind):
                    if not self._claim_and_start(kind):
                        break
            self.outage.ok()
        except redisconn.REDIS_ERRORS as exc:
            self._next_claim = now + self.outage.failed(exc)

    def housekeeping(self) -> None:
        for name, store in self.stores.items():
            for job_id in store.recover_orphans():
                logger.warning("job %s (%s) was orphaned; put back to pending", job_id, name)
            store.prune()

    def _claim_and_start(self, kind: JobKind) -> bool:
        claimed = self.stores[kind.name].claim()
        if claimed is None:
            return False
        record, token = claimed

        def factory() -> JobProcess:
            return JobProcess(os.getpid(), self.config, self.log_spec, kind, record.id, token)

        def on_exit(exit_: ChildExit) -> None:
            self._exited(kind, record.id, token, exit_)

        process = self.pool.start(f"{NAME_PREFIX}{kind.name}:{record.id}", factory, on_exit=on_exit)
        logger.info(
            "job %s (%s) started in pid %s (attempt %d)",
            record.id,
            kind.name,
            process.pid,
            record.attempts,
        )
        return True

    def _exited(self, kind: JobKind, job_id: str, token: str, exit_: ChildExit) -> None:
        """A job process has exited: if it did not record its end, give its job back."""
        reason = f"job process {exit_.pid} exited with code {exit_.exitcode}"
        try:
            record = self.stores[kind.name].give_back(job_id, token, reason)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning(
                "job %s: cannot give it back now (%s); it is recovered when its marker expires",
                job_id,
                exc,
            )
            return
        if record is not None:
            logger.error(
                "job %s (%s): %s; now %s (resumes from its checkpoint)",
                job_id,
                kind.name,
                reason,
                record.status.value,
            )
