"""Loading the settings: a Python ``settings.py`` module, read once and validated into the
frozen records of config/records.py, each setting as its entry in config/table.py says.

``load(path)`` executes the module, reads its upper-case names and returns a
:class:`VistaConfig`, or raises :class:`ConfigError` listing **every** mistake (entry, field, bad
value, what is expected). Warnings (accepted but suspicious values) travel on the config.
"""

from __future__ import annotations

import difflib
import os
import runpy
import socket
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from skyline.vista import bigquery_settings
from skyline.vista.config import table
from skyline.vista.config.hosts import remote_hosts
from skyline.vista.config.reader import Reader, scheme
from skyline.vista.config.records import (
    CarbonConfig,
    FluxConfig,
    HostOptions,
    SelfMetricsConfig,
    SinkType,
    VistaConfig,
)
from skyline.vista.config.redis_settings import redis_config
from skyline.vista.config.table import KNOWN_SETTINGS
from skyline.vista.constants import DEFAULT_SETTINGS_PATH, SETTINGS_ENV
from skyline.vista.entries import check_entries
from skyline.vista.errors import ConfigError
from skyline.vista.problems import Problems, show
from skyline.vista.secret import Secret

T = TypeVar("T")


def _shards(r: Reader) -> tuple[tuple[str, ...], str]:
    raw = r.values.get("VISTA_SHARDS", ())
    hostname = r.read(table.HOSTNAME) or socket.gethostname()
    if any(c.isspace() for c in hostname):
        r.problems.bad("VISTA_HOSTNAME", hostname, "a host name without spaces")
    if raw in (None, (), []):
        return (), hostname
    if not isinstance(raw, (tuple, list)) or not all(isinstance(h, str) and h for h in raw):
        r.problems.bad("VISTA_SHARDS", raw, "a tuple of host names, e.g. ('vista-1', 'vista-2')")
        return (), hostname
    if len(set(raw)) != len(raw):
        r.problems.bad("VISTA_SHARDS", raw, "each host name once")
        return (), hostname
    if hostname not in raw:
        r.problems.error(
            "VISTA_SHARDS",
            f"this host ({hostname!r}) is not in {tuple(raw)!r}; add it, or set VISTA_HOSTNAME "
            "to the name it has in the list",
        )
        return (), hostname
    return tuple(raw), hostname


def settings_path(cli_path: str | None = None) -> str:
    """--settings PATH, else $VISTA_SETTINGS, else the documented default."""
    return cli_path or os.environ.get(SETTINGS_ENV) or DEFAULT_SETTINGS_PATH


def read_module(path: str) -> dict[str, Any]:
    """Execute settings.py and return its upper-case names. Raises ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(
            [
                f"settings file {path!r} does not exist (give --settings PATH or set "
                f"${SETTINGS_ENV})"
            ],
            path,
        )
    try:
        namespace = runpy.run_path(path, run_name="vista_settings")
    except SyntaxError as exc:
        raise ConfigError(
            [f"line {exc.lineno}: syntax error: {exc.msg}: {_quote_line(exc.text)}"], path
        ) from exc
    except Exception as exc:
        raise ConfigError([f"settings.py raised {type(exc).__name__}: {exc}"], path) from exc
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


_SECRET_WORDS = ("password", "key", "token", "secret", "credential")


def _quote_line(text: str | None) -> str:
    """The offending line of a syntax error, unless it may hold a credential."""
    if text and any(word in text.lower() for word in _SECRET_WORDS):
        return "(line not shown: it may hold a credential)"
    return show(text)


def _flux(r: Reader, required: bool) -> FluxConfig:
    key_value = r.values.get("FLUX_SELF_API_KEY")
    key = None
    if isinstance(key_value, str) and key_value:
        key = Secret(key_value)
        if required and not (len(key_value) == 32 and key_value.isalnum()):
            r.problems.error(
                "FLUX_SELF_API_KEY",
                "expected 32 letters and digits, as Flux requires "
                f"(got {len(key_value)} characters)",
            )
    elif key_value not in (None, "") and required:
        r.problems.bad("FLUX_SELF_API_KEY", "<hidden>", "a string of 32 letters and digits")
    elif required:
        r.problems.error("FLUX_SELF_API_KEY", "not set; VISTA_SINK = 'flux' needs Flux's key")
    return FluxConfig(
        host=r.read(table.FLUX_IP),
        port=r.read(table.FLUX_PORT),
        key=key,
        protocol=r.read(table.FLUX_PROTOCOL),
        verify_ssl=r.read(table.FLUX_VERIFY_SSL),
        ca_bundle=r.read(table.FLUX_CA_BUNDLE),
        max_age=r.read(table.FLUX_MAX_AGE),
        batch_size=r.read(table.FLUX_BATCH_SIZE),
        timeout=r.read(table.FLUX_TIMEOUT),
    )


def _carbon(r: Reader, required: bool) -> CarbonConfig:
    host = r.read(table.CARBON_HOST)
    if required and not host:
        r.problems.error("CARBON_HOST", "not set; VISTA_SINK = 'graphite' needs carbon's address")
    return CarbonConfig(
        host=host,
        port=r.read(table.CARBON_PORT),
        pickle_port=r.read(table.CARBON_PICKLE_PORT),
        protocol=r.read(table.CARBON_PROTOCOL),
        timeout=r.read(table.CARBON_TIMEOUT),
    )


def _metrics_address(r: Reader) -> tuple[str, int] | None:
    value = r.read(table.METRICS_ADDRESS)
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.problems.bad("VISTA_METRICS_ADDRESS", value, "'host:port', e.g. '127.0.0.1:9313'")
        return None
    return (host.strip("[]"), int(port))


def _bigquery(r: Reader) -> bigquery_settings.BigQueryConfig:
    endpoint = r.read(table.BQ_API_ENDPOINT)
    if endpoint and scheme(endpoint) not in ("http", "https"):
        r.problems.bad("VISTA_BQ_API_ENDPOINT", endpoint, "an http:// or https:// URL")
    return bigquery_settings.BigQueryConfig(
        api_endpoint=endpoint or None,
        archive_dir=r.read(table.BQ_ARCHIVE_DIR),
        query_timeout=r.read(table.BQ_QUERY_TIMEOUT),
    )


def _unknown_names(values: Mapping[str, Any], problems: Problems) -> None:
    for name in sorted(values):
        if name.startswith("VISTA_") and name not in KNOWN_SETTINGS:
            close = difflib.get_close_matches(name, KNOWN_SETTINGS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.warn(name, f"unknown Vista setting, ignored{hint}")


def _job_processes(r: Reader) -> dict[str, int]:
    raw = r.values.get("VISTA_JOB_PROCESSES", {})
    if raw is None:
        return {}
    expected = "a dict of job kind -> processes (0-16), e.g. {'backfill': 1}"
    if not isinstance(raw, Mapping):
        r.problems.bad("VISTA_JOB_PROCESSES", raw, expected)
        return {}
    from skyline.vista.jobs.registry import names as job_kinds

    found = {}
    for name, count in raw.items():
        if isinstance(name, str) and name not in job_kinds():
            r.problems.bad("VISTA_JOB_PROCESSES", name, f"a job kind: {', '.join(job_kinds())}")
            continue
        if (
            not isinstance(name, str)
            or isinstance(count, bool)
            or not isinstance(count, int)
            or not 0 <= count <= 16
        ):
            r.problems.bad(f"VISTA_JOB_PROCESSES[{name!r}]", count, expected)
            continue
        found[name] = count
    return found


def validate(values: Mapping[str, Any], path: str = "<settings>") -> VistaConfig:
    """Turn the raw settings namespace into a VistaConfig, or raise ConfigError (all problems).

    Each setting is read by its own typed ``r.read(table.X)``, in a fixed order: the problems
    come in that order."""
    problems = Problems()
    r = Reader(values, problems)
    _unknown_names(values, problems)
    sink: SinkType = r.read(table.SINK)
    sink_known = values.get("VISTA_SINK", "flux") in ("flux", "graphite")
    fetcher_processes = _fetcher_processes(r)
    _warn_bq_virtualenv(values, problems)
    default_host = HostOptions(
        timeout=r.read(table.REQUEST_TIMEOUT),
        max_concurrency=r.read(table.MAX_CONCURRENCY_PER_HOST),
        api_key_header=r.read(table.API_KEY_HEADER),
    )
    entries = check_entries(values.get("VISTA_FETCH_METRICS", ()), problems)
    self_host = r.read(table.SELF_CARBON_HOST)
    carbon = _carbon(r, sink == "graphite" and sink_known)
    shards, hostname = _shards(r)
    config = VistaConfig(
        path=path,
        enabled=r.read(table.ENABLED),
        verbose_logging=r.read(table.VERBOSE_LOGGING),
        fetch_metrics=entries,
        fetcher_max_runtime=r.read(table.FETCHER_MAX_RUNTIME),
        fetcher_processes=fetcher_processes,
        worker_processes=r.read(table.WORKER_PROCESSES),
        do_not_submit_current_minute=r.read(table.DO_NOT_SUBMIT_CURRENT_MINUTE),
        graphite_batch_size=r.read(table.GRAPHITE_BATCH_SIZE),
        fetch_concurrency=r.read(table.FETCH_CONCURRENCY),
        default_host_options=default_host,
        remote_hosts=remote_hosts(r, default_host),
        max_response_bytes=r.read(table.MAX_RESPONSE_BYTES),
        max_backfill=r.read(table.MAX_BACKFILL),
        prune_removed_after=r.read(table.PRUNE_REMOVED_AFTER),
        queue_item_max_points=r.read(table.QUEUE_ITEM_MAX_POINTS),
        fetch_max_points=r.read(table.FETCH_MAX_POINTS),
        worker_batch_items=r.read(table.WORKER_BATCH_ITEMS),
        worker_lease=r.read(table.WORKER_LEASE),
        max_attempts=r.read(table.MAX_ATTEMPTS),
        shutdown_timeout=r.read(table.SHUTDOWN_TIMEOUT),
        metrics_address=_metrics_address(r),
        sink=sink,
        redis=redis_config(r),
        flux=_flux(r, sink == "flux" and sink_known),
        carbon=carbon,
        self_metrics=_self_metrics(r, self_host, carbon),
        log_path=r.read(table.LOG_PATH),
        pid_path=r.read(table.PID_PATH),
        bq_accounts=bigquery_settings.check_accounts(values.get("VISTA_BQ_ACCOUNTS", {}), problems),
        bigquery=_bigquery(r),
        carbon_max_creates_per_minute=r.read(table.CARBON_MAX_CREATES_PER_MINUTE),
        shards=shards,
        hostname=hostname,
        job_processes=_job_processes(r),
        member_ttl=r.read(table.MEMBER_TTL),
        backfill_concurrency=r.read(table.BACKFILL_CONCURRENCY),
        backfill_max_range=r.read(table.BACKFILL_MAX_RANGE),
        flux_check_last_timestamp=r.read(table.FLUX_CHECK_LAST_TIMESTAMP),
        flux_carbon_host=r.read(table.FLUX_CARBON_HOST),
        flux_carbon_pickle_port=r.read(table.FLUX_CARBON_PICKLE_PORT),
        warnings=(),
    )
    _warn_flux_backfill(config, problems)
    if problems.errors:
        raise ConfigError(problems.errors, path, warnings=problems.warnings)
    return replace(config, warnings=tuple(problems.warnings))


def _fetcher_processes(r: Reader) -> int:
    """VISTA_FETCHER_PROCESSES, read (and kept in the record) but ignored: warned above 1."""
    fetcher_processes = r.read(table.FETCHER_PROCESSES)
    if fetcher_processes > 1:
        r.problems.warn(
            "VISTA_FETCHER_PROCESSES",
            "ignored: one asyncio loop fetches every metric "
            "concurrently; VISTA_ASYNCIO_FETCHER_LIMIT sets how many requests at once",
        )
    return fetcher_processes


def _warn_bq_virtualenv(values: Mapping[str, Any], problems: Problems) -> None:
    if values.get("VISTA_BQ_VIRTUALENV_PATH"):
        problems.warn(
            "VISTA_BQ_VIRTUALENV_PATH",
            "ignored: install the 'bigquery' extra into "
            "Vista's own environment instead of a second virtualenv",
        )


def _self_metrics(r: Reader, self_host: str | None, carbon: CarbonConfig) -> SelfMetricsConfig:
    """Vista's own metrics go to SELF_CARBON_HOST/PORT, by default the sink's carbon."""
    return SelfMetricsConfig(
        host=self_host if self_host is not None else carbon.host,
        port=r.read(table.SELF_CARBON_PORT) or carbon.port,
        server_metrics_name=r.read(table.SERVER_METRICS_NAME),
    )


def _warn_flux_backfill(config: VistaConfig, problems: Problems) -> None:
    """With Flux's last-timestamp check off, a backfill needs a carbon beside Flux."""
    if (
        config.sink == "flux"
        and not config.flux_check_last_timestamp
        and not (config.flux_carbon_host or config.carbon.host)
    ):
        problems.warn(
            "FLUX_CHECK_LAST_TIMESTAMP",
            "False: Flux drops history at or below flux.last, so `vista backfill` sends it to "
            "the carbon beside Flux, but neither FLUX_CARBON_HOST nor CARBON_HOST is set; "
            "backfills are refused until one is",
        )


def load(path: str) -> VistaConfig:
    """Read and validate a settings.py file. Raises ConfigError listing every problem."""
    return validate(read_module(path), path)
