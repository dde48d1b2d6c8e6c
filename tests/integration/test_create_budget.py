"""Carbon's create budget (skyline/vista/create_budget.py): one token bucket in Redis paces the
first write of new metric names for every worker and job, so that a carbon-cache with a finite
MAX_CREATES_PER_MINUTE never drops the points of a metric it may not create yet.

The budget's logic runs against the real redis-server; the end-to-end tests run real Worker
processes into a real carbon-cache started with a low MAX_CREATES_PER_MINUTE and read every
whisper file back.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import redis

from skyline.vista import constants, create_budget
from skyline.vista.create_budget import CreateBudget
from skyline.vista.logs import LogSpec
from skyline.vista.testing.servers import CarbonServer, RedisServer, poll_until
from tests.integration.test_worker import (
    WorkerPool,
    carbon_config,
    make_series,
    push_series,
    recent_start,
    wait_drained,
    whisper_points,
)


def test_new_names_take_a_token_each_then_wait(redis_client: redis.Redis) -> None:
    redis_client.sadd(constants.VISTA_METRICS_KEY, "old.metric")  # delivered before: exists
    # Carbon's 60/min: one token a second; Vista keeps 6 s of margin, so holds 54 at most.
    budget = CreateBudget(redis_client, per_minute=60)
    assert create_budget.bucket_shape(60) == (1.0, 54.0)
    names = [f"new.m{i:02d}" for i in range(60)]
    first = budget.admit([*names, "old.metric"])
    assert first.known == {"old.metric"}
    assert first.granted == set(names[:54])  # sorted order: the first 54
    assert first.deferred == set(names[54:])
    assert 0.9 < first.wait <= 1.0  # 1 token at 1 token/s
    again = budget.admit(names)  # granted names pass for free; the others still wait
    assert again.known == set(names[:54]) and len(again.deferred) == 6
    status = create_budget.read_status(redis_client, 60, time.time())
    assert (status.granted_total, status.waiting) == (
        54 + len(again.granted),
        6 - len(again.granted),
    )
    assert status.tokens < 1
    lines = create_budget.status_lines(status)
    assert lines[0].startswith("carbon create budget: 60/min, 0.")
    assert f"{status.waiting} new metric(s) waiting for a create token" in lines[1], lines


def test_the_bucket_refills_at_the_budget_rate(redis_client: redis.Redis) -> None:
    """2 tokens/s: the grants after a pause match the time that passed (measured, so a slow
    machine only changes the count, never the rate)."""
    budget = CreateBudget(redis_client, per_minute=120)  # 2 tokens/s, capacity 108
    began = time.monotonic()
    assert len(budget.admit(f"a.m{i}" for i in range(108)).granted) == 108
    time.sleep(1.6)
    later = budget.admit(f"b.m{i}" for i in range(20))
    elapsed = time.monotonic() - began
    assert int(2 * 1.6) <= len(later.granted) <= int(2 * elapsed), (len(later.granted), elapsed)
    assert redis_client.zcard(create_budget.WAITING_KEY) == 20 - len(later.granted)
    assert later.wait <= 0.5


def test_granted_and_waiting_names_stay_bounded(redis_client: redis.Redis) -> None:
    """The granted and waiting names are trimmed in the admission step itself: a name that
    reached vista.metrics leaves both; a name not asked for in ``forget_after`` seconds is
    forgotten (a granted one would take a token again, a waiting one is listed again when its
    caller comes back), so neither key grows with every name Vista ever saw."""
    budget = CreateBudget(redis_client, per_minute=600, forget_after=1.0)  # 10/s, capacity 540
    first = [f"old.m{i:03d}" for i in range(600)]
    assert len(budget.admit(first).granted) == 540  # 60 wait
    assert redis_client.zcard(create_budget.GRANTED_KEY) == 540
    assert redis_client.zcard(create_budget.WAITING_KEY) == 60
    # The workers acknowledged 100 of the granted names: they are known, no longer "granted".
    redis_client.sadd(constants.VISTA_METRICS_KEY, *first[:100])
    assert budget.admit(first[:100]).known == set(first[:100])
    assert redis_client.zcard(create_budget.GRANTED_KEY) == 440
    time.sleep(1.5)  # nobody asks for the others any more (their job was cancelled)
    later = budget.admit(["new.m1", "new.m2"])
    assert later.granted == {"new.m1", "new.m2"}
    granted = {m.decode() for m in redis_client.zrange(create_budget.GRANTED_KEY, 0, -1)}  # type: ignore[union-attr]
    assert granted == {"new.m1", "new.m2"}
    assert redis_client.zcard(create_budget.WAITING_KEY) == 0
    assert create_budget.read_status(redis_client, 600, time.time()).waiting == 0


def test_the_keys_of_an_earlier_build_are_left_to_its_hosts_and_expire(
    redis_client: redis.Redis,
) -> None:
    """During a rolling upgrade, hosts still on the earlier build keep using their untyped set and
    hash (SISMEMBER/SADD, HSETNX): the new step never deletes or retypes them (that made the old
    hosts grant a name twice, beyond carbon's budget), it gives them a week to live."""
    old_granted, old_waiting = constants.CREATE_BUDGET_OLD_KEYS
    redis_client.sadd(old_granted, "a.metric")
    redis_client.hset(old_waiting, "b.metric", 1700000000)
    budget = CreateBudget(redis_client, per_minute=600)
    assert budget.admit(["c.metric"]).granted == {"c.metric"}
    assert redis_client.type(old_granted) == b"set" and redis_client.sismember(
        old_granted, "a.metric"
    )
    assert redis_client.type(old_waiting) == b"hash"
    assert redis_client.hget(old_waiting, "b.metric") == b"1700000000"
    for key in (old_granted, old_waiting):
        assert 604790 <= redis_client.ttl(key) <= 604800
    # An old host still writes its set after the upgrade: it keeps working, TTL unchanged.
    assert redis_client.sadd(old_granted, "d.metric") == 1
    assert create_budget.read_status(redis_client, 600, time.time()).waiting == 0


def test_concurrent_callers_share_one_budget(redis_server: RedisServer) -> None:
    """Four processes' worth of callers (threads with their own connections) ask at once."""
    client = redis_server.client()
    client.flushall()
    granted: list[int] = []

    def ask(n: int) -> None:
        own = redis_server.client()
        budget = CreateBudget(own, per_minute=33.3333)  # capacity 30, 0.56 token/s
        for k in range(5):
            granted.append(len(budget.admit(f"t{n}.m{k}.{i}" for i in range(10)).granted))
        own.close()

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert 30 <= sum(granted) <= 31  # the 30 of the bucket, plus at most one refilled
    client.close()


def test_infinite_budget_admits_everything_without_redis(redis_client: redis.Redis) -> None:
    budget = CreateBudget(redis_client, per_minute=float("inf"))
    assert budget.admit(["x.y"]).deferred == frozenset()
    assert redis_client.keys("vista.create_budget*") == []
    off = create_budget.read_status(redis_client, float("inf"), time.time())
    assert create_budget.status_lines(off) == [
        "carbon create budget: off (VISTA_CARBON_MAX_CREATES_PER_MINUTE = inf)"
    ]


# ------------------------------------------------------------ a real carbon-cache, low budget

CARBON_BUDGET = int(os.environ.get("VISTA_TEST_CARBON_CREATES", "300"))
"""carbon's MAX_CREATES_PER_MINUTE in the end-to-end tests: 300 (a burst of 300, then 5 creates
a second) keeps them under a minute; VISTA_TEST_CARBON_CREATES=50 runs Debian's default (about
9.5 minutes for 500 new metrics)."""
METRICS = 500
POINTS = 6


def deliver_new_metrics(
    tmp_path: Path, redis_server: RedisServer, vista_budget: float, settle: float
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]], float]:
    """500 new metrics × 6 points queued, two real Workers delivering into a carbon-cache
    whose MAX_CREATES_PER_MINUTE is CARBON_BUDGET. Returns (expected, stored, seconds)."""
    client = redis_server.client()
    client.flushall()
    carbon = CarbonServer(tmp_path / "carbon", max_creates_per_minute=CARBON_BUDGET).start()
    try:
        series = make_series("vista.budget", METRICS, POINTS, recent_start(30), step=10)
        cfg = carbon_config(
            tmp_path,
            redis_server.url,
            carbon,
            "pickle",
            VISTA_CARBON_MAX_CREATES_PER_MINUTE=vista_budget,
            VISTA_WORKER_BATCH_ITEMS=50,
        )
        began = time.monotonic()
        push_series(client, series, per_item=POINTS)
        pool = WorkerPool(cfg, LogSpec(str(tmp_path / "vista.log")), 2)
        pool.start()
        try:
            wait_drained(client, 120 + (METRICS * 60) / CARBON_BUDGET)
            took = time.monotonic() - began
        finally:
            assert pool.stop() == [0, 0]
        metrics = sorted(series)

        def complete() -> dict[str, list[tuple[int, float]]] | None:
            found = whisper_points(carbon, metrics)
            done = all(len(found[m]) >= POINTS for m in metrics)
            return found if done else None

        try:
            stored = poll_until(complete, settle, what="every point in whisper", interval=0.5)
        except TimeoutError:
            stored = whisper_points(carbon, metrics)
        assert client.zcard(create_budget.WAITING_KEY) == 0
    finally:
        carbon.stop()
        client.close()
    return {m: sorted(p) for m, p in series.items()}, stored, took


@pytest.mark.slow
@pytest.mark.timeout(int(240 + METRICS * 60 / CARBON_BUDGET))
def test_500_new_metrics_all_land_in_a_carbon_with_a_low_create_budget(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    expected, stored, took = deliver_new_metrics(tmp_path, redis_server, CARBON_BUDGET, 30)
    missing = [m for m in expected if stored[m] != expected[m]]
    assert not missing, f"{len(missing)} metric(s) incomplete, e.g. {missing[:3]}"
    # 270 at once (300 less the margin), then 230 at 5/s: about 46 s.
    _rate, burst = create_budget.bucket_shape(CARBON_BUDGET)
    least = (METRICS - burst) * 60 / CARBON_BUDGET
    assert took >= least - 2, took
    print(
        f"\ncreate budget {CARBON_BUDGET}/min: {METRICS} new metrics x {POINTS} points all in "
        f"whisper after {took:.1f}s (budget-bound minimum {least:.0f}s)"
    )


@pytest.mark.slow
def test_without_the_budget_carbon_drops_the_points_of_new_metrics(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The control: the same run with pacing off loses points (what the budget prevents)."""
    expected, stored, _took = deliver_new_metrics(tmp_path, redis_server, float("inf"), 5)
    lost = [m for m in expected if not stored[m]]
    assert len(lost) >= 100, len(lost)  # carbon created ~300 and dropped the rest
    print(f"\nwithout pacing: carbon ({CARBON_BUDGET}/min) lost every point of {len(lost)} metrics")


def test_metrics_endpoint_gauges_read_the_budget_at_scrape_time(redis_client: redis.Redis) -> None:
    budget = CreateBudget(redis_client, per_minute=60)
    budget.admit(f"n.m{i:02d}" for i in range(60))  # 54 granted, 6 waiting
    collected = {
        family.name: family.samples[0].value
        for family in create_budget.BudgetCollector(redis_client, 60).collect()
    }
    assert collected["vista_carbon_creates_waiting"] == 6
    assert collected["vista_carbon_create_tokens"] < 1
    assert collected["vista_carbon_creates_per_minute"] == 60
    assert 0 <= collected["vista_carbon_create_oldest_wait_seconds"] < 5
    assert list(create_budget.BudgetCollector(redis_client, float("inf")).collect()) == []
