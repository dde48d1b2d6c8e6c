"""Redis key names, defaults and exit codes: every literal shared between modules lives here.

Key names marked *Skyline* are read or written by an unmodified Skyline (flux, thunder,
webapp) and must keep their exact spelling.
"""

from __future__ import annotations

# --- Redis keys -------------------------------------------------------------------------------

QUEUE_KEY = "vista.fetcher.metrics.json"
"""Set of queued items (versioned JSON). Name kept from Skyline."""

INFLIGHT_KEY = "vista.fetcher.metrics.inflight"
"""Hash item -> JSON {worker, claimed_at}: items claimed by a worker and not yet acknowledged."""

PENDING_KEY = "vista.fetcher.metrics.pending"
"""Hash metric -> head item: the metric has an item queued or in flight (one per metric)."""

CHAIN_KEY_PREFIX = "vista.fetcher.metrics.chain."
"""List per metric: the next items of a long window, released one at a time on acknowledgement."""

DEAD_KEY = "vista.fetcher.metrics.dead"
"""Hash dead-letter id -> JSON {reason, dead_at, worker, item}."""

ATTEMPTS_KEY = "vista.fetcher.metrics.attempts"
"""Hash item -> number of failed processing attempts (poison detection)."""

PROGRESS_KEY = "vista.fetcher.metrics.progress"
"""Hash item -> timestamp of its last point the sink confirmed, for an item that is partly
delivered (written by the acknowledgement of each request, removed with the item). The next
claim skips what it records: a replay item is delivered below the watermark, which cannot say
how far it got."""

WORKERS_KEY = "vista.workers"
"""Sorted set worker id -> lease expiry (epoch seconds). Expired workers' items are recovered."""

HOLES_KEY = "vista.fetcher.holes"
"""Hash metric -> JSON list of failed windows being retried (skyline/vista/holes.py)."""

CONFIGURED_KEY = "vista.fetcher.configured"
"""Hash metric -> epoch when a Vista host last had it in its settings (refreshed every few
minutes by each fetcher); what has not been refreshed for VISTA_PRUNE_REMOVED_AFTER is pruned."""

WATERMARK_HASH = "flux.last.metric_data"
"""*Skyline*: hash metric -> {'timestamp': ts, 'value': v}, the last point delivered."""

WATERMARK_KEY_PREFIX = "flux.last."
"""*Skyline*: string per metric, [ts, value]; the older form of the watermark."""

VISTA_WATERMARK_HASH = "vista.last.metric_data"
"""With the Flux sink, Vista's own watermark hash (same format). Flux owns flux.last.*: its worker
writes them after sending a point to Graphite and drops queued points at or below them, so
Vista writing them when Flux answers 204 would make Flux drop the batch it has just taken."""

WATERMARK_KEY_TTL = 3600
"""Flux writes flux.last.<metric> with this TTL; so do we."""

RESOLUTION_KEY_PREFIX = "vista.last.resolution."
"""*Skyline*: string per metric, the detected resolution in seconds (TTL 3600)."""

RESOLUTION_KEY_TTL = 3600

VISTA_METRICS_KEY = "vista.metrics"
"""*Skyline*: set of metric names Vista submits; flux keeps its dedupe on for them."""

FETCHER_HEARTBEAT_KEY = "vista.fetcher"
"""*Skyline*: SETEX 120, value = epoch of the cycle start; thunder alerts when it is missing."""

WORKER_HEARTBEAT_KEY = "vista.worker"
"""*Skyline*: SETEX 120, written by every worker."""

WORKER_HEARTBEAT_PREFIX = "vista.worker."
"""Per-worker heartbeat: vista.worker.<worker id>, SETEX 120."""

HEARTBEAT_TTL = 120

AGENT_KEY_PREFIX = "vista.agent."
"""Per-host agent record: vista.agent.<hostname>, JSON with pid and children (SETEX 120)."""

MEMBERS_KEY = "vista.members"
"""Set of the names (VISTA_HOSTNAME) of the Vista hosts that have joined; the live ones are those
whose member key exists (see membership.py)."""

MEMBER_KEY_PREFIX = "vista.member."
"""Per-host member key vista.member.<hostname>, SET with a TTL of VISTA_MEMBER_TTL and renewed
every third of it by the agent while its fetcher runs; deleted on a clean stop. Its value is the
agent's token ``<pid>@<machine>#<hex>`` (membership.instance_token; an older Vista: its pid)."""

CLAIM_KEY_PREFIX = "vista.claim."
"""vista.claim.<hostname>: with VISTA_SHARDS, what the member key is otherwise (the agent's token,
SET with a TTL of VISTA_MEMBER_TTL, renewed every third of it) but no live member: only the
check that no other agent uses this VISTA_HOSTNAME reads it (see membership.py)."""

DUPLICATE_HOSTS_KEY = "vista.duplicate_hosts"
"""Hash: hostname -> JSON {pid, machine, seen} of another agent found writing this host's member
(or claim) key (two agents with one VISTA_HOSTNAME). The hash expires 10 minutes after its last
write; ``vista status`` reads it whole (one HGETALL, no keyspace SCAN) and shows the records
seen in those 10 minutes."""

DEFAULT_MEMBER_TTL = 30.0

FETCH_LEASES_KEY = "vista.fetching"
"""Hash metric -> "expiry_ms|host": the host fetching the metric now (membership.LEASE), so
that no metric is ever fetched by two hosts at once during a hand-over."""

LOG_ERRORS_KEY = "vista.log.errors.per_minute"
"""*Skyline*: INCRBY on every ERROR record, EXPIRE 119; thunder turns it into logged_errors."""

LOG_ERRORS_TTL = 119

HOST_STATS_KEY_PREFIX = "vista.stats."
"""Hash per host, vista.stats.<hostname>: workers HINCRBY their counters into it; the agent
reads and deletes it once a minute and sends the sums as Skyline's worker self-metrics."""

PER_METRIC_KEY_PREFIXES = (WATERMARK_KEY_PREFIX, RESOLUTION_KEY_PREFIX, CHAIN_KEY_PREFIX)
"""Prefixes of the Redis keys made from a metric name (prefix + metric)."""

SHARED_KEYS = frozenset(
    {
        QUEUE_KEY,
        INFLIGHT_KEY,
        PENDING_KEY,
        DEAD_KEY,
        ATTEMPTS_KEY,
        PROGRESS_KEY,
        WORKERS_KEY,
        HOLES_KEY,
        CONFIGURED_KEY,
        WATERMARK_HASH,
        VISTA_WATERMARK_HASH,
        VISTA_METRICS_KEY,
        FETCHER_HEARTBEAT_KEY,
        WORKER_HEARTBEAT_KEY,
        LOG_ERRORS_KEY,
    }
)
"""Keys shared by every metric (Vista's and Skyline's): no metric may turn prefix + name into
one of them (a metric 'metric_data' would make flux.last.<metric> the watermark hash)."""

JOBS_CANCEL_KEY = "vista.jobs.cancel"
"""Set of job ids whose cancel was requested while running (any kind; see jobs/store.py)."""

JOB_WORK_KEY = "vista.{kind}.work"
JOB_STATUS_KEY = "vista.{kind}.job_status"
JOB_RUNNING_KEY = "vista.{kind}.running"
"""The keys of a job kind (jobs/registry.py: ``backfill``, ``bq_backfill``, ``bq_update``):
pending records, every record, running markers (``<running>.<job id>``). The BigQuery kinds'
are Skyline's keys (its webapp adds jobs to the ``work`` hashes and reads ``running``; Skyline
has no ``vista.bq_update.job_status``, Vista keeps update records there)."""

EXPANDED_KEY_PREFIX = "vista.expanded."
"""Hash per templated entry: vista.expanded.<entry metric>, name -> when an answer last had it
(expand.py)."""

LAG_KEY_PREFIX = "vista.lag."
"""Delivery-lag samples per minute (lag.py)."""

REQUEST_BUDGET_KEY_PREFIX = "vista.request_budget."
"""Token bucket per remote_host (request_budget.py)."""

CREATE_BUDGET_KEY = "vista.create_budget"
CREATE_BUDGET_GRANTED_KEY = "vista.create_budget.granted_at"
CREATE_BUDGET_WAITING_KEY = "vista.create_budget.waiting_since"
"""carbon's create budget: the bucket hash, the names granted a create, the names waiting
(create_budget.py; sorted sets by time)."""
CREATE_BUDGET_OLD_KEYS = ("vista.create_budget.granted", "vista.create_budget.waiting")
"""The set and hash that earlier builds kept instead (never trimmed): left to hosts not yet
upgraded, given a week to live by the new step."""

BQ_FETCHER_LAST_KEY = "vista.bq_fetcher.last.{account}.{kind}"
BQ_FETCHER_DUE_KEY = "vista.bq_fetcher.due.{account}.{kind}.{minute}"
"""BigQuery schedules: the last minute evaluated, and each due minute's claim (bq_fetcher.py)."""

BQ_UPDATE_CHANGE_KEY = "vista.bq_update.{account}.{label}.{folder}"
BQ_UPDATE_LAST_KEY = "vista.bq_update.{account}.last_update"
"""BigQuery updates: a change record per label and folder, and the account's last update
(bq_update.py)."""

# --- defaults ---------------------------------------------------------------------------------

DEFAULT_SETTINGS_PATH = "/etc/skyline/vista/settings.py"
SETTINGS_ENV = "VISTA_SETTINGS"

DEFAULT_FREQUENCY = 60
PROMETHEUS_DEFAULT_WINDOW = 300
"""Prometheus 'default' uri, no watermark: fetch the last 5 minutes, as the original does."""

PROMETHEUS_MAX_POINTS = 11_000
"""Prometheus refuses query_range requests of more than 11,000 points per series."""

FLUX_BATCH_SIZE = 450
"""Flux documents at most 450 metrics per POST /metric_data_post."""

GC_GEN0_THRESHOLD = 20_000
"""The cyclic GC's youngest generation is collected after this many new container objects
instead of Python's 700, in worker processes and during fetch cycles: both allocate a few
objects per point that live until the batch or cycle ends, and with the default the collector
walked them over and over (15-30% of a worker's CPU, a quarter of a 10,000-metric cycle's)."""

CARBON_PICKLE_POINTS = 500
"""Points per carbon pickle message (carbon's MAX_DATAPOINTS_PER_MESSAGE default)."""

# --- exit codes (LSB init-script actions) -----------------------------------------------------

EXIT_OK = 0
EXIT_FAILURE = 1
"""Generic failure; for `status`: dead but the pidfile exists."""
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
"""`status`: the program is not running."""
EXIT_SETTINGS_UNREADABLE = 4
"""`stop`/`status`: the settings file cannot be read, so the pidfile cannot be found (LSB 4:
status unknown)."""
EXIT_NOT_CONFIGURED = 6
"""`start`: invalid settings or VISTA_ENABLED = False."""
EXIT_STOP_NOT_RUNNING = 7
"""`reload`: the program is not running."""
