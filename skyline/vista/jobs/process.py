"""A job's own process: run the kind's entry point and record how it ended.

Outcome, written atomically with the release of the running marker:

* the entry point returned without having been told to stop → ``done``;
* it returned after ``should_stop()`` was true: a cancel request → ``cancelled``; SIGTERM or
  the agent's death → back to ``pending`` with its checkpoint (the next run resumes there);
* it raised → ``failed`` with the error (logged with its traceback);
* the process died (SIGKILL, a crash) → the supervisor puts the job back to ``pending``, and
  the next run resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import redis

from skyline.vista import constants, procutil, redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.errors import VistaError
from skyline.vista.jobs.context import JobContext
from skyline.vista.jobs.display import describe
from skyline.vista.jobs.record import Status
from skyline.vista.jobs.registry import JobKind
from skyline.vista.jobs.store import JobStore
from skyline.vista.logs import LogSpec

logger = logging.getLogger(__name__)

PARENT_DEATH_SIGNAL = signal.SIGUSR1


def run_job(
    job_kind: JobKind,
    job_id: str,
    token: str,
    config: VistaConfig,
    client: redis.Redis,
    on_context: Callable[[JobContext], None] | None = None,
) -> Status | None:
    """Run one claimed job in this process; returns its final status (None if lost).
    ``on_context`` sees the context before the entry point starts (signal handlers use it)."""
    store = JobStore(client, job_kind.name, job_kind.keys)
    record = store.get(job_id)
    if record is None or record.owner != token:
        logger.error("job %s: not found or not claimed by this process", job_id)
        return None
    ctx = JobContext(record, config, client, store, token)
    if on_context is not None:
        on_context(ctx)
    done = threading.Event()
    beat = threading.Thread(target=ctx.heartbeat_forever, args=(done,), daemon=True)
    beat.start()
    logger.info("job %s (%s) started: %s", job_id, job_kind.name, describe(record))
    error = ""
    try:
        job_kind.load_entry()(ctx)
    except VistaError as exc:  # a job that ends failed on purpose: its message says why
        error = f"{type(exc).__name__}: {exc}"[:500]
        logger.error("job %s (%s) failed: %s", job_id, job_kind.name, error)
    except Exception as exc:
        logger.exception("job %s (%s) failed", job_id, job_kind.name)
        error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        done.set()
        beat.join(5.0)
    return _finish(ctx, error)


def _finish(ctx: JobContext, error: str) -> Status | None:
    if ctx.stop_reason == "lost":
        return None
    now = time.time()
    requeue = False
    if error:
        final = ctx.record.with_(status=Status.FAILED, finished=now, error=error, owner="")
    elif ctx.stop_seen and ctx.stop_reason == "cancel":
        final = ctx.record.with_(status=Status.CANCELLED, finished=now, owner="")
    elif ctx.stop_seen:
        final = ctx.record.with_(status=Status.PENDING, owner="", error="paused (stopping)")
        requeue = True
    else:
        final = ctx.record.with_(status=Status.DONE, finished=now, owner="", error="")
    for attempt in range(1, 6):
        try:
            if not ctx.store.release(final, ctx.token, requeue=requeue):
                logger.error("job %s: no longer ours when finishing", final.id)
                return None
            break
        except redisconn.REDIS_ERRORS as exc:
            logger.warning("job %s: cannot record the end (%s); retrying", final.id, exc)
            time.sleep(attempt)
    else:
        return None  # the supervisor gives it back when this process has exited
    p = final.progress
    logger.info(
        "job %s (%s) %s: %d/%d unit(s), %d point(s), %d error(s)%s",
        final.id,
        final.kind,
        final.status.value,
        p.done,
        p.total,
        p.points,
        p.errors,
        f": {final.error}" if final.error else "",
    )
    return final.status


class JobProcess(procutil.AgentChild):
    """One job, in its own spawned process, child of the agent."""

    def __init__(
        self,
        parent_pid: int,
        config: VistaConfig,
        log_spec: LogSpec,
        job_kind: JobKind,
        job_id: str,
        token: str,
    ) -> None:
        name = f"vista-job-{job_kind.name}-{job_id}"
        super().__init__(name, parent_pid, config, log_spec, PARENT_DEATH_SIGNAL)
        self.job_kind = job_kind
        self.job_id = job_id
        self.token = token

    def main(self) -> None:
        holder: list[JobContext] = []
        stop_early = threading.Event()
        terms = [0]

        def on_stop(signum: int, frame: FrameType | None) -> None:
            # The parent-death signal may come several times (once per agent thread that
            # exits): only a second SIGTERM means "leave now".
            if signum == signal.SIGTERM:
                terms[0] += 1
                if terms[0] > 1:
                    os._exit(constants.EXIT_FAILURE)  # the supervisor gives the job back
            if holder:
                holder[0].request_stop("signal")
            else:
                stop_early.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(PARENT_DEATH_SIGNAL, on_stop)

        def on_context(ctx: JobContext) -> None:
            holder.append(ctx)
            if stop_early.is_set():
                ctx.request_stop("signal")

        client = redisconn.connect(self.config.redis)
        status = run_job(self.job_kind, self.job_id, self.token, self.config, client, on_context)
        sys.exit(constants.EXIT_OK if status is not None else constants.EXIT_FAILURE)
