"""Redis clients (one pool per process) and the "Redis went away" bookkeeping.

Callers catch :data:`REDIS_ERRORS`, call :meth:`RedisOutage.failed` (logs once, returns the
backoff delay with jitter) and wait; :meth:`RedisOutage.ok` logs the recovery once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel

from skyline.vista.backoff import Backoff
from skyline.vista.config import RedisConfig

REDIS_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
"""Every error from Redis or from talking to it: every loop survives all of them alike (log
once with Redis' own text, back off, go on, say when it is back). Not only "unreachable"
(connection, timeout, LOADING) but also a server that refuses commands: OOM (``maxmemory`` with
``noeviction``), MISCONF (it cannot persist, ``stop-writes-on-bgsave-error``), READONLY (a
replica, or a failed-over primary), and any other error reply. None of them is a reason for a
daemon to die; an error reply that is a bug shows in the log line, with Redis' text."""


def text(value: object) -> str:
    """A Redis reply as text: redis-py gives bytes unless the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _options(config: RedisConfig) -> dict[str, Any]:
    return {
        "password": config.password.reveal() if config.password else None,
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 15,
    }


def _sentinel_options(config: RedisConfig) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their own password, same timeouts)."""
    secret = config.sentinel_password
    return {
        "password": secret.reveal() if secret else None,
        "socket_timeout": min(config.socket_timeout, 5.0),
        "socket_connect_timeout": 2.0,
    }


def connect(config: RedisConfig) -> redis.Redis:
    """A client with its own connection pool; create one per process and share it.

    With Redis Sentinel the client asks the sentinels for the current primary whenever it
    (re)connects, so after a failover it finds the promoted replica by itself; a connection to
    a demoted primary is dropped on its first READONLY answer (redis-py's
    SentinelManagedConnection), and every error in between is one of :data:`REDIS_ERRORS`.
    """
    if config.sentinels:
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels), sentinel_kwargs=_sentinel_options(config), **_options(config)
        )
        client: redis.Redis = sentinel.master_for(config.service)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(config.url, **_options(config))


def connect_async(config: RedisConfig) -> redis.asyncio.Redis:
    if config.sentinels:
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels), sentinel_kwargs=_sentinel_options(config), **_options(config)
        )
        aclient: redis.asyncio.Redis = sentinel.master_for(config.service)
        return aclient
    return redis.asyncio.Redis.from_url(config.url, **_options(config))


def redis_text(exc: BaseException) -> str:
    """The error as Redis said it: redis-py strips the code of the errors it maps to a class
    (``OOM command not allowed ...`` becomes OutOfMemoryError('command not allowed ...'))."""
    text = str(exc)
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code and not text.startswith(code):
        return f"{code} {text}"
    return text


class RedisOutage:
    """Logs an outage once when it starts and once when it ends; computes the waits."""

    def __init__(self, logger: logging.Logger, who: str, *, cap: float = 30.0) -> None:
        self.logger = logger
        self.who = who
        self.backoff = Backoff(base=0.5, cap=cap)
        self.since: float | None = None

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        delay = self.backoff.failure()
        if self.since is None:
            self.since = time.monotonic()
            # "unavailable" covers a Redis that answers but refuses (OOM, MISCONF, READONLY):
            # its own text says which.
            self.logger.warning(
                "%s: Redis unavailable (%s: %s); retrying with backoff",
                self.who,
                type(exc).__name__,
                redis_text(exc),
            )
        else:
            self.logger.debug("%s: Redis still unavailable; next try in %.1fs", self.who, delay)
        return delay

    def ok(self) -> None:
        if self.since is not None:
            self.logger.info(
                "%s: Redis is back after %.1fs", self.who, time.monotonic() - self.since
            )
            self.since = None
        self.backoff.success()
