"""The issue's history test: 60 daily intervals × 200 primary values × 3 dimensions through the
agent's job supervisor (a job process of its own) into a real carbon-cache; a SIGKILL of the job
process in the middle; the same job as a dry run first."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter

import pytest

from skyline.vista.bq import submit
from skyline.vista.jobs.record import JobRecord, Status
from skyline.vista.jobs.store import JobStore
from skyline.vista.testing.servers import poll_until
from tests.fakes.bigquery import FakeBigQuery
from tests.support.bigquery import (
    COLUMNS,
    DAY,
    BigQueryRig,
    account,
    business_rows,
    day_start,
    expected_points,
    read_whisper_tree,
    wait_whisper,
)
from tests.support.supervised import Supervised

DAYS, VALUES = 60, 200


def wait_finished(jobs: JobStore, job_id: str, timeout: float) -> JobRecord:
    def probe() -> JobRecord | None:
        record = jobs.get(job_id)
        return record if record is not None and record.status.finished else None

    return poll_until(probe, timeout, what=f"the end of job {job_id}")


@pytest.mark.slow
def test_backfill_60_days_with_a_sigkill_in_the_middle(bq: BigQueryRig) -> None:
    first = day_start(DAYS + 1)
    last = first + (DAYS - 1) * DAY
    rows = business_rows(first, DAYS, VALUES)
    with FakeBigQuery(page_size=150) as fake:
        fake.set_table(COLUMNS, rows, "day")
        cfg = bq.bq_config(fake)
        jobs = submit.store(bq.redis, submit.BACKFILL)
        with Supervised(cfg, bq.redis, bq.tmp_path) as supervised:
            # the dry run: every interval read, nothing written
            dry, _ = submit.submit(bq.redis, submit.BACKFILL, "shop", first, last, dry_run=True)
            record = wait_finished(jobs, dry.id, 120)
            assert record and record.status is Status.DONE, record
            assert record.progress.points == DAYS * VALUES * 3
            assert len(fake.received) == DAYS
            time.sleep(1.5)  # carbon's writer would have flushed anything sent
            assert read_whisper_tree(bq.carbon, bq.prefix, first - DAY, last + DAY) == {}

            # the real job, killed in the middle
            fake.received.clear()
            fake.insert_delay = 0.08
            job, created = submit.submit(bq.redis, submit.BACKFILL, "shop", first, last)
            assert created
            assert submit.submit(bq.redis, submit.BACKFILL, "shop", first, last)[1] is False

            def midway() -> bool:
                r = jobs.get(job.id)
                return r is not None and int(r.checkpoint.get("next", 0)) >= DAYS // 3

            poll_until(
                lambda: midway() or None, 120, what="a third of the intervals", interval=0.01
            )
            pid = supervised.job_pid(job.id)
            done_before = int(jobs.get(job.id).checkpoint["next"])  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
            fake.insert_delay = 0.0
            final = wait_finished(jobs, job.id, 180)
            assert final and final.status is Status.DONE, final
            assert final.attempts == 2
            assert final.progress.done == DAYS and final.progress.total == DAYS

        expected = expected_points(bq.prefix, rows)
        got = wait_whisper(bq.carbon, bq.prefix, first - DAY, last + DAY, DAYS * VALUES * 3)
        assert len(got) == VALUES * 3
        assert got == expected
        # resumed from the last finished interval: each day queried once, except at most the one
        # (or two, with the checkpoint write in flight) in progress when the process was killed
        per_day = Counter(q.parameters[0]["parameterValue"]["value"] for q in fake.received)
        assert set(per_day) == {
            dt.datetime.fromtimestamp(first + i * DAY, dt.UTC).date().isoformat()
            for i in range(DAYS)
        }
        twice = [d for d, n in per_day.items() if n > 1]
        assert len(twice) <= 2 and all(per_day[d] == 2 for d in twice)
        days = sorted(per_day)
        assert all(days.index(d) >= done_before - 1 for d in twice)


def test_a_job_skyline_webapp_wrote_runs_and_leaves_no_secret(bq: BigQueryRig) -> None:
    first = day_start(3)
    rows = business_rows(first, 2, 5)
    acct = account(bq.prefix, update_replace_query="DAY_LABEL")
    acct["query"] = "SELECT * FROM shop.daily WHERE day = DAY_LABEL"
    with FakeBigQuery() as fake:
        fake.set_table(COLUMNS, rows, "day")
        cfg = bq.bq_config(fake, {"shop": acct})
        # bq_update: Skyline copies every key of the account, credentials included, into the job
        job_id = f"{int(time.time())}.shop"
        skyline_job = {
            **acct,
            "job_id": job_id,
            "vista_bq_account_key": "shop",
            "from_timestamp": first,
            "until_timestamp": first + DAY,
            "verify_ssl": True,
            "added_by": "webapp",
        }
        bq.redis.hset("vista.bq_update.work", job_id, str(skyline_job))
        jobs = submit.store(bq.redis, submit.UPDATE)
        with Supervised(cfg, bq.redis, bq.tmp_path):
            record = wait_finished(jobs, job_id, 60)
        assert record.status is Status.DONE, record
        days = [dt.datetime.fromtimestamp(first + i * DAY, dt.UTC).date() for i in range(2)]
        assert [q.sql for q in fake.received] == [
            f"SELECT * FROM shop.daily WHERE day = '{d.isoformat()}'" for d in days
        ]
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, first + 2 * DAY, 30)
    assert got == expected_points(bq.prefix, rows)
    for key in bq.redis.scan_iter("vista.bq_*"):
        kind = bq.redis.type(key)
        text = repr(bq.redis.hgetall(key) if kind == b"hash" else bq.redis.get(key))
        assert "client-secret-value" not in text and "refresh-secret" not in text, key
