"""VISTA_FETCH_METRICS entries: the 12-field tuples Skyline users write (or a dict per metric),
validated into frozen :class:`FetchEntry` records.

The tuple fields, in order (docs/skyline-compatibility.md §1)::

    (remote_host, remote_host_type, frequency, remote_target, graphite_target, uri,
     namespace_prefix, api_key, token, user, password, populate_at_resolutions)
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from skyline.vista.constants import DEFAULT_FREQUENCY, PER_METRIC_KEY_PREFIXES, SHARED_KEYS
from skyline.vista.problems import Problems, show
from skyline.vista.secret import Secret

if TYPE_CHECKING:
    from skyline.vista.expand import NameTemplate

FIELDS = (
    "remote_host",
    "remote_host_type",
    "frequency",
    "remote_target",
    "graphite_target",
    "uri",
    "namespace_prefix",
    "api_key",
    "token",
    "user",
    "password",
    "populate_at_resolutions",
)
REQUIRED_KEYWORD_FIELDS = ("remote_host", "remote_host_type", "remote_target", "graphite_target")
DEFAULT_GRAPHITE_URI = "/render/?from=-10minutes&format=json&target="

SourceType = Literal["graphite", "prometheus"]

# Characters Flux accepts in a metric name (skyline/flux/listen.py validation).
FLUX_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "+-%._/=:")
MAX_ELEMENT_LENGTH = 255 - len(".wsp")
MAX_NAME_LENGTH = 4096

_GRAPHITE_UNITS = {
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_GRAPHITE_PERIOD = re.compile(r"^(\d+)\s*(minutes|minute|min|hours|hour|h|days|day|d)$")
_PROM_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PROM_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
_PROM_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


@dataclass(frozen=True)
class FetchEntry:
    """One configured remote series, ready to fetch."""

    index: int
    remote_host: str  # scheme://netloc[/path], no trailing slash, no credentials
    remote_host_type: SourceType
    frequency: int
    remote_target: str
    graphite_target: str
    uri: str
    namespace_prefix: str
    api_key: Secret | None
    token: Secret | None
    user: str | None
    password: Secret | None
    populate_at_resolutions: tuple[str, ...]
    metric: str  # the local metric name: prefix.graphite_target
    populate_seconds: tuple[int, ...]  # populate_at_resolutions in seconds, coarsest first
    # Graphite: the uri split into path and parameters (target removed); from= in seconds.
    uri_path: str = ""
    uri_params: tuple[tuple[str, str], ...] = ()
    window: int = 0  # seconds covered by the uri's own window (Graphite from=, Prometheus 300)
    # A graphite_target with {fields}: each series of the answer is a metric of its own
    # (skyline/vista/expand.py); ``metric`` is then the template, not a name.
    name_template: NameTemplate | None = None

    @property
    def host(self) -> str:
        """The host label used in logs, counters and queue items: scheme://netloc."""
        parts = urlsplit(self.remote_host)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def is_default_uri(self) -> bool:
        return self.remote_host_type == "prometheus" and self.uri == "default"

    @property
    def request_uri(self) -> str:
        """A custom Prometheus uri as sent: each query value percent-encoded."""
        return prometheus_request_uri(self.uri)

    def describe(self) -> str:
        return f"VISTA_FETCH_METRICS[{self.index}] ({self.metric})"


def graphite_period_seconds(text: str) -> int | None:
    """'10minutes' → 600, '2hours' → 7200, '7days' → 604800; None when not understood."""
    match = _GRAPHITE_PERIOD.match(text.strip())
    if not match:
        return None
    return int(match.group(1)) * _GRAPHITE_UNITS[match.group(2)]


def prometheus_duration_seconds(text: str) -> int | None:
    """'15d' → 1296000, '1h30m' → 5400; None when not a Prometheus duration."""
    if not _PROM_DURATION.match(text):
        return None
    return int(sum(int(n) * _PROM_UNITS[u] for n, u in _PROM_PART.findall(text)))


def metric_name_problem(name: str) -> str | None:
    """Why Flux (and carbon) would reject this metric name, or None when it is fine."""
    bad = sorted({c for c in name if c not in FLUX_NAME_CHARS})
    if bad:
        return f"has characters Flux rejects: {''.join(bad)!r} (allowed: letters, digits, +-%._/=:)"
    if not name or name.startswith(".") or name.endswith(".") or ".." in name:
        return "has an empty path element (leading/trailing dot or '..')"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if len(name.rsplit(".", 1)[-1]) > MAX_ELEMENT_LENGTH:
        return f"has a last element longer than {MAX_ELEMENT_LENGTH} characters"
    return None


def reserved_key_problem(name: str) -> str | None:
    """Why this metric name would clash with a Redis key every metric shares, or None."""
    for prefix in PER_METRIC_KEY_PREFIXES:
        key = prefix + name
        if key in SHARED_KEYS:
            return (
                f"would make its Redis key {prefix}<metric> the shared key {key!r} "
                "(Vista or Skyline keeps every metric's data there)"
            )
    return None


class _EntryCheck:
    """Validates one entry; collects problems under the entry's name."""

    def __init__(self, index: int, raw: object, problems: Problems) -> None:
        self.index = index
        self.raw = raw
        self.problems = problems
        self.label = f"VISTA_FETCH_METRICS[{index}]"

    def name_metric(self, values: Mapping[str, Any]) -> None:
        """Name the entry by its metric too, as far as its fields allow."""
        target = values.get("graphite_target")
        prefix = values.get("namespace_prefix")
        if isinstance(target, str) and target:
            name = f"{prefix}.{target}" if isinstance(prefix, str) and prefix else target
            self.label = f"VISTA_FETCH_METRICS[{self.index}] ({name})"

    def where(self, field: str) -> str:
        return f"{self.label} field '{field}'"

    def error(self, field: str, value: object, expected: str) -> None:
        self.problems.bad(self.where(field), value, expected)

    def fields(self) -> dict[str, Any] | None:
        raw = self.raw
        if isinstance(raw, Mapping):
            unknown = sorted(set(map(str, raw)) - set(FIELDS))
            for name in unknown:
                self.problems.error(
                    self.label, f"unknown field {name!r} (fields: {', '.join(FIELDS)})"
                )
            missing = [f for f in REQUIRED_KEYWORD_FIELDS if f not in raw]
            for name in missing:
                self.problems.error(self.label, f"missing required field {name!r}")
            if unknown or missing:
                return None
            return {str(k): v for k, v in raw.items()}
        if isinstance(raw, (tuple, list)):
            if len(raw) != len(FIELDS):
                self.problems.error(
                    self.label,
                    f"has {len(raw)} fields, expected {len(FIELDS)}: ({', '.join(FIELDS)})",
                )
                return None
            return dict(zip(FIELDS, raw, strict=True))
        self.problems.bad(self.label, raw, f"a tuple of {len(FIELDS)} fields or a dict")
        return None

    def text(self, values: Mapping[str, Any], field: str, *, required: bool = True) -> str:
        value = values.get(field)
        if isinstance(value, str) and (value.strip() or not required):
            return value
        if value is None and not required:
            return ""
        self.error(field, value, "a non-empty string" if required else "a string")
        return ""

    def secret(self, values: Mapping[str, Any], field: str) -> Secret | None:
        value = values.get(field)
        # Skyline's tuples carry None for "not set"; the original str()-ed it into 'None'.
        if value is None or value == "" or value == "None":
            return None
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            self.error(field, "<hidden>" if field != "user" else value, "a string or None")
            return None
        return Secret(value)


def _check_host(check: _EntryCheck, value: object) -> str:
    if not isinstance(value, str) or not value:
        check.error(
            "remote_host", value, "an http:// or https:// URL such as 'http://prometheus:9090'"
        )
        return ""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:  # e.g. 'http://[::1' (the text may hold a password)
        check.problems.error(check.where("remote_host"), f"is not a valid URL: {exc}")
        return ""
    # Credentials first: the other messages show the value, which must not carry a password.
    if parts.username is not None or parts.password is not None:
        check.problems.error(
            check.where("remote_host"),
            "carries credentials in the URL; put them in the 'user' and 'password' fields "
            "(they are then never logged or queued)",
        )
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        check.error(
            "remote_host", value, "an http:// or https:// URL such as 'http://prometheus:9090'"
        )
        return ""
    if parts.query or parts.fragment:
        check.error("remote_host", value, "a base URL without ?query or #fragment")
        return ""
    return value.rstrip("/")


def _check_frequency(check: _EntryCheck, value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        check.problems.warn(
            check.where("frequency"), f"{value!r} is a string; read as {int(value)}"
        )
        return int(value)
    if value is None:
        return DEFAULT_FREQUENCY
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        check.error("frequency", value, "a positive integer number of seconds, e.g. 60")
        return DEFAULT_FREQUENCY
    if value < 10:
        check.problems.warn(
            check.where("frequency"), f"{value} s is below 10 s; remotes rarely have data that fine"
        )
    return value


def _check_graphite_uri(
    check: _EntryCheck, uri: str
) -> tuple[str, tuple[tuple[str, str], ...], int]:
    expected = (
        "a render path ending in 'target=', e.g. '/render/?from=-10minutes&format=json&target='"
    )
    if not uri.endswith("target=") or "?" not in uri:
        check.error("uri", uri, expected)
        return "", (), 0
    parts = urlsplit(uri)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "target"]
    if any(k == "target" and v for k, v in parse_qsl(parts.query, keep_blank_values=True)):
        check.error("uri", uri, "no target in the uri: the target comes from 'remote_target'")
        return "", (), 0
    names = dict(params)
    window = 0
    frm = names.get("from")
    if frm is None:
        check.error("uri", uri, "a 'from=-N minutes|hours|days' parameter, e.g. from=-10minutes")
    else:
        seconds = graphite_period_seconds(frm[1:]) if frm.startswith("-") else None
        if seconds is None or seconds <= 0:
            check.error(
                "uri",
                f"from={frm}",
                "from=-N followed by minutes, hours or days, e.g. from=-10minutes",
            )
        else:
            window = seconds
    fmt = names.get("format", "json")
    if fmt != "json":
        check.error("uri", f"format={fmt}", "format=json (Vista reads the JSON render answer)")
    if "until" in names and names["until"] not in ("", "now"):
        check.error(
            "uri",
            f"until={names['until']}",
            "no until= (or until=now): Vista sets the end of the window itself",
        )
    params = [(k, v) for k, v in params if k not in ("until", "format")]
    return parts.path or "/render/", tuple(params), window


def prometheus_uri_params(uri: str) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a custom Prometheus uri.

    Only %XX escapes are decoded: a '+' is a plus sign, as a PromQL writer means it
    (``sum(up) + 1``), not a form-encoded space.
    """
    _, _, query = uri.partition("?")
    pairs = []
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def prometheus_request_uri(uri: str) -> str:
    """The custom uri as it goes on the wire: each query name and value percent-encoded, so
    that ``query=sum(up) + 1`` reaches Prometheus as written. An already-encoded uri (Skyline's
    ``%7B...%5B5m%5D`` examples) is sent unchanged in meaning."""
    path, _, _ = uri.partition("?")
    query = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='')}"
        for name, value in prometheus_uri_params(uri)
    )
    return f"{path}?{query}" if query else path


_RANGE_SELECTOR = re.compile(r"\[[^\]]+\]\s*$")


def _check_prometheus_uri(check: _EntryCheck, uri: str) -> int:
    if uri == "default":
        return 300
    if not uri.startswith("/api/v1/query"):
        check.error(
            "uri",
            uri,
            "'default' or a Prometheus API path such as "
            "'/api/v1/query?query=up' or '/api/v1/query_range?...'",
        )
        return 300
    # Judge the decoded query (Skyline documents uris written %-encoded, e.g. ...%5B5m%5D).
    params = dict(prometheus_uri_params(uri))
    expression = params.get("query", "")
    if "+" in uri.partition("?")[2]:
        check.problems.warn(
            check.where("uri"),
            "'+' is sent as a plus sign (PromQL addition), not as a space: the uri goes out as "
            f"{show(prometheus_request_uri(uri), 200)}",
        )
    instant = uri.startswith("/api/v1/query?")
    if instant and "time" not in params and not _RANGE_SELECTOR.search(expression):
        check.problems.warn(
            check.where("uri"),
            "an instant query without time= is evaluated at Prometheus' 'now': its one point is "
            "in the open minute, which VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE never sends; use "
            "'default' (query_range), or a range selector such as query=x[5m]",
        )
    return 300


def _check_populate(
    check: _EntryCheck, value: object, kind: str
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if value is None or value == () or value == []:
        return (), ()
    if isinstance(value, str):
        check.problems.warn(
            check.where("populate_at_resolutions"),
            f"{value!r} is a bare string, read as ({value!r},); write it with a trailing comma",
        )
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        check.error("populate_at_resolutions", value, "a tuple of period strings, e.g. ('15d',)")
        return (), ()
    seconds: list[int] = []
    for item in value:
        if kind == "graphite":
            n = graphite_period_seconds(item)
            expected = "periods such as '7days', '24hours' or '30minutes'"
        else:
            n = prometheus_duration_seconds(item)
            expected = "Prometheus durations such as '15d', '24h' or '90m'"
        if n is None or n <= 0:
            check.error("populate_at_resolutions", item, expected)
            return (), ()
        seconds.append(n)
    order = sorted(range(len(seconds)), key=lambda i: -seconds[i])
    return tuple(value[i] for i in order), tuple(seconds[i] for i in order)


def _check_prefix(check: _EntryCheck, prefix: str) -> str:
    if prefix.endswith("."):
        check.error("namespace_prefix", prefix, "no trailing dot (Vista adds the dot)")
        return prefix.rstrip(".")
    if prefix.startswith("."):
        check.error("namespace_prefix", prefix, "no leading dot")
    return prefix


def check_entry(index: int, raw: object, problems: Problems) -> FetchEntry | None:
    """Validate one VISTA_FETCH_METRICS entry. Returns None when it has errors (recorded).

    The fields are checked in a fixed order (host, type, frequency, targets, prefix, uri,
    credentials, populate_at_resolutions, the metric name), so the problems come in that order.
    """
    check = _EntryCheck(index, raw, problems)
    values = check.fields()
    if values is None:
        return None
    check.name_metric(values)
    before = len(problems.errors)
    host = _check_host(check, values.get("remote_host"))
    kind = values.get("remote_host_type")
    if kind not in ("graphite", "prometheus"):
        check.error("remote_host_type", kind, "'graphite' or 'prometheus'")
    frequency = _check_frequency(check, values.get("frequency", DEFAULT_FREQUENCY))
    target = check.text(values, "remote_target")
    graphite_target = check.text(values, "graphite_target")
    prefix = _check_prefix(check, check.text(values, "namespace_prefix", required=False))
    uri = _check_uri(check, values, kind)
    auth = _check_auth(check, values)
    populate, populate_seconds = _check_populate(
        check, values.get("populate_at_resolutions"), str(kind)
    )
    if populate and kind == "prometheus" and uri.uri != "default":
        problems.warn(
            check.where("populate_at_resolutions"),
            "ignored with a custom Prometheus uri (needs uri 'default')",
        )
        populate, populate_seconds = (), ()
    metric = f"{prefix}.{graphite_target}" if prefix else graphite_target
    template = _check_metric_name(check, metric, graphite_target, kind)
    if len(problems.errors) > before or kind not in ("graphite", "prometheus"):
        return None
    return FetchEntry(
        index=index,
        remote_host=host,
        remote_host_type="graphite" if kind == "graphite" else "prometheus",
        frequency=frequency,
        remote_target=target,
        graphite_target=graphite_target,
        uri=uri.uri,
        namespace_prefix=prefix,
        api_key=auth.api_key,
        token=auth.token,
        user=auth.user,
        password=auth.password,
        populate_at_resolutions=populate,
        metric=metric,
        populate_seconds=populate_seconds,
        uri_path=uri.path,
        uri_params=uri.params,
        window=uri.window,
        name_template=template,
    )


@dataclass(frozen=True)
class _Uri:
    """An entry's checked ``uri``: as given, and for Graphite its render path and parameters;
    ``window`` is the seconds of history it asks for (0 when it does not say)."""

    uri: str
    path: str = ""
    params: tuple[tuple[str, str], ...] = ()
    window: int = 0


def _check_uri(check: _EntryCheck, values: Mapping[str, Any], kind: object) -> _Uri:
    uri_value = values.get("uri")
    if uri_value is None and isinstance(check.raw, Mapping):
        uri_value = DEFAULT_GRAPHITE_URI if kind == "graphite" else "default"
    uri = uri_value if isinstance(uri_value, str) else ""
    if not isinstance(uri_value, str) or not uri_value:
        check.error(
            "uri",
            uri_value,
            "a string: a Graphite render path ending in 'target=', or 'default' for Prometheus",
        )
    if uri and kind == "graphite":
        path, params, window = _check_graphite_uri(check, uri)
        return _Uri(uri, path, params, window)
    if uri and kind == "prometheus":
        return _Uri(uri, window=_check_prometheus_uri(check, uri))
    return _Uri(uri)


@dataclass(frozen=True)
class _Auth:
    api_key: Secret | None
    token: Secret | None
    user: str | None
    password: Secret | None


def _check_auth(check: _EntryCheck, values: Mapping[str, Any]) -> _Auth:
    """The entry's credentials: an API key, and a Bearer token or basic user/password."""
    api_key = check.secret(values, "api_key")
    token = check.secret(values, "token")
    user_secret = check.secret(values, "user")
    password = check.secret(values, "password")
    user = user_secret.reveal() if user_secret else None
    if (user is None) != (password is None):
        check.problems.error(
            check.label,
            "'user' and 'password' go together for HTTP basic auth: give both or neither",
        )
    if token is not None and user is not None:
        check.problems.error(
            check.label, "give either 'token' (Bearer) or 'user'/'password' (basic), not both"
        )
    return _Auth(api_key, token, user, password)


def _check_metric_name(
    check: _EntryCheck, metric: str, graphite_target: str, kind: object
) -> NameTemplate | None:
    """Check the metric name the entry delivers to; its name template if it has one."""
    problems = check.problems
    if graphite_target and kind in ("graphite", "prometheus") and _is_template(metric):
        from skyline.vista import expand  # imports this module

        try:
            return expand.parse_template(metric, "graphite" if kind == "graphite" else "prometheus")
        except ValueError as exc:
            problems.error(check.where("graphite_target"), f"name template {show(metric)}: {exc}")
    elif graphite_target and (reason := metric_name_problem(metric)):
        problems.error(check.label, f"metric name {show(metric)} {reason}")
    elif graphite_target and (reason := reserved_key_problem(metric)):
        problems.error(
            check.label,
            f"metric name {show(metric)} {reason}; give it another graphite_target or a "
            "namespace_prefix",
        )
    return None


_TEMPLATE_FIELD = re.compile(r"\{\s*(?:[A-Za-z_][A-Za-z0-9_]*|node\[-?\d+\])\s*\}")


def _is_template(name: str) -> bool:
    """A name with at least one {label} or {node[N]} field (a Graphite glob such as {a,b} is
    not one, and is refused as a metric name)."""
    return bool(_TEMPLATE_FIELD.search(name))


def check_entries(raw: object, problems: Problems) -> tuple[FetchEntry, ...]:
    """Validate VISTA_FETCH_METRICS as a whole, including duplicate metric names."""
    if raw is None:
        return ()
    if not isinstance(raw, (tuple, list)):
        problems.bad("VISTA_FETCH_METRICS", raw, "a tuple of fetch entries")
        return ()
    entries: list[FetchEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        entry = check_entry(index, item, problems)
        if entry is None:
            continue
        if entry.metric in seen:
            problems.error(
                f"VISTA_FETCH_METRICS[{index}]",
                f"resolves to the metric name {entry.metric!r}, as VISTA_FETCH_METRICS"
                f"[{seen[entry.metric]}] does; each entry needs its own graphite_target/prefix",
            )
            continue
        seen[entry.metric] = index
        entries.append(entry)
    return tuple(entries)
