"""What ``bq_backfill`` and ``bq_update`` share: job parameters, the rows of one interval (from
BigQuery or from its archive), delivery with paced first writes, and the job's counters.

A job function gets a :class:`JobIO` (the job core's ``JobContext`` is one): its parameters,
its checkpoint, ``progress()``/``checkpoint()`` to record them and ``should_stop()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from skyline.vista.bq import archive as archives
from skyline.vista.bq.query import IntervalQuery, QuerySettings, interval_label
from skyline.vista.bq.rows import RowSpec
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import CreateBudget
from skyline.vista.errors import VistaError
from skyline.vista.secret import Secret
from skyline.vista.sinks import Sink, SinkPoint

logger = logging.getLogger(__name__)

SEND_CHUNK = 5000
SEND_ATTEMPTS = 8


class JobParamsError(VistaError):
    """A job record whose parameters cannot run (unknown account, bad range)."""


class JobIO(Protocol):
    """What a BigQuery job needs from the job core (``skyline.vista.jobs``' JobContext)."""

    config: VistaConfig
    client: redis.Redis
    record: Any  # has .id and .checkpoint (a dict)

    @property
    def params(self) -> dict[str, Any]: ...

    def should_stop(self) -> bool: ...

    def progress(self, **changes: Any) -> None: ...

    def checkpoint(self, data: dict[str, Any], **progress: Any) -> None: ...


def _flag(value: object, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _int(params: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = params.get(name)
        if value not in (None, ""):
            try:
                return int(float(value))
            except (TypeError, ValueError):
                raise JobParamsError(f"{name} is not a number: {value!r}") from None
    return None


@dataclass(frozen=True)
class JobParams:
    """A BigQuery job's parameters, under Skyline's names (``vista_bq_account_key``,
    ``from_timestamp``, ``until_timestamp``...), so a job the webapp wrote runs as is.
    Skyline's ``max_creates_per_minute`` is read but not used: first writes are paced by the
    one create budget of the carbon they reach (VISTA_CARBON_MAX_CREATES_PER_MINUTE)."""

    account_name: str
    account: Mapping[str, Any] = field(repr=False)
    start: int
    until: int
    interval: int
    dry_run: bool = False
    flux_test: bool = False  # bq_backfill only: bq_update's rewrites are always stored
    zero_fill: bool = False
    use_archive: bool = False
    replace_query_string: str | None = None
    date_format: str | None = None
    added_by: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, Any], config: VistaConfig, *, update: bool) -> JobParams:
        name = str(params.get("vista_bq_account_key") or params.get("account") or "")
        account = config.bq_accounts.get(name)
        if account is None:
            known = ", ".join(sorted(config.bq_accounts)) or "none"
            raise JobParamsError(f"unknown BigQuery account {name!r} (VISTA_BQ_ACCOUNTS: {known})")
        interval = int(account["schedule_interval"])
        now = time.time()
        if update:
            period = int(account.get("update_data_period") or 7 * 86400)
            until = _int(params, "until_timestamp")
            until = int((now if until is None else until) // interval * interval)
            start = _int(params, "from_timestamp")
            start = until - period if start is None else start
        else:
            start_or = _int(params, "from_timestamp")
            until_or = _int(params, "until_timestamp")
            if start_or is None or until_or is None:
                raise JobParamsError("from_timestamp and until_timestamp are required")
            start, until = start_or, until_or
            interval = _int(params, "interval") or interval
        if interval <= 0 or until < start:
            raise JobParamsError(
                f"empty range: from {_utc(start)} until {_utc(until)} UTC by {interval} s"
                f"{' (--from is after --until)' if until < start else ''}"
            )
        return cls(
            account_name=name,
            account=account,
            start=start - start % interval,
            until=until,
            interval=interval,
            dry_run=_flag(params.get("dry_run"), False),
            flux_test=not update and _flag(params.get("flux_test"), False),
            zero_fill=_flag(params.get("zero_fill"), False),
            use_archive=_flag(params.get("use_archive_data"), False),
            replace_query_string=params.get("replace_query_string") or None,
            date_format=params.get("date_format") or None,
            added_by=str(params.get("added_by") or ""),
        )

    @property
    def verb(self) -> str:
        """What reports say happened to the points."""
        return "would send" if self.dry_run else "sent"

    def starts(self) -> list[int]:
        return list(range(self.start, self.until + 1, self.interval))

    def row_spec(self) -> RowSpec:
        return RowSpec.from_account(self.account, zero_fill=self.zero_fill)

    def query_settings(self, update: bool) -> QuerySettings:
        if update:
            return QuerySettings.for_update(self.account)
        job = {"replace_query_string": self.replace_query_string, "date_format": self.date_format}
        return QuerySettings.for_backfill(self.account, job)


# --- rows of one interval -----------------------------------------------------------------------


@dataclass
class IntervalRows:
    columns: tuple[str, ...]
    total_rows: int | None  # None: not known before reading (an archive)
    pages: Iterator[Sequence[Sequence[object]]]
    from_archive: bool
    bytes_billed: int | None = None


class RowsSource:
    """Where an interval's rows come from: its archive (when asked to and present), or a query.
    The BigQuery client (and the account's credentials) is made on first use, once per job."""

    def __init__(self, params: JobParams, config: VistaConfig, settings: QuerySettings) -> None:
        self.params = params
        self.config = config
        self.settings = settings
        self._runner: Any = None

    def archive_path(self, start: int) -> str:
        label = interval_label(start, self.settings.date_format)
        return archives.archive_path(
            self.config.bigquery.archive_dir, self.params.account_name, label
        )

    def runner(self) -> Any:
        if self._runner is None:
            from skyline.vista.bq.client import BigQueryRunner
            from skyline.vista.bq.credentials import load_credentials

            credentials = load_credentials(self.params.account_name, self.params.account)
            self._runner = BigQueryRunner(
                str(self.params.account["project_id"]),
                credentials,
                endpoint=self.config.bigquery.api_endpoint,
                timeout=self.config.bigquery.query_timeout,
            )
        return self._runner

    def query(self, start: int) -> tuple[IntervalQuery, IntervalRows]:
        q = self.settings.build(start, self.params.interval)
        result = self.runner().run(q)
        return q, IntervalRows(
            result.columns, result.total_rows, result.pages, False, result.bytes_billed
        )

    def archived(self, start: int) -> IntervalRows | None:
        try:
            columns, rows = archives.read_archive(self.archive_path(start))
        except FileNotFoundError:
            return None
        page = list(rows)
        return IntervalRows(columns, len(page), iter([page]), True)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


# --- delivery -----------------------------------------------------------------------------------


class Delivery:
    """Sends points to the sink (or only counts them in a dry run), pacing first writes,
    retrying transient sink failures with backoff while the job is not asked to stop."""

    def __init__(
        self,
        sink: Sink | None,
        budget: CreateBudget,
        should_stop: Callable[[], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sink = sink
        self.budget = budget
        self.should_stop = should_stop
        self.sleep = sleep
        self.sent = 0

    def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` in 1 s steps; False when asked to stop."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.should_stop():
                return False
            self.sleep(min(1.0, max(0.0, end - time.monotonic())))
        return True

    def _submit(self, points: Sequence[SinkPoint]) -> None:
        if self.sink is None:
            return
        from skyline.vista.backoff import compute_backoff

        rest = points
        for attempt in range(1, SEND_ATTEMPTS + 1):
            result = self.sink.submit(rest, time.time())
            if result.rejected:
                logger.warning("the sink rejected %d point(s)", len(result.rejected))
            if result.error is None:
                return
            rest = rest[result.handled :]
            delay = compute_backoff(attempt, base=1.0, cap=30.0)
            logger.warning("sending to the sink failed (%s); retry in %.1f s", result.error, delay)
            if attempt == SEND_ATTEMPTS or not self._pause(delay):
                raise result.error

    def send(self, points: Sequence[SinkPoint]) -> None:
        """Send ``points``; the first write of a new metric name waits for a token of carbon's
        create budget (skyline/vista/create_budget.py, shared with the workers). Raises
        SinkError when the sink keeps failing, :class:`Stopped` when asked to stop while
        waiting."""
        for begin in range(0, len(points), SEND_CHUNK):
            chunk = list(points[begin : begin + SEND_CHUNK])
            while chunk:
                admission = self.budget.admit(p.metric for p in chunk)
                part = [p for p in chunk if admission.allowed(p.metric)]
                chunk = [p for p in chunk if not admission.allowed(p.metric)]
                if part:
                    self._submit(part)
                    self.sent += len(part)
                if chunk:
                    logger.info(
                        "carbon create budget: %d new metric(s) wait %.1f s for a token",
                        len(admission.deferred),
                        admission.wait,
                    )
                    if not self._pause(max(admission.wait, 0.05)):
                        raise Stopped("stopped while waiting for carbon's create budget")


class Stopped(VistaError):
    """The job was asked to stop (SIGTERM or a cancel request) in the middle of a unit."""


def open_sink(config: VistaConfig, account: Mapping[str, Any], *, flux_test: bool) -> Sink:
    """The sink for a BigQuery job's points: the history path (skyline/vista/history.py), the
    same for backfilled and for rewritten (bq_update) values, since both are old points that
    must really be stored:

    * carbon sink: straight to carbon;
    * Flux sink, ``FLUX_CHECK_LAST_TIMESTAMP = True`` (Flux's default): POST to Flux with
      ``fill`` on every point (Flux never checks those against ``flux.last``), with the
      account's ``flux_api_token`` (else ``FLUX_SELF_API_KEY``), so Flux applies the token's
      namespace;
    * Flux sink, ``False``: to the carbon beside Flux, as Skyline's bq_update does, because Flux
      would drop points at or below ``flux.last`` even with ``fill``.

    ``flux_test`` always POSTs to Flux, with Flux's ``x-test-only`` header (Flux counts and
    stores nothing).
    """
    from skyline.vista.history import build_history_sink

    token = account.get("flux_api_token")
    flux_key = Secret(str(token)) if token else None
    return build_history_sink(config, flux_key=flux_key, flux_test=flux_test)


def job_folder(started: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(started))


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)).removesuffix(" 00:00")
