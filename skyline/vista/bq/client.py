"""Running one interval's query with ``google-cloud-bigquery`` and streaming its result pages.

One :class:`BigQueryRunner` per job (one client, one set of credentials, refreshed tokens kept
across intervals). ``endpoint`` (``VISTA_BQ_API_ENDPOINT``) points the client at another
BigQuery-compatible endpoint (a private one, or the tests' local server).

* A slow job is polled until ``timeout`` seconds (``VISTA_BQ_QUERY_TIMEOUT``), then
  :class:`QueryFailed` (retried by the next run of the interval).
* A failed job raises :class:`QueryFailed` with the service's message (not retried here: the
  SQL is wrong or the table is missing).
* Transient errors (HTTP 5xx, 429, connection errors) are retried ``attempts`` times with
  exponential backoff and jitter, then raised as :class:`QueryUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from skyline.vista.backoff import compute_backoff
from skyline.vista.bq.query import IntervalQuery
from skyline.vista.errors import VistaError

logger = logging.getLogger(__name__)

PAGE_SIZE = 10_000


class QueryFailed(VistaError):
    """BigQuery ran the query and it failed, or it did not finish in time."""


class QueryUnavailable(VistaError):
    """BigQuery could not be reached (or kept answering 5xx/429) after the retries."""


@dataclass
class QueryResult:
    columns: tuple[str, ...]
    total_rows: int
    pages: Iterator[Sequence[Sequence[object]]]
    bytes_billed: int | None
    job_id: str


def _transient_errors() -> tuple[type[BaseException], ...]:
    import requests
    from google.api_core import exceptions

    return (
        exceptions.ServerError,
        exceptions.TooManyRequests,
        requests.ConnectionError,
        requests.Timeout,
        ConnectionError,
    )


class BigQueryRunner:
    def __init__(
        self,
        project: str,
        credentials: Any,
        *,
        endpoint: str | None = None,
        timeout: float = 300.0,
        attempts: int = 4,
        page_size: int = PAGE_SIZE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from google.cloud import bigquery

        options = {"api_endpoint": endpoint} if endpoint else None
        self.client = bigquery.Client(
            project=project, credentials=credentials, client_options=options
        )
        self.timeout = timeout
        self.attempts = attempts
        self.page_size = page_size
        self._sleep = sleep

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    def _job_config(self, query: IntervalQuery) -> Any:
        from google.cloud import bigquery

        params = [bigquery.ScalarQueryParameter(p.name, p.type, p.value) for p in query.parameters]
        return bigquery.QueryJobConfig(query_parameters=params, use_legacy_sql=False)

    def _run_once(self, query: IntervalQuery) -> QueryResult:
        import concurrent.futures

        from google.api_core import exceptions
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        # Starting the job: no retry inside the library, run() retries (bounded, with backoff).
        job = self.client.query(
            query.sql,
            job_config=self._job_config(query),
            retry=None,  # type: ignore[arg-type]
            job_retry=None,
        )
        try:
            rows = job.result(
                page_size=self.page_size,
                timeout=self.timeout,
                retry=DEFAULT_RETRY.with_deadline(self.timeout),
            )
        except concurrent.futures.TimeoutError:
            raise QueryFailed(
                f"BigQuery job {job.job_id} did not finish within {self.timeout:g} s"
            ) from None
        except (exceptions.BadRequest, exceptions.Forbidden, exceptions.NotFound) as exc:
            raise QueryFailed(f"BigQuery job {job.job_id} failed: {_message(exc)}") from None
        columns = tuple(f.name for f in rows.schema)
        return QueryResult(
            columns=columns,
            total_rows=int(rows.total_rows or 0),
            pages=(tuple(row.values() for row in page) for page in rows.pages),
            bytes_billed=job.total_bytes_billed,
            job_id=str(job.job_id),
        )

    def run(self, query: IntervalQuery) -> QueryResult:
        """Start the query and wait for it; the result's pages are fetched as they are read."""
        from google.auth import exceptions as auth_exceptions

        from skyline.vista.bq.credentials import CredentialsError

        retried: tuple[type[BaseException], ...] = (
            *_transient_errors(),
            auth_exceptions.TransportError,
        )
        for attempt in range(1, self.attempts + 1):
            try:
                return self._run_once(query)
            except auth_exceptions.RefreshError as exc:
                raise CredentialsError(f"getting a token failed: {_message(exc)}") from None
            except retried as exc:
                # TransportError: the token endpoint could not be reached (a network failure,
                # retried like the others), not a refused refresh.
                what = _message(exc)
                if isinstance(exc, auth_exceptions.TransportError):
                    what = f"getting a token from {_token_uri(self.client)} failed: {_reason(exc)}"
                if attempt == self.attempts:
                    raise QueryUnavailable(
                        f"BigQuery unavailable after {attempt} attempts: {what}"
                    ) from None
                delay = compute_backoff(attempt, base=1.0, cap=30.0)
                logger.warning(
                    "BigQuery query for %s failed (%s); retry %d in %.1f s",
                    query.label,
                    what,
                    attempt,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")


def _token_uri(client: Any) -> str:
    return str(getattr(getattr(client, "_credentials", None), "token_uri", None) or "Google")


def _reason(exc: BaseException) -> str:
    """The innermost cause's message, on one line (urllib3 nests three levels deep)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else type(exc).__name__)
    return str(message)[:500]
