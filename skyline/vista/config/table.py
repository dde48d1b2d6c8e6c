"""Every setting Vista reads, written once: name, kind, default, limits and a one-line doc.

The table drives loading and validation (config/loader.py reads each setting by its entry),
the unknown-name warning (:data:`KNOWN_SETTINGS`), the records' defaults (config/records.py)
and the README's settings table (``python -m skyline.vista.config --readme README.md`` rewrites it;
tests/unit/test_settings_table.py checks that README.md and etc/vista/settings.py list every
setting). Settings whose value has a structure of its own (the fetch list, the per-host
options, the BigQuery accounts, ...) are of kind ``"other"``: the loader validates them with
code of their own, and their entry here gives their name, default and doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from skyline.vista import constants
from skyline.vista.bigquery_settings import BigQueryConfig

T = TypeVar("T")
Kind = Literal["bool", "int", "number", "text", "port", "path", "secret", "other"]


@dataclass(frozen=True)
class Setting(Generic[T]):
    name: str
    kind: Kind
    default: T
    doc: str
    minimum: float | None = None  # int: 1 unless given; number: 0.001 unless given
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _TABLE.append(self)


_TABLE: list[Setting[Any]] = []

# --- Vista ----------------------------------------------------------------------------------

ENABLED = Setting("VISTA_ENABLED", "bool", False, "Vista refuses to start (exit 6) unless True")
VERBOSE_LOGGING = Setting(
    "VISTA_VERBOSE_LOGGING",
    "bool",
    False,
    "one summary line per fetch cycle, DEBUG level for the rest",
)
FETCH_METRICS = Setting[tuple[object, ...]](
    "VISTA_FETCH_METRICS",
    "other",
    (),
    "what to fetch: 12-field tuples `(remote_host, remote_host_type, frequency, "
    "remote_target, graphite_target, uri, namespace_prefix, api_key, token, user, password, "
    "populate_at_resolutions)`, or a dict per metric; a `graphite_target` with "
    "`{label}`/`{node[N]}` fields makes one metric per series ([One query, many "
    "metrics](#one-query-many-metrics))",
)
FETCHER_PROCESSES = Setting(
    "VISTA_FETCHER_PROCESSES",
    "int",
    1,
    "accepted and ignored (warned above 1): one asyncio loop fetches every metric",
)
FETCHER_MAX_RUNTIME = Setting(
    "VISTA_FETCHER_PROCESS_MAX_RUNTIME",
    "number",
    50.0,
    "fetch cycle deadline, seconds; what did not finish goes first next cycle",
    minimum=1,
)
FETCH_CONCURRENCY = Setting(
    "VISTA_ASYNCIO_FETCHER_LIMIT",
    "int",
    100,
    "requests in flight over all hosts, shared fairly: a host's first request never waits for it",
    maximum=10_000,
)
WORKER_PROCESSES = Setting(
    "VISTA_WORKER_PROCESSES", "int", 1, "worker processes that validate and deliver", maximum=64
)
DO_NOT_SUBMIT_CURRENT_MINUTE = Setting(
    "VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE", "bool", True, "never send the open minute (UTC)"
)
GRAPHITE_BATCH_SIZE = Setting(
    "VISTA_GRAPHITE_BATCH_SIZE",
    "int",
    20,
    "Graphite targets per render request (same host, credentials and window)",
    maximum=1000,
)
SINK = Setting[Literal["flux", "graphite"]](
    "VISTA_SINK",
    "text",
    "flux",
    "`'graphite'` (carbon at `CARBON_HOST`/`CARBON_PICKLE_PORT`) or `'flux'` (`FLUX_IP`, "
    "`FLUX_PORT`, `FLUX_SELF_API_KEY`, `VISTA_FLUX_PROTOCOL` for https)",
    choices=("flux", "graphite"),
)
REMOTE_HOSTS = Setting[dict[str, Any]](
    "VISTA_REMOTE_HOSTS",
    "other",
    {},
    "per exact `remote_host` (`http://gw/a` and `http://gw/b` are two): `verify_ssl`, "
    "`ca_bundle`, `headers`, `timeout`, `max_concurrency`, `api_key_header`, "
    "`requests_per_second` + `burst` (request budget, see [Budgets](#budgets)), `proxy` + "
    "`proxy_user` + `proxy_password` (a forward proxy for this host; else "
    "`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` apply)",
)
REQUEST_TIMEOUT = Setting(
    "VISTA_REQUEST_TIMEOUT", "number", 30.0, "default per-request timeout, seconds"
)
MAX_CONCURRENCY_PER_HOST = Setting(
    "VISTA_MAX_CONCURRENCY_PER_HOST",
    "int",
    10,
    "default requests at once to one `remote_host`",
    maximum=1000,
)
API_KEY_HEADER = Setting[str](
    "VISTA_API_KEY_HEADER", "text", "X-API-Key", "default header that carries an entry's `api_key`"
)
MAX_RESPONSE_BYTES = Setting(
    "VISTA_MAX_RESPONSE_BYTES",
    "int",
    16 * 1024 * 1024,
    "larger answers are refused (`too_large`); answers over 1 MiB are parsed as they arrive, "
    "keeping only the asked window's points",
    minimum=1024,
)
MAX_BACKFILL = Setting(
    "VISTA_MAX_BACKFILL",
    "int",
    0,
    "how far back a gap is filled, seconds; 0: as far as the source holds data",
    minimum=0,
)
PRUNE_REMOVED_AFTER = Setting(
    "VISTA_PRUNE_REMOVED_AFTER",
    "int",
    7 * 86400,
    "seconds after which the state of a metric that no Vista host on the Redis has in its "
    "settings any more (its watermark, `vista.metrics` membership, resolution key, chain, "
    "failed windows; `flux.last.*` only with the carbon sink) is removed, with a WARNING log "
    "line; `vista status` lists what is pending removal; `0` = never",
    minimum=0,
)
QUEUE_ITEM_MAX_POINTS = Setting(
    "VISTA_QUEUE_ITEM_MAX_POINTS", "int", 10_000, "points per queue item", minimum=10
)
FETCH_MAX_POINTS = Setting(
    "VISTA_FETCH_MAX_POINTS",
    "int",
    50_000,
    "points per metric per cycle; the rest comes next cycle",
    minimum=100,
)
WORKER_BATCH_ITEMS = Setting(
    "VISTA_WORKER_BATCH_ITEMS", "int", 50, "queue items a worker claims at once", maximum=10_000
)
WORKER_LEASE = Setting(
    "VISTA_WORKER_LEASE",
    "number",
    60.0,
    "seconds before a silent worker's items are recovered",
    minimum=5,
)
MAX_ATTEMPTS = Setting("VISTA_MAX_ATTEMPTS", "int", 5, "failures before an item is dead-lettered")
SHUTDOWN_TIMEOUT = Setting(
    "VISTA_SHUTDOWN_TIMEOUT", "number", 10.0, "SIGTERM drain limit, seconds", minimum=1
)
METRICS_ADDRESS = Setting[str | None](
    "VISTA_METRICS_ADDRESS", "text", None, "serve Prometheus `/metrics` on `'host:port'`; None: off"
)
HOSTNAME = Setting[str | None](
    "VISTA_HOSTNAME",
    "text",
    None,
    "this host's name among the Vista hosts on one Redis, which share the fetch list by live "
    "membership ([Several hosts](#several-hosts-no-single-point-of-failure)); None: the "
    "machine's host name",
)
MEMBER_TTL = Setting(
    "VISTA_MEMBER_TTL",
    "number",
    constants.DEFAULT_MEMBER_TTL,
    "seconds without a heartbeat after which a Vista host counts as gone",
    minimum=3,
)
SHARDS = Setting[tuple[str, ...]](
    "VISTA_SHARDS",
    "other",
    (),
    "a fixed split instead of live membership: the host names; each fetches what hashes to it",
)
JOB_PROCESSES = Setting[dict[str, int]](
    "VISTA_JOB_PROCESSES",
    "other",
    {},
    "job kind → jobs of that kind run at once on this host (default 1 each; 0: none; see "
    "[Jobs](#jobs-backfill-and-bigquery))",
)
BACKFILL_CONCURRENCY = Setting(
    "VISTA_BACKFILL_CONCURRENCY",
    "int",
    4,
    "`vista backfill`: requests in flight per job",
    maximum=64,
)
BACKFILL_MAX_RANGE = Setting(
    "VISTA_BACKFILL_MAX_RANGE",
    "int",
    730 * 86400,
    "`vista backfill` and `vista bq backfill`/`update`: the longest range a job may ask for, "
    "seconds (default 730 days); a longer one is refused; 0: no bound",
    minimum=0,
)
CARBON_MAX_CREATES_PER_MINUTE = Setting(
    "VISTA_CARBON_MAX_CREATES_PER_MINUTE",
    "number",
    50.0,
    "carbon's `MAX_CREATES_PER_MINUTE`: new metric names are written no faster (see "
    "[Budgets](#budgets)); `float('inf')` = no pacing",
    minimum=1,
)
FLUX_CHECK_LAST_TIMESTAMP = Setting(
    "FLUX_CHECK_LAST_TIMESTAMP",
    "bool",
    True,
    "set it as Flux has it: where history goes with the Flux sink (see "
    "[Backfill](#history-backfill))",
)
FLUX_CARBON_HOST = Setting[str | None](
    "FLUX_CARBON_HOST",
    "text",
    None,
    "the carbon beside Flux, for history if FLUX_CHECK_LAST_TIMESTAMP is False; None: CARBON_HOST",
)
FLUX_CARBON_PICKLE_PORT = Setting[int | None](
    "FLUX_CARBON_PICKLE_PORT", "port", None, "its pickle port; None: CARBON_PICKLE_PORT"
)

# --- BigQuery -------------------------------------------------------------------------------

BQ_ACCOUNTS = Setting[dict[str, Any]](
    "VISTA_BQ_ACCOUNTS",
    "other",
    {},
    "BigQuery accounts (Skyline's format; see [BigQuery](#bigquery))",
)
BQ_API_ENDPOINT = Setting[str | None](
    "VISTA_BQ_API_ENDPOINT",
    "text",
    None,
    "another BigQuery endpoint, e.g. a private one; None: Google's",
)
BQ_ARCHIVE_DIR = Setting[str](
    "VISTA_BQ_ARCHIVE_DIR",
    "path",
    BigQueryConfig.archive_dir,
    "archives of fetched intervals (one gzip CSV per account and interval)",
)
BQ_QUERY_TIMEOUT = Setting(
    "VISTA_BQ_QUERY_TIMEOUT",
    "number",
    BigQueryConfig.query_timeout,
    "seconds a BigQuery query job may run before its interval fails",
    minimum=1,
)
BQ_VIRTUALENV_PATH = Setting[str | None](
    "VISTA_BQ_VIRTUALENV_PATH",
    "other",
    None,
    "accepted and ignored (warned): install the `bigquery` extra into Vista's environment",
)

# --- Redis ----------------------------------------------------------------------------------

REDIS_SOCKET_PATH = Setting[str | None](
    "REDIS_SOCKET_PATH", "text", None, "Skyline's Redis unix socket"
)
REDIS_PASSWORD = Setting[str | None](
    "REDIS_PASSWORD", "secret", None, "the Redis password (of the primary and replicas)"
)
REDIS_URL = Setting[str | None](
    "REDIS_URL",
    "text",
    None,
    "`redis://`, `rediss://` (TLS) or `unix://`; wins over REDIS_SOCKET_PATH; no password in it",
)
REDIS_SENTINELS = Setting[tuple[object, ...]](
    "VISTA_REDIS_SENTINELS",
    "other",
    (),
    "Redis Sentinel: `'host:port'` strings (or pairs); when set they win over `REDIS_URL` "
    "([Redis Sentinel](#redis-sentinel))",
)
REDIS_SENTINEL_SERVICE = Setting[str](
    "VISTA_REDIS_SENTINEL_SERVICE", "other", "mymaster", "the name the sentinels monitor"
)
REDIS_SENTINEL_PASSWORD = Setting[str | None](
    "VISTA_REDIS_SENTINEL_PASSWORD",
    "secret",
    None,
    "the sentinels' own password (requirepass in sentinel.conf)",
)

# --- Skyline Flux ---------------------------------------------------------------------------

FLUX_IP = Setting[str]("FLUX_IP", "text", "127.0.0.1", "Flux's address (VISTA_SINK = 'flux')")
FLUX_PORT = Setting("FLUX_PORT", "port", 8000, "Flux's port")
FLUX_SELF_API_KEY = Setting[str | None](
    "FLUX_SELF_API_KEY", "other", None, "Flux's key: 32 letters and digits, sent in the POST body"
)
FLUX_MAX_AGE = Setting(
    "FLUX_MAX_AGE", "int", 3600, 'older points are sent with `"fill": "true"`, seconds'
)
FLUX_PROTOCOL = Setting[Literal["http", "https"]](
    "VISTA_FLUX_PROTOCOL",
    "text",
    "http",
    "`'https'` to reach Flux over TLS",
    choices=("http", "https"),
)
FLUX_VERIFY_SSL = Setting("VISTA_FLUX_VERIFY_SSL", "bool", True, "verify Flux's certificate")
FLUX_CA_BUNDLE = Setting[str | None](
    "VISTA_FLUX_CA_BUNDLE", "text", None, "CA bundle for Flux's certificate"
)
FLUX_BATCH_SIZE = Setting(
    "VISTA_FLUX_BATCH_SIZE",
    "int",
    constants.FLUX_BATCH_SIZE,
    "metrics per POST; Flux documents 450 at most",
    maximum=10_000,
)
FLUX_TIMEOUT = Setting("VISTA_FLUX_TIMEOUT", "number", 30.0, "seconds per POST")

# --- carbon ---------------------------------------------------------------------------------

CARBON_HOST = Setting[str | None](
    "CARBON_HOST", "text", None, "carbon's address (VISTA_SINK = 'graphite')"
)
CARBON_PORT = Setting("CARBON_PORT", "port", 2003, "carbon's plaintext port")
CARBON_PICKLE_PORT = Setting("CARBON_PICKLE_PORT", "port", 2004, "carbon's pickle port")
CARBON_PROTOCOL = Setting[Literal["pickle", "plaintext"]](
    "VISTA_CARBON_PROTOCOL",
    "text",
    "pickle",
    "`'pickle'` or `'plaintext'`",
    choices=("pickle", "plaintext"),
)
CARBON_TIMEOUT = Setting(
    "VISTA_CARBON_TIMEOUT", "number", 10.0, "connect/send timeout to carbon, seconds"
)

# --- self-metrics and files -----------------------------------------------------------------

SELF_CARBON_HOST = Setting[str | None](
    "SKYLINE_METRICS_CARBON_HOST", "text", None, "carbon for Vista's own metrics; None: CARBON_HOST"
)
SELF_CARBON_PORT = Setting[int | None](
    "SKYLINE_METRICS_CARBON_PORT", "port", None, "its plaintext port; None: CARBON_PORT"
)
SERVER_METRICS_NAME = Setting[str](
    "SERVER_METRICS_NAME", "text", "", "the host part of Vista's own metric names"
)
LOG_PATH = Setting[str]("LOG_PATH", "path", "/var/log/skyline", "`vista.log` goes here (appended)")
PID_PATH = Setting[str]("PID_PATH", "path", "/var/run/skyline", "`vista.pid` goes here")
SKYLINE_TMP_DIR = Setting[str | None](
    "SKYLINE_TMP_DIR", "other", None, "Skyline's; accepted and unused"
)

SETTINGS: tuple[Setting[Any], ...] = tuple(_TABLE)
BY_NAME: dict[str, Setting[Any]] = {s.name: s for s in SETTINGS}
KNOWN_SETTINGS = frozenset(BY_NAME)


README_START = (
    "<!-- settings table: made from skyline/vista/config/table.py by "
    "`python -m skyline.vista.config --readme README.md` -->"
)
README_END = "<!-- end of the settings table -->"


def markdown() -> str:
    """The README's settings table."""
    rows = ["| setting | default | what |", "|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `{s.name}` | `{_shown(s.default)}` | {s.doc} |")
    return "\n".join(rows) + "\n"


def _shown(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 100_000:
        return f"{value:_}"
    return repr(value)


def with_table(readme: str) -> str:
    """``readme`` with the text between :data:`README_START` and :data:`README_END` replaced
    by :func:`markdown`."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END)
    return readme[:start] + "\n" + markdown() + readme[end:]
