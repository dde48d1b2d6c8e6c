"""``vista bq`` end to end: a real agent (``vista run``) runs the jobs the CLI adds, against the
BigQuery fake and a real carbon-cache; ``vista status`` and ``vista check-config``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.bigquery import FakeBigQuery
from tests.support.bigquery import (
    DAY,
    BigQueryRig,
    account,
    bq_settings,
    business_table,
    changed_table,
    expected_points,
    read_whisper_tree,
    wait_whisper,
)
from tests.support.daemon import VistaHarness

FAKE_PAGE_SIZE = 25  # rows a page of the BigQuery double (the ``fake`` fixture)


def settings(
    bq: BigQueryRig, fake: FakeBigQuery, accounts: dict[str, Any] | None = None
) -> dict[str, object]:
    """The agent's settings file: ``accounts`` (default: ``shop``) asked of ``fake``, into
    ``bq.carbon``."""
    return {
        "VISTA_ENABLED": True,
        "REDIS_URL": bq.redis_server.url,
        **bq_settings(bq.tmp_path, fake, bq.carbon, accounts or {"shop": account(bq.prefix)}),
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": 1e9,
    }


def day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[list[VistaHarness]]:
    made: list[VistaHarness] = []
    yield made
    for h in made:
        h.cleanup()


@pytest.mark.slow
def test_backfill_and_update_through_the_cli(
    bq: BigQueryRig, fake: FakeBigQuery, harness: list[VistaHarness]
) -> None:
    first, rows = business_table(fake, 5, 5, 30)
    last = first + 4 * DAY
    h = VistaHarness(
        bq.tmp_path / "vista",
        settings(bq, fake),
    )
    harness.append(h)

    # queued while no agent runs: vista status shows it
    queued = h.cli(
        "bq", "backfill", "shop", "--from", day(first), "--until", day(first), "--dry-run"
    )
    assert queued.returncode == 0, str(queued)
    status = h.cli("status")
    assert "jobs bq_backfill: 0 running, 1 queued" in status.stdout, str(status)

    h.run_foreground(bq.tmp_path / "agent.log")
    backfill = h.cli("bq", "backfill", "shop", "--from", day(first), "--until", day(last), "--wait")
    print(backfill.stdout)
    assert backfill.returncode == 0, str(backfill)
    assert re.search(
        r"bq_backfill job \w+ added \(account shop, .*5 interval\(s\)\)", backfill.stdout
    )
    assert re.search(r"5/5 chunks \(100.0%\), 450 points", backfill.stdout), backfill.stdout
    assert re.search(r"job \w+ done", backfill.stdout)
    got = wait_whisper(bq.carbon, bq.prefix, first - DAY, last + DAY, 450)
    assert got == expected_points(bq.prefix, rows)

    changed = [list(r) for r in rows]
    changed[31][2] = 123456  # day 2, c001 signups
    changed[95][3] = 0.5  # day 4, c005 revenue
    changed_table(fake, changed)
    update = h.cli("bq", "update", "shop", "--from", day(first), "--until", day(last), "--wait")
    print(update.stdout)
    assert update.returncode == 0, str(update)
    assert re.search(r"5/5 chunks \(100.0%\), 2 points", update.stdout), update.stdout
    assert "2 value(s) changed, 0 new, 0 removed; sent 2 point(s)" in update.stdout

    listing = h.cli("bq", "jobs")
    print(listing.stdout)
    assert f"vista_bq_account_key=shop {day(first)}..{day(first)} dry-run" in listing.stdout
    assert f"vista_bq_account_key=shop {day(first)}..{day(last)}\n" in listing.stdout
    assert listing.returncode == 0
    assert listing.stdout.count(" done ") >= 3, listing.stdout  # the dry run, backfill, update
    expected = expected_points(bq.prefix, [tuple(r) for r in changed])
    for _ in range(50):
        got = read_whisper_tree(bq.carbon, bq.prefix, first - DAY, last + DAY)
        if got == expected:
            break
    assert got == expected


def test_check_config_loads_credentials_and_checks_the_query(
    bq: BigQueryRig, fake: FakeBigQuery, harness: list[VistaHarness]
) -> None:
    good = account("biz", schedule={"minute": 5, "hour": 2})
    key_file = bq.tmp_path / "sa.json"
    key_file.write_text(
        '{"type": "service_account", "private_key": "nope", "client_email": "a@b", '
        '"token_uri": "http://127.0.0.1:9/token"}'
    )
    bad = {
        **{k: v for k, v in account("biz2").items() if k != "oauth_credentials"},
        "query": "SELECT * FROM t WHERE day = '2024-01-01'",
        "service_credentials_file": str(key_file),
    }
    h = VistaHarness(
        bq.tmp_path / "vista",
        settings(bq, fake, {"good": good}),
    )
    harness.append(h)
    result = h.cli("check-config")
    assert result.returncode == 0, str(result)
    assert "bigquery account good: ok; credentials oauth; schedule '5 2 * * *' UTC" in result.stdout

    # The same mistakes refuse check-config and the agent alike, each naming account and key.
    h = VistaHarness(
        bq.tmp_path / "vista-bad",
        settings(bq, fake, {"good": good, "bad": bad}),
    )
    harness.append(h)
    result = h.cli("check-config")
    assert result.returncode == 1, str(result)
    assert "2 problem(s)" in result.stdout, result.stdout
    assert "VISTA_BQ_ACCOUNTS['bad'] key 'query': the query names no @date" in result.stdout
    assert (
        "VISTA_BQ_ACCOUNTS['bad'] key 'service_credentials_file': the service account key "
        "cannot be loaded" in result.stdout
    )
    assert "nope" not in result.stdout and "client-secret-value" not in result.stdout
    run = h.cli("run")
    assert run.returncode == 6, str(run)
    assert "VISTA_BQ_ACCOUNTS['bad'] key 'query'" in run.stderr, str(run)


def test_a_range_beyond_vista_backfill_max_range_is_refused_by_both_backfill_commands(
    bq: BigQueryRig, fake: FakeBigQuery, harness: list[VistaHarness]
) -> None:
    values = settings(bq, fake)
    values["VISTA_FETCH_METRICS"] = (
        {
            "remote_host": "http://127.0.0.1:1",
            "remote_host_type": "prometheus",
            "frequency": 60,
            "remote_target": "up",
            "graphite_target": "up",
            "uri": "default",
            "namespace_prefix": "p",
        },
    )
    h = VistaHarness(bq.tmp_path / "vista", values)
    harness.append(h)

    def job_ids() -> list[str]:
        return [line.split()[0] for line in h.cli("jobs").stdout.splitlines()]

    before = job_ids()
    bound = "more than VISTA_BACKFILL_MAX_RANGE (730.0 days = 63072000 s): ask for a shorter range"
    history = h.cli("backfill", "p.up", "--from", "-100000d")
    assert history.returncode != 0 and bound in history.stderr, str(history)
    assert history.stderr.startswith("vista backfill: the range "), str(history)
    refused = h.cli("bq", "backfill", "shop", "--from", "1800-01-01", "--until", "2026-01-01")
    assert refused.returncode != 0 and bound in refused.stderr, str(refused)
    want = "vista bq backfill: the range 1800-01-01 00:00..2026"
    assert refused.stderr.startswith(want), str(refused)
    assert job_ids() == before  # nothing was added
