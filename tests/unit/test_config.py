"""Settings validation: every mistake reported at once, with entry, field, bad value and
expectation; warnings for accepted-but-suspicious values; secrets never shown; the CLI's
check-config / run exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from skyline.vista import config
from skyline.vista.config import VistaConfig
from skyline.vista.entries import DEFAULT_GRAPHITE_URI, FIELDS
from skyline.vista.errors import ConfigError
from skyline.vista.secret import MASK, Secret

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_SETTINGS = REPO / "etc" / "vista" / "settings.py"
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable

PROM = "http://prometheus.example.org:9090"
GRAPHITE = "https://graphite.example.org"
GRAPHITE_URI = "/render/?from=-10minutes&format=json&target="
FLUX_KEY = "abcdefghijklmnopqrstuvwxyz012345"  # 32 letters and digits
ARITY = f"expected 12: ({', '.join(FIELDS)})"
HTTP_URL = "an http:// or https:// URL such as 'http://prometheus:9090'"
POSITIVE = "a positive integer number of seconds, e.g. 60"
FROM_EXPECTED = "from=-N followed by minutes, hours or days, e.g. from=-10minutes"
FLUX_CHARS = "(allowed: letters, digits, +-%._/=:)"

BASE: dict[str, Any] = {
    "VISTA_ENABLED": True,
    "VISTA_SINK": "graphite",
    "CARBON_HOST": "127.0.0.1",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "LOG_PATH": "/tmp/vista-test-log",
    "PID_PATH": "/tmp/vista-test-pid",
}

BQ_ACCOUNT: dict[str, Any] = {
    "project_id": "my-project",
    "query": "SELECT ts, host, requests FROM t WHERE ts = @date",
    "metric_prefix": "bq.web",
    "date_field": "ts",
    "primary_dimension": "host",
    "metric_dimensions": ["requests"],
    "schedule_interval": 3600,
    # read at validation: a file that loads (OAuth, no network call)
    "oauth_credentials_file": str(Path(__file__).with_name("bq-oauth.json")),
}


def prom(target: str = "m", **fields: object) -> tuple[object, ...]:
    """A valid 12-field Prometheus entry (prefix 'vista'), with some fields replaced."""
    values: dict[str, object] = {
        "remote_host": PROM,
        "remote_host_type": "prometheus",
        "frequency": 60,
        "remote_target": "sum(up)",
        "graphite_target": target,
        "uri": "default",
        "namespace_prefix": "vista",
        "api_key": None,
        "token": None,
        "user": None,
        "password": None,
        "populate_at_resolutions": (),
    }
    values.update(fields)
    return tuple(values[name] for name in FIELDS)


def graphite(target: str = "g", **fields: object) -> tuple[object, ...]:
    defaults: dict[str, object] = {
        "remote_host": GRAPHITE,
        "remote_host_type": "graphite",
        "remote_target": "sumSeries(stats.*.requests)",
        "uri": GRAPHITE_URI,
    }
    return prom(target, **{**defaults, **fields})


def settings(**overrides: object) -> dict[str, Any]:
    return {**BASE, **overrides}


def problems_of(values: Mapping[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.validate(values, "test-settings.py")
    return caught.value


def write_settings(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "settings.py"
    path.write_text(textwrap.dedent(body))
    return path


# --- one mistake at a time: the exact line -------------------------------------------------

ONE_MISTAKE: list[tuple[str, dict[str, Any], str | list[str]]] = [
    (
        "wrong arity",
        {"VISTA_FETCH_METRICS": (prom()[:5],)},
        f"VISTA_FETCH_METRICS[0]: has 5 fields, {ARITY}",
    ),
    (
        "wrong arity, 13 fields",
        {"VISTA_FETCH_METRICS": (prom() + ("extra",),)},
        f"VISTA_FETCH_METRICS[0]: has 13 fields, {ARITY}",
    ),
    (
        "unknown remote_host_type",
        {"VISTA_FETCH_METRICS": (prom(remote_host_type="influxdb"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host_type': got 'influxdb', "
        "expected 'graphite' or 'prometheus'",
    ),
    (
        "URL not http(s)",
        {"VISTA_FETCH_METRICS": (prom(remote_host="ftp://prometheus.example.org"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': "
        f"got 'ftp://prometheus.example.org', expected {HTTP_URL}",
    ),
    (
        "URL without a scheme",
        {"VISTA_FETCH_METRICS": (prom(remote_host="prometheus:9090"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': "
        f"got 'prometheus:9090', expected {HTTP_URL}",
    ),
    (
        "URL with a query",
        {"VISTA_FETCH_METRICS": (prom(remote_host="http://p:9090/?x=1"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': "
        "got 'http://p:9090/?x=1', expected a base URL without ?query or #fragment",
    ),
    (
        "URL that does not parse",
        {"VISTA_FETCH_METRICS": (prom(remote_host="http://[::1:9090"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': is not a valid URL: "
        "Invalid IPv6 URL",
    ),
    (
        "URL with a port out of range",
        {"VISTA_FETCH_METRICS": (prom(remote_host="http://p:99999"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': is not a valid URL: "
        "Port out of range 0-65535",
    ),
    (
        "frequency zero",
        {"VISTA_FETCH_METRICS": (prom(frequency=0),)},
        f"VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': got 0, expected {POSITIVE}",
    ),
    (
        "frequency negative",
        {"VISTA_FETCH_METRICS": (prom(frequency=-60),)},
        f"VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': got -60, expected {POSITIVE}",
    ),
    (
        "frequency float",
        {"VISTA_FETCH_METRICS": (prom(frequency=1.5),)},
        f"VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': got 1.5, expected {POSITIVE}",
    ),
    (
        "frequency bool",
        {"VISTA_FETCH_METRICS": (prom(frequency=True),)},
        f"VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': got True, expected {POSITIVE}",
    ),
    (
        "frequency text",
        {"VISTA_FETCH_METRICS": (prom(frequency="sixty"),)},
        f"VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': got 'sixty', expected {POSITIVE}",
    ),
    (
        "graphite from= in weeks",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?from=-2weeks&format=json&target="),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got 'from=-2weeks', "
        f"expected {FROM_EXPECTED}",
    ),
    (
        "graphite from= without the minus",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?from=10minutes&format=json&target="),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got 'from=10minutes', "
        f"expected {FROM_EXPECTED}",
    ),
    (
        "graphite from= absolute",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?from=20240101&format=json&target="),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got 'from=20240101', "
        f"expected {FROM_EXPECTED}",
    ),
    (
        "graphite from= missing",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?format=json&target="),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got '/render/?format=json&target=', "
        "expected a 'from=-N minutes|hours|days' parameter, e.g. from=-10minutes",
    ),
    (
        "graphite uri not ending in target=",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?from=-10minutes&format=json"),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': "
        "got '/render/?from=-10minutes&format=json', expected a render path ending in "
        "'target=', e.g. '/render/?from=-10minutes&format=json&target='",
    ),
    (
        "graphite format=raw",
        {"VISTA_FETCH_METRICS": (graphite(uri="/render/?from=-10minutes&format=raw&target="),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got 'format=raw', "
        "expected format=json (Vista reads the JSON render answer)",
    ),
    (
        "graphite until=",
        {
            "VISTA_FETCH_METRICS": (
                graphite(uri="/render/?from=-10minutes&until=-5minutes&format=json&target="),
            )
        },
        "VISTA_FETCH_METRICS[0] (vista.g) field 'uri': got 'until=-5minutes', "
        "expected no until= (or until=now): Vista sets the end of the window itself",
    ),
    (
        "prometheus uri not an API path",
        {"VISTA_FETCH_METRICS": (prom(uri="/graph?g0.expr=up"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'uri': got '/graph?g0.expr=up', expected "
        "'default' or a Prometheus API path such as '/api/v1/query?query=up' or "
        "'/api/v1/query_range?...'",
    ),
    (
        "namespace_prefix with a trailing dot",
        {"VISTA_FETCH_METRICS": (prom(namespace_prefix="vista."),)},
        "VISTA_FETCH_METRICS[0] (vista..m) field 'namespace_prefix': got 'vista.', "
        "expected no trailing dot (Vista adds the dot)",
    ),
    (
        "namespace_prefix with a leading dot",
        {"VISTA_FETCH_METRICS": (prom(namespace_prefix=".vista"),)},
        [
            "VISTA_FETCH_METRICS[0] (.vista.m) field 'namespace_prefix': got '.vista', "
            "expected no leading dot",
            "VISTA_FETCH_METRICS[0] (.vista.m): metric name '.vista.m' has an empty path "
            "element (leading/trailing dot or '..')",
        ],
    ),
    (
        "metric name with a space",
        {"VISTA_FETCH_METRICS": (prom("cpu load"),)},
        "VISTA_FETCH_METRICS[0] (vista.cpu load): metric name 'vista.cpu load' has characters "
        f"Flux rejects: ' ' {FLUX_CHARS}",
    ),
    (
        "metric name with a glob and braces",
        {"VISTA_FETCH_METRICS": (prom("web.{a,b}*"),)},
        "VISTA_FETCH_METRICS[0] (vista.web.{a,b}*): metric name 'vista.web.{a,b}*' has "
        f"characters Flux rejects: '*,{{}}' {FLUX_CHARS}",
    ),
    (
        "metric name with an empty element",
        {"VISTA_FETCH_METRICS": (prom("a..b"),)},
        "VISTA_FETCH_METRICS[0] (vista.a..b): metric name 'vista.a..b' has an empty path "
        "element (leading/trailing dot or '..')",
    ),
    (
        "two entries resolve to the same metric",
        {"VISTA_FETCH_METRICS": (prom("dup"), graphite("dup"))},
        "VISTA_FETCH_METRICS[1]: resolves to the metric name 'vista.dup', as "
        "VISTA_FETCH_METRICS[0] does; each entry needs its own graphite_target/prefix",
    ),
    (
        "populate_at_resolutions not a Prometheus duration",
        {"VISTA_FETCH_METRICS": (prom(populate_at_resolutions=("15days",)),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'populate_at_resolutions': got '15days', "
        "expected Prometheus durations such as '15d', '24h' or '90m'",
    ),
    (
        "populate_at_resolutions not a Graphite period",
        {"VISTA_FETCH_METRICS": (graphite(populate_at_resolutions=("7days", "2weeks")),)},
        "VISTA_FETCH_METRICS[0] (vista.g) field 'populate_at_resolutions': got '2weeks', "
        "expected periods such as '7days', '24hours' or '30minutes'",
    ),
    (
        "populate_at_resolutions a number",
        {"VISTA_FETCH_METRICS": (prom(populate_at_resolutions=15),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'populate_at_resolutions': got 15, "
        "expected a tuple of period strings, e.g. ('15d',)",
    ),
    (
        "user without password",
        {"VISTA_FETCH_METRICS": (prom(user="reader"),)},
        "VISTA_FETCH_METRICS[0] (vista.m): 'user' and 'password' go together for HTTP basic "
        "auth: give both or neither",
    ),
    (
        "token and basic auth",
        {"VISTA_FETCH_METRICS": (prom(token="t0ken-value", user="u", password="p4ssword"),)},
        "VISTA_FETCH_METRICS[0] (vista.m): give either 'token' (Bearer) or 'user'/'password' "
        "(basic), not both",
    ),
    (
        "empty remote_target",
        {"VISTA_FETCH_METRICS": (prom(remote_target=""),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_target': got '', "
        "expected a non-empty string",
    ),
    (
        "entry neither tuple nor dict",
        {"VISTA_FETCH_METRICS": ("http://p:9090",)},
        "VISTA_FETCH_METRICS[0]: got 'http://p:9090', expected a tuple of 12 fields or a dict",
    ),
    (
        "VISTA_FETCH_METRICS a dict",
        {"VISTA_FETCH_METRICS": {"a": 1}},
        "VISTA_FETCH_METRICS: got {'a': 1}, expected a tuple of fetch entries",
    ),
    (
        "dict entry with an unknown field",
        {
            "VISTA_FETCH_METRICS": (
                {
                    "remote_host": PROM,
                    "remote_host_type": "prometheus",
                    "remote_target": "up",
                    "graphite_target": "m",
                    "prefix": "x",
                },
            )
        },
        f"VISTA_FETCH_METRICS[0]: unknown field 'prefix' (fields: {', '.join(FIELDS)})",
    ),
    (
        "dict entry missing a required field",
        {
            "VISTA_FETCH_METRICS": (
                {"remote_host": PROM, "remote_host_type": "prometheus", "remote_target": "up"},
            )
        },
        "VISTA_FETCH_METRICS[0]: missing required field 'graphite_target'",
    ),
    (
        "BigQuery account missing a required key",
        {"VISTA_BQ_ACCOUNTS": {"web": {k: v for k, v in BQ_ACCOUNT.items() if k != "query"}}},
        "VISTA_BQ_ACCOUNTS['web']: missing required key 'query'",
    ),
    (
        "BigQuery account with a bad metric_format",
        {"VISTA_BQ_ACCOUNTS": {"web": {**BQ_ACCOUNT, "metric_format": "influx"}}},
        "VISTA_BQ_ACCOUNTS['web'] key 'metric_format': got 'influx', expected 'graphite' or "
        "'labelled_metrics' or 'prometheus' or 'victoriametrics'",
    ),
    (
        "BigQuery account without credentials",
        {
            "VISTA_BQ_ACCOUNTS": {
                "web": {k: v for k, v in BQ_ACCOUNT.items() if k != "oauth_credentials_file"}
            }
        },
        "VISTA_BQ_ACCOUNTS['web']: missing credentials: give one of oauth_credentials, "
        "oauth_credentials_file, service_credentials, service_credentials_file",
    ),
    (
        "BigQuery schedule_interval zero",
        {"VISTA_BQ_ACCOUNTS": {"web": {**BQ_ACCOUNT, "schedule_interval": 0}}},
        "VISTA_BQ_ACCOUNTS['web'] key 'schedule_interval': got 0, "
        "expected a positive number of seconds",
    ),
    (
        "VISTA_SINK unknown",
        {"VISTA_SINK": "kafka", "FLUX_SELF_API_KEY": FLUX_KEY},
        "VISTA_SINK: got 'kafka', expected 'flux' or 'graphite'",
    ),
    (
        "CARBON_HOST missing for the graphite sink",
        {"CARBON_HOST": None},
        "CARBON_HOST: not set; VISTA_SINK = 'graphite' needs carbon's address",
    ),
    (
        "FLUX_SELF_API_KEY missing for the flux sink",
        {"VISTA_SINK": "flux"},
        "FLUX_SELF_API_KEY: not set; VISTA_SINK = 'flux' needs Flux's key",
    ),
    (
        "REDIS_URL carries a password",
        {"REDIS_URL": "redis://:s3cretRedisPw@127.0.0.1:6379/0"},
        "REDIS_URL: carries a password; put it in REDIS_PASSWORD instead",
    ),
    (
        "REDIS_URL not a redis URL",
        {"REDIS_URL": "http://127.0.0.1:6379"},
        "REDIS_URL: got 'http://127.0.0.1:6379', expected a redis://, rediss:// or unix:// URL",
    ),
    (
        "REDIS_URL that does not parse",
        {"REDIS_URL": "redis://[::1:6379"},
        "REDIS_URL: is not a valid URL: Invalid IPv6 URL",
    ),
    (
        "VISTA_REMOTE_HOSTS key that does not parse",
        {"VISTA_REMOTE_HOSTS": {"http://[::1": {}}},
        "VISTA_REMOTE_HOSTS: got 'http://[::1', expected keys that are remote_host URLs",
    ),
    (
        "no Redis address",
        {"REDIS_URL": None},
        "REDIS_SOCKET_PATH: neither REDIS_SOCKET_PATH nor REDIS_URL is set",
    ),
    (
        "VISTA_WORKER_PROCESSES zero",
        {"VISTA_WORKER_PROCESSES": 0},
        "VISTA_WORKER_PROCESSES: got 0, expected an integer >= 1 and <= 64",
    ),
    (
        "VISTA_ENABLED not a bool",
        {"VISTA_ENABLED": "yes"},
        "VISTA_ENABLED: got 'yes', expected True or False",
    ),
    (
        "FLUX_PORT out of range",
        {"FLUX_PORT": 70000},
        "FLUX_PORT: got 70000, expected an integer >= 1 and <= 65535",
    ),
    (
        "LOG_PATH relative",
        {"LOG_PATH": "logs"},
        "LOG_PATH: got 'logs', expected an absolute directory path",
    ),
    (
        "VISTA_METRICS_ADDRESS without a port",
        {"VISTA_METRICS_ADDRESS": "127.0.0.1"},
        "VISTA_METRICS_ADDRESS: got '127.0.0.1', expected 'host:port', e.g. '127.0.0.1:9313'",
    ),
    (
        "VISTA_REMOTE_HOSTS unknown option",
        {"VISTA_REMOTE_HOSTS": {PROM: {"verify": False}}},
        f"VISTA_REMOTE_HOSTS['{PROM}']: unknown option 'verify' (options: api_key_header, "
        "burst, ca_bundle, headers, max_concurrency, proxy, proxy_password, proxy_user, "
        "requests_per_second, timeout, verify_ssl)",
    ),
    (
        "VISTA_REMOTE_HOSTS bad requests_per_second",
        {"VISTA_REMOTE_HOSTS": {PROM: {"requests_per_second": 0}}},
        f"VISTA_REMOTE_HOSTS['{PROM}'] option 'requests_per_second': got 0, expected a number "
        "> 0, or None",
    ),
    (
        "VISTA_REMOTE_HOSTS burst without a rate",
        {"VISTA_REMOTE_HOSTS": {PROM: {"burst": 5}}},
        f"VISTA_REMOTE_HOSTS['{PROM}'] option 'burst': needs 'requests_per_second' as well",
    ),
    (
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE zero",
        {"VISTA_CARBON_MAX_CREATES_PER_MINUTE": 0},
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE: got 0, expected a number >= 1",
    ),
    (
        "VISTA_REMOTE_HOSTS bad option value",
        {"VISTA_REMOTE_HOSTS": {PROM: {"timeout": 0}}},
        f"VISTA_REMOTE_HOSTS['{PROM}'] option 'timeout': got 0, expected a number >= 0.001",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [pytest.param(o, e, id=name) for name, o, e in ONE_MISTAKE],
)
def test_each_mistake_is_reported_with_entry_field_value_and_expectation(
    overrides: dict[str, Any], expected: str | list[str]
) -> None:
    lines = [expected] if isinstance(expected, str) else expected
    error = problems_of(settings(**overrides))
    assert error.problems == lines
    assert error.path == "test-settings.py"
    assert str(error) == f"{len(lines)} problem(s) in test-settings.py:\n  " + "\n  ".join(lines)


def test_a_file_with_many_mistakes_reports_every_one(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path,
        f"""
        VISTA_ENABLED = True
        VISTA_SINK = 'graphite'
        CARBON_HOST = '127.0.0.1'
        REDIS_URL = 'redis://127.0.0.1:6379/0'
        LOG_PATH = {str(tmp_path)!r}
        PID_PATH = {str(tmp_path)!r}
        VISTA_WORKER_PROCESSES = 0
        VISTA_FETCH_METRICS = (
            ('{PROM}', 'prometheus', 60, 'up', 'short'),
            ('{PROM}', 'influxdb', 60, 'up', 'kind', 'default', 'vista',
             None, None, None, None, ()),
            ('ftp://p:9090', 'prometheus', 60, 'up', 'scheme', 'default', 'vista',
             None, None, None, None, ()),
            ('{PROM}', 'prometheus', 0, 'up', 'freq', 'default', 'vista',
             None, None, None, None, ()),
            ('{GRAPHITE}', 'graphite', 60, 'a.b', 'from', '/render/?from=-1week&target=',
             'vista', None, None, None, None, ()),
            ('{PROM}', 'prometheus', 60, 'up', 'dot', 'default', 'vista.',
             None, None, None, None, ()),
            ('{PROM}', 'prometheus', 60, 'up', 'bad name', 'default', 'vista',
             None, None, None, None, ()),
            ('{PROM}', 'prometheus', 60, 'up', 'same', 'default', 'vista',
             None, None, None, None, ()),
            ('{PROM}', 'prometheus', 60, 'up2', 'same', 'default', 'vista',
             None, None, None, None, ()),
            ('{PROM}', 'prometheus', 60, 'up', 'bare', 'default', 'vista',
             None, None, None, None, 'fifteen'),
        )
        VISTA_BQ_ACCOUNTS = {{'web': {{'project_id': 'p'}}}}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    error = caught.value
    expected_fragments = [
        "VISTA_WORKER_PROCESSES: got 0",
        "VISTA_FETCH_METRICS[0]: has 5 fields",
        "VISTA_FETCH_METRICS[1] (vista.kind) field 'remote_host_type': got 'influxdb'",
        "VISTA_FETCH_METRICS[2] (vista.scheme) field 'remote_host': got 'ftp://p:9090'",
        "VISTA_FETCH_METRICS[3] (vista.freq) field 'frequency': got 0",
        "VISTA_FETCH_METRICS[4] (vista.from) field 'uri': got 'from=-1week'",
        "VISTA_FETCH_METRICS[5] (vista..dot) field 'namespace_prefix': got 'vista.'",
        "VISTA_FETCH_METRICS[6] (vista.bad name): metric name 'vista.bad name' has characters",
        "VISTA_FETCH_METRICS[8]: resolves to the metric name 'vista.same', as "
        "VISTA_FETCH_METRICS[7] does",
        "VISTA_FETCH_METRICS[9] (vista.bare) field 'populate_at_resolutions': got 'fifteen'",
    ]
    bq_missing = ["query", "metric_prefix", "date_field", "primary_dimension"]
    bq_missing += ["metric_dimensions", "schedule_interval"]
    expected_fragments += [
        f"VISTA_BQ_ACCOUNTS['web']: missing required key {k!r}" for k in bq_missing
    ]
    expected_fragments.append("VISTA_BQ_ACCOUNTS['web']: missing credentials")
    assert len(error.problems) == len(expected_fragments) == 17
    for fragment in expected_fragments:
        assert [p for p in error.problems if fragment in p] != [], fragment
    matched = {p for p in error.problems for f in expected_fragments if f in p}
    assert len(matched) == 17  # each fragment names a different problem
    assert error.path == str(path)
    assert str(error).startswith(f"17 problem(s) in {path}:")
    # The bare string was read as a one-element tuple (with a warning) before it failed.
    assert any("'fifteen' is a bare string" in w for w in error.warnings)


# --- valid settings ---------------------------------------------------------------------------


def test_a_valid_file_loads_into_typed_records(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path,
        f"""
        VISTA_ENABLED = True
        VISTA_SINK = 'flux'
        FLUX_IP = '10.0.0.5'
        FLUX_PORT = 8001
        FLUX_SELF_API_KEY = {FLUX_KEY!r}
        REDIS_SOCKET_PATH = '/run/redis/redis.sock'
        REDIS_PASSWORD = 'redis-pa55word'
        LOG_PATH = {str(tmp_path)!r}
        PID_PATH = {str(tmp_path)!r}
        VISTA_WORKER_PROCESSES = 3
        VISTA_FETCH_METRICS = (
            ('{PROM}/', 'prometheus', 60, 'sum(up)', 'up.total', 'default', 'vista.prom',
             None, 'bearer-t0ken', None, None, ('1h', '15d')),
            ('{GRAPHITE}', 'graphite', 300, 'sumSeries(a.*.b)', 'a.b',
             '/render/?from=-2hours&format=json&target=', '', 'api-k3y-value', None, None,
             None, ('24hours', '7days')),
        )
        """,
    )
    loaded = config.load(str(path))
    assert loaded.enabled is True
    assert loaded.warnings == ()
    assert loaded.sink == "flux"
    assert loaded.flux.url == "http://10.0.0.5:8001"
    assert loaded.flux.key == Secret(FLUX_KEY)
    assert loaded.redis.url == "unix:///run/redis/redis.sock"
    assert loaded.redis.password == Secret("redis-pa55word")
    assert loaded.worker_processes == 3
    assert loaded.pidfile == str(tmp_path / "vista.pid")
    assert loaded.logfile == str(tmp_path / "vista.log")
    p, g = loaded.fetch_metrics
    assert (p.index, p.metric, p.remote_host, p.host) == (0, "vista.prom.up.total", PROM, PROM)
    assert (p.frequency, p.uri, p.is_default_uri, p.window) == (60, "default", True, 300)
    assert p.token == Secret("bearer-t0ken")
    assert p.populate_at_resolutions == ("15d", "1h")  # coarsest first
    assert p.populate_seconds == (15 * 86400, 3600)
    assert (g.index, g.metric, g.remote_host_type, g.frequency) == (1, "a.b", "graphite", 300)
    assert g.uri_path == "/render/"
    assert g.uri_params == (("from", "-2hours"),)
    assert g.window == 7200
    assert g.api_key == Secret("api-k3y-value")
    assert g.populate_seconds == (7 * 86400, 86400)
    assert g.describe() == "VISTA_FETCH_METRICS[1] (a.b)"


def test_the_keyword_form_fills_in_defaults() -> None:
    loaded = config.validate(
        settings(
            VISTA_FETCH_METRICS=(
                {
                    "remote_host": PROM,
                    "remote_host_type": "prometheus",
                    "remote_target": "sum(rate(http_requests_total[5m]))",
                    "graphite_target": "http.rps",
                    "namespace_prefix": "vista.example",
                    "token": "eyJ-token-value",
                },
                {
                    "remote_host": GRAPHITE + "/grafana/proxy",
                    "remote_host_type": "graphite",
                    "remote_target": "a.b.c",
                    "graphite_target": "abc",
                    "frequency": 120,
                    "populate_at_resolutions": ["7days"],
                },
            )
        )
    )
    p, g = loaded.fetch_metrics
    assert p.metric == "vista.example.http.rps"
    assert (p.frequency, p.uri, p.is_default_uri) == (60, "default", True)
    assert p.token == Secret("eyJ-token-value")
    assert (p.api_key, p.user, p.password) == (None, None, None)
    assert p.populate_at_resolutions == ()
    assert g.metric == "abc"
    assert g.uri == DEFAULT_GRAPHITE_URI
    assert (g.uri_path, g.uri_params, g.window) == ("/render/", (("from", "-10minutes"),), 600)
    assert g.frequency == 120
    assert g.remote_host == GRAPHITE + "/grafana/proxy"
    assert g.host == GRAPHITE
    assert g.populate_seconds == (7 * 86400,)
    assert loaded.warnings == ()


def test_keyword_and_tuple_forms_give_the_same_entry() -> None:
    as_tuple = config.validate(settings(VISTA_FETCH_METRICS=(prom("x", token="tok3n-x"),)))
    as_dict = config.validate(
        settings(VISTA_FETCH_METRICS=(dict(zip(FIELDS, prom("x", token="tok3n-x"), strict=True)),))
    )
    assert as_tuple.fetch_metrics == as_dict.fetch_metrics


def test_populate_bare_string_is_read_as_a_tuple_with_a_warning() -> None:
    loaded = config.validate(
        settings(VISTA_FETCH_METRICS=(prom("m", populate_at_resolutions="15d"),))
    )
    (entry,) = loaded.fetch_metrics
    assert entry.populate_at_resolutions == ("15d",)
    assert entry.populate_seconds == (1_296_000,)
    assert loaded.warnings == (
        "VISTA_FETCH_METRICS[0] (vista.m) field 'populate_at_resolutions': '15d' is a bare "
        "string, read as ('15d',); write it with a trailing comma",
    )


def test_frequency_given_as_a_digit_string_is_accepted_with_a_warning() -> None:
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom(frequency="300"),)))
    assert loaded.fetch_metrics[0].frequency == 300
    assert loaded.warnings == (
        "VISTA_FETCH_METRICS[0] (vista.m) field 'frequency': '300' is a string; read as 300",
    )


def test_populate_with_a_custom_prometheus_uri_is_ignored_with_a_warning() -> None:
    loaded = config.validate(
        settings(
            VISTA_FETCH_METRICS=(
                prom(uri="/api/v1/query?query=up[5m]&time=0", populate_at_resolutions=("15d",)),
            )
        )
    )
    assert loaded.fetch_metrics[0].populate_seconds == ()
    assert loaded.warnings == (
        "VISTA_FETCH_METRICS[0] (vista.m) field 'populate_at_resolutions': ignored with a "
        "custom Prometheus uri (needs uri 'default')",
    )


@pytest.mark.parametrize(
    ("name", "warning"),
    [
        (
            "VISTA_FETCH_METRCS",
            "VISTA_FETCH_METRCS: unknown Vista setting, ignored; did you mean VISTA_FETCH_METRICS?",
        ),
        (
            "VISTA_WORKER_PROCESS",
            "VISTA_WORKER_PROCESS: unknown Vista setting, ignored; "
            "did you mean VISTA_WORKER_PROCESSES?",
        ),
        (
            "VISTA_QQQQQQQQQQQQQQQQQQQQQQ",
            "VISTA_QQQQQQQQQQQQQQQQQQQQQQ: unknown Vista setting, ignored",
        ),
    ],
)
def test_unknown_vista_name_warns_with_a_suggestion(name: str, warning: str) -> None:
    loaded = config.validate(settings(**{name: 1, "SOME_SKYLINE_SETTING": 2}))
    assert loaded.warnings == (warning,)


def test_ignored_legacy_settings_warn() -> None:
    loaded = config.validate(settings(VISTA_FETCHER_PROCESSES=4, VISTA_BQ_VIRTUALENV_PATH="/v"))
    assert len(loaded.warnings) == 2
    assert loaded.warnings[0].startswith("VISTA_FETCHER_PROCESSES: ignored: one asyncio loop")
    assert loaded.warnings[1].startswith("VISTA_BQ_VIRTUALENV_PATH: ignored: install")


def test_vista_enabled_false_loads_but_is_disabled() -> None:
    loaded = config.validate(settings(VISTA_ENABLED=False))
    assert loaded.enabled is False
    assert config.validate({k: v for k, v in BASE.items() if k != "VISTA_ENABLED"}).enabled is False


def test_redis_url_password_is_an_error_and_never_shown() -> None:
    error = problems_of(settings(REDIS_URL="redis://user:s3cretRedisPw@redis.example:6380/2"))
    assert error.problems == ["REDIS_URL: carries a password; put it in REDIS_PASSWORD instead"]
    assert "s3cretRedisPw" not in str(error)


def test_redis_url_without_password_is_kept() -> None:
    loaded = config.validate(settings(REDIS_URL="rediss://redis.example:6380/2"))
    assert loaded.redis.url == "rediss://redis.example:6380/2"
    assert loaded.redis.describe() == "rediss://redis.example:6380/2"


def test_example_settings_file_is_valid() -> None:
    loaded = config.load(str(EXAMPLE_SETTINGS))
    assert loaded.warnings == ()
    assert loaded.enabled is True
    assert [e.metric for e in loaded.fetch_metrics] == [
        "vista.local.prometheus.http_requests_total",
        "vista.local.prometheus.resident_memory_bytes",
    ]
    assert loaded.fetch_metrics[1].populate_seconds == (3600,)
    assert loaded.sink == "graphite"
    assert loaded.carbon.address == ("127.0.0.1", 2004)
    assert loaded.secrets() == []


def test_missing_settings_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError) as caught:
        config.load(str(missing))
    assert caught.value.problems == [
        f"settings file {str(missing)!r} does not exist (give --settings PATH or set "
        "$VISTA_SETTINGS)"
    ]


def test_settings_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_settings(tmp_path, "VISTA_ENABLED = True\nVISTA_SINK = (\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    (problem,) = caught.value.problems
    assert problem.startswith("line 2: syntax error: ")


def test_settings_that_raise_are_a_config_error(tmp_path: Path) -> None:
    path = write_settings(tmp_path, "VISTA_ENABLED = 1 / 0\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert caught.value.problems == ["settings.py raised ZeroDivisionError: division by zero"]


# --- secrets ----------------------------------------------------------------------------------

SECRETS = {
    "redis": "redis-Pa55word-1",
    "flux": FLUX_KEY,
    "api_key": "api-key-S3CRET-2",
    "token": "bearer-T0KEN-3",
    "password": "basic-PASSW0RD-4",
    "header": "Bearer header-S3CRET-5",
    "bq_token": "bq-flux-T0KEN-6",
    "bq_key": "bq-private-KEY-7",
}


def _config_with_every_secret() -> VistaConfig:
    return config.validate(
        settings(
            VISTA_SINK="flux",
            FLUX_SELF_API_KEY=SECRETS["flux"],
            REDIS_PASSWORD=SECRETS["redis"],
            VISTA_FETCH_METRICS=(
                prom("a", api_key=SECRETS["api_key"]),
                prom("b", token=SECRETS["token"]),
                graphite("c", user="reader", password=SECRETS["password"]),
            ),
            VISTA_REMOTE_HOSTS={PROM: {"headers": {"Authorization": SECRETS["header"]}}},
            VISTA_BQ_ACCOUNTS={
                "web": {
                    **BQ_ACCOUNT,
                    "flux_api_token": SECRETS["bq_token"],
                    "service_credentials": {
                        "private_key": SECRETS["bq_key"],
                        "token_uri": "https://oauth2.googleapis.com/token",
                    },
                }
            },
        )
    )


def test_secrets_never_appear_in_the_repr_of_the_config() -> None:
    loaded = _config_with_every_secret()
    text = repr(loaded) + str(loaded) + "".join(repr(e) for e in loaded.fetch_metrics)
    text += repr(loaded.redis) + repr(loaded.flux) + repr(loaded.remote_hosts)
    for name, value in SECRETS.items():
        assert value not in text, name
    assert f"Secret({MASK!r})" in repr(loaded.redis)
    assert loaded.fetch_metrics[2].user == "reader"  # a user name is not a secret


def test_config_secrets_lists_every_secret() -> None:
    loaded = _config_with_every_secret()
    # An Authorization header is listed whole and without its scheme ('Bearer '); a user and
    # password also as the pair whose base64 an echoed 'Authorization: Basic' header shows.
    expected = [
        *SECRETS.values(),
        SECRETS["header"].split(" ", 1)[1],
        f"reader:{SECRETS['password']}",
    ]
    assert sorted(loaded.secrets()) == sorted(expected)
    # what the host options really send
    assert loaded.host_options(PROM + "/").headers == (("Authorization", SECRETS["header"]),)


LEAKY_MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    (
        "password of a wrong type",
        {"VISTA_FETCH_METRICS": (prom(user="u", password=[SECRETS["password"]]),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'password': got '<hidden>', "
        "expected a string or None",
    ),
    (
        "token of a wrong type",
        {"VISTA_FETCH_METRICS": (prom(token=SECRETS["token"].encode()),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'token': got '<hidden>', expected a string or None",
    ),
    (
        "api_key of a wrong type",
        {"VISTA_FETCH_METRICS": (prom(api_key={"key": SECRETS["api_key"]}),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'api_key': got '<hidden>', "
        "expected a string or None",
    ),
    (
        "REDIS_PASSWORD of a wrong type",
        {"REDIS_PASSWORD": SECRETS["redis"].encode()},
        "REDIS_PASSWORD: got '<hidden>', expected a string or None",
    ),
    (
        "credentials in remote_host",
        {"VISTA_FETCH_METRICS": (prom(remote_host=f"https://bob:{SECRETS['password']}@p"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': carries credentials in the URL; "
        "put them in the 'user' and 'password' fields (they are then never logged or queued)",
    ),
    (
        "credentials in a remote_host of the wrong scheme",
        {"VISTA_FETCH_METRICS": (prom(remote_host=f"ftp://bob:{SECRETS['password']}@p"),)},
        "VISTA_FETCH_METRICS[0] (vista.m) field 'remote_host': carries credentials in the URL; "
        "put them in the 'user' and 'password' fields (they are then never logged or queued)",
    ),
    (
        "password in a REDIS_URL of the wrong scheme",
        {"REDIS_URL": f"http://:{SECRETS['redis']}@127.0.0.1:6379"},
        "REDIS_URL: carries a password; put it in REDIS_PASSWORD instead",
    ),
    (
        "headers of a wrong type",
        {"VISTA_REMOTE_HOSTS": {PROM: {"headers": {"Authorization": [SECRETS["header"]]}}}},
        f"VISTA_REMOTE_HOSTS['{PROM}'] option 'headers': got '<hidden>', "
        "expected a dict of str to str",
    ),
    (
        "flux_api_token of a wrong type",
        {"VISTA_BQ_ACCOUNTS": {"web": {**BQ_ACCOUNT, "flux_api_token": [SECRETS["bq_token"]]}}},
        "VISTA_BQ_ACCOUNTS['web'] key 'flux_api_token': got '<hidden>', expected a string",
    ),
    (
        "oauth_credentials of a wrong type",
        {"VISTA_BQ_ACCOUNTS": {"web": {**BQ_ACCOUNT, "oauth_credentials": SECRETS["bq_key"]}}},
        "VISTA_BQ_ACCOUNTS['web'] key 'oauth_credentials': got '<hidden>', expected a dict",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [pytest.param(o, e, id=name) for name, o, e in LEAKY_MISTAKES],
)
def test_secrets_never_appear_in_error_messages(overrides: dict[str, Any], expected: str) -> None:
    error = problems_of(settings(**overrides))
    assert expected in error.problems
    text = str(error) + "\n".join(error.problems + error.warnings)
    for name, value in SECRETS.items():
        assert value not in text, name


def test_secret_survives_pickling_for_worker_processes() -> None:
    import pickle

    loaded = _config_with_every_secret()
    copy = pickle.loads(pickle.dumps(loaded))
    assert copy.redis.password == Secret(SECRETS["redis"])
    assert copy.fetch_metrics[1].token is not None
    assert copy.fetch_metrics[1].token.reveal() == SECRETS["token"]
    assert sorted(copy.secrets()) == sorted(loaded.secrets())
    assert SECRETS["password"] in copy.secrets()


# --- the CLI ----------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VISTA_SETTINGS"}
    return subprocess.run(
        [PYTHON, "-m", "skyline.vista", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


BAD_FILE = f"""
VISTA_ENABLED = True
VISTA_SINK = 'graphite'
CARBON_HOST = '127.0.0.1'
REDIS_URL = 'redis://127.0.0.1:6379/0'
VISTA_FETCH_METRICS = (
    ('{PROM}', 'influxdb', 60, 'up', 'a', 'default', 'vista', None, None, None, None, ()),
    ('{PROM}', 'prometheus', -5, 'up', 'b', 'default', 'vista', None, None, None, None, ()),
    ('{PROM}', 'prometheus', 60, 'up', 'c', 'default', 'vista.', None, None, None, None, ()),
)
VISTA_FETCH_METRCS = ()
"""


@pytest.fixture
def bad_settings(tmp_path: Path) -> Path:
    text = BAD_FILE + f"LOG_PATH = {str(tmp_path)!r}\nPID_PATH = {str(tmp_path)!r}\n"
    return write_settings(tmp_path, text)


def test_check_config_prints_each_mistake_and_exits_1(bad_settings: Path) -> None:
    result = run_cli("--settings", str(bad_settings), "check-config", cwd=bad_settings.parent)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{bad_settings}: 3 problem(s):"
    assert lines[1:4] == [
        "  error: VISTA_FETCH_METRICS[0] (vista.a) field 'remote_host_type': got 'influxdb', "
        "expected 'graphite' or 'prometheus'",
        f"  error: VISTA_FETCH_METRICS[1] (vista.b) field 'frequency': got -5, expected {POSITIVE}",
        "  error: VISTA_FETCH_METRICS[2] (vista..c) field 'namespace_prefix': got 'vista.', "
        "expected no trailing dot (Vista adds the dot)",
    ]
    assert lines[4] == (
        "  warning: VISTA_FETCH_METRCS: unknown Vista setting, ignored; "
        "did you mean VISTA_FETCH_METRICS?"
    )
    assert len(lines) == 5


def test_check_config_of_the_example_settings_exits_0() -> None:
    result = run_cli("--settings", str(EXAMPLE_SETTINGS), "check-config", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"{EXAMPLE_SETTINGS}: valid"
    assert "  2 metric(s) on 1 remote host(s):" in result.stdout
    assert "error" not in result.stdout


def test_run_refuses_when_vista_enabled_is_false(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path,
        f"""
        VISTA_ENABLED = False
        VISTA_SINK = 'graphite'
        CARBON_HOST = '127.0.0.1'
        REDIS_URL = 'redis://127.0.0.1:1/0'
        LOG_PATH = {str(tmp_path / "log")!r}
        PID_PATH = {str(tmp_path / "run")!r}
        """,
    )
    result = run_cli("--settings", str(path), "run", cwd=tmp_path)
    assert result.returncode == 6
    assert "VISTA_ENABLED is False" in result.stderr
    assert str(path) in result.stderr
    assert not (tmp_path / "run" / "vista.pid").exists()


def test_run_with_invalid_settings_exits_6_with_the_errors(bad_settings: Path) -> None:
    result = run_cli("--settings", str(bad_settings), "run", cwd=bad_settings.parent)
    assert result.returncode == 6
    lines = result.stderr.splitlines()
    assert lines[0] == f"vista: 3 problem(s) in {bad_settings}; not starting:"
    assert lines[1].startswith("  VISTA_FETCH_METRICS[0] (vista.a) field 'remote_host_type'")
    assert lines[2].startswith("  VISTA_FETCH_METRICS[1] (vista.b) field 'frequency': got -5")
    assert lines[3].startswith("  VISTA_FETCH_METRICS[2] (vista..c) field 'namespace_prefix'")
    assert len(lines) == 4
    assert result.stdout == ""


def test_an_instant_query_without_time_is_warned_about() -> None:
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom(uri="/api/v1/query?query=up"),)))
    assert len(loaded.warnings) == 1
    assert loaded.warnings[0].startswith(
        "VISTA_FETCH_METRICS[0] (vista.m) field 'uri': an instant query without time= is "
        "evaluated at Prometheus' 'now'"
    )


@pytest.mark.parametrize(("prefix", "target"), [("", "metric_data")])
def test_a_metric_name_that_makes_a_shared_redis_key_is_refused(prefix: str, target: str) -> None:
    error = problems_of(
        settings(VISTA_FETCH_METRICS=(prom(target, namespace_prefix=prefix), prom("ok")))
    )
    name = f"{prefix}.{target}" if prefix else target
    assert error.problems == [
        f"VISTA_FETCH_METRICS[0] ({name}): metric name {name!r} would make its Redis key "
        "flux.last.<metric> the shared key 'flux.last.metric_data' (Vista or Skyline keeps "
        "every metric's data there); give it another graphite_target or a namespace_prefix"
    ]


SKYLINE_RANGE_EXAMPLE = (
    "/api/v1/query?query=node_network_transmit_bytes_total%7Bdevice%3D%22eth0%22%7D%5B5m%5D"
)


@pytest.mark.parametrize(
    "uri",
    [
        SKYLINE_RANGE_EXAMPLE,  # Skyline's own documented example, %-encoded
        "/api/v1/query?query=rate(x[5m])[30m:1m]",
        "/api/v1/query?query=x%5B5m%5D%20",
    ],
)
def test_a_range_selector_query_is_judged_decoded_and_not_warned_about(uri: str) -> None:
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom(uri=uri),)))
    assert loaded.warnings == ()


@pytest.mark.parametrize(
    ("uri", "sent"),
    [
        (
            "/api/v1/query?query=sum(up) + 1&time=5",
            "/api/v1/query?query=sum%28up%29%20%2B%201&time=5",
        ),
        (
            SKYLINE_RANGE_EXAMPLE,
            "/api/v1/query?query=node_network_transmit_bytes_total%7Bdevice%3D%22eth0%22%7D"
            "%5B5m%5D",
        ),
        (
            '/api/v1/query?query=a{b="c d"}&time=1',
            "/api/v1/query?query=a%7Bb%3D%22c%20d%22%7D&time=1",
        ),
        (
            "/api/v1/query_range?query=up&start=1&end=2&step=60",
            "/api/v1/query_range?query=up&start=1&end=2&step=60",
        ),
    ],
)
def test_a_custom_prometheus_uri_is_sent_percent_encoded(uri: str, sent: str) -> None:
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom(uri=uri),)))
    assert loaded.fetch_metrics[0].request_uri == sent


def test_a_plus_in_a_custom_uri_is_read_as_a_plus_with_a_warning_showing_what_is_sent() -> None:
    uri = "/api/v1/query?query=sum(up) + 1&time=5"
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom(uri=uri),)))
    assert loaded.warnings == (
        "VISTA_FETCH_METRICS[0] (vista.m) field 'uri': '+' is sent as a plus sign (PromQL "
        "addition), not as a space: the uri goes out as "
        "'/api/v1/query?query=sum%28up%29%20%2B%201&time=5'",
    )


# --- VISTA_SHARDS: the fetch list split between hosts by a stable hash of the metric name


def test_shards_split_the_fetch_list_between_hosts_exactly_once() -> None:
    entries = tuple(prom(f"m{i:03d}") for i in range(300))
    hosts = ("vista-a", "vista-b", "vista-c")
    owned = [
        config.validate(
            settings(VISTA_FETCH_METRICS=entries, VISTA_SHARDS=hosts, VISTA_HOSTNAME=host)
        ).shard_metrics
        for host in hosts
    ]
    names = [e.metric for part in owned for e in part]
    assert sorted(names) == sorted(f"vista.m{i:03d}" for i in range(300))  # each once
    assert all(60 <= len(part) <= 140 for part in owned), [len(p) for p in owned]
    # Stable: a metric's host depends on its name only (crc32), not on the run or the order.
    assert config.shard_of("vista.m000", 3) == 2
    reordered = config.validate(
        settings(VISTA_FETCH_METRICS=entries[::-1], VISTA_SHARDS=hosts, VISTA_HOSTNAME="vista-b")
    )
    assert {e.metric for e in reordered.shard_metrics} == {e.metric for e in owned[1]}


def test_without_shards_this_host_fetches_everything() -> None:
    loaded = config.validate(settings(VISTA_FETCH_METRICS=(prom("a"), prom("b"))))
    assert loaded.shards == () and loaded.shard_metrics == loaded.fetch_metrics


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ("vista-a", "VISTA_SHARDS: got 'vista-a', expected a tuple of host names"),
        (("vista-a", "vista-a"), "VISTA_SHARDS: got ('vista-a', 'vista-a'), expected each host"),
        (("vista-b", "vista-c"), "VISTA_SHARDS: this host ('vista-a') is not in"),
    ],
)
def test_bad_shards_are_reported(shards: object, message: str) -> None:
    caught = problems_of(settings(VISTA_SHARDS=shards, VISTA_HOSTNAME="vista-a"))
    assert any(p.startswith(message) for p in caught.problems), caught.problems
