"""What the agent tells the other hosts and ``vista status`` through Redis: its member key
(while its fetcher runs, so that the others take its metrics over when it goes; with
VISTA_SHARDS its claim key, only to find another agent with its VISTA_HOSTNAME), and its
heartbeat record (pid, settings, fetcher, workers) with the count of ERROR lines logged."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from skyline.vista import constants, logs, membership, redisconn, telemetry
from skyline.vista.config import VistaConfig

logger = logging.getLogger("skyline.vista.agent")

HEARTBEAT_EVERY = 10.0
DUPLICATE_LOG_EVERY = 60.0


class Presence:
    """``config`` is the agent's current settings (replaced on reload); the hostname and the
    start time are those of the agent's start."""

    def __init__(self, pid: int, config: VistaConfig, client: redis.Redis) -> None:
        self.pid = pid
        self.config = config
        self.client = client
        self.hostname = config.hostname
        self.started = time.time()
        self._next_heartbeat = 0.0
        self._next_member_beat = 0.0
        self.token = membership.instance_token(pid)
        self._member_beats = 0
        self._next_duplicate_log = 0.0

    # --- membership -------------------------------------------------------------------------

    def member_heartbeat(self, fetcher_alive: bool, *, force: bool = False) -> None:
        """Keep this host among the live Vista hosts while its fetcher runs (every third of
        VISTA_MEMBER_TTL): the others take its metrics over when the key expires. With
        VISTA_SHARDS no live member: the same beat on the claim key, whose only job is to find
        another agent using this VISTA_HOSTNAME."""
        sharded = bool(self.config.shards)
        now = time.monotonic()
        if not force and now < self._next_member_beat:
            return
        if not force and not fetcher_alive and not sharded:
            return  # the fetcher is down (restarting): let the others fetch meanwhile
        ttl = self.config.member_ttl
        self._next_member_beat = now + ttl / 3
        try:
            previous = membership.heartbeat(
                self.client, self.hostname, ttl, self.token, member=not sharded
            )
        except redisconn.REDIS_ERRORS:
            self._next_member_beat = now + min(1.0, ttl / 3)
            logger.debug("member heartbeat not written (Redis unavailable)")
            return
        self._member_beats += 1
        # On the first beat another value is this agent's predecessor (a restart): normal.
        if self._member_beats > 1 and previous is not None and previous != self.token:
            self._another_agent(membership.OtherAgent.of(previous), now)

    def _another_agent(self, other: membership.OtherAgent, now: float) -> None:
        """Another agent wrote this host's member key since this agent's last beat: two agents
        share one VISTA_HOSTNAME (a copied settings file, a cloned machine)."""
        telemetry.DUPLICATE_HOSTNAME.inc()
        try:
            membership.record_duplicate(self.client, self.hostname, other)
        except redisconn.REDIS_ERRORS:
            logger.debug("duplicate host record not written (Redis unavailable)")
        if now < self._next_duplicate_log:
            return
        self._next_duplicate_log = now + DUPLICATE_LOG_EVERY
        logger.error(
            "another Vista agent uses VISTA_HOSTNAME %r (pid %s on %s): both share one name, "
            "one share of the metrics and one `vista status` record; give each host its "
            "own VISTA_HOSTNAME",
            self.hostname,
            other.pid,
            other.machine,
        )

    def leave(self) -> None:
        try:
            membership.leave(self.client, self.hostname, member=not self.config.shards)
        except redisconn.REDIS_ERRORS:
            pass  # the member key expires by itself

    # --- the agent's heartbeat record -------------------------------------------------------

    def heartbeat(self, fetcher_alive: bool, workers: Callable[[], list[dict[str, Any]]]) -> None:
        """Every HEARTBEAT_EVERY seconds: the record ``vista status`` reads."""
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_EVERY
        record = {
            "pid": self.pid,
            "started": int(self.started),
            "settings": self.config.path,
            "fetcher": fetcher_alive,
            "workers": workers(),
        }
        try:
            self.client.set(self._key(), json.dumps(record), ex=constants.HEARTBEAT_TTL)
            errors = logs.error_counter.take()
            if errors:
                pipe = self.client.pipeline(transaction=False)
                pipe.incrby(constants.LOG_ERRORS_KEY, errors)
                pipe.expire(constants.LOG_ERRORS_KEY, constants.LOG_ERRORS_TTL)
                pipe.execute()
        except redisconn.REDIS_ERRORS:
            logger.debug("agent heartbeat not written (Redis unavailable)")

    def remove(self) -> None:
        """The agent stopped: its record goes."""
        try:
            self.client.delete(self._key())
        except redisconn.REDIS_ERRORS:
            pass

    def _key(self) -> str:
        return f"{constants.AGENT_KEY_PREFIX}{self.hostname}"
