"""Helpers for the BigQuery tests: a business table in the fake, accounts, settings, a job
context without the agent, and reading every whisper file under a prefix at once."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from skyline.vista.config import VistaConfig
from skyline.vista.testing.servers import SYSTEM_PYTHON, CarbonServer, RedisServer
from tests.fakes.bigquery import Column, FakeBigQuery
from tests.support import settings
from tests.support.rig import Rig

COLUMNS = (
    Column("day", "DATE"),
    Column("country", "STRING"),
    Column("signups", "INTEGER"),
    Column("revenue", "FLOAT"),
    Column("orders", "INTEGER"),
)
DIMENSIONS = ("signups", "revenue", "orders")
QUERY = "SELECT day, country, signups, revenue, orders FROM shop.daily WHERE day = @date"
DAY = 86400


def day_start(days_ago: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return int(now // DAY * DAY) - days_ago * DAY


def business_rows(first_day: int, days: int, countries: int) -> list[tuple[object, ...]]:
    """``days`` × ``countries`` rows with distinct values (value = f(day, country, column))."""
    rows: list[tuple[object, ...]] = []
    for d in range(days):
        day = dt.datetime.fromtimestamp(first_day + d * DAY, dt.UTC).date()
        for c in range(countries):
            rows.append((day, f"c{c:03d}", d * 1000 + c, d + c / 4, c * 7 + d))
    return rows


def business_table(
    fake: FakeBigQuery, days_ago: int, days: int, countries: int
) -> tuple[int, list[tuple[object, ...]]]:
    """The fake's table: :func:`business_rows` of ``days`` days from ``days_ago`` days back;
    returns the first day's start and the rows."""
    first = day_start(days_ago)
    rows = business_rows(first, days, countries)
    fake.set_table(COLUMNS, rows, "day")
    return first, rows


def changed_table(fake: FakeBigQuery, rows: Iterable[Iterable[object]]) -> None:
    """The fake's table replaced by ``rows`` (lists that a test changed, or tuples)."""
    fake.set_table(COLUMNS, [tuple(r) for r in rows], "day")


def expected_points(prefix: str, rows: list[tuple[object, ...]]) -> dict[str, dict[int, float]]:
    found: dict[str, dict[int, float]] = {}
    for day, country, *values in rows:
        assert isinstance(day, dt.date)
        ts = (day - dt.date(1970, 1, 1)).days * DAY
        for dim, value in zip(DIMENSIONS, values, strict=True):
            found.setdefault(f"{prefix}.{country}.{dim}", {})[ts] = float(value)  # type: ignore[arg-type]
    return found


def account(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": "shop-project",
        "query": QUERY,
        "metric_prefix": prefix,
        "date_field": "day",
        "primary_dimension": "country",
        "metric_dimensions": list(DIMENSIONS),
        "schedule_interval": DAY,
        "update_data_period": 7 * DAY,
        "date_field_format": "%Y-%m-%d",
        "schedule": {"minute": 0, "hour": 0, "day_of_month": 0, "month": 0, "day_of_week": 0},
        "oauth_credentials": {
            "token": "ya29.not-checked",
            "refresh_token": "1//refresh-secret",
            "token_uri": "http://127.0.0.1:9/token",
            "client_id": "client.apps.example",
            "client_secret": "client-secret-value",
        },
        **extra,
    }


def bq_settings(
    tmp_path: Path, fake: FakeBigQuery, carbon: CarbonServer | None, accounts: dict[str, Any]
) -> dict[str, Any]:
    """The BigQuery settings of these tests: ``accounts`` asked of ``fake``, archived in the temp
    dir, sent to ``carbon`` (None: a port nothing listens on)."""
    return {
        "VISTA_SINK": "graphite",
        "CARBON_HOST": "127.0.0.1",
        "CARBON_PICKLE_PORT": carbon.pickle_port if carbon else 9,
        "CARBON_PORT": carbon.line_port if carbon else 9,
        "VISTA_BQ_ACCOUNTS": accounts,
        "VISTA_BQ_API_ENDPOINT": fake.url,
        "VISTA_BQ_ARCHIVE_DIR": str(tmp_path / "archives"),
    }


def make_config(
    tmp_path: Path,
    redis_server: RedisServer,
    fake: FakeBigQuery,
    carbon: CarbonServer | None,
    accounts: dict[str, dict[str, Any]],
    **extra: Any,
) -> VistaConfig:
    """:func:`tests.support.settings.make_config` with :func:`bq_settings` (no self-metrics)."""
    values = {
        **bq_settings(tmp_path, fake, carbon, accounts),
        "SKYLINE_METRICS_CARBON_HOST": "",
        **extra,
    }
    return settings.make_config(tmp_path, redis_server, **values)


@dataclass(frozen=True)
class BigQueryRig(Rig):
    carbon: CarbonServer
    """A carbon-cache of its own with a daily retention (1d:400d)."""
    prefix: str
    """A metric prefix unique to this test in the session."""

    def bq_config(
        self, fake: FakeBigQuery, accounts: dict[str, Any] | None = None, **extra: Any
    ) -> VistaConfig:
        """:func:`make_config` here; by default one account, ``shop``, under ``prefix``."""
        accounts = {"shop": account(self.prefix)} if accounts is None else accounts
        return make_config(self.tmp_path, self.redis_server, fake, self.carbon, accounts, **extra)


class LocalJob:
    """A job context (see skyline/vista/bq/job.py JobIO) kept in this process; its checkpoint
    survives in ``saved`` so a test can run the job again from it."""

    class Record:
        def __init__(self, job_id: str, checkpoint: dict[str, Any]) -> None:
            self.id = job_id
            self.checkpoint = checkpoint

    def __init__(
        self,
        cfg: VistaConfig,
        client: redis.Redis,
        params: dict[str, Any],
        *,
        checkpoint: dict[str, Any] | None = None,
        stop_after: Callable[[LocalJob], bool] | None = None,
    ) -> None:
        self.config = cfg
        self.client = client
        self._params = params
        self.record = LocalJob.Record("local-job", dict(checkpoint or {}))
        self.progress_log: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._stop_after = stop_after

    @property
    def params(self) -> dict[str, Any]:
        return self._params

    def should_stop(self) -> bool:
        return self._stop_after is not None and self._stop_after(self)

    def progress(self, **changes: Any) -> None:
        self.last.update(changes)
        self.progress_log.append(dict(changes))

    def checkpoint(self, data: dict[str, Any], **progress: Any) -> None:
        self.record.checkpoint = dict(data)
        self.progress(**progress)


_READ_ALL = r"""
import json, os, sys, time, whisper
root, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
for base, _dirs, files in os.walk(root):
    for name in files:
        if not name.endswith(".wsp"):
            continue
        path = os.path.join(base, name)
        (first, _last, step), values = whisper.fetch(path, start, end, now=int(time.time()))
        rel = os.path.relpath(path, sys.argv[4])[:-4].replace(os.sep, ".")
        out[rel] = {first + i * step: v for i, v in enumerate(values) if v is not None}
print(json.dumps(out))
"""


def read_whisper_tree(
    carbon: CarbonServer, prefix: str, start: int, end: int
) -> dict[str, dict[int, float]]:
    """Every non-null point of every metric under ``prefix`` in (start, end]."""
    root = carbon.whisper_dir / prefix.replace(".", "/")
    if not root.exists():
        return {}
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _READ_ALL, str(root), str(start), str(end), str(carbon.whisper_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    data = json.loads(proc.stdout)
    return {m: {int(ts): v for ts, v in points.items()} for m, points in data.items()}


def wait_whisper(
    carbon: CarbonServer,
    prefix: str,
    start: int,
    end: int,
    points: int,
    timeout: float = 60.0,
) -> dict[str, dict[int, float]]:
    """Poll until at least ``points`` points are in whisper under ``prefix`` (then a little
    longer, so that a point written twice would show)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[int, float]] = {}
    while time.monotonic() < deadline:
        seen = read_whisper_tree(carbon, prefix, start, end)
        if sum(len(v) for v in seen.values()) >= points:
            return seen
        time.sleep(0.5)
    count = sum(len(v) for v in seen.values())
    raise TimeoutError(f"{count} of {points} points under {prefix} in whisper")
