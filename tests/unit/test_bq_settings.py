"""The VISTA_BQ_* settings beside the accounts (skyline/vista/config.py, bigquery_settings.py)."""

from __future__ import annotations

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
