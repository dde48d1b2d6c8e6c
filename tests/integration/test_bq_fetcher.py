"""The BigQuery scheduler against a real redis-server: due minutes enqueue exactly one job each,
across restarts and missed minutes, for the interval the original picks."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista.bq import submit
from skyline.vista.bq_fetcher import BqScheduler
from skyline.vista.testing.servers import RedisServer
from tests.fakes.bigquery import FakeBigQuery
from tests.support.bigquery import DAY, account, make_config


def utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


@pytest.fixture
def clean(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    for pattern in ("vista.bq_*", "vista.bq_fetcher.*"):
        for key in redis_client.scan_iter(pattern):
            redis_client.delete(key)
    yield redis_client


def scheduler(tmp_path: Path, redis_server: RedisServer, **acct: Any) -> BqScheduler:
    with FakeBigQuery() as fake:
        cfg = make_config(tmp_path, redis_server, fake, None, {"shop": account("biz", **acct)})
    return BqScheduler(cfg, redis_server.client())


def jobs(client: redis.Redis, kind: str) -> list[dict[str, Any]]:
    return [r.params for r in submit.store(client, kind).all()]


DAILY = {"minute": 5, "hour": 2, "day_of_month": "*", "month": "*", "day_of_week": "*"}


def test_a_due_minute_enqueues_one_backfill_once_even_across_a_restart(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    s = scheduler(tmp_path, redis_server, schedule=DAILY)
    assert s.tick(utc("2024-01-31 02:04") + 59) == []
    done = s.tick(utc("2024-01-31 02:05") + 1)
    assert [(d.kind, d.from_ts, d.until_ts, d.created) for d in done] == [
        ("bq_backfill", utc("2024-01-31 00:00"), utc("2024-01-31 00:00"), True)
    ]
    assert s.tick(utc("2024-01-31 02:05") + 30) == []  # same minute, same process
    restarted = scheduler(tmp_path, redis_server, schedule=DAILY)
    assert restarted.tick(utc("2024-01-31 02:05") + 50) == []  # same minute, after a restart
    assert restarted.tick(utc("2024-01-31 02:06")) == []
    params = jobs(clean, "bq_backfill")
    assert len(params) == 1
    assert params[0]["vista_bq_account_key"] == "shop"
    assert params[0]["added_by"] == "vista_bq_fetcher"
    assert "oauth_credentials" not in params[0]


def test_two_agents_in_the_same_minute_enqueue_once(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    a = scheduler(tmp_path, redis_server, schedule=DAILY)
    b = scheduler(tmp_path, redis_server, schedule=DAILY)
    now = utc("2024-01-31 02:05") + 3
    assert len(a.tick(now)) + len(b.tick(now)) == 1
    assert len(jobs(clean, "bq_backfill")) == 1


def test_minutes_missed_while_down_are_run(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    s = scheduler(tmp_path, redis_server, schedule=DAILY)
    s.tick(utc("2024-01-31 01:50"))  # the agent was up at 01:50 ...
    later = scheduler(tmp_path, redis_server, schedule=DAILY)
    done = later.tick(utc("2024-01-31 02:20"))  # ... and back at 02:20: 02:05 was missed
    assert [(d.minute, d.from_ts) for d in done] == [
        (utc("2024-01-31 02:05"), utc("2024-01-31 00:00"))
    ]


def test_a_redis_outage_does_not_lose_the_minute(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    s = scheduler(tmp_path, redis_server, schedule=DAILY)
    s.tick(utc("2024-01-31 02:04"))
    s.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert s.tick(utc("2024-01-31 02:05")) == []
    s.client = redis_server.client()
    assert len(s.tick(utc("2024-01-31 02:06"))) == 1


def test_a_failure_between_the_claim_and_the_job_does_not_lose_the_minute(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The due minute is claimed, then Redis fails while its job is added: the claim must not
    stay behind, or the minute would be skipped for good."""
    s = scheduler(tmp_path, redis_server, schedule=DAILY)
    s.tick(utc("2024-01-31 02:04"))
    real_submit = submit.submit

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("lost after the claim")

    monkeypatch.setattr(submit, "submit", failing)
    assert s.tick(utc("2024-01-31 02:05")) == []
    monkeypatch.setattr(submit, "submit", real_submit)
    done = s.tick(utc("2024-01-31 02:06"))
    assert len(done) == 1 and done[0].created is True
    assert len(jobs(clean, "bq_backfill")) == 1
    claims = list(clean.scan_iter(match="vista.bq_fetcher.due.*"))
    assert len(claims) == 1 and clean.ttl(claims[0]) > 86400  # claimed for good once enqueued


def test_update_schedule_enqueues_the_update_period(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    s = scheduler(
        tmp_path,
        redis_server,
        update_data_schedule={"minute": 30, "hour": [6, 18]},
        update_data_period=3 * DAY,
    )
    s.tick(utc("2024-01-31 06:29"))
    done = s.tick(utc("2024-01-31 06:30"))
    assert [(d.kind, d.from_ts, d.until_ts) for d in done] == [
        ("bq_update", utc("2024-01-28 00:00"), utc("2024-01-31 00:00"))
    ]


def test_no_duplicate_while_pending(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    hourly = {"minute": 0}
    s = scheduler(tmp_path, redis_server, schedule=hourly)  # daily interval, hourly schedule
    s.tick(utc("2024-01-31 00:59"))
    assert s.tick(utc("2024-01-31 01:00"))[0].created is True
    again = s.tick(utc("2024-01-31 02:00"))
    assert again[0].created is False  # the same day's job is still pending
    assert len(jobs(clean, "bq_backfill")) == 1


def test_disabled_schedule_enqueues_nothing(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis
) -> None:
    s = scheduler(tmp_path, redis_server)  # account(): schedule all zeros
    assert s.expressions == {}
    for minute in range(0, 3600, 60):
        assert s.tick(utc("2024-01-31 00:00") + minute) == []


def test_host_tz_far_from_utc(
    tmp_path: Path, redis_server: RedisServer, clean: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    try:
        s = scheduler(tmp_path, redis_server, schedule=DAILY)
        s.tick(utc("2024-01-31 02:04"))
        done = s.tick(utc("2024-01-31 02:05"))
        assert [d.from_ts for d in done] == [utc("2024-01-31 00:00")]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
