"""What a job's entry point gets: its record, the settings, Redis, and the means to report
progress, save a checkpoint and know when to stop."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import redis

from skyline.vista import redisconn
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.record import JobRecord, Progress
from skyline.vista.jobs.store import HEARTBEAT_EVERY, JobStore

logger = logging.getLogger(__name__)


class JobContext:
    """Handed to ``run(ctx)`` in the job's process. Thread-safe for the heartbeat thread."""

    def __init__(
        self,
        record: JobRecord,
        config: VistaConfig,
        client: redis.Redis,
        store: JobStore,
        token: str,
    ) -> None:
        self.record = record
        self.config = config
        self.client = client
        self.store = store
        self.token = token
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stop_reason = ""
        """'' while running; then 'signal' (SIGTERM, the agent stopping), 'cancel' (a cancel
        request) or 'lost' (the job is no longer this process's: never write again)."""
        self.stop_seen = False
        """should_stop() returned True to the entry point: it stopped early."""

    # --- for the entry point -------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    def should_stop(self) -> bool:
        """True after SIGTERM, a cancel request or the loss of the job: return between units."""
        if self._stop.is_set():
            self.stop_seen = True
            return True
        return False

    def progress(self, **changes: Any) -> None:
        """Update the progress record (fields of :class:`Progress`) and write it."""
        with self._lock:
            self.record = self.record.with_(progress=replace(self.record.progress, **changes))
            self._write()

    def checkpoint(self, data: dict[str, Any], **progress: Any) -> None:
        """Save where to resume (and, in the same write, the progress): call after each unit."""
        with self._lock:
            self.record = self.record.with_(
                checkpoint=dict(data), progress=replace(self.record.progress, **progress)
            )
            self._write()

    @property
    def current_progress(self) -> Progress:
        return self.record.progress

    # --- for the job process -------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def _write(self) -> None:
        if self.stop_reason == "lost":
            return
        try:
            held = self.store.update(self.record, self.token)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning(
                "job %s: progress not saved (%s); retried next unit", self.record.id, exc
            )
            return
        if not held:
            self._lost()

    def _lost(self) -> None:
        logger.error("job %s is no longer held by this process; stopping", self.record.id)
        self.stop_reason = "lost"
        self._stop.set()

    def heartbeat_forever(self, done: threading.Event) -> None:
        """Renew the marker and watch for a cancel request until ``done`` (a thread body)."""
        while not done.wait(HEARTBEAT_EVERY):
            try:
                held, cancel = self.store.heartbeat(self.record.id, self.token)
            except redisconn.REDIS_ERRORS as exc:
                logger.debug("job %s heartbeat failed: %s", self.record.id, exc)
                continue
            if not held:
                self._lost()
                return
            if cancel:
                self.request_stop("cancel")
