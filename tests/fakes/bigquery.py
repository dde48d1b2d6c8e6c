"""A local server speaking the BigQuery v2 REST calls that ``google-cloud-bigquery`` makes, plus
an OAuth 2.0 token endpoint, for tests and benchmarks.

The real client is pointed at it with ``client_options={"api_endpoint": server.url}``:

* ``POST /bigquery/v2/projects/P/jobs`` (jobs.insert): keeps the client's ``jobReference``,
  records the SQL and the ``queryParameters`` exactly as received, and answers a job resource;
* ``GET  /bigquery/v2/projects/P/jobs/J`` (jobs.get): ``RUNNING`` for the first ``polls``
  calls of a slow job, then ``DONE`` (with ``errorResult`` for a failed job);
* ``GET  /bigquery/v2/projects/P/queries/J`` (getQueryResults): ``jobComplete`` false while
  the job runs; rows in pages of ``maxResults`` with ``pageToken``; ``totalRows`` as a string;
* ``POST /token`` (OAuth): the service-account JWT-bearer grant (the assertion's RS256
  signature is checked against the registered public key) and the refresh-token grant.

When ``require_auth`` is set, a BigQuery call without a bearer token this server issued gets
401, as Google does for an expired token (the client then refreshes and retries).

Data: :meth:`FakeBigQuery.set_table` holds typed rows; a query's rows are the table's rows whose
date column equals the interval's date, taken from the ``@date`` parameter or else the first
quoted ``'YYYY-MM-DD'`` literal in the SQL. :meth:`set_answer` overrides this per SQL substring
(a failed job, a slow job, a custom result).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from skyline.vista.testing.servers import StartStop
from tests.support.web import ThreadedApp

__all__ = ["Answer", "Column", "FakeBigQuery", "ReceivedQuery"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DATE, STRING, INTEGER, FLOAT, NUMERIC, TIMESTAMP, DATETIME


@dataclass
class Answer:
    """What the server answers for queries whose SQL contains ``match``."""

    match: str  # a substring of the SQL ('' matches every query)
    date: str | None = None  # and, when set, the @date parameter's value
    rows: Sequence[Sequence[object]] | None = None  # None: from the table
    columns: Sequence[Column] | None = None
    polls: int = 0  # jobs.get / getQueryResults calls answered "not done" first
    error: tuple[str, str] | None = None  # (reason, message) of a failed job
    http_errors: list[int] = field(default_factory=list)  # statuses for the next jobs.insert
    bytes_billed: int = 10_485_760


@dataclass
class ReceivedQuery:
    job_id: str
    sql: str
    parameters: list[dict[str, Any]]
    authorization: str


@dataclass
class _Job:
    job_id: str
    project: str
    sql: str
    config: dict[str, Any]
    columns: Sequence[Column]
    rows: Sequence[Sequence[object]]
    polls_left: int
    error: tuple[str, str] | None
    bytes_billed: int
    location: str = "US"


def _cell(value: object, kind: str) -> str | None:
    if value is None:
        return None
    if kind == "TIMESTAMP" and isinstance(value, dt.datetime):
        return str(int(value.timestamp() * 1_000_000))
    if kind == "DATETIME" and isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


_LITERAL_DATE = re.compile(r"'(\d{4}-\d{2}-\d{2})'")


class FakeBigQuery(StartStop):
    def __init__(self, *, page_size: int = 1000, require_auth: bool = False) -> None:
        self.page_size = page_size
        self.require_auth = require_auth
        self.insert_delay = 0.0  # seconds each jobs.insert takes (a slow service)
        self.columns: Sequence[Column] = ()
        self.rows: list[Sequence[object]] = []
        self.date_column = 0
        self.answers: list[Answer] = []
        self.received: list[ReceivedQuery] = []
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request
        self.tokens_issued: list[str] = []
        self.token_requests: list[dict[str, str]] = []
        self.public_keys: dict[str, bytes] = {}  # service-account email -> PEM public key
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # refresh -> (client id, secret)
        self.revoked: set[str] = set()
        self.unauthorised: list[str] = []  # Authorization headers answered 401
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._app = ThreadedApp("fake-bq", self._make_app)

    # --- set-up ----------------------------------------------------------------------------------

    def set_table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[object]], date_column: str
    ) -> None:
        with self._lock:
            self.columns = tuple(columns)
            self.rows = [tuple(r) for r in rows]
            self.date_column = [c.name for c in columns].index(date_column)

    def set_answer(self, answer: Answer) -> None:
        with self._lock:
            self.answers.insert(0, answer)

    def issue_token(self) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(12)
        with self._lock:
            self.tokens_issued.append(token)
        return token

    @property
    def url(self) -> str:
        assert self._app.running
        return self._app.url

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def _make_app(self) -> web.Application:
        return _app(self)

    def start(self) -> FakeBigQuery:
        self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()

    # --- behaviour -------------------------------------------------------------------------------

    def _answer_for(self, sql: str, parameters: list[dict[str, Any]]) -> Answer | None:
        dates = {p["parameterValue"]["value"] for p in parameters if p.get("name") == "date"}
        for answer in self.answers:
            if answer.match in sql and (answer.date is None or answer.date in dates):
                return answer
        return None

    def _table_rows(self, sql: str, parameters: list[dict[str, Any]]) -> list[Sequence[object]]:
        day: str | None = None
        for p in parameters:
            if p.get("name") == "date":
                day = p["parameterValue"]["value"]
        if day is None:
            found = _LITERAL_DATE.search(sql)
            day = found.group(1) if found else None
        if day is None:
            return list(self.rows)
        return [r for r in self.rows if str(r[self.date_column])[:10] == day]

    def insert_job(self, body: dict[str, Any], project: str, auth: str) -> tuple[int, Any]:
        """jobs.insert (the route waits ``insert_delay`` first)."""
        ref = body.get("jobReference") or {}
        job_id = ref.get("jobId") or secrets.token_hex(8)
        query = body["configuration"]["query"]
        sql = query["query"]
        params = query.get("queryParameters") or []
        with self._lock:
            self.received.append(ReceivedQuery(job_id, sql, params, auth))
            answer = self._answer_for(sql, params)
            if answer is not None and answer.http_errors:
                status = answer.http_errors.pop(0)
                return status, _error(status, "backendError", "try again later")
            columns = answer.columns if answer and answer.columns else self.columns
            rows = (
                answer.rows if answer and answer.rows is not None else self._table_rows(sql, params)
            )
            job = _Job(
                job_id,
                project,
                sql,
                body["configuration"],
                columns,
                [tuple(r) for r in rows],
                answer.polls if answer else 0,
                answer.error if answer else None,
                answer.bytes_billed if answer else 10_485_760,
            )
            self._jobs[job_id] = job
        return 200, self._job_resource(job, poll=False)

    def _done(self, job: _Job, poll: bool) -> bool:
        with self._lock:
            if job.polls_left > 0:
                if poll:
                    job.polls_left -= 1
                return False
            return True

    def _job_resource(self, job: _Job, poll: bool) -> dict[str, Any]:
        done = self._done(job, poll)
        status: dict[str, Any] = {"state": "DONE" if done else "RUNNING"}
        if done and job.error:
            reason, message = job.error
            status["errorResult"] = {"reason": reason, "message": message}
            status["errors"] = [{"reason": reason, "message": message}]
        resource: dict[str, Any] = {
            "kind": "bigquery#job",
            "id": f"{job.project}:{job.location}.{job.job_id}",
            "jobReference": {
                "projectId": job.project,
                "jobId": job.job_id,
                "location": job.location,
            },
            "configuration": job.config,
            "status": status,
            "statistics": {"creationTime": str(int(time.time() * 1000))},
        }
        if done and not job.error:
            resource["statistics"]["query"] = {
                "totalBytesProcessed": str(job.bytes_billed),
                "totalBytesBilled": str(job.bytes_billed),
                "cacheHit": False,
                "statementType": "SELECT",
            }
        return resource

    def get_job(self, project: str, job_id: str) -> tuple[int, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            return 404, _error(404, "notFound", f"Not found: Job {project}:{job_id}")
        return 200, self._job_resource(job, poll=True)

    def query_results(self, project: str, job_id: str, query: dict[str, str]) -> tuple[int, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            return 404, _error(404, "notFound", f"Not found: Job {project}:{job_id}")
        ref = {"projectId": project, "jobId": job_id, "location": job.location}
        if not self._done(job, poll=True):
            return 200, {
                "kind": "bigquery#getQueryResultsResponse",
                "jobReference": ref,
                "jobComplete": False,
            }
        if job.error:
            reason, message = job.error
            return 400, _error(400, reason, message)
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        size = int(query.get("maxResults") or self.page_size)
        size = min(size, self.page_size) if size else 0
        page = job.rows[start : start + size]
        body: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": ref,
            "jobComplete": True,
            "schema": {
                "fields": [
                    {"name": c.name, "type": c.type, "mode": "NULLABLE"} for c in job.columns
                ]
            },
            "totalRows": str(len(job.rows)),
            "totalBytesProcessed": str(job.bytes_billed),
            "cacheHit": False,
        }
        if size:
            kinds = [c.type for c in job.columns]
            body["rows"] = [
                {"f": [{"v": _cell(v, k)} for v, k in zip(row, kinds, strict=True)]} for row in page
            ]
            if start + size < len(job.rows):
                body["pageToken"] = str(start + size)
        return 200, body

    # --- OAuth -----------------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            self.token_requests.append(
                {k: v for k, v in form.items() if k in ("grant_type", "client_id")}
            )
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_grant(form.get("assertion", ""))
        if grant == "refresh_token":
            known = self.refresh_tokens.get(form.get("refresh_token", ""))
            if known is None or known != (form.get("client_id"), form.get("client_secret")):
                return 400, {"error": "invalid_grant", "error_description": "Bad refresh token"}
            return 200, {
                "access_token": self.issue_token(),
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        return 400, {"error": "unsupported_grant_type"}

    def _jwt_grant(self, assertion: str) -> tuple[int, Any]:
        from google.auth import exceptions, jwt

        try:
            claims = jwt.decode(assertion, verify=False)  # type: ignore[no-untyped-call]
            key = self.public_keys.get(str(claims.get("iss")))
            if key is None:
                return 400, {"error": "invalid_grant", "error_description": "unknown account"}
            # google-auth always signs for Google's token endpoint, whatever token_uri says
            audiences = [self.token_uri, "https://oauth2.googleapis.com/token"]
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                assertion, certs=key, audience=audiences
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            return 400, {"error": "invalid_grant", "error_description": f"bad assertion: {exc}"}
        return 200, {"access_token": self.issue_token(), "expires_in": 3600, "token_type": "Bearer"}

    def authorised(self, header: str) -> bool:
        if not self.require_auth:
            return True
        token = header.removeprefix("Bearer ").strip()
        if token in self.tokens_issued and token not in self.revoked:
            return True
        with self._lock:
            self.unauthorised.append(header)
        return False


def _error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message, "domain": "global"}],
            "status": "INVALID_ARGUMENT" if status == 400 else "UNAVAILABLE",
        }
    }


_JOBS = re.compile(r"^/bigquery/v2/projects/([^/]+)/jobs$")
_JOB = re.compile(r"^/bigquery/v2/projects/([^/]+)/jobs/([^/]+)$")
_RESULTS = re.compile(r"^/bigquery/v2/projects/([^/]+)/queries/([^/]+)$")


Route = Callable[[FakeBigQuery, re.Match[str], web.Request, bytes], tuple[int, Any]]

_ROUTES: list[tuple[str, re.Pattern[str], Route]] = [
    ("POST", _JOBS, lambda f, m, r, b: f.insert_job(json.loads(b), m[1], _auth(r))),
    ("GET", _JOB, lambda f, m, r, b: f.get_job(m[1], m[2])),
    ("GET", _RESULTS, lambda f, m, r, b: f.query_results(m[1], m[2], _last_values(r))),
]


def _auth(request: web.Request) -> str:
    return request.headers.get("Authorization", "")


def _last_values(request: web.Request) -> dict[str, str]:
    return {k: request.query.getall(k)[-1] for k in request.query}


def _app(fake: FakeBigQuery) -> web.Application:
    """Every request: recorded, then the token endpoint, or authorised and routed."""

    async def handle(request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        body = await request.read()
        with fake._lock:
            fake.calls.append((request.method, path))
        if path == "/token" and request.method == "POST":
            form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            return _json(*fake.token(form))
        if not fake.authorised(_auth(request)):
            return _json(401, _error(401, "authError", "Request had invalid credentials."))
        for method, pattern, route in _ROUTES:
            if request.method == method and (match := pattern.match(path)):
                if pattern is _JOBS and fake.insert_delay:  # a slow jobs.insert
                    await asyncio.sleep(fake.insert_delay)
                return _json(*route(fake, match, request, body))
        return _json(404, _error(404, "notFound", f"no route {request.method} {path}"))

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        charset="UTF-8",
    )
