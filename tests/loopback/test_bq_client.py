"""The real google-cloud-bigquery client against the local BigQuery fake: paging, slow and failed
jobs, parameters as received, odd cells and names; credentials against a local token endpoint."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials

from skyline.vista.bq.client import BigQueryRunner, QueryFailed, QueryUnavailable
from skyline.vista.bq.credentials import CredentialsError, credential_source, load_credentials
from skyline.vista.bq.query import build_query
from skyline.vista.bq.rows import RowConverter, RowSpec, TooFewRows, check_row_count
from skyline.vista.sinks import SinkPoint
from tests.fakes.bigquery import Answer, Column, FakeBigQuery

JAN1 = 1704067200
COLUMNS = (
    Column("day", "DATE"),
    Column("country", "STRING"),
    Column("signups", "INTEGER"),
    Column("revenue", "FLOAT"),
    Column("margin", "NUMERIC"),
)
SPEC = RowSpec("shop", "day", "country", ("signups", "revenue", "margin"))


@pytest.fixture
def fake() -> Iterator[FakeBigQuery]:
    with FakeBigQuery(page_size=7) as server:
        yield server


def runner(fake: FakeBigQuery, credentials: Any = None, **kw: Any) -> BigQueryRunner:
    return BigQueryRunner(
        "shop-project",
        credentials or AnonymousCredentials(),  # type: ignore[no-untyped-call]
        endpoint=fake.url,
        page_size=7,
        sleep=lambda s: None,
        **kw,
    )


def convert_all(
    result_pages: Iterator[Any], columns: tuple[str, ...]
) -> tuple[list[SinkPoint], Any]:
    conv = RowConverter(SPEC, columns)
    out: list[SinkPoint] = []
    for page in result_pages:
        conv.convert(page, out)
    return out, conv.stats


def test_paging_parameters_and_cells(fake: FakeBigQuery) -> None:
    day = dt.date(2024, 1, 1)
    rows: list[tuple[object, ...]] = [(day, f"c{i}", i, i / 2, Decimal("1.25")) for i in range(20)]
    rows += [
        (day, "us.east", None, 1.5, None),  # NULLs
        (day, "New York", 3, None, Decimal("2")),
        (day, "Zürich", 4, 4.5, Decimal("0")),
        (day, "東京", 5, 5.5, Decimal("1")),
        (day, "us east", 6, 6.5, Decimal("1")),  # sanitises like 'us.east': an error
        (day, "c1", 99, 99.0, Decimal("9")),  # a duplicate row: the first wins
        (dt.date(2024, 1, 2), "other day", 1, 1.0, Decimal("1")),  # filtered by @date
    ]
    fake.set_table(COLUMNS, rows, "day")
    r = runner(fake)
    result = r.run(build_query("SELECT * FROM t WHERE day = @date", JAN1, 86400))
    assert result.total_rows == 26 and result.bytes_billed == 10_485_760
    assert result.columns == ("day", "country", "signups", "revenue", "margin")
    pages = list(result.pages)
    assert [len(p) for p in pages] == [7, 7, 7, 5]  # several pages, streamed
    received = fake.received[-1]
    assert received.parameters == [
        {
            "name": "date",
            "parameterType": {"type": "DATE"},
            "parameterValue": {"value": "2024-01-01"},
        }
    ]
    out, stats = convert_all(iter(pages), result.columns)
    by_name = {(e.metric, e.timestamp): e.value for e in out}
    assert by_name[("shop.c1.signups", JAN1)] == 1.0
    assert by_name[("shop.us_east.revenue", JAN1)] == 1.5
    assert ("shop.us_east.signups", JAN1) not in by_name
    assert by_name[("shop.New_York.margin", JAN1)] == 2.0
    assert by_name[("shop.Zurich.revenue", JAN1)] == 4.5
    assert by_name[("shop.u6771u4eac.signups", JAN1)] == 5.0
    assert stats.null == 3 and stats.collisions == 1 and stats.duplicates == 1
    assert len(out) == 20 * 3 + 1 + 2 + 3 + 3
    page_calls = [c for c in fake.calls if "/queries/" in c[1]]
    assert len(page_calls) >= 4


def test_substitution_is_sent_as_a_quoted_literal(fake: FakeBigQuery) -> None:
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    q = build_query("SELECT * FROM t WHERE day = DAY_X", JAN1, 86400, replace="DAY_X")
    result = runner(fake).run(q)
    assert fake.received[-1].sql == "SELECT * FROM t WHERE day = '2024-01-01'"
    assert fake.received[-1].parameters == []
    assert sum(len(p) for p in result.pages) == 1


def test_a_slow_job_is_polled(fake: FakeBigQuery) -> None:
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    fake.set_answer(Answer("", polls=4))
    result = runner(fake).run(build_query("SELECT @date", JAN1, 86400))
    assert sum(len(p) for p in result.pages) == 1
    assert len([c for c in fake.calls if c[0] == "GET"]) >= 5


def test_a_slow_job_times_out(fake: FakeBigQuery) -> None:
    fake.set_answer(Answer("", polls=10_000))
    with pytest.raises(QueryFailed, match="did not finish within 1 s"):
        runner(fake, timeout=1.0).run(build_query("SELECT @date", JAN1, 86400))


def test_a_failed_job_gives_the_service_message(fake: FakeBigQuery) -> None:
    fake.set_answer(Answer("", error=("invalidQuery", "Unrecognized name: sigups at [1:8]")))
    with pytest.raises(QueryFailed, match="Unrecognized name: sigups"):
        runner(fake).run(build_query("SELECT sigups @date", JAN1, 86400))


def test_transient_errors_are_retried(fake: FakeBigQuery) -> None:
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    fake.set_answer(Answer("", http_errors=[503, 500]))
    result = runner(fake).run(build_query("SELECT @date", JAN1, 86400))
    assert sum(len(p) for p in result.pages) == 1
    assert len(fake.received) == 3


def test_transient_errors_give_up(fake: FakeBigQuery) -> None:
    fake.set_answer(Answer("", http_errors=[503] * 10))
    with pytest.raises(QueryUnavailable, match="after 3 attempts"):
        runner(fake, attempts=3).run(build_query("SELECT @date", JAN1, 86400))


def test_fewer_rows_than_expected(fake: FakeBigQuery) -> None:
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    result = runner(fake).run(build_query("SELECT @date", JAN1, 86400))
    with pytest.raises(TooFewRows):
        check_row_count(result.total_rows, RowSpec("p", "day", "country", ("x",), False, 2))


# --- credentials ---------------------------------------------------------------------------------


def _service_key(fake: FakeBigQuery) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    email = "vista@shop-project.iam.gserviceaccount.com"
    fake.public_keys[email] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "type": "service_account",
        "project_id": "shop-project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234",
        "token_uri": fake.token_uri,
    }


def test_service_account_flow(
    fake: FakeBigQuery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.require_auth = True
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    info = _service_key(fake)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    for account in ({"service_credentials": info}, {"service_credentials_file": str(path)}):
        assert credential_source(account) == "service_account"
        creds = load_credentials("shop", account)
        result = runner(fake, creds).run(build_query("SELECT @date", JAN1, 86400))
        assert sum(len(p) for p in result.pages) == 1
        assert fake.received[-1].authorization == f"Bearer {fake.tokens_issued[-1]}"
    assert [r["grant_type"] for r in fake.token_requests] == [
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ] * 2
    assert info["private_key"].splitlines()[1] not in caplog.text


def test_a_bad_service_key_is_one_clear_error(tmp_path: Path) -> None:
    info = {
        "type": "service_account",
        "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        "client_email": "a@b",
        "token_uri": "http://127.0.0.1:9/token",
    }
    with pytest.raises(
        CredentialsError, match="account 'shop': the service account key cannot be loaded"
    ) as err:
        load_credentials("shop", {"service_credentials": info})
    assert "not a key" not in str(err.value)
    with pytest.raises(CredentialsError, match="cannot read service_credentials_file"):
        load_credentials("shop", {"service_credentials_file": str(tmp_path / "missing.json")})


def test_an_expired_oauth_token_is_refreshed_and_kept(fake: FakeBigQuery, tmp_path: Path) -> None:
    fake.require_auth = True
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    fake.refresh_tokens["1//refresh"] = ("client-id", "client-secret")
    oauth = {
        "token": "ya29.expired",
        "refresh_token": "1//refresh",
        "token_uri": fake.token_uri,
        "client_id": "client-id",
        "client_secret": "client-secret",
    }
    # the dict is overridden by the file, as in Skyline
    path = tmp_path / "oauth.json"
    path.write_text(json.dumps(oauth))
    account = {
        "oauth_credentials": {**oauth, "refresh_token": "wrong"},
        "oauth_credentials_file": str(path),
    }
    creds = load_credentials("shop", account)
    r = runner(fake, creds)
    for _ in range(3):  # one job, three intervals: one refresh only
        result = r.run(build_query("SELECT @date", JAN1, 86400))
        assert sum(len(p) for p in result.pages) == 1
    assert [t["grant_type"] for t in fake.token_requests] == ["refresh_token"]
    # the old token was refused (401) once, then the refreshed one used for every call
    assert [c for c in fake.calls if c[1] == "/token"] == [("POST", "/token")]
    assert fake.unauthorised == ["Bearer ya29.expired"]
    assert all(q.authorization == f"Bearer {fake.tokens_issued[0]}" for q in fake.received)


def test_an_expiry_in_the_past_refreshes_before_the_first_call(fake: FakeBigQuery) -> None:
    fake.require_auth = True
    fake.set_table(COLUMNS, [(dt.date(2024, 1, 1), "GB", 1, 1.0, Decimal(1))], "day")
    fake.refresh_tokens["1//refresh"] = ("client-id", "client-secret")
    account = {
        "oauth_credentials": {
            "token": "ya29.old",
            "refresh_token": "1//refresh",
            "token_uri": fake.token_uri,
            "client_id": "client-id",
            "client_secret": "client-secret",
            "expiry": "2020-01-01T00:00:00Z",
        }
    }
    r = runner(fake, load_credentials("shop", account))
    r.run(build_query("SELECT @date", JAN1, 86400))
    assert all(q.authorization != "Bearer ya29.old" for q in fake.received)


def test_a_refused_refresh_is_an_error(fake: FakeBigQuery) -> None:
    fake.require_auth = True
    account = {
        "oauth_credentials": {
            "token": "ya29.old",
            "refresh_token": "1//revoked",
            "token_uri": fake.token_uri,
            "client_id": "client-id",
            "client_secret": "client-secret",
        }
    }
    with pytest.raises(CredentialsError, match="token failed: invalid_grant") as err:
        runner(fake, load_credentials("shop", account)).run(
            build_query("SELECT @date", JAN1, 86400)
        )
    assert "client-secret" not in str(err.value)


def test_no_credentials_means_application_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert credential_source({}) == "adc"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(CredentialsError, match="Application Default Credentials"):
        load_credentials("shop", {})


def test_an_unreachable_token_endpoint_fails_the_interval_in_one_line(
    fake: FakeBigQuery,
) -> None:
    # Before: google.auth's TransportError went through every handler and failed the whole
    # job with a 130-line traceback instead of failing (and retrying) the interval.
    from skyline.vista.testing.servers import free_port

    account = {
        "oauth_credentials": {
            "token": "ya29.old",
            "refresh_token": "1//refresh",
            "token_uri": f"http://127.0.0.1:{free_port()}/token",  # nothing listens
            "client_id": "client-id",
            "client_secret": "client-secret",
            "expiry": "2020-01-01T00:00:00Z",
        }
    }
    with pytest.raises(QueryUnavailable) as err:
        runner(fake, load_credentials("shop", account), attempts=2).run(
            build_query("SELECT @date", JAN1, 86400)
        )
    message = str(err.value)
    assert message.startswith("BigQuery unavailable after 2 attempts: getting a token from "), (
        message
    )
    assert "\n" not in message and "client-secret" not in message
