"""The VISTA_BQ_* settings beside the accounts (skyline/vista/config/, bigquery_settings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skyline.vista import config
from skyline.vista.bigquery_settings import BigQueryConfig
from skyline.vista.errors import ConfigError

BASE: dict[str, Any] = {
    "VISTA_ENABLED": True,
    "VISTA_SINK": "graphite",
    "CARBON_HOST": "c",
    "REDIS_URL": "redis://127.0.0.1:6379",
}


def test_defaults() -> None:
    assert config.validate(dict(BASE)).bigquery == BigQueryConfig()


def test_values() -> None:
    cfg = config.validate(
        {
            **BASE,
            "VISTA_BQ_API_ENDPOINT": "http://127.0.0.1:9050",
            "VISTA_BQ_ARCHIVE_DIR": "/srv/bq",
            "VISTA_BQ_QUERY_TIMEOUT": 30,
        }
    )
    assert cfg.bigquery == BigQueryConfig("http://127.0.0.1:9050", "/srv/bq", 30.0)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("VISTA_BQ_API_ENDPOINT", "127.0.0.1:9050", "an http:// or https:// URL"),
        ("VISTA_BQ_ARCHIVE_DIR", "archives", "an absolute directory path"),
        ("VISTA_BQ_QUERY_TIMEOUT", 0, "a number >= 1"),
    ],
)
def test_bad_values_are_refused_by_name(name: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.validate({**BASE, name: value})
    assert any(name in p and expected in p for p in err.value.problems), err.value.problems


def _account(**changes: Any) -> dict[str, Any]:
    account: dict[str, Any] = {
        "project_id": "shop-project",
        "query": "SELECT day, country, signups FROM shop.daily WHERE day = @date",
        "metric_prefix": "shop.daily",
        "date_field": "day",
        "primary_dimension": "country",
        "metric_dimensions": ["signups"],
        "schedule_interval": 86400,
        "oauth_credentials": {
            "token": "t",
            "refresh_token": "r",
            "token_uri": "http://127.0.0.1:9/token",
            "client_id": "c",
            "client_secret": "s",
        },
    }
    account.update(changes)
    return account


def test_what_a_job_would_find_first_refuses_to_start_every_mistake_at_once(
    tmp_path: Path,
) -> None:
    # Before, these passed validation (vista run started, vista check-config printed 'valid'
    # and then the BigQuery lines), or were reported only once the other mistakes were fixed.
    not_json = tmp_path / "sa.json"
    not_json.write_text('{"private_key": "-----BEGIN PRIVATE KEY-----\\nKEY-SECRET-42\\n"')
    with pytest.raises(ConfigError) as err:
        config.validate(
            {
                **BASE,
                "VISTA_JOB_PROCESSES": {"backfil": 2},
                "VISTA_BQ_ACCOUNTS": {
                    "shop": _account(
                        project_id="",  # a plain mistake, reported together with the rest
                        query="SELECT day, country, signups FROM shop.daily",
                        metric_prefix="shop.daily.",
                        schedule={"minute": 75, "hour": 1},
                        update_data_schedule={"minute": 30, "hour": [6, 25]},
                        update_data_period=-1,
                        min_expected_results=-3,
                    ),
                    "missing": _account(service_credentials_file=str(tmp_path / "none.json")),
                    "broken": _account(service_credentials_file=str(not_json)),
                },
            }
        )
    problems = err.value.problems
    shop = "VISTA_BQ_ACCOUNTS['shop']"
    for expected in (
        f"{shop} key 'project_id': got '', expected a non-empty string",
        f"{shop} key 'schedule' field 'minute': got 75, expected a cron minute (0-59",
        f"{shop} key 'update_data_schedule' field 'hour': got [6, 25], expected a cron hour (0-23",
        f"{shop} key 'query': the query names no @date/@interval_start/@interval_end parameter",
        f"{shop} key 'metric_prefix': got 'shop.daily.', expected no leading, trailing or double",
        f"{shop} key 'update_data_period': got -1, expected an integer >= 1",
        f"{shop} key 'min_expected_results': got -3, expected an integer >= 0",
        "VISTA_BQ_ACCOUNTS['missing'] key 'service_credentials_file': cannot read "
        f"service_credentials_file '{tmp_path / 'none.json'}': No such file or directory",
        "VISTA_BQ_ACCOUNTS['broken'] key 'service_credentials_file': service_credentials_file "
        f"'{not_json}' is not JSON",
        "VISTA_JOB_PROCESSES: got 'backfil', expected a job kind: ",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert len(problems) == 10, problems
    assert not any("KEY-SECRET-42" in p for p in problems)


def test_a_good_account_and_a_disabled_schedule_pass() -> None:
    cfg = config.validate(
        {
            **BASE,
            "VISTA_JOB_PROCESSES": {"bq_backfill": 1},
            "VISTA_BQ_ACCOUNTS": {
                "shop": _account(
                    schedule={"minute": 15, "hour": [1, 13], "day_of_week": "1-5"},
                    update_data_schedule={
                        f: 0 for f in ("minute", "hour", "day_of_month", "month", "day_of_week")
                    },
                )
            },
        }
    )
    assert list(cfg.bq_accounts) == ["shop"]


def test_an_empty_bigquery_range_is_named_in_utc() -> None:
    # Before: 'empty range: from 1793836800 until 1793491200 by 86400'
    from skyline.vista.bq.job import JobParams, JobParamsError

    cfg = config.validate({**BASE, "VISTA_BQ_ACCOUNTS": {"shop": _account()}})
    params = {"vista_bq_account_key": "shop", "from_timestamp": 1793836800}
    with pytest.raises(JobParamsError) as err:
        JobParams.parse({**params, "until_timestamp": 1793491200}, cfg, update=False)
    assert str(err.value) == (
        "empty range: from 2026-11-05 until 2026-11-01 UTC by 86400 s (--from is after --until)"
    )
