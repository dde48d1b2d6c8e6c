"""Logging set-up, once per process: standard levels, one format with the process name and pid,
secrets masked, and a count of ERROR records for Skyline's ``vista.log.errors.per_minute``.

Daemonised, every process appends to ``LOG_PATH/vista.log`` through a WatchedFileHandler: the
file is opened in append mode (never truncated at start) and reopened when logrotate moves it,
so several processes can share it. In the foreground, records go to stderr (journald).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from dataclasses import dataclass

from skyline.vista.secret import RedactingFilter, process_redactor

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class LogSpec:
    """What a process needs to set up its logging (picklable, handed to worker processes)."""

    log_file: str | None  # None: stderr
    verbose: bool = False
    secrets: tuple[str, ...] = ()


class ErrorCounter(logging.Handler):
    """Counts ERROR-and-above records; the heartbeat adds the count to Redis and resets it."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._count = 0
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self._count += 1

    def take(self) -> int:
        with self._guard:
            count, self._count = self._count, 0
        return count


error_counter = ErrorCounter()
redactor = RedactingFilter(process_redactor)


def configure(spec: LogSpec) -> None:
    """(Re)configure the root logger of this process according to spec."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old is not error_counter:
            old.close()
    handler: logging.Handler
    if spec.log_file:
        handler = logging.handlers.WatchedFileHandler(spec.log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    redactor.set_secrets(spec.secrets)
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.addHandler(error_counter)
    root.setLevel(logging.DEBUG if spec.verbose else logging.INFO)
    for noisy in ("aiohttp.access", "urllib3", "asyncio", "redis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
