"""bq_backfill and bq_update end to end: the real google-cloud-bigquery client against the local
BigQuery fake, points into a real carbon-cache (daily retention), read back from whisper."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

import pytest

from skyline.vista.bq.runner import JobFailed
from skyline.vista.bq_backfill import run_job as run_backfill
from skyline.vista.bq_update import change_record_key
from skyline.vista.bq_update import run_job as run_update
from skyline.vista.create_budget import GRANTED_KEY
from tests.fakes.bigquery import Answer, FakeBigQuery
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.bigquery import (
    COLUMNS,
    DAY,
    BigQueryRig,
    LocalJob,
    account,
    business_rows,
    business_table,
    changed_table,
    day_start,
    expected_points,
    read_whisper_tree,
    wait_whisper,
)

FAKE_PAGE_SIZE = 50  # rows a page of the BigQuery double (the ``fake`` fixture)


def params(name: str, first: int, last: int, **extra: Any) -> dict[str, Any]:
    return {
        "vista_bq_account_key": name,
        "from_timestamp": first,
        "until_timestamp": last,
        **extra,
    }


def test_backfill_into_carbon_exactly(bq: BigQueryRig, fake: FakeBigQuery) -> None:
    first, rows = business_table(fake, 10, 3, 40)  # 40 rows a day: 1 page of 50
    cfg = bq.bq_config(fake)
    job = LocalJob(cfg, bq.redis, params("shop", first, first + 2 * DAY))
    run_backfill(job)
    expected = expected_points(bq.prefix, rows)
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 3 * DAY, 360)
    assert got == expected
    # one query per interval, the date bound as a DATE parameter exactly as sent
    dates = [q.parameters for q in fake.received]
    assert [d[0]["parameterValue"]["value"] for d in dates] == [
        dt.datetime.fromtimestamp(first + i * DAY, dt.UTC).date().isoformat() for i in range(3)
    ]
    assert all(d[0]["parameterType"] == {"type": "DATE"} for d in dates)
    assert job.last["done"] == 3 and job.last["points"] == 360 and job.last["errors"] == 0
    archives = sorted(os.listdir(bq.tmp_path / "archives" / "shop"))
    assert len(archives) == 3 and all(a.endswith(".csv.gz") for a in archives)
    # no credential reached Redis
    for key in bq.redis.scan_iter("vista.*"):
        kind = bq.redis.type(key)
        text = repr(bq.redis.hgetall(key) if kind == b"hash" else bq.redis.type(key))
        assert "client-secret-value" not in text and "refresh-secret" not in text, key


def test_dry_run_writes_nothing(bq: BigQueryRig, fake: FakeBigQuery) -> None:
    first, _ = business_table(fake, 20, 2, 10)
    cfg = bq.bq_config(fake)
    job = LocalJob(cfg, bq.redis, params("shop", first, first + DAY, dry_run=True))
    run_backfill(job)
    assert len(fake.received) == 2
    assert job.last["points"] == 60
    assert "dry run: would send 60 points" in job.last["message"]
    assert read_whisper_tree(bq.carbon, bq.prefix, first - DAY, first + 2 * DAY) == {}
    assert not (bq.tmp_path / "archives").exists()
    granted = [m.decode() for m in bq.redis.zrange(GRANTED_KEY, 0, -1)]  # type: ignore[union-attr]
    assert not any(m.startswith(bq.prefix) for m in granted)


def test_stop_and_resume_from_checkpoint(bq: BigQueryRig, fake: FakeBigQuery) -> None:
    first, rows = business_table(fake, 30, 5, 4)
    cfg = bq.bq_config(fake)
    job_params = params("shop", first, first + 4 * DAY)
    running: list[object] = []

    def stop_after_two(j: LocalJob) -> bool:
        running.append(bq.redis.get("vista.bq_backfill.running"))
        return len(fake.received) >= 2

    job = LocalJob(cfg, bq.redis, job_params, stop_after=stop_after_two)
    run_backfill(job)  # SIGTERM-like stop after two intervals
    assert running and all(b'"job_id": "local-job"' in r for r in running)  # type: ignore[operator]
    assert bq.redis.get("vista.bq_backfill.running") is None  # Skyline's key, while running
    assert job.record.checkpoint["next"] == 2
    again = LocalJob(cfg, bq.redis, job_params, checkpoint=job.record.checkpoint)
    run_backfill(again)
    assert len(fake.received) == 5  # the finished intervals were not queried again
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 5 * DAY, 60)
    assert got == expected_points(bq.prefix, rows)
    assert again.last["done"] == 5 and again.last["points"] == 60


def test_failed_and_short_intervals_are_reported_and_the_rest_sent(
    bq: BigQueryRig, fake: FakeBigQuery
) -> None:
    first = day_start(40)
    rows = business_rows(first, 3, 6)
    rows = [r for r in rows if not (r[0] == rows[12][0] and str(r[1]) > "c002")]  # day 3: 3 rows
    fake.set_table(COLUMNS, rows, "day")
    acct = account(bq.prefix, min_expected_results=5)
    cfg = bq.bq_config(fake, {"shop": acct})
    day2 = dt.datetime.fromtimestamp(first + DAY, dt.UTC).date().isoformat()
    fake.set_answer(Answer("", date=day2, error=("notFound", "Table shop.daily was not found")))
    job = LocalJob(cfg, bq.redis, params("shop", first, first + 2 * DAY))
    with pytest.raises(JobFailed, match="2 of 3 interval") as err:
        run_backfill(job)
    assert f"{day2}: BigQuery job" in str(err.value) and "was not found" in str(err.value)
    failed = job.record.checkpoint["failed"]
    assert "was not found" in failed[day2]
    day3 = dt.datetime.fromtimestamp(first + 2 * DAY, dt.UTC).date().isoformat()
    assert "fewer than min_expected_results 5" in failed[day3]
    # the summary counts failed intervals as failed, not as bad rows (it said '2 bad row(s)')
    assert "1 of 3 interval(s) done, 2 failed; 6 rows" in job.last["message"], job.last
    assert "0 bad row(s)" in job.last["message"], job.last
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 3 * DAY, 18)
    assert got == expected_points(bq.prefix, rows[:6])


def test_update_sends_exactly_the_changed_and_new_values(
    bq: BigQueryRig, fake: FakeBigQuery
) -> None:
    first, rows = business_table(fake, 7, 7, 10)
    cfg = bq.bq_config(fake)
    run_backfill(LocalJob(cfg, bq.redis, params("shop", first, first + 6 * DAY)))
    wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 7 * DAY, 210)
    # late corrections: 5 values change, 2 rows appear (one day earlier than today)
    changed = [list(r) for r in rows]
    edits = [(0, 2), (3, 3), (15, 4), (33, 2), (68, 3)]
    for index, column in edits:
        changed[index][column] = 999 + index
    extra_day = dt.datetime.fromtimestamp(first + 2 * DAY, dt.UTC).date()
    new_rows: list[tuple[object, ...]] = [
        (extra_day, "zz1", 5, None, None),
        (extra_day, "zz2", None, 6.5, None),
    ]
    changed_table(fake, [*changed, *new_rows])
    fake.received.clear()
    before = read_whisper_tree(bq.carbon, bq.prefix, first - DAY, first + 7 * DAY)
    job = LocalJob(
        cfg,
        bq.redis,
        {
            "vista_bq_account_key": "shop",
            "from_timestamp": first,
            "until_timestamp": first + 6 * DAY,
        },
    )
    run_update(job)
    assert len(fake.received) == 7
    assert job.last["points"] == 7
    expected = expected_points(bq.prefix, [tuple(r) for r in changed])
    expected[f"{bq.prefix}.zz1.signups"] = {first + 2 * DAY: 5.0}
    expected[f"{bq.prefix}.zz2.revenue"] = {first + 2 * DAY: 6.5}
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 7 * DAY, 212)
    for _ in range(40):
        if got == expected:
            break
        got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 7 * DAY, 212)
    assert got == expected
    differ = {
        (m, ts) for m, pts in got.items() for ts, v in pts.items() if before.get(m, {}).get(ts) != v
    }
    assert len(differ) == 7
    # the change records name them
    records = {}
    for key in bq.redis.scan_iter("vista.bq_update.shop.*"):
        name = key.decode() if isinstance(key, bytes) else key
        if name.endswith("last_update"):
            continue
        assert 0 < bq.redis.ttl(key) <= 30 * DAY
        raw: dict[bytes, bytes] = bq.redis.hgetall(key)  # type: ignore[assignment]
        records[name] = {k.decode(): v.decode() for k, v in raw.items()}
    changes = [c for r in records.values() for c in json.loads(r["changed"])]
    news = [n for r in records.values() for n in json.loads(r["new"])]
    assert {(c["metric"], c["timestamp"]) for c in changes} | {(n[0], n[1]) for n in news} == differ
    assert sum(int(r["changed_count"]) for r in records.values()) == 5
    assert sum(int(r["new_count"]) for r in records.values()) == 2
    label = extra_day.isoformat()
    assert any(k.startswith(change_record_key("shop", label, "")) for k in records)
    assert bq.redis.exists("vista.bq_update.shop.last_update")


@pytest.mark.slow
def test_first_writes_wait_for_carbons_create_budget(bq: BigQueryRig, fake: FakeBigQuery) -> None:
    from skyline.vista.create_budget import BUDGET_KEY

    first, rows = business_table(fake, 50, 2, 20)  # 60 new names, then the same 60 again
    bq.redis.delete(BUDGET_KEY)
    cfg = bq.bq_config(
        fake,
        VISTA_CARBON_MAX_CREATES_PER_MINUTE=60,  # 1 a second, 54 at once
    )
    job = LocalJob(cfg, bq.redis, params("shop", first, first + DAY))
    began = time.monotonic()
    run_backfill(job)
    took = time.monotonic() - began
    assert 4.0 <= took <= 20.0, took  # 6 names waited about a second each
    granted = {m.decode() for m in bq.redis.zrange(GRANTED_KEY, 0, -1)}  # type: ignore[union-attr]
    assert {m for m in granted if m.startswith(bq.prefix)} == set(expected_points(bq.prefix, rows))
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 2 * DAY, 120)
    assert got == expected_points(bq.prefix, rows)


ACCOUNT_KEY = "ShopAccountFluxKey0123456789abcd"  # 32 alphanumeric characters


def flux_config(bq: BigQueryRig, fake: FakeBigQuery, flux: FluxServer, check_last: bool) -> Any:
    return bq.bq_config(
        fake,
        {"shop": account(bq.prefix, flux_api_token=ACCOUNT_KEY)},
        VISTA_SINK="flux",
        FLUX_IP="127.0.0.1",
        FLUX_PORT=flux.port,
        FLUX_SELF_API_KEY=DEFAULT_KEY,
        FLUX_CHECK_LAST_TIMESTAMP=check_last,
        FLUX_CARBON_HOST="127.0.0.1",
        FLUX_CARBON_PICKLE_PORT=bq.carbon.pickle_port,
    )


def test_flux_sink_backfill_and_rewrites_post_with_fill_and_the_accounts_key(
    bq: BigQueryRig, fake: FakeBigQuery
) -> None:
    first, rows = business_table(fake, 60, 2, 3)
    with FluxServer(keys=(DEFAULT_KEY, ACCOUNT_KEY)) as flux:
        cfg = flux_config(bq, fake, flux, True)
        run_backfill(LocalJob(cfg, bq.redis, params("shop", first, first + DAY, flux_test=True)))
        assert flux.accepted == [] and all(r.test_only_header for r in flux.requests)
        run_backfill(LocalJob(cfg, bq.redis, params("shop", first, first + DAY)))
        assert len(flux.accepted) == 18 and all(p.fill for p in flux.accepted)
        changed = [list(r) for r in rows]
        changed[4][2] = 4242
        changed_table(fake, changed)
        run_update(LocalJob(cfg, bq.redis, params("shop", first, first + DAY)))
        last = flux.accepted[-1]
        assert len(flux.accepted) == 19 and last.fill and last.value == 4242.0
        flux.wait_processed()
        forwarded = flux.forwarded_by_metric()[last.metric]
        assert forwarded[-1] == (last.timestamp, 4242.0)  # Flux sent the rewrite on to carbon
    assert read_whisper_tree(bq.carbon, bq.prefix, first - DAY, first + 2 * DAY) == {}


def test_flux_sink_without_flux_last_checks_off_rewrites_go_to_the_carbon_beside_flux(
    bq: BigQueryRig, fake: FakeBigQuery
) -> None:
    first, rows = business_table(fake, 70, 2, 3)
    with FluxServer(keys=(DEFAULT_KEY, ACCOUNT_KEY), check_last_timestamp=False) as flux:
        cfg = flux_config(bq, fake, flux, False)
        run_backfill(LocalJob(cfg, bq.redis, params("shop", first, first + DAY)))
        changed = [list(r) for r in rows]
        changed[4][2] = 4242
        changed_table(fake, changed)
        run_update(LocalJob(cfg, bq.redis, params("shop", first, first + DAY)))
        assert flux.requests == []
    expected = expected_points(bq.prefix, [tuple(r) for r in changed])
    got: dict[str, dict[int, float]] = {}
    for _ in range(60):
        got = read_whisper_tree(bq.carbon, bq.prefix, first - DAY, first + 2 * DAY)
        if got == expected:
            break
        time.sleep(0.25)
    assert got == expected


def test_counters_and_self_metrics(bq: BigQueryRig, fake: FakeBigQuery) -> None:
    from prometheus_client import REGISTRY

    first, _ = business_table(fake, 80, 2, 4)
    name = bq.prefix.replace(".", "_")
    cfg = bq.bq_config(
        fake,
        {name: account(bq.prefix)},
        SKYLINE_METRICS_CARBON_HOST="127.0.0.1",
        SKYLINE_METRICS_CARBON_PORT=bq.carbon.line_port,
    )

    def sample(metric: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(metric, labels) or 0.0

    run_backfill(LocalJob(cfg, bq.redis, params(name, first, first + DAY)))
    assert sample("vista_bq_rows_read_total", account=name) == 8
    assert sample("vista_bq_points_sent_total", account=name, kind="bq_backfill") == 24
    assert sample("vista_bq_intervals_total", account=name, kind="bq_backfill", result="done") == 2
    assert sample("vista_bq_bytes_billed_total", account=name) == 2 * 10_485_760
    prefix = f"skyline.vista.bq.{name}.bq_backfill"
    path = bq.carbon.whisper_path(f"{prefix}.points_sent")
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert path.exists()
    assert bq.carbon.whisper_path(f"{prefix}.intervals_done").exists()
