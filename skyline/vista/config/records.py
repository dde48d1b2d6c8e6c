"""The validated settings: frozen records made by config/loader.py. Their defaults come from
the settings table (config/table.py), where every setting is written once."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from skyline.vista import bigquery_settings
from skyline.vista.config import table
from skyline.vista.entries import FetchEntry
from skyline.vista.secret import Secret, basic_pair, header_secrets

SinkType = Literal["flux", "graphite"]


DEFAULT_MAX_RESPONSE_BYTES = table.MAX_RESPONSE_BYTES.default
"""VISTA_MAX_RESPONSE_BYTES: about 20 times the largest answer Vista asks for (a Graphite batch
of 20 targets x 10,000 points; a Prometheus series of 11,000 points is ~0.3 MB). Answers over
1 MiB are parsed as they arrive and only the asked window's points are kept, so the fetcher
stays near its usual size even at the cap (bench/big_answer.py)."""


@dataclass(frozen=True)
class RedisConfig:
    url: str  # redis://, rediss:// or unix:// ; never carries the password
    password: Secret | None = None  # of the Redis server(s), primary and replicas
    socket_timeout: float = 10.0
    # Redis Sentinel (VISTA_REDIS_SENTINELS): when set, the primary of ``service`` is asked of
    # these sentinels, and asked again after a failover; ``url`` is then not used.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = table.REDIS_SENTINEL_SERVICE.default
    sentinel_password: Secret | None = None

    def describe(self) -> str:
        if self.sentinels:
            where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel service {self.service!r} via {where}"
        return self.url


@dataclass(frozen=True)
class FluxConfig:
    host: str
    port: int
    key: Secret | None
    protocol: Literal["http", "https"] = table.FLUX_PROTOCOL.default
    verify_ssl: bool = table.FLUX_VERIFY_SSL.default
    ca_bundle: str | None = table.FLUX_CA_BUNDLE.default
    max_age: int = table.FLUX_MAX_AGE.default
    batch_size: int = table.FLUX_BATCH_SIZE.default
    timeout: float = table.FLUX_TIMEOUT.default

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


@dataclass(frozen=True)
class CarbonConfig:
    host: str | None
    port: int = table.CARBON_PORT.default
    pickle_port: int = table.CARBON_PICKLE_PORT.default
    protocol: Literal["pickle", "plaintext"] = table.CARBON_PROTOCOL.default
    timeout: float = table.CARBON_TIMEOUT.default

    @property
    def address(self) -> tuple[str, int]:
        port = self.pickle_port if self.protocol == "pickle" else self.port
        return (self.host or "127.0.0.1", port)


@dataclass(frozen=True)
class SelfMetricsConfig:
    """Where Skyline-style self-metrics (skyline.vista.*) go: carbon plaintext, or nowhere."""

    host: str | None
    port: int = table.CARBON_PORT.default
    server_metrics_name: str = table.SERVER_METRICS_NAME.default

    @property
    def prefix(self) -> str:
        suffix = f".{self.server_metrics_name}" if self.server_metrics_name else ""
        return f"skyline.vista{suffix}"


@dataclass(frozen=True)
class HostOptions:
    """Transport options for one remote host (VISTA_REMOTE_HOSTS[<remote_host>])."""

    verify_ssl: bool = True
    ca_bundle: str | None = None
    # repr=False: header values are often credentials (Authorization, X-API-Key).
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    timeout: float = table.REQUEST_TIMEOUT.default
    max_concurrency: int = table.MAX_CONCURRENCY_PER_HOST.default
    api_key_header: str = table.API_KEY_HEADER.default
    requests_per_second: float | None = None  # request budget shared by every process
    burst: int | None = None  # the budget's bucket size (default: one second's worth)
    # An HTTP(S) forward proxy for this host (else HTTPS_PROXY/HTTP_PROXY/NO_PROXY apply).
    proxy: str | None = None  # http://host:port, no credentials in it
    proxy_user: str | None = None
    proxy_password: Secret | None = None


@dataclass(frozen=True)
class VistaConfig:
    """Every setting, validated (config/loader.py gives each field; the defaults are the
    table's)."""

    path: str
    enabled: bool
    verbose_logging: bool
    fetch_metrics: tuple[FetchEntry, ...]
    fetcher_max_runtime: float
    fetcher_processes: int
    worker_processes: int
    do_not_submit_current_minute: bool
    graphite_batch_size: int
    fetch_concurrency: int
    default_host_options: HostOptions
    remote_hosts: Mapping[str, HostOptions]
    max_response_bytes: int
    max_backfill: int  # seconds; 0 = as far back as the source holds data
    prune_removed_after: int  # seconds; 0 = never prune removed metrics' state
    queue_item_max_points: int
    fetch_max_points: int  # per metric per cycle
    worker_batch_items: int
    worker_lease: float
    max_attempts: int
    shutdown_timeout: float
    metrics_address: tuple[str, int] | None
    sink: SinkType
    redis: RedisConfig
    flux: FluxConfig
    carbon: CarbonConfig
    self_metrics: SelfMetricsConfig
    log_path: str
    pid_path: str
    # repr=False: the accounts hold credentials (flux_api_token, service_credentials, ...).
    bq_accounts: Mapping[str, Mapping[str, Any]] = field(repr=False)
    bigquery: bigquery_settings.BigQueryConfig
    carbon_max_creates_per_minute: float  # inf: no pacing of new metric names
    shards: tuple[str, ...]  # VISTA_SHARDS: the hosts that split the fetch list
    hostname: str  # this host's name among the Vista hosts (VISTA_HOSTNAME)
    member_ttl: float  # VISTA_MEMBER_TTL: a silent host is gone after this
    job_processes: Mapping[str, int]  # VISTA_JOB_PROCESSES
    backfill_concurrency: int  # VISTA_BACKFILL_CONCURRENCY: requests in flight per job
    backfill_max_range: int  # VISTA_BACKFILL_MAX_RANGE: seconds, 0 = no bound
    flux_check_last_timestamp: bool  # mirrors Flux's FLUX_CHECK_LAST_TIMESTAMP
    flux_carbon_host: str | None  # FLUX_CARBON_HOST: the carbon beside Flux
    flux_carbon_pickle_port: int | None  # FLUX_CARBON_PICKLE_PORT
    warnings: tuple[str, ...] = ()

    @property
    def shard_metrics(self) -> tuple[FetchEntry, ...]:
        """The entries this host fetches: all of them, or with VISTA_SHARDS the ones whose
        metric name hashes to this host (workers on every host deliver every item)."""
        if not self.shards:
            return self.fetch_metrics
        index = self.shards.index(self.hostname)
        return tuple(e for e in self.fetch_metrics if shard_of(e.metric, len(self.shards)) == index)

    def host_options(self, remote_host: str) -> HostOptions:
        return self.remote_hosts.get(remote_host.rstrip("/"), self.default_host_options)

    def secrets(self) -> list[str]:
        """Every secret value in the settings, for the log redaction filter."""
        found = [self.redis.password, self.redis.sentinel_password, self.flux.key]
        for entry in self.fetch_metrics:
            found += [entry.api_key, entry.token, entry.password]
            if entry.user is not None and entry.password:
                # An echoed 'Authorization: Basic ...' is the base64 of this pair.
                found.append(Secret(basic_pair(entry.user, entry.password.reveal())))
        for options in (self.default_host_options, *self.remote_hosts.values()):
            for name, value in options.headers:
                found += [Secret(v) for v in header_secrets(name, value)]
            if options.proxy_password:
                found.append(options.proxy_password)
                pair = basic_pair(options.proxy_user or "", options.proxy_password.reveal())
                found.append(Secret(pair))
        found += [Secret(s) for s in env_proxy_secrets()]
        found += [Secret(s) for s in bigquery_settings.secret_values(self.bq_accounts)]
        return [s.reveal() for s in found if s]

    @property
    def pidfile(self) -> str:
        return os.path.join(self.pid_path, "vista.pid")

    @property
    def logfile(self) -> str:
        return os.path.join(self.log_path, "vista.log")


PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")


def env_proxy_secrets() -> list[str]:
    """The passwords of the proxies named in the environment (HTTPS_PROXY=http://u:p@host),
    with their user:password pairs (the base64 of which a Proxy-Authorization header holds)."""
    found = []
    for variable in PROXY_VARIABLES:
        try:
            parts = urlsplit(os.environ.get(variable, ""))
            password = parts.password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
            user = unquote(parts.username or "")
            found.append(basic_pair(user, unquote(password)))
    return found


def shard_of(metric: str, count: int) -> int:
    """A stable shard number for a metric name (the same on every host and Python run)."""
    return zlib.crc32(metric.encode()) % count
