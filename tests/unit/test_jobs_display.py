"""What `vista jobs` says of a job's parameters."""

from __future__ import annotations

from skyline.vista.jobs.display import describe
from skyline.vista.jobs.record import JobRecord


def test_a_history_backfill_shows_its_range_in_utc_not_epochs() -> None:
    # Before: 'metric=prom.* from=1795745471 until=1796004659 resolution=15'
    record = JobRecord(
        "j1",
        "backfill",
        {"metric": "prom.*", "from": 1795745471, "until": 1796004659, "resolution": 15},
    )
    assert describe(record) == "metric=prom.* 2026-11-27 02:11..2026-11-30 02:10 resolution=15s"


def test_a_bigquery_job_shows_its_days() -> None:
    record = JobRecord(
        "j2",
        "bq_backfill",
        {
            "vista_bq_account_key": "shop",
            "from_timestamp": 1795478400,
            "until_timestamp": 1795910400,
            "dry_run": True,
        },
    )
    assert describe(record) == "vista_bq_account_key=shop 2026-11-24..2026-11-29 dry-run"
