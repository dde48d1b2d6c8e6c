"""The BigQuery scheduler: each account's ``schedule`` and ``update_data_schedule`` enqueue jobs.

The agent calls :meth:`BqScheduler.tick` from its supervision loop (every 0.2 s); it works once
per UTC minute. For each account and schedule (cron expressions by field name, in UTC: see
skyline/vista/bq/cron.py) it looks at every minute since the last one it evaluated (kept in
Redis, ``vista.bq_fetcher.last.<account>.<kind>``; at most :data:`CATCH_UP` back, only the
current minute on the very first run), so a due minute is not missed when the agent was busy,
stopped or restarting. Each due minute is claimed once with ``SET NX``
(``vista.bq_fetcher.due.<account>.<kind>.<minute>``, kept a week), so it never enqueues twice,
across an agent restart inside that minute or between several agents on one Redis.

* a due ``schedule`` enqueues one ``bq_backfill`` of the interval that holds the due minute
  (``floor(minute, schedule_interval)``, as Skyline's bq_fetcher picks it);
* a due ``update_data_schedule`` enqueues one ``bq_update`` of ``[until - update_data_period,
  until]`` with ``until = floor(minute, schedule_interval)``.

A job already pending or running for the same account and range is not enqueued again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from skyline.vista import constants, redisconn
from skyline.vista.config import VistaConfig

logger = logging.getLogger(__name__)

CATCH_UP = 24 * 3600
"""Due minutes further back than this (the agent was down longer) are not run any more."""
CLAIM_TTL = 7 * 86400
CLAIM_PENDING_TTL = 120
"""A due minute is claimed for this long until its job is enqueued, then for CLAIM_TTL: a
failure in between (Redis lost after the claim) never leaves the minute claimed and not run."""
LAST_KEY = constants.BQ_FETCHER_LAST_KEY
DUE_KEY = constants.BQ_FETCHER_DUE_KEY
SCHEDULES = (("bq_backfill", "schedule"), ("bq_update", "update_data_schedule"))


@dataclass(frozen=True)
class Enqueued:
    account: str
    kind: str
    minute: int
    job_id: str
    created: bool
    from_ts: int
    until_ts: int


def _expressions(accounts: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    from skyline.vista.bq.cron import ScheduleError, cron_expression

    found: dict[tuple[str, str], str] = {}
    for name, account in accounts.items():
        for kind, key in SCHEDULES:
            try:
                expr = cron_expression(account.get(key))
            except ScheduleError as exc:
                logger.error("BigQuery account %r %s: %s; not scheduled", name, key, exc)
                continue
            if expr is not None:
                found[(name, kind)] = expr
    return found


def due_minutes(expr: str, last: int | None, minute: int) -> list[int]:
    """The due minutes after ``last`` (exclusive) up to ``minute`` (inclusive)."""
    from skyline.vista.bq.cron import is_due

    first = minute if last is None else max(last + 60, minute - CATCH_UP)
    return [m for m in range(first, minute + 1, 60) if is_due(expr, m)]


class BqScheduler:
    def __init__(self, config: VistaConfig, client: redis.Redis) -> None:
        self.client = client
        self.config = config
        self.expressions = _expressions(config.bq_accounts)
        self._minute: int | None = None
        self.outage = redisconn.RedisOutage(logger, "BigQuery scheduler")

    def update_config(self, config: VistaConfig) -> None:
        self.config = config
        self.expressions = _expressions(config.bq_accounts)

    def tick(self, now: float) -> list[Enqueued]:
        """Evaluate the minute holding ``now`` once; returns the jobs it enqueued."""
        minute = int(now // 60 * 60)
        if minute == self._minute:
            return []
        try:
            done = self._evaluate(minute)
        except redisconn.REDIS_ERRORS as exc:
            self.outage.failed(exc)
            return []  # the minute is evaluated again (with the ones missed) on the next tick
        self.outage.ok()
        self._minute = minute
        return done

    def _evaluate(self, minute: int) -> list[Enqueued]:
        enqueued: list[Enqueued] = []
        for (account, kind), expr in self.expressions.items():
            last_key = LAST_KEY.format(account=account, kind=kind)
            raw = self.client.get(last_key)
            last = int(raw) if raw is not None else None
            for due in due_minutes(expr, last, minute):
                claim = DUE_KEY.format(account=account, kind=kind, minute=due)
                if self.client.set(claim, "1", nx=True, ex=CLAIM_PENDING_TTL):
                    try:
                        enqueued.append(self._enqueue(account, kind, due))
                    except BaseException:
                        self._unclaim(claim)
                        raise
                    self.client.expire(claim, CLAIM_TTL)
            self.client.set(last_key, str(max(minute, last or 0)))
        return enqueued

    def _unclaim(self, claim: str) -> None:
        """Give a due minute back after its job could not be enqueued (best effort: if Redis
        is gone, the claim expires after CLAIM_PENDING_TTL)."""
        try:
            self.client.delete(claim)
        except redisconn.REDIS_ERRORS:
            pass

    def _enqueue(self, account_name: str, kind: str, minute: int) -> Enqueued:
        from skyline.vista.bq import cron, submit

        account = self.config.bq_accounts[account_name]
        interval = int(account["schedule_interval"])
        if kind == "bq_backfill":
            start = until = cron.backfill_interval(minute, interval)
        else:
            period = int(account.get("update_data_period") or 7 * 86400)
            start, until = cron.update_range(minute, interval, period)
        record, created = submit.submit(
            self.client, kind, account_name, start, until, added_by="vista_bq_fetcher"
        )
        logger.info(
            "BigQuery %s for %s due at %d: %s job %s (%d..%d)",
            kind,
            account_name,
            minute,
            "enqueued" if created else "already queued as",
            record.id,
            start,
            until,
        )
        return Enqueued(account_name, kind, minute, record.id, created, start, until)
