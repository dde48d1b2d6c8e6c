"""The agent's Fetcher thread: started once, restarted (with backoff) when it dies, its state
carried over to the new thread."""

from __future__ import annotations

import logging
import time

from skyline.vista.backoff import compute_backoff
from skyline.vista.config import VistaConfig
from skyline.vista.fetcher import Fetcher

logger = logging.getLogger("skyline.vista.agent")


class FetcherThread:
    def __init__(self, pid: int, config: VistaConfig) -> None:
        self.pid = pid
        self.config = config
        self.fetcher: Fetcher | None = None
        self.failures = 0
        self.restart_at = 0.0

    def start(self) -> None:
        previous = self.fetcher
        fetcher = Fetcher(self.pid, self.config)
        if previous is not None:
            fetcher.state = previous.state
        fetcher.start()
        self.fetcher = fetcher

    def alive(self) -> bool:
        return self.fetcher is not None and self.fetcher.is_alive()

    def check(self) -> None:
        """Restart a dead fetcher thread, 1 s after its first death, up to 60 s apart."""
        if self.fetcher is None or self.fetcher.is_alive():
            return
        now = time.monotonic()
        if self.restart_at == 0.0:
            self.failures += 1
            delay = compute_backoff(self.failures, base=1.0, cap=60.0)
            self.restart_at = now + delay
            logger.error("the fetcher thread died; restarting it in %.1fs", delay)
        if now >= self.restart_at:
            self.restart_at = 0.0
            self.start()

    def update_config(self, config: VistaConfig) -> None:
        self.config = config
        if self.fetcher is not None:
            self.fetcher.update_config(config)

    def stop(self) -> None:
        if self.fetcher is not None:
            self.fetcher.stop()

    def join(self, timeout: float) -> None:
        if self.fetcher is not None:
            self.fetcher.join(timeout)
