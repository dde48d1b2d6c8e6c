# Vista settings: a Python module, read once at start-up (and again on `vista reload`).
#
# Copy this file to /etc/skyline/vista/settings.py (the default path), or point Vista at it
# with `vista --settings PATH ...` or the VISTA_SETTINGS environment variable. Check it with
#
#     vista --settings /etc/skyline/vista/settings.py check-config
#
# which lists every mistake at once (entry, field, bad value, what is expected) and exits 1,
# or prints a summary and exits 0. `vista start` and `vista run` refuse to start on any error.
#
# The VISTA_*, REDIS_*, FLUX_* and CARBON_* names are those of Skyline's settings.py, so an
# existing Skyline install can keep its values. Names only this Vista has are marked (new).

# --- Vista ---------------------------------------------------------------------------------

# Vista does nothing unless this is True: `vista start`/`vista run` exit 6 and say so.
VISTA_ENABLED = True

# Extra log lines: one summary per fetch cycle, DEBUG level for everything else.
VISTA_VERBOSE_LOGGING = False

# Accepted for compatibility and ignored: one asyncio loop fetches every metric concurrently.
VISTA_FETCHER_PROCESSES = 1

# Deadline of one fetch cycle, in seconds. Metrics not fetched by then are counted, logged once
# and go first in the next cycle.
VISTA_FETCHER_PROCESS_MAX_RUNTIME = 50

# How many requests may be in flight at once over all remote hosts (the original read and
# ignored this setting; here it is the global limit). Shared fairly: a host's first request
# never waits for it, so slow hosts holding every slot cannot starve the others (at most this
# many plus one per host are in flight); each host is also held to its own max_concurrency.
VISTA_ASYNCIO_FETCHER_LIMIT = 100

# Worker processes that validate the fetched series and deliver them to the sink.
VISTA_WORKER_PROCESSES = 2

# Never submit a point of the still-open minute (computed in UTC, whatever the host's TZ).
VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE = True

# Up to this many Graphite targets in one render request (same host, credentials and window).
VISTA_GRAPHITE_BATCH_SIZE = 20

# What to fetch. Each entry is the 12-field tuple Skyline users write:
#
#   (remote_host, remote_host_type, frequency, remote_target, graphite_target, uri,
#    namespace_prefix, api_key, token, user, password, populate_at_resolutions)
#
# remote_host       base URL with scheme and port, e.g. 'https://graphite.example.org'
#                   (a path prefix such as a Grafana proxy path is allowed; no credentials)
# remote_host_type  'graphite' or 'prometheus'
# frequency         seconds between points at the source (10 s to a day), e.g. 60
# remote_target     Graphite: a path or function, e.g. 'sumSeries(stats.*.cpu)';
#                   Prometheus: a PromQL expression that returns ONE series (or many, with
#                   a name template in graphite_target)
# graphite_target   the local metric name (after the prefix); or (new) a NAME TEMPLATE: one
#                   metric per series of the answer, named by {label} fields (Prometheus,
#                   e.g. 'node.{instance}.{job}') or {node[N]} fields (Graphite: the N-th node
#                   of the series name, from 0, negative from the end, e.g. '{node[1]}.load'
#                   for 'servers.*.load'). Each filled-in value is sanitised by one rule:
#                   every character but letters, digits, '-' and '_' becomes '_'. Two series
#                   on one name are an error (neither delivered); a series that appears later
#                   becomes a new metric (pre-populated when populate_at_resolutions is set).
# uri               Graphite: render path ending in 'target=', with from=-N minutes|hours|days,
#                   e.g. '/render/?from=-10minutes&format=json&target='.
#                   Prometheus: 'default' (query_range with start/end/step = frequency), or an
#                   API path used as given, e.g. '/api/v1/query?query=up' (no gap filling then)
# namespace_prefix  prepended with a dot ('' for none; no trailing dot)
# api_key           sent in the header named by VISTA_API_KEY_HEADER (default 'X-API-Key')
# token             sent as 'Authorization: Bearer <token>'
# user, password    HTTP basic auth
# populate_at_resolutions
#                   history to load when a metric is first seen, coarsest first.
#                   Graphite: ('90days', '7days', '24hours', '6hours'); Prometheus: ('15d',).
#                   One value needs a trailing comma: ('15d',). () or None: no pre-populate.
#
# Credentials are never logged, never put in Redis and never put in a URL.
# A dict per metric with the same field names is accepted too (frequency, uri, prefix,
# credentials and populate_at_resolutions may then be left out).
VISTA_FETCH_METRICS = (
    # Prometheus' own series, fetched from the local Prometheus every minute.
    ('http://127.0.0.1:9090', 'prometheus', 60,
     'sum(prometheus_http_requests_total)', 'prometheus.http_requests_total',
     'default', 'vista.local', None, None, None, None, ()),
    ('http://127.0.0.1:9090', 'prometheus', 60,
     'sum(process_resident_memory_bytes{job="prometheus"})', 'prometheus.resident_memory_bytes',
     'default', 'vista.local', None, None, None, None, ('1h',)),
    # A Graphite function over a glob, behind basic auth.
    # ('https://graphite.example.org', 'graphite', 60,
    #  'sumSeries(stats.web*.requests)', 'web.requests',
    #  '/render/?from=-10minutes&format=json&target=', 'vista.remote',
    #  None, None, 'reader', 'secret', ('7days', '24hours')),
    # One query -> one metric per series: tmpl.<instance>.<job> (e.g. tmpl.127_0_0_1_9090.prometheus).
    # {'remote_host': 'http://127.0.0.1:9090', 'remote_host_type': 'prometheus',
    #  'remote_target': 'up', 'graphite_target': '{instance}.{job}', 'namespace_prefix': 'tmpl'},
    # The keyword form.
    # {'remote_host': 'https://prometheus.example.org', 'remote_host_type': 'prometheus',
    #  'remote_target': 'sum(rate(http_requests_total[5m]))', 'graphite_target': 'http.rps',
    #  'namespace_prefix': 'vista.example', 'token': 'eyJ...'},
)

# (new) Transport options per remote_host (the exact remote_host string of the entries; two
# remote_hosts on one server, 'http://gw/proxy/a' and 'http://gw/proxy/b', each get their own
# options, headers and limits and share only the connection pool):
# verify_ssl (True), ca_bundle (path), headers (dict), timeout (seconds, 30),
# max_concurrency (requests at once to that host, 10), api_key_header ('X-API-Key'),
# requests_per_second (None: no budget) and burst (default: one second's worth): a token
# bucket in Redis shared by every Vista process and host that fetches from it, live fetching
# first (history jobs take only what live fetching leaves); 429/503 Retry-After still apply.
# proxy ('http://proxy:3128', no credentials in it), proxy_user and proxy_password: an HTTP(S)
# forward proxy for this host (CONNECT for https remotes); its password is masked like every
# secret. Hosts without 'proxy' follow HTTPS_PROXY / HTTP_PROXY / NO_PROXY from Vista's
# environment (credentials there go in the URL: http://user:password@proxy:3128).
VISTA_REMOTE_HOSTS = {
    # 'https://graphite.example.org': {'ca_bundle': '/etc/ssl/certs/internal-ca.pem',
    #                                  'timeout': 20, 'max_concurrency': 4},
    # 'https://prometheus.example.org': {'requests_per_second': 20, 'burst': 40},
    # 'https://metrics.partner.example': {'proxy': 'http://proxy.corp:3128',
    #                                     'proxy_user': 'vista', 'proxy_password': '...'},
}
VISTA_REQUEST_TIMEOUT = 30  # (new) default per-request timeout, seconds
VISTA_MAX_CONCURRENCY_PER_HOST = 10  # (new) default per-host concurrency
VISTA_API_KEY_HEADER = 'X-API-Key'  # (new) default header of an entry's api_key
# (new) Larger answers are refused and counted. Answers over 1 MiB are parsed as they arrive,
# and points outside the window Vista asked for are dropped (and counted) before they are kept.
VISTA_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

# (new) How far back a gap is filled after an outage, in seconds; 0 = as far back as the
# source holds data. Long windows are split into requests of at most 11,000 points
# (Prometheus' limit) and into queue items of VISTA_QUEUE_ITEM_MAX_POINTS points.
VISTA_MAX_BACKFILL = 0
VISTA_QUEUE_ITEM_MAX_POINTS = 10000
VISTA_FETCH_MAX_POINTS = 50000  # (new) per metric per cycle; the rest comes next cycle

# (new) A metric that no Vista host on this Redis has in its VISTA_FETCH_METRICS any more has
# its state (watermark in vista.last.metric_data, or flux.last.* with the carbon sink, its
# vista.metrics membership, resolution key, chain and failed windows) removed after this many
# seconds, with a log line; `vista status` lists what is pending removal. 0 = never.
VISTA_PRUNE_REMOVED_AFTER = 604800

# (new) Where delivered points go: 'graphite' (carbon, below) or 'flux' (Skyline Flux).
VISTA_SINK = 'graphite'

VISTA_WORKER_BATCH_ITEMS = 50  # (new) queue items a worker claims at once
VISTA_WORKER_LEASE = 60  # (new) seconds before a silent worker's items are recovered
VISTA_MAX_ATTEMPTS = 5  # (new) failures before an item is dead-lettered
VISTA_SHUTDOWN_TIMEOUT = 10  # (new) SIGTERM drain limit, seconds

# (new) Serve Prometheus metrics (counters, queue depth, fetch latency) on host:port.
# None: off. Keep it on loopback unless you put it behind something.
VISTA_METRICS_ADDRESS = None  # e.g. '127.0.0.1:9313'

# (new) Several Vista hosts on one Redis, each with the same VISTA_FETCH_METRICS, share the
# fetch list by live membership: every agent keeps a member key alive in Redis, and each
# metric is fetched by one live host (rendezvous hashing of its name). A host that stops is
# replaced within VISTA_MEMBER_TTL + one fetch cycle (at once on a clean stop); a host that
# joins takes its share. Every host's workers deliver any queued item. Nothing to configure
# but a distinct VISTA_HOSTNAME per host (the default, the machine's host name, usually is).
VISTA_HOSTNAME = None  # this host's name among the Vista hosts (default: socket.gethostname())
VISTA_MEMBER_TTL = 30  # seconds without a heartbeat after which a host counts as gone (>= 3)
# A fixed split instead of live membership: the same tuple of host names on every host; each
# fetches the metrics whose name hashes (crc32) to it, whether the others are alive or not.
VISTA_SHARDS = ()  # e.g. ('vista-1', 'vista-2')

# On-demand jobs (`vista backfill`, BigQuery) run by the agent, each in its own process: how
# many of each kind run at once on this host (default 1 per kind; 0 = none here).
VISTA_JOB_PROCESSES = {}  # e.g. {'backfill': 2}

# `vista backfill`: requests in flight per backfill job (history yields to live fetching when a
# host has a request budget, see VISTA_REMOTE_HOSTS).
VISTA_BACKFILL_CONCURRENCY = 4

# `vista backfill` and `vista bq backfill`/`update`: the longest range (--from..--until) a job
# may ask for, seconds; a longer one is refused with a message (a typo such as -100000d would
# otherwise plan 13,091 chunks per metric). 0: no bound.
VISTA_BACKFILL_MAX_RANGE = 730 * 86400

# Where history goes with the Flux sink. Set FLUX_CHECK_LAST_TIMESTAMP to the value Flux uses
# (Flux's default: True): with True history is POSTed to Flux with fill (Flux never checks such
# points); with False Flux would drop every point at or below flux.last even with fill, so
# history goes to the carbon beside Flux (FLUX_CARBON_HOST/FLUX_CARBON_PICKLE_PORT, default
# CARBON_HOST/CARBON_PICKLE_PORT). `vista check-config` says which path history takes.
FLUX_CHECK_LAST_TIMESTAMP = True
FLUX_CARBON_HOST = None
FLUX_CARBON_PICKLE_PORT = None

# BigQuery sources (Skyline's format; see the README's BigQuery section). Needs the 'bigquery'
# extra. Scheduled jobs run on the agent; `vista bq backfill|update` adds jobs by hand.
VISTA_BQ_ACCOUNTS = {}
# (new) Another BigQuery endpoint, e.g. a private one: 'https://bq.example:443'. None: Google's.
VISTA_BQ_API_ENDPOINT = None
# (new) Archives of fetched intervals (one gzip CSV per account and interval).
VISTA_BQ_ARCHIVE_DIR = '/var/lib/skyline/vista/bq_archives'
# (new) Seconds a BigQuery query job may run before its interval fails (retried later).
VISTA_BQ_QUERY_TIMEOUT = 300
# Skyline's, accepted and ignored (with a warning): install the 'bigquery' extra into Vista's
# own environment instead.
# VISTA_BQ_VIRTUALENV_PATH = None

# --- Redis ---------------------------------------------------------------------------------

# Skyline's unix socket and password; or REDIS_URL (redis://host:port/db, rediss:// for TLS,
# unix:///path) which wins when set. The password goes in REDIS_PASSWORD, never in the URL.
REDIS_SOCKET_PATH = '/var/run/redis/redis.sock'
REDIS_PASSWORD = None
REDIS_URL = None

# (new) Redis Sentinel: when VISTA_REDIS_SENTINELS is set, Vista asks these sentinels where the
# primary of VISTA_REDIS_SENTINEL_SERVICE is (REDIS_URL and REDIS_SOCKET_PATH are then not
# used), and asks again by itself after a failover. REDIS_PASSWORD is the password of the
# primary and replicas; VISTA_REDIS_SENTINEL_PASSWORD the sentinels' own (requirepass in
# sentinel.conf), None if they have none.
VISTA_REDIS_SENTINELS = ()  # e.g. ('10.0.0.1:26379', '10.0.0.2:26379', '10.0.0.3:26379')
VISTA_REDIS_SENTINEL_SERVICE = 'mymaster'
VISTA_REDIS_SENTINEL_PASSWORD = None

# --- Skyline Flux (VISTA_SINK = 'flux') ----------------------------------------------------

FLUX_IP = '127.0.0.1'
FLUX_PORT = 8000
FLUX_SELF_API_KEY = None  # 32 letters and digits; sent in the POST body, never in a URL
FLUX_MAX_AGE = 3600  # older points are sent with "fill": "true"
VISTA_FLUX_PROTOCOL = 'http'  # (new) 'https' to reach Flux over TLS
VISTA_FLUX_VERIFY_SSL = True  # (new)
VISTA_FLUX_CA_BUNDLE = None  # (new)
VISTA_FLUX_BATCH_SIZE = 450  # (new) metrics per POST; Flux documents 450 at most
VISTA_FLUX_TIMEOUT = 30  # (new) seconds

# --- carbon (VISTA_SINK = 'graphite') ------------------------------------------------------

CARBON_HOST = '127.0.0.1'
CARBON_PORT = 2003  # plaintext
CARBON_PICKLE_PORT = 2004
VISTA_CARBON_PROTOCOL = 'pickle'  # (new) or 'plaintext'
VISTA_CARBON_TIMEOUT = 10  # (new) connect/send timeout, seconds
# (new) carbon's MAX_CREATES_PER_MINUTE (carbon.conf; Debian's default is 50). carbon-cache
# DROPS the points of a new metric when its create budget is spent, so Vista paces the first
# write of new metric names to this budget (one bucket in Redis for every worker, host and
# job; the rest stay queued). Lower it by what other writers create in the same carbon;
# float('inf') when carbon's is inf (no pacing). Also applies with the Flux sink (Flux
# forwards to carbon).
VISTA_CARBON_MAX_CREATES_PER_MINUTE = 50

# --- self-metrics (skyline.vista.<SERVER_METRICS_NAME>.fetcher.time_to_fetch, ...) ---------

# Carbon plaintext address for Vista's own metrics; defaults to CARBON_HOST/CARBON_PORT.
SKYLINE_METRICS_CARBON_HOST = None
SKYLINE_METRICS_CARBON_PORT = 2003
SERVER_METRICS_NAME = ''

# --- files ---------------------------------------------------------------------------------

LOG_PATH = '/var/log/skyline'  # vista.log, appended to; rotate with etc/logrotate.d/vista
PID_PATH = '/var/run/skyline'  # vista.pid
# SKYLINE_TMP_DIR = '/tmp/skyline'  # Skyline's; accepted and unused
