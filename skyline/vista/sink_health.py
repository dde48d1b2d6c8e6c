"""A worker's view of its sink's health: the backoff after a failure, and the log lines that say
when the sink fails, comes back, or refuses the credentials. No I/O: the worker gives back the
items itself and asks ``ready()`` before its next claim."""

from __future__ import annotations

import logging
import time

from skyline.vista import telemetry
from skyline.vista.backoff import Backoff
from skyline.vista.errors import SinkAuthError, SinkError

logger = logging.getLogger("skyline.vista.worker")

AUTH_WAIT = 30.0
"""Shortest wait after the sink refused the credentials (they only change with a reload)."""
AUTH_LOG_EVERY = 300.0
"""Seconds between two ERROR lines about refused credentials."""


class SinkHealth:
    """Backoff and log-once bookkeeping for one sink."""

    def __init__(self, sink_name: str, backoff: Backoff | None = None) -> None:
        self.sink_name = sink_name
        self.backoff = backoff if backoff is not None else Backoff(base=1.0, cap=60.0)
        self.failing = False
        self._last_auth_log = 0.0

    def ready(self) -> bool:
        return self.backoff.ready()

    def remaining(self) -> float:
        return self.backoff.remaining()

    def failed(self, error: SinkError) -> None:
        """A transient failure: back off, and say so once until the sink answers again."""
        telemetry.SINK_ERRORS.labels(self.sink_name, "transient").inc()
        delay = self.backoff.failure()
        if not self.failing:
            logger.warning(
                "%s sink failed (%s); items kept in the queue, retrying with backoff",
                self.sink_name,
                error,
            )
            self.failing = True
        else:
            logger.debug(
                "%s sink still failing (%s); next try in %.1fs", self.sink_name, error, delay
            )

    def ok(self) -> None:
        if self.failing:
            logger.info("%s sink accepts points again", self.sink_name)
        self.failing = False
        self.backoff.success()

    def auth_failed(self, exc: SinkAuthError, kept: int) -> None:
        """The sink refused the credentials: wait at least AUTH_WAIT, log every AUTH_LOG_EVERY.
        ``kept``: the items the worker gave back."""
        telemetry.SINK_ERRORS.labels(self.sink_name, "auth").inc()
        self.backoff.failure(at_least=AUTH_WAIT)
        now = time.monotonic()
        if not self._last_auth_log or now - self._last_auth_log > AUTH_LOG_EVERY:
            logger.error(
                "%s; %d item(s) kept in the queue, nothing is delivered until this is "
                "fixed (vista reload after fixing the settings)",
                exc,
                kept,
            )
            self._last_auth_log = now
