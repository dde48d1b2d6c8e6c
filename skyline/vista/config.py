"""Settings: a Python ``settings.py`` module, loaded once and validated into frozen records.

``load(path)`` executes the module, reads its upper-case names and returns a
:class:`VistaConfig`, or raises :class:`ConfigError` listing **every** mistake (entry, field, bad
value, what is expected). Warnings (accepted but suspicious values) travel on the config.
"""

from __future__ import annotations

import difflib
import math
import os
import runpy
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from skyline.vista import bigquery_settings
from skyline.vista.constants import (
    DEFAULT_MEMBER_TTL,
    DEFAULT_SETTINGS_PATH,
    FLUX_BATCH_SIZE,
    SETTINGS_ENV,
)
from skyline.vista.entries import FetchEntry, check_entries
from skyline.vista.errors import ConfigError
from skyline.vista.problems import Problems, show
from skyline.vista.secret import Secret, basic_pair, header_secrets

SinkType = Literal["flux", "graphite"]


DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
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
    service: str = "mymaster"
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
    protocol: Literal["http", "https"] = "http"
    verify_ssl: bool = True
    ca_bundle: str | None = None
    max_age: int = 3600
    batch_size: int = FLUX_BATCH_SIZE
    timeout: float = 30.0

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


@dataclass(frozen=True)
class CarbonConfig:
    host: str | None
    port: int = 2003
    pickle_port: int = 2004
    protocol: Literal["pickle", "plaintext"] = "pickle"
    timeout: float = 10.0

    @property
    def address(self) -> tuple[str, int]:
        port = self.pickle_port if self.protocol == "pickle" else self.port
        return (self.host or "127.0.0.1", port)


@dataclass(frozen=True)
class SelfMetricsConfig:
    """Where Skyline-style self-metrics (skyline.vista.*) go: carbon plaintext, or nowhere."""

    host: str | None
    port: int = 2003
    server_metrics_name: str = ""

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
    timeout: float = 30.0
    max_concurrency: int = 10
    api_key_header: str = "X-API-Key"
    requests_per_second: float | None = None  # request budget shared by every process
    burst: int | None = None  # the budget's bucket size (default: one second's worth)
    # An HTTP(S) forward proxy for this host (else HTTPS_PROXY/HTTP_PROXY/NO_PROXY apply).
    proxy: str | None = None  # http://host:port, no credentials in it
    proxy_user: str | None = None
    proxy_password: Secret | None = None


@dataclass(frozen=True)
class VistaConfig:
    path: str
    enabled: bool = False
    verbose_logging: bool = False
    fetch_metrics: tuple[FetchEntry, ...] = ()
    fetcher_max_runtime: float = 50.0
    fetcher_processes: int = 1
    worker_processes: int = 1
    do_not_submit_current_minute: bool = True
    graphite_batch_size: int = 20
    fetch_concurrency: int = 100
    default_host_options: HostOptions = field(default_factory=HostOptions)
    remote_hosts: Mapping[str, HostOptions] = field(default_factory=dict)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_backfill: int = 0  # seconds; 0 = as far back as the source holds data
    prune_removed_after: int = 7 * 86400  # seconds; 0 = never prune removed metrics' state
    queue_item_max_points: int = 10_000
    fetch_max_points: int = 50_000  # per metric per cycle
    worker_batch_items: int = 50
    worker_lease: float = 60.0
    max_attempts: int = 5
    shutdown_timeout: float = 10.0
    metrics_address: tuple[str, int] | None = None
    sink: SinkType = "flux"
    redis: RedisConfig = field(default_factory=lambda: RedisConfig("unix:///tmp/redis.sock"))
    flux: FluxConfig = field(default_factory=lambda: FluxConfig("127.0.0.1", 8000, None))
    carbon: CarbonConfig = field(default_factory=lambda: CarbonConfig(None))
    self_metrics: SelfMetricsConfig = field(default_factory=lambda: SelfMetricsConfig(None))
    log_path: str = "/var/log/skyline"
    pid_path: str = "/var/run/skyline"
    # repr=False: the accounts hold credentials (flux_api_token, service_credentials, ...).
    bq_accounts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    bigquery: bigquery_settings.BigQueryConfig = field(
        default_factory=bigquery_settings.BigQueryConfig
    )
    carbon_max_creates_per_minute: float = 50.0  # inf: no pacing of new metric names
    shards: tuple[str, ...] = ()  # VISTA_SHARDS: the hosts that split the fetch list
    hostname: str = ""  # this host's name among the Vista hosts (VISTA_HOSTNAME)
    member_ttl: float = DEFAULT_MEMBER_TTL  # VISTA_MEMBER_TTL: a silent host is gone after this
    job_processes: Mapping[str, int] = field(default_factory=dict)  # VISTA_JOB_PROCESSES
    backfill_concurrency: int = 4  # VISTA_BACKFILL_CONCURRENCY: requests in flight per job
    flux_check_last_timestamp: bool = True  # mirrors Flux's FLUX_CHECK_LAST_TIMESTAMP
    flux_carbon_host: str | None = None  # FLUX_CARBON_HOST: the carbon beside Flux
    flux_carbon_pickle_port: int | None = None  # FLUX_CARBON_PICKLE_PORT
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


def _shards(r: _Reader) -> tuple[tuple[str, ...], str]:
    raw = r.values.get("VISTA_SHARDS", ())
    hostname = r.text("VISTA_HOSTNAME", None) or socket.gethostname()
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


KNOWN_SETTINGS = frozenset(
    {
        "VISTA_ENABLED",
        "VISTA_VERBOSE_LOGGING",
        "VISTA_FETCHER_PROCESSES",
        "VISTA_FETCHER_PROCESS_MAX_RUNTIME",
        "VISTA_WORKER_PROCESSES",
        "VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE",
        "VISTA_FETCH_METRICS",
        "VISTA_GRAPHITE_BATCH_SIZE",
        "VISTA_BQ_VIRTUALENV_PATH",
        "VISTA_BQ_ACCOUNTS",
        "VISTA_BQ_API_ENDPOINT",
        "VISTA_BQ_ARCHIVE_DIR",
        "VISTA_BQ_QUERY_TIMEOUT",
        "VISTA_ASYNCIO_FETCHER_LIMIT",
        "VISTA_SINK",
        "VISTA_REMOTE_HOSTS",
        "VISTA_REQUEST_TIMEOUT",
        "VISTA_MAX_CONCURRENCY_PER_HOST",
        "VISTA_API_KEY_HEADER",
        "VISTA_MAX_RESPONSE_BYTES",
        "VISTA_MAX_BACKFILL",
        "VISTA_PRUNE_REMOVED_AFTER",
        "VISTA_QUEUE_ITEM_MAX_POINTS",
        "VISTA_FETCH_MAX_POINTS",
        "VISTA_WORKER_BATCH_ITEMS",
        "VISTA_WORKER_LEASE",
        "VISTA_MAX_ATTEMPTS",
        "VISTA_SHUTDOWN_TIMEOUT",
        "VISTA_METRICS_ADDRESS",
        "VISTA_CARBON_PROTOCOL",
        "VISTA_CARBON_TIMEOUT",
        "VISTA_FLUX_PROTOCOL",
        "VISTA_FLUX_VERIFY_SSL",
        "VISTA_FLUX_CA_BUNDLE",
        "VISTA_FLUX_BATCH_SIZE",
        "VISTA_FLUX_TIMEOUT",
        "REDIS_SOCKET_PATH",
        "REDIS_PASSWORD",
        "REDIS_URL",
        "FLUX_IP",
        "FLUX_PORT",
        "FLUX_SELF_API_KEY",
        "FLUX_MAX_AGE",
        "CARBON_HOST",
        "CARBON_PORT",
        "CARBON_PICKLE_PORT",
        "SKYLINE_METRICS_CARBON_HOST",
        "SKYLINE_METRICS_CARBON_PORT",
        "SERVER_METRICS_NAME",
        "LOG_PATH",
        "PID_PATH",
        "SKYLINE_TMP_DIR",
        "VISTA_SHARDS",
        "VISTA_HOSTNAME",
        "VISTA_JOB_PROCESSES",
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE",
        "VISTA_MEMBER_TTL",
        "VISTA_REDIS_SENTINELS",
        "VISTA_REDIS_SENTINEL_SERVICE",
        "VISTA_REDIS_SENTINEL_PASSWORD",
        "VISTA_BACKFILL_CONCURRENCY",
        "FLUX_CHECK_LAST_TIMESTAMP",
        "FLUX_CARBON_HOST",
        "FLUX_CARBON_PICKLE_PORT",
    }
)


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
    except Exception as exc:  # noqa: BLE001 - any error raised by user code in settings.py
        raise ConfigError([f"settings.py raised {type(exc).__name__}: {exc}"], path) from exc
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


_SECRET_WORDS = ("password", "key", "token", "secret", "credential")


def _quote_line(text: str | None) -> str:
    """The offending line of a syntax error, unless it may hold a credential."""
    if text and any(word in text.lower() for word in _SECRET_WORDS):
        return "(line not shown: it may hold a credential)"
    return show(text)


class _Reader:
    """Typed access to the raw settings namespace, recording problems."""

    def __init__(self, values: Mapping[str, Any], problems: Problems) -> None:
        self.values = values
        self.problems = problems

    def boolean(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        if not isinstance(value, bool):
            self.problems.bad(name, value, "True or False")
            return default
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self.values.get(name, default)
        bad = isinstance(value, bool) or not isinstance(value, int) or value < minimum
        if not bad and maximum is not None and value > maximum:
            bad = True
        if bad:
            limits = f"an integer >= {minimum}" + (
                f" and <= {maximum}" if maximum is not None else ""
            )
            self.problems.bad(name, value, limits)
            return default
        return int(value)

    def number(self, name: str, default: float, *, minimum: float = 0.001) -> float:
        value = self.values.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            self.problems.bad(name, value, f"a number >= {minimum}")
            return default
        return float(value)

    def text(self, name: str, default: str | None, *, choices: tuple[str, ...] = ()) -> str | None:
        value = self.values.get(name, default)
        if value is None or value == "":
            return default if value is None else None
        if not isinstance(value, str):
            self.problems.bad(name, value, "a string")
            return default
        if choices and value not in choices:
            self.problems.bad(name, value, " or ".join(repr(c) for c in choices))
            return default
        return value

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, minimum=1, maximum=65535)


def _redis(r: _Reader) -> RedisConfig:
    url = r.text("REDIS_URL", None)
    socket_path = r.text("REDIS_SOCKET_PATH", None)
    password_text = r.values.get("REDIS_PASSWORD")
    password = None
    if password_text not in (None, ""):
        if isinstance(password_text, str):
            password = Secret(password_text)
        else:
            r.problems.bad("REDIS_PASSWORD", "<hidden>", "a string or None")
    sentinels, service = _sentinels(r)
    if sentinels:
        return RedisConfig(
            url="",
            password=password,
            sentinels=sentinels,
            service=service,
            sentinel_password=_password(r, "VISTA_REDIS_SENTINEL_PASSWORD"),
        )
    if url:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. 'redis://[::1' (the text may hold a password)
            r.problems.error("REDIS_URL", f"is not a valid URL: {exc}")
            return RedisConfig(url="unix:///tmp/redis.sock", password=password)
        if parts.password:
            r.problems.error("REDIS_URL", "carries a password; put it in REDIS_PASSWORD instead")
            url = url.replace(f":{parts.password}@", ":@")
        if parts.scheme not in ("redis", "rediss", "unix"):
            r.problems.bad("REDIS_URL", url, "a redis://, rediss:// or unix:// URL")
        return RedisConfig(url=url, password=password)
    if socket_path:
        return RedisConfig(url=f"unix://{socket_path}", password=password)
    r.problems.error("REDIS_SOCKET_PATH", "neither REDIS_SOCKET_PATH nor REDIS_URL is set")
    return RedisConfig(url="unix:///tmp/redis.sock", password=password)


def _password(r: _Reader, name: str) -> Secret | None:
    value = r.values.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        r.problems.bad(name, "<hidden>", "a string or None")
        return None
    return Secret(value)


_SENTINELS_EXPECTED = (
    "a tuple of 'host:port' strings or (host, port) pairs, e.g. ('10.0.0.1:26379',)"
)


def _sentinel_address(raw: object) -> tuple[str, int] | None:
    """('host', port) from 'host:port', '[v6]:port' or a (host, port) pair; None if invalid."""
    if isinstance(raw, str):
        host, sep, port_text = raw.rpartition(":")
        if not sep or not port_text.isdigit():
            return None
        port: object = int(port_text)
        host = host.strip("[]")
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        host, port = raw[0], raw[1]
    else:
        return None
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return (host, port)


def _sentinels(r: _Reader) -> tuple[tuple[tuple[str, int], ...], str]:
    """The sentinels' addresses and the service name (VISTA_REDIS_SENTINEL_*)."""
    raw = r.values.get("VISTA_REDIS_SENTINELS", ())
    if raw in (None, (), []):
        for name in ("VISTA_REDIS_SENTINEL_SERVICE", "VISTA_REDIS_SENTINEL_PASSWORD"):
            if r.values.get(name) not in (None, "", "mymaster"):  # the default is no news
                r.problems.warn(name, "ignored: VISTA_REDIS_SENTINELS is not set")
        return (), ""
    if not isinstance(raw, (tuple, list)):
        r.problems.bad("VISTA_REDIS_SENTINELS", raw, _SENTINELS_EXPECTED)
        return (), ""
    found = []
    for index, item in enumerate(raw):
        address = _sentinel_address(item)
        if address is None:
            r.problems.bad(f"VISTA_REDIS_SENTINELS[{index}]", item, "'host:port' or (host, port)")
        else:
            found.append(address)
    if len(set(found)) != len(found):
        r.problems.bad("VISTA_REDIS_SENTINELS", raw, "each sentinel once")
    service = r.values.get("VISTA_REDIS_SENTINEL_SERVICE", "mymaster")
    if not isinstance(service, str) or not service or any(c.isspace() for c in service):
        r.problems.bad(
            "VISTA_REDIS_SENTINEL_SERVICE",
            service,
            "the name the sentinels monitor, e.g. 'mymaster'",
        )
        service = "mymaster"
    return tuple(found), service


def _flux(r: _Reader, required: bool) -> FluxConfig:
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
    protocol = r.text("VISTA_FLUX_PROTOCOL", "http", choices=("http", "https"))
    return FluxConfig(
        host=r.text("FLUX_IP", "127.0.0.1") or "127.0.0.1",
        port=r.port("FLUX_PORT", 8000),
        key=key,
        protocol="https" if protocol == "https" else "http",
        verify_ssl=r.boolean("VISTA_FLUX_VERIFY_SSL", True),
        ca_bundle=r.text("VISTA_FLUX_CA_BUNDLE", None),
        max_age=r.integer("FLUX_MAX_AGE", 3600),
        batch_size=r.integer("VISTA_FLUX_BATCH_SIZE", FLUX_BATCH_SIZE, maximum=10_000),
        timeout=r.number("VISTA_FLUX_TIMEOUT", 30.0),
    )


def _carbon(r: _Reader, required: bool) -> CarbonConfig:
    host = r.text("CARBON_HOST", None)
    if required and not host:
        r.problems.error("CARBON_HOST", "not set; VISTA_SINK = 'graphite' needs carbon's address")
    protocol = r.text("VISTA_CARBON_PROTOCOL", "pickle", choices=("pickle", "plaintext"))
    return CarbonConfig(
        host=host,
        port=r.port("CARBON_PORT", 2003),
        pickle_port=r.port("CARBON_PICKLE_PORT", 2004),
        protocol="plaintext" if protocol == "plaintext" else "pickle",
        timeout=r.number("VISTA_CARBON_TIMEOUT", 10.0),
    )


def _host_options(r: _Reader, name: str, raw: object, default: HostOptions) -> HostOptions:
    if not isinstance(raw, Mapping):
        r.problems.bad(name, raw, "a dict of transport options")
        return default
    known = {
        "verify_ssl",
        "ca_bundle",
        "headers",
        "timeout",
        "max_concurrency",
        "api_key_header",
        "requests_per_second",
        "burst",
        "proxy",
        "proxy_user",
        "proxy_password",
    }
    for key in sorted(set(map(str, raw)) - known):
        r.problems.error(name, f"unknown option {key!r} (options: {', '.join(sorted(known))})")
    sub = _Reader({k.upper(): v for k, v in raw.items()}, Problems())
    verify = sub.boolean("VERIFY_SSL", default.verify_ssl)
    ca_bundle = sub.text("CA_BUNDLE", default.ca_bundle)
    timeout = sub.number("TIMEOUT", default.timeout)
    concurrency = sub.integer("MAX_CONCURRENCY", default.max_concurrency, maximum=1000)
    header = sub.text("API_KEY_HEADER", default.api_key_header)
    rate = raw.get("requests_per_second")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
    ):
        r.problems.bad(f"{name} option 'requests_per_second'", rate, "a number > 0, or None")
        rate = None
    burst = raw.get("burst")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        r.problems.bad(f"{name} option 'burst'", burst, "an integer >= 1, or None")
        burst = None
    if burst is not None and rate is None:
        r.problems.error(f"{name} option 'burst'", "needs 'requests_per_second' as well")
    for problem in sub.problems.errors:
        option, _, rest = problem.partition(": ")
        r.problems.error(f"{name} option '{option.lower()}'", rest)
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        r.problems.bad(f"{name} option 'headers'", "<hidden>", "a dict of str to str")
        headers = {}
    if ca_bundle and not os.path.isfile(ca_bundle):
        r.problems.bad(f"{name} option 'ca_bundle'", ca_bundle, "an existing CA bundle file")
    return HostOptions(
        verify_ssl=verify,
        ca_bundle=ca_bundle,
        headers=tuple(sorted(dict(default.headers, **headers).items())),
        timeout=timeout,
        max_concurrency=concurrency,
        api_key_header=header or default.api_key_header,
        requests_per_second=float(rate) if rate is not None else None,
        burst=burst,
        **_proxy(r, name, raw, default),
    )


def _proxy(r: _Reader, name: str, raw: Mapping[str, Any], default: HostOptions) -> dict[str, Any]:
    """The 'proxy', 'proxy_user' and 'proxy_password' options of one host."""
    proxy = raw.get("proxy", default.proxy)
    user = raw.get("proxy_user", default.proxy_user)
    password = raw.get("proxy_password")
    secret = Secret(password) if isinstance(password, str) and password else None
    if proxy is not None:
        try:
            parts = urlsplit(proxy) if isinstance(proxy, str) else None
            with_credentials = parts is not None and (parts.username or parts.password)
        except ValueError:
            parts, with_credentials = None, False
        if with_credentials:
            r.problems.error(
                f"{name} option 'proxy'",
                "carries credentials; give them as 'proxy_user' and 'proxy_password'",
            )
            proxy = None
        elif parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            r.problems.bad(
                f"{name} option 'proxy'", proxy, "an http:// URL such as 'http://proxy:3128'"
            )
            proxy = None
    if user is not None and not isinstance(user, str):
        r.problems.bad(f"{name} option 'proxy_user'", user, "a string")
        user = None
    if password is not None and not isinstance(password, str):
        r.problems.bad(f"{name} option 'proxy_password'", "<hidden>", "a string")
    if (user is None) != (secret is None) and (user or secret):
        r.problems.error(f"{name} option 'proxy_user'", "needs 'proxy_password' too (and back)")
    if secret is not None and proxy is None and "proxy" not in raw:
        r.problems.error(f"{name} option 'proxy_password'", "needs 'proxy' as well")
    if secret is None and "proxy_password" not in raw:
        secret = default.proxy_password
    return {"proxy": proxy, "proxy_user": user, "proxy_password": secret}


def _remote_hosts(r: _Reader, default: HostOptions) -> dict[str, HostOptions]:
    raw = r.values.get("VISTA_REMOTE_HOSTS", {})
    if not isinstance(raw, Mapping):
        r.problems.bad("VISTA_REMOTE_HOSTS", raw, "a dict of remote_host URL -> options dict")
        return {}
    hosts: dict[str, HostOptions] = {}
    for host, options in raw.items():
        name = f"VISTA_REMOTE_HOSTS[{host!r}]"
        if not isinstance(host, str) or _scheme(host) not in ("http", "https"):
            r.problems.bad("VISTA_REMOTE_HOSTS", host, "keys that are remote_host URLs")
            continue
        hosts[host.rstrip("/")] = _host_options(r, name, options, default)
    return hosts


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:  # 'http://[::1' and the like
        return ""


def _metrics_address(r: _Reader) -> tuple[str, int] | None:
    value = r.text("VISTA_METRICS_ADDRESS", None)
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.problems.bad("VISTA_METRICS_ADDRESS", value, "'host:port', e.g. '127.0.0.1:9313'")
        return None
    return (host.strip("[]"), int(port))


def _bigquery(r: _Reader) -> bigquery_settings.BigQueryConfig:
    default = bigquery_settings.BigQueryConfig()
    endpoint = r.text("VISTA_BQ_API_ENDPOINT", None)
    if endpoint and _scheme(endpoint) not in ("http", "https"):
        r.problems.bad("VISTA_BQ_API_ENDPOINT", endpoint, "an http:// or https:// URL")
    archive_dir = r.text("VISTA_BQ_ARCHIVE_DIR", default.archive_dir) or default.archive_dir
    if not os.path.isabs(archive_dir):
        r.problems.bad("VISTA_BQ_ARCHIVE_DIR", archive_dir, "an absolute directory path")
    return bigquery_settings.BigQueryConfig(
        api_endpoint=endpoint or None,
        archive_dir=archive_dir,
        query_timeout=r.number("VISTA_BQ_QUERY_TIMEOUT", default.query_timeout, minimum=1),
    )


def _unknown_names(values: Mapping[str, Any], problems: Problems) -> None:
    for name in sorted(values):
        if name.startswith("VISTA_") and name not in KNOWN_SETTINGS:
            close = difflib.get_close_matches(name, KNOWN_SETTINGS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.warn(name, f"unknown Vista setting, ignored{hint}")


def _job_processes(r: _Reader) -> dict[str, int]:
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


def _paths(r: _Reader) -> tuple[str, str]:
    log_path = r.text("LOG_PATH", "/var/log/skyline") or "/var/log/skyline"
    pid_path = r.text("PID_PATH", "/var/run/skyline") or "/var/run/skyline"
    for name, path in (("LOG_PATH", log_path), ("PID_PATH", pid_path)):
        if not os.path.isabs(path):
            r.problems.bad(name, path, "an absolute directory path")
    return log_path, pid_path


def validate(values: Mapping[str, Any], path: str = "<settings>") -> VistaConfig:  # noqa: C901
    """Turn the raw settings namespace into a VistaConfig, or raise ConfigError (all problems)."""
    problems = Problems()
    r = _Reader(values, problems)
    _unknown_names(values, problems)
    sink_text = r.text("VISTA_SINK", "flux", choices=("flux", "graphite"))
    sink: SinkType = "graphite" if sink_text == "graphite" else "flux"
    sink_known = values.get("VISTA_SINK", "flux") in ("flux", "graphite")
    fetcher_processes = r.integer("VISTA_FETCHER_PROCESSES", 1)
    if fetcher_processes > 1:
        problems.warn(
            "VISTA_FETCHER_PROCESSES",
            "ignored: one asyncio loop fetches every metric "
            "concurrently; VISTA_ASYNCIO_FETCHER_LIMIT sets how many requests at once",
        )
    if values.get("VISTA_BQ_VIRTUALENV_PATH"):
        problems.warn(
            "VISTA_BQ_VIRTUALENV_PATH",
            "ignored: install the 'bigquery' extra into "
            "Vista's own environment instead of a second virtualenv",
        )
    default_host = HostOptions(
        timeout=r.number("VISTA_REQUEST_TIMEOUT", 30.0),
        max_concurrency=r.integer("VISTA_MAX_CONCURRENCY_PER_HOST", 10, maximum=1000),
        api_key_header=r.text("VISTA_API_KEY_HEADER", "X-API-Key") or "X-API-Key",
    )
    entries = check_entries(values.get("VISTA_FETCH_METRICS", ()), problems)
    log_path, pid_path = _paths(r)
    self_host = r.text("SKYLINE_METRICS_CARBON_HOST", None)
    carbon = _carbon(r, sink == "graphite" and sink_known)
    shards, hostname = _shards(r)
    config = VistaConfig(
        path=path,
        enabled=r.boolean("VISTA_ENABLED", False),
        verbose_logging=r.boolean("VISTA_VERBOSE_LOGGING", False),
        fetch_metrics=entries,
        fetcher_max_runtime=r.number("VISTA_FETCHER_PROCESS_MAX_RUNTIME", 50.0, minimum=1),
        fetcher_processes=fetcher_processes,
        worker_processes=r.integer("VISTA_WORKER_PROCESSES", 1, maximum=64),
        do_not_submit_current_minute=r.boolean("VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE", True),
        graphite_batch_size=r.integer("VISTA_GRAPHITE_BATCH_SIZE", 20, maximum=1000),
        fetch_concurrency=r.integer("VISTA_ASYNCIO_FETCHER_LIMIT", 100, maximum=10_000),
        default_host_options=default_host,
        remote_hosts=_remote_hosts(r, default_host),
        max_response_bytes=r.integer(
            "VISTA_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES, minimum=1024
        ),
        max_backfill=r.integer("VISTA_MAX_BACKFILL", 0, minimum=0),
        prune_removed_after=r.integer("VISTA_PRUNE_REMOVED_AFTER", 7 * 86400, minimum=0),
        queue_item_max_points=r.integer("VISTA_QUEUE_ITEM_MAX_POINTS", 10_000, minimum=10),
        fetch_max_points=r.integer("VISTA_FETCH_MAX_POINTS", 50_000, minimum=100),
        worker_batch_items=r.integer("VISTA_WORKER_BATCH_ITEMS", 50, maximum=10_000),
        worker_lease=r.number("VISTA_WORKER_LEASE", 60.0, minimum=5),
        max_attempts=r.integer("VISTA_MAX_ATTEMPTS", 5),
        shutdown_timeout=r.number("VISTA_SHUTDOWN_TIMEOUT", 10.0, minimum=1),
        metrics_address=_metrics_address(r),
        sink=sink,
        redis=_redis(r),
        flux=_flux(r, sink == "flux" and sink_known),
        carbon=carbon,
        self_metrics=SelfMetricsConfig(
            host=self_host if self_host is not None else carbon.host,
            port=r.port("SKYLINE_METRICS_CARBON_PORT", carbon.port),
            server_metrics_name=r.text("SERVER_METRICS_NAME", "") or "",
        ),
        log_path=log_path,
        pid_path=pid_path,
        bq_accounts=bigquery_settings.check_accounts(values.get("VISTA_BQ_ACCOUNTS", {}), problems),
        bigquery=_bigquery(r),
        carbon_max_creates_per_minute=r.number(
            "VISTA_CARBON_MAX_CREATES_PER_MINUTE", 50.0, minimum=1
        ),
        shards=shards,
        hostname=hostname,
        job_processes=_job_processes(r),
        member_ttl=r.number("VISTA_MEMBER_TTL", DEFAULT_MEMBER_TTL, minimum=3),
        backfill_concurrency=r.integer("VISTA_BACKFILL_CONCURRENCY", 4, maximum=64),
        flux_check_last_timestamp=r.boolean("FLUX_CHECK_LAST_TIMESTAMP", True),
        flux_carbon_host=r.text("FLUX_CARBON_HOST", None),
        flux_carbon_pickle_port=(
            r.port("FLUX_CARBON_PICKLE_PORT", 2004)
            if values.get("FLUX_CARBON_PICKLE_PORT") is not None
            else None
        ),
        warnings=(),
    )
    if (
        sink == "flux"
        and not config.flux_check_last_timestamp
        and not (config.flux_carbon_host or carbon.host)
    ):
        problems.warn(
            "FLUX_CHECK_LAST_TIMESTAMP",
            "False: Flux drops history at or below flux.last, so `vista backfill` sends it to "
            "the carbon beside Flux, but neither FLUX_CARBON_HOST nor CARBON_HOST is set; "
            "backfills are refused until one is",
        )
    if problems.errors:
        raise ConfigError(problems.errors, path, warnings=problems.warnings)
    return replace(config, warnings=tuple(problems.warnings))


def load(path: str) -> VistaConfig:
    """Read and validate a settings.py file. Raises ConfigError listing every problem."""
    return validate(read_module(path), path)
