"""A process pool and the job supervisor, driven in a thread the way the agent drives them
(poll the pool, tick the supervisor, every 50 ms), for the job tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from skyline.vista.config import VistaConfig
from skyline.vista.jobs.registry import KINDS, JobKind
from skyline.vista.jobs.supervisor import JobSupervisor
from skyline.vista.logs import LogSpec
from skyline.vista.pool import ProcessPool


class Supervised:
    """``with Supervised(cfg, client, tmp_path):`` runs jobs of ``kinds`` (default: every kind
    the agent runs), logging to ``tmp_path/vista.log``; on leaving, every job process is
    stopped."""

    def __init__(
        self,
        cfg: VistaConfig,
        client: redis.Redis,
        tmp_path: Path,
        kinds: tuple[JobKind, ...] = KINDS,
    ) -> None:
        self.pool = ProcessPool()
        spec = LogSpec(str(tmp_path / "vista.log"), verbose=True, secrets=())
        self.supervisor = JobSupervisor(cfg, client, self.pool, spec, kinds=kinds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.pool.poll()
            self.supervisor.tick()
            time.sleep(0.05)

    def job_pid(self, job_id: str, timeout: float = 20.0) -> int:
        """The pid of the process running ``job_id``, once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.pool.running():
                if name.endswith(job_id) and process.pid:
                    return process.pid
            time.sleep(0.02)
        raise TimeoutError(f"no process for job {job_id}")

    def __enter__(self) -> Supervised:
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop driving the pool and the supervisor (the job processes keep running)."""
        self._stop.set()
        self._thread.join(5)

    def __exit__(self, *exc: object) -> None:
        self.pause()
        self.pool.stop_all(10)
