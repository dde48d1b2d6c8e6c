"""Validation of VISTA_BQ_ACCOUNTS: each account is a dict of known keys.

The keys are Skyline's (docs/skyline-compatibility.md §5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from skyline.vista.problems import Problems


@dataclass(frozen=True)
class BigQueryConfig:
    """Vista-wide BigQuery settings (the accounts themselves are VISTA_BQ_ACCOUNTS)."""

    api_endpoint: str | None = None  # VISTA_BQ_API_ENDPOINT: None = Google's
    archive_dir: str = "/var/lib/skyline/vista/bq_archives"  # VISTA_BQ_ARCHIVE_DIR
    query_timeout: float = 300.0  # VISTA_BQ_QUERY_TIMEOUT, seconds


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _columns(value: object) -> bool:
    return (
        isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
    )


def _seconds(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


REQUIRED: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("project_id", _text, "a non-empty string"),
    ("query", _text, "a non-empty string"),
    ("metric_prefix", _text, "a non-empty string"),
    ("date_field", _text, "a non-empty string"),
    ("primary_dimension", _text, "a non-empty string"),
    ("metric_dimensions", _columns, "a non-empty list of column names"),
    ("schedule_interval", _seconds, "a positive number of seconds"),
)
CREDENTIAL_KEYS = (
    "oauth_credentials",
    "oauth_credentials_file",
    "service_credentials",
    "service_credentials_file",
)
CREDENTIALS_PRIORITY = (  # the order credential_source() looks at them
    "service_credentials_file",
    "service_credentials",
    "oauth_credentials_file",
    "oauth_credentials",
)
OAUTH_FIELDS = ("token", "refresh_token", "token_uri", "client_id", "client_secret")
METRIC_FORMATS = ("graphite", "labelled_metrics", "prometheus", "victoriametrics")
SCHEDULE_FIELDS = ("minute", "hour", "day_of_month", "month", "day_of_week")
OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "flux_api_token": str,
    "min_expected_results": int,
    "date_field_format": str,
    "full_duration": int,
    "stale_period": int,
    "resolution": int,
    "batch_processing_namespace": str,
    "non_derivative_namespaces": (list, tuple),
    "zero_fill_analysis": bool,
    "update_data_period": int,
    "update_replace_query": str,
    "date_format": str,
    "replace_query_string": str,
    "use_remote": bool,
    "labelled_metrics_key_by": str,
}
SECRET_KEYS = ("flux_api_token",)


CRON_RANGES = {
    "minute": "0-59",
    "hour": "0-23",
    "day_of_month": "1-31",
    "month": "1-12",
    "day_of_week": "0-6",
}


def _check_schedule(where: str, value: object, problems: Problems) -> None:
    if not isinstance(value, Mapping):
        problems.bad(where, value, f"a dict with keys {', '.join(SCHEDULE_FIELDS)}")
        return
    unknown = sorted(set(map(str, value)) - set(SCHEDULE_FIELDS))
    if unknown:
        problems.bad(where, unknown, f"only the keys {', '.join(SCHEDULE_FIELDS)}")
        return
    from skyline.vista.bq.cron import ScheduleError, cron_expression

    try:
        cron_expression(value)  # None when disabled (all fields 0)
        return
    except ScheduleError as exc:
        whole = str(exc)
    before = len(problems.errors)
    for field_name in SCHEDULE_FIELDS:  # each field alone, so that the message names it
        if field_name in value:
            try:
                cron_expression({field_name: value[field_name]} | _NOT_DISABLED[field_name])
            except ScheduleError:
                problems.bad(
                    f"{where} field '{field_name}'",
                    value[field_name],
                    f"a cron {field_name} ({CRON_RANGES[field_name]}, '*', lists, ranges, steps)",
                )
    if len(problems.errors) == before:
        problems.bad(where, dict(value), f"a valid cron schedule ({whole})")


# A schedule of only zeros means "disabled" (Skyline's '0 0 0 0 0'); checking one field alone,
# another field set to '*' keeps it from being read as that.
_NOT_DISABLED = {
    name: {("hour" if name == "minute" else "minute"): "*"} for name in SCHEDULE_FIELDS
}


def _check_values(where: str, account: Mapping[str, Any], problems: Problems) -> None:
    prefix = account.get("metric_prefix")
    if _text(prefix) and "" in str(prefix).split("."):
        problems.bad(f"{where} key 'metric_prefix'", prefix, "no leading, trailing or double dot")
    for key, least in (("update_data_period", 1), ("min_expected_results", 0)):
        value = account.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            problems.bad(f"{where} key '{key}'", value, f"an integer >= {least}")


def _check_usable(
    name: str, where: str, account: Mapping[str, Any], load: bool, problems: Problems
) -> None:
    """What a job would find out first, checked before the agent starts: the query holds its
    parameter or replace string and the date format makes safe labels, and a credentials file
    loads (read and parsed, no network call)."""
    from skyline.vista.bq.credentials import CredentialsError, load_credentials
    from skyline.vista.bq.query import QuerySettings

    if _text(account.get("query")):
        found: list[str] = []
        for settings in (QuerySettings.for_backfill(account), QuerySettings.for_update(account)):
            found += [p for p in settings.problems() if p not in found]
        for problem in found:
            problems.error(f"{where} key 'query'", problem)
    if not load:
        return  # the credentials' keys are wrong: reported by _check_credentials
    # The key credential_source() reads first. A file is read and its key loaded now (a
    # missing, unreadable or malformed file is the usual mistake); the fields of credentials
    # written inline are checked by _check_credentials.
    key = next(k for k in CREDENTIALS_PRIORITY if account.get(k))
    if not key.endswith("_file"):
        return
    try:
        load_credentials(name, account)
    except CredentialsError as exc:
        problems.error(f"{where} key '{key}'", str(exc).removeprefix(f"account {name!r}: "))
    except ImportError:
        problems.error(where, "the 'bigquery' extra is not installed (pip install vista[bigquery])")


def _check_credentials(where: str, account: Mapping[str, Any], problems: Problems) -> None:
    given = [k for k in CREDENTIAL_KEYS if account.get(k)]
    if not given:
        problems.error(where, f"missing credentials: give one of {', '.join(CREDENTIAL_KEYS)}")
        return
    oauth = account.get("oauth_credentials")
    if oauth is not None and oauth != {}:
        if not isinstance(oauth, Mapping):
            problems.bad(f"{where} key 'oauth_credentials'", "<hidden>", "a dict")
        else:
            missing = [f for f in OAUTH_FIELDS if not oauth.get(f)]
            if missing:
                problems.error(f"{where} key 'oauth_credentials'", f"missing {', '.join(missing)}")
    for key in ("oauth_credentials_file", "service_credentials_file"):
        path = account.get(key)
        if path is not None and not isinstance(path, str):
            problems.bad(f"{where} key '{key}'", path, "a file path string")


def _check_account(name: str, account: object, problems: Problems) -> bool:
    where = f"VISTA_BQ_ACCOUNTS[{name!r}]"
    if not isinstance(account, Mapping):
        problems.bad(where, account, "a dict of account settings")
        return False
    before = len(problems.errors)
    for key, valid, expected in REQUIRED:
        if key not in account:
            problems.error(where, f"missing required key {key!r}")
        elif not valid(account[key]):
            problems.bad(f"{where} key '{key}'", account[key], expected)
    fmt = account.get("metric_format", "graphite")
    if fmt not in METRIC_FORMATS:
        problems.bad(f"{where} key 'metric_format'", fmt, " or ".join(map(repr, METRIC_FORMATS)))
    for key in ("schedule", "update_data_schedule"):
        if key in account:
            _check_schedule(f"{where} key '{key}'", account[key], problems)
    for key, kind in OPTIONAL.items():
        if key in account and account[key] is not None and not isinstance(account[key], kind):
            shown = "<hidden>" if key in SECRET_KEYS else account[key]
            problems.bad(f"{where} key '{key}'", shown, _kind_name(kind))
    _check_values(where, account, problems)
    credentials_ok = len(problems.errors)
    _check_credentials(where, account, problems)
    _check_usable(name, where, account, len(problems.errors) == credentials_ok, problems)
    return len(problems.errors) == before


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"str": "a string", "int": "an integer", "bool": "True or False"}
    return " or ".join(names.get(k.__name__, f"a {k.__name__}") for k in kinds)


def check_accounts(raw: object, problems: Problems) -> dict[str, Mapping[str, Any]]:
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, Mapping):
        problems.bad("VISTA_BQ_ACCOUNTS", raw, "a dict of account name -> account dict")
        return {}
    valid: dict[str, Mapping[str, Any]] = {}
    for name, account in raw.items():
        if _check_account(str(name), account, problems) and isinstance(account, Mapping):
            valid[str(name)] = dict(account)
    return valid


def secret_values(accounts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every credential string in the accounts, for log redaction."""
    found: list[str] = []
    for account in accounts.values():
        for key in SECRET_KEYS:
            if isinstance(account.get(key), str):
                found.append(account[key])
        for key in ("oauth_credentials", "service_credentials"):
            creds = account.get(key)
            if isinstance(creds, Mapping):
                found += [v for k, v in creds.items() if isinstance(v, str) and k != "token_uri"]
    return found
