"""The agent's Worker processes, children of its :class:`~skyline.vista.pool.ProcessPool`: a
worker that dies gives its queue items back at once and is restarted by the pool (with backoff
when it keeps dying young); a reload restarts them one by one with the new settings."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

import redis

from skyline.vista import constants, redisconn, telemetry
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.logs import LogSpec
from skyline.vista.pool import ChildExit, ProcessPool
from skyline.vista.worker import Worker, worker_id

logger = logging.getLogger("skyline.vista.agent")


def worker_name(index: int) -> str:
    """The worker's name in the pool."""
    return f"worker-{index}"


@dataclass
class Workers:
    """``config`` and ``log_spec`` are read each time a worker is (re)started; the hostname
    (worker ids, heartbeat keys) is the one of the agent's start."""

    pid: int
    config: VistaConfig
    log_spec: LogSpec
    pool: ProcessPool
    client: redis.Redis
    queue: FetchQueue
    count: int = 0
    hostname: str = field(init=False)

    def __post_init__(self) -> None:
        self.hostname = self.config.hostname

    def start(self, count: int) -> None:
        self.count = count
        for index in range(count):
            self._start(index)

    def roll(self, config: VistaConfig, log_spec: LogSpec) -> None:
        """Workers pick up new settings by restarting: each drains and is replaced (the count
        grows or shrinks to the new VISTA_WORKER_PROCESSES)."""
        self.config, self.log_spec = config, log_spec
        count = config.worker_processes
        for index in range(max(count, self.count)):
            self.pool.stop(worker_name(index), config.shutdown_timeout)
            if index < count:
                self._start(index)
        self.count = count

    def records(self) -> list[dict[str, Any]]:
        """Index, pid and worker id of each worker, for the agent's heartbeat record."""
        return [
            {"index": i, "pid": pid, "wid": worker_id(self.hostname, i, pid)}
            for i in range(self.count)
            for pid in [self.pool.pid(worker_name(i))]
        ]

    def _start(self, index: int) -> None:
        def factory() -> Worker:
            return Worker(self.pid, self.config, index, self.log_spec)

        def on_exit(exit_: ChildExit) -> None:
            self._exited(index, exit_)

        def on_start(process: BaseProcess) -> None:
            logger.info("worker %d started (pid %s)", index, process.pid)

        self.pool.start(
            worker_name(index), factory, respawn=True, on_exit=on_exit, on_start=on_start
        )

    def _exited(self, index: int, exit_: ChildExit) -> None:
        """The pool reaped a worker: give its items back at once, drop its heartbeat."""
        wid = worker_id(self.hostname, index, exit_.pid)
        _mark_dead(exit_.pid)
        recovered = self._recover(wid)
        try:
            self.client.delete(constants.WORKER_HEARTBEAT_PREFIX + wid)
        except redisconn.REDIS_ERRORS:
            pass  # it expires by itself
        if exit_.restart_in is None:
            return  # stopped on purpose (drain, reload, resize)
        telemetry.WORKER_RESTARTS.inc()
        logger.error(
            "worker %d (pid %s) exited with code %s after %.0fs; %d item(s) requeued; "
            "restarting in %.1fs",
            index,
            exit_.pid,
            exit_.exitcode,
            exit_.lived,
            recovered,
            exit_.restart_in,
        )

    def _recover(self, wid: str) -> int:
        try:
            return self.queue.recover(only_worker=wid)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning(
                "could not requeue the items of %s now (%s); they are recovered when "
                "its lease expires",
                wid,
                exc,
            )
            return 0


def _mark_dead(pid: int | None) -> None:
    if pid and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
