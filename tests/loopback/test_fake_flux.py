"""The Flux test double answers as skyline/flux/listen.py does (statuses and exact bodies)."""

from __future__ import annotations

import gzip
import json
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import fakeredis
import pytest
import requests

from tests.fakes.flux import DEFAULT_KEY, AcceptedPoint, FluxServer

NOW = 1_700_000_040  # a fixed clock: 10 digits, like every timestamp Flux accepts
KEY = DEFAULT_KEY
OTHER_KEY = "Zyxwvutsrqponmlkjihgfedcba987654"  # 32 alphanumerics, but not configured


@pytest.fixture
def flux() -> Iterator[FluxServer]:
    with FluxServer(now=lambda: NOW) as server:
        yield server


def post(
    server: FluxServer,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return requests.post(
        f"{server.url}/metric_data_post", data=data, headers=all_headers, timeout=5
    )


def get(
    server: FluxServer, params: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> requests.Response:
    return requests.get(f"{server.url}/metric_data", params=params, headers=headers, timeout=5)


def item(metric: str, timestamp: Any = NOW - 60, value: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "timestamp": timestamp, "value": value, **extra}


def body_of(response: requests.Response) -> Any:
    return json.loads(response.content)


# ---------------------------------------------------------------- POST: success


def test_good_batch_is_204_with_no_body_and_records_exact_points(flux: FluxServer) -> None:
    metrics = [
        item("vista.a.cpu", NOW - 120, 1.5),
        item("vista.a.mem", str(NOW - 60), "2"),  # strings are int()/float()-ed
        {"metric": "vista.a.io", "value": 0},  # no timestamp: Flux stamps it with now
        item("vista.a.cpu", NOW + 60, -3.25),  # exactly 60 s ahead is still allowed
    ]
    response = post(flux, {"key": KEY, "metrics": metrics})

    assert response.status_code == 204
    assert response.content == b""
    assert flux.accepted == [
        AcceptedPoint("vista.a.cpu", NOW - 120, 1.5, False),
        AcceptedPoint("vista.a.mem", NOW - 60, 2.0, False),
        AcceptedPoint("vista.a.io", NOW, 0.0, False),
        AcceptedPoint("vista.a.cpu", NOW + 60, -3.25, False),
    ]
    assert flux.accepted_count == 4
    assert flux.points_by_metric() == {
        "vista.a.cpu": [(NOW - 120, 1.5), (NOW + 60, -3.25)],
        "vista.a.mem": [(NOW - 60, 2.0)],
        "vista.a.io": [(NOW, 0.0)],
    }
    [record] = flux.requests
    assert (record.method, record.path, record.status, record.metric_count) == (
        "POST",
        "/metric_data_post",
        204,
        4,
    )
    assert (record.key_in_query, record.key_in_header) == (False, False)


def test_single_metric_form_and_the_flux_prefixed_path(flux: FluxServer) -> None:
    single = {"key": KEY, "metric": "vista.single", "timestamp": NOW, "value": 7}
    response = requests.post(f"{flux.url}/flux/metric_data_post", json=single, timeout=5)

    assert response.status_code == 204
    assert flux.accepted == [AcceptedPoint("vista.single", NOW, 7.0, False)]


def test_nan_inf_and_booleans_are_accepted_as_values(flux: FluxServer) -> None:
    metrics = [item("v.nan", value="nan"), item("v.inf", value="-inf"), item("v.true", value=True)]
    response = post(flux, {"key": KEY, "metrics": metrics})

    assert response.status_code == 204
    values = {p.metric: p.value for p in flux.accepted}
    assert math.isnan(values["v.nan"])
    assert values["v.inf"] == -math.inf
    assert values["v.true"] == 1.0


def test_allowed_punctuation_in_names_is_accepted(flux: FluxServer) -> None:
    response = post(flux, {"key": KEY, "metrics": [item("a+b-c%d_e/f=g:h.i")]})

    assert response.status_code == 204
    assert [p.metric for p in flux.accepted] == ["a+b-c%d_e/f=g:h.i"]


def test_gzip_body_is_decompressed(flux: FluxServer) -> None:
    payload = json.dumps({"key": KEY, "metrics": [item("vista.gz", NOW, 4.0)]}).encode()
    response = post(flux, None, raw=gzip.compress(payload), headers={"Content-Encoding": "gzip"})

    assert response.status_code == 204
    assert flux.accepted == [AcceptedPoint("vista.gz", NOW, 4.0, False)]
    assert flux.requests[0].content_encoding == "gzip"


def test_plain_body_labelled_gzip_is_still_accepted(flux: FluxServer) -> None:
    # Flux logs the failed gzip.decompress() and json.loads() the raw bytes.
    payload = json.dumps({"key": KEY, "metrics": [item("vista.plain")]}).encode()
    response = post(flux, None, raw=payload, headers={"Content-Encoding": "gzip"})

    assert response.status_code == 204
    assert [p.metric for p in flux.accepted] == ["vista.plain"]


# ---------------------------------------------------------------- POST: keys


def test_wrong_key_is_401_and_nothing_is_recorded(flux: FluxServer) -> None:
    for key in (OTHER_KEY, "short", KEY + "x", "-" * 32, None):
        response = post(flux, {"key": key, "metrics": [item("vista.k")]})
        assert response.status_code == 401
        assert body_of(response) == {"code": 401, "message": "invalid key"}
    assert flux.accepted == []


def test_missing_key_is_400_no_key_passed(flux: FluxServer) -> None:
    response = post(flux, {"metrics": [item("vista.k")]})

    assert response.status_code == 400
    assert body_of(response) == {"code": 400, "message": "no key passed"}
    assert flux.accepted == []


def test_key_header_wins_over_the_body_key(flux: FluxServer) -> None:
    ok = post(flux, {"key": OTHER_KEY, "metrics": [item("vista.h")]}, headers={"key": KEY})
    bad = post(flux, {"key": KEY, "metrics": [item("vista.h")]}, headers={"key": OTHER_KEY})
    no_body_key = post(flux, {"metrics": [item("vista.h2")]}, headers={"key": KEY})

    assert (ok.status_code, bad.status_code, no_body_key.status_code) == (204, 401, 204)
    assert body_of(bad) == {"code": 401, "message": "invalid key"}
    assert [p.metric for p in flux.accepted] == ["vista.h", "vista.h2"]
    assert flux.requests[0].key_in_header is True


def test_without_configured_keys_any_32_char_alphanumeric_key_passes() -> None:
    with FluxServer(keys=(), now=lambda: NOW) as server:
        assert post(server, {"key": OTHER_KEY, "metrics": [item("v.any")]}).status_code == 204
        assert post(server, {"key": "x" * 31, "metrics": [item("v.any")]}).status_code == 401


# ---------------------------------------------------------------- POST: validation (400)


def test_one_bad_name_is_400_naming_the_item(flux: FluxServer) -> None:
    bad = item("vista.has space", NOW, 1.0)
    response = post(flux, {"key": KEY, "metrics": [bad, item("vista.fine")]})

    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid metric - {bad} - invalid characters in name",
    }
    assert body_of(response)["message"] == (
        "invalid metric - {'metric': 'vista.has space', 'timestamp': 1700000040, 'value': 1.0}"
        " - invalid characters in name"
    )
    assert flux.accepted == []


def test_a_bad_item_after_good_ones_leaves_the_good_ones_ingested(flux: FluxServer) -> None:
    # listen.py puts each item on the queue as soon as it passes, so the items before the
    # bad one are ingested even though the whole request gets a 400.
    bad = item("vista.b*d")
    response = post(flux, {"key": KEY, "metrics": [item("vista.first"), bad, item("vista.x")]})

    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid metric - {bad} - invalid characters in name",
    }
    assert [p.metric for p in flux.accepted] == ["vista.first"]


def test_names_are_not_normalised(flux: FluxServer) -> None:
    # Flux's docs say ' ', '..', '*' and "'" are rewritten (docs/skyline-compatibility.md
    # §3.1). listen.py does not do it.
    quote = item("a'b")
    dots = post(flux, {"key": KEY, "metrics": [item("a..b")]})  # only allowed characters
    quoted = post(flux, {"key": KEY, "metrics": [quote]})

    assert dots.status_code == 204
    assert (quoted.status_code, body_of(quoted)) == (
        400,
        {"code": 400, "message": f"invalid metric - {quote} - invalid characters in name"},
    )
    assert [p.metric for p in flux.accepted] == ["a..b"]


def test_name_length_limits(flux: FluxServer) -> None:
    long_leaf = item("a." + "x" * 252)
    response = post(flux, {"key": KEY, "metrics": [long_leaf]})
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid metric - {long_leaf} - longer than 255 characters",
    }
    too_deep = item(".".join(["abcdefghi"] * 407))  # 4079 chars: the whisper path is > 4096
    response = post(flux, {"key": KEY, "metrics": [too_deep]})
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid metric - {too_deep} - name too long",
    }
    fits = post(flux, {"key": KEY, "metrics": [item("a." + "x" * 251)]})
    assert fits.status_code == 204


def test_missing_metric_field_is_400(flux: FluxServer) -> None:
    entry = {"timestamp": NOW, "value": 1}
    response = post(flux, {"key": KEY, "metrics": [entry]})

    assert response.status_code == 400
    assert body_of(response) == {"code": 400, "message": f"invalid metric - {entry}"}


def test_too_old_timestamp_is_400_and_nothing_is_recorded(flux: FluxServer) -> None:
    old = item("vista.old", NOW - 3601)
    response = post(flux, {"key": KEY, "metrics": [old, item("vista.new")]})

    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid timestamp - {NOW - 3601} - timestamp is too old, older than "
        f"3600 seconds - {old}",
    }
    assert flux.accepted == []
    assert post(flux, {"key": KEY, "metrics": [item("v.edge", NOW - 3600)]}).status_code == 204


def test_future_and_malformed_timestamps_are_400(flux: FluxServer) -> None:
    cases = {
        NOW + 61: "timestamp is more than 1 minute in the future",
        "soon": "timestamp is not an int",
        1700000000.0: "timestamp is not an int",  # str() gives '1700000000.0'
        170000000: "timestamp is not a valid current unix timestamp",
    }
    for timestamp, reason in cases.items():
        entry = item("vista.ts", timestamp)
        response = post(flux, {"key": KEY, "metrics": [entry]})
        assert response.status_code == 400
        assert body_of(response) == {
            "code": 400,
            "message": f"invalid timestamp - {timestamp} - {reason} - {entry}",
        }
    assert flux.accepted == []


def test_bad_or_missing_value_is_400(flux: FluxServer) -> None:
    bad = item("vista.v", value="abc")
    missing = {"metric": "vista.v", "timestamp": NOW}
    empty = item("vista.v", value="")
    null = item("vista.v", value=None)

    assert body_of(post(flux, {"key": KEY, "metrics": [bad]})) == {
        "code": 400,
        "message": f"invalid value - {bad}",
    }
    assert body_of(post(flux, {"key": KEY, "metrics": [missing]})) == {
        "code": 400,
        "message": f"no value parameter present - {missing}",
    }
    assert body_of(post(flux, {"key": KEY, "metrics": [empty]})) == {
        "code": 400,
        "message": f"no value parameter present - {empty}",
    }
    assert body_of(post(flux, {"key": KEY, "metrics": [null]})) == {
        "code": 400,
        "message": f"invalid value - {null}",
    }
    assert [r.status for r in flux.requests] == [400, 400, 400, 400]
    assert flux.accepted == []


def test_body_level_errors(flux: FluxServer) -> None:
    invalid = post(flux, None, raw=b"{not json")
    empty = post(flux, None, raw=b"")
    null = post(flux, None, raw=b"null")
    no_metrics = post(flux, {"key": KEY})
    a_list = post(flux, None, raw=b"[1]")

    assert (invalid.status_code, body_of(invalid)) == (
        400,
        {"code": 400, "message": "invalid json data"},
    )
    assert body_of(empty) == {"code": 400, "message": "invalid json data"}
    assert (null.status_code, body_of(null)) == (
        400,
        {"code": 400, "message": "no POST data received"},
    )
    assert (no_metrics.status_code, body_of(no_metrics)) == (
        400,
        {"code": 400, "message": "no metric data passed"},
    )
    # postData['status'] raises TypeError on a list; on_post's catch-all answers 500.
    assert (a_list.status_code, a_list.content) == (500, b"")


# ---------------------------------------------------------------- POST: fill


def test_fill_lets_an_old_timestamp_through_in_the_metrics_list(flux: FluxServer) -> None:
    old = NOW - 86_400
    metrics = [
        item("vista.fill", old, 1.0, fill="true"),
        item("vista.fill", old + 60, 2.0, fill=True),
        item("vista.fill", old + 120, 3.0, fill="True"),
    ]
    response = post(flux, {"key": KEY, "metrics": metrics})

    assert response.status_code == 204
    assert flux.accepted == [
        AcceptedPoint("vista.fill", old, 1.0, True),
        AcceptedPoint("vista.fill", old + 60, 2.0, True),
        AcceptedPoint("vista.fill", old + 120, 3.0, True),
    ]


def test_fill_is_dropped_in_the_single_metric_form(flux: FluxServer) -> None:
    old = NOW - 86_400
    single = {"key": KEY, "metric": "vista.fill", "timestamp": old, "value": 1, "fill": "true"}
    response = post(flux, single)

    rebuilt = {"metric": "vista.fill", "timestamp": old, "value": 1}  # Flux's copy, no fill
    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "message": f"invalid timestamp - {old} - timestamp is too old, older than 3600 "
        f"seconds - {rebuilt}",
    }
    assert flux.accepted == []


def test_single_metric_form_requires_a_timestamp(flux: FluxServer) -> None:
    response = post(flux, {"key": KEY, "metric": "vista.nots", "value": 1})

    assert response.status_code == 400
    assert body_of(response) == {"code": 400, "message": "no metric data passed"}


# ---------------------------------------------------------------- POST: 207 quota rejections


def test_rejected_metric_gives_207_and_the_rest_is_recorded(flux: FluxServer) -> None:
    flux.reject_metric("vista.rejected")
    metrics = [item("vista.ok1", NOW, 1), item("vista.rejected", NOW, 2), item("vista.ok2")]
    response = post(flux, {"key": KEY, "metrics": metrics})

    assert response.status_code == 207
    assert body_of(response) == {
        "code": 207,
        "data": [
            {"metric": "vista.rejected", "status": 400},
            {"metric": "vista.ok1", "status": 204},
            {"metric": "vista.ok2", "status": 204},
        ],
        "error": "over quota - this account is allowed 0 metrics and an additional 1 new "
        "metrics were posted that have been rejected",
        "message": "2 metrics were processed and 1 metrics were rejected",
        "rejected metrics": ["vista.rejected"],
        "rejected metrics count": 1,
        "processed metrics": ["vista.ok1", "vista.ok2"],
        "processed metrics count": 2,
        "submitted metrics count": 3,
        "defined skipped_metrics count": 0,
    }
    assert [p.metric for p in flux.accepted] == ["vista.ok1", "vista.ok2"]


def test_a_lone_rejected_metric_gets_the_same_body_with_400(flux: FluxServer) -> None:
    flux.reject_metric("vista.rejected")
    response = post(flux, {"key": KEY, "metrics": [item("vista.rejected")]})

    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "data": [{"metric": "vista.rejected", "status": 400}],
        "error": "over quota - this account is allowed 0 metrics and an additional 1 new "
        "metrics were posted that have been rejected",
        "message": "0 metrics were processed and 1 metrics were rejected",
        "rejected metrics": ["vista.rejected"],
        "rejected metrics count": 1,
        "processed metrics": [],
        "processed metrics count": 0,
        "submitted metrics count": 1,
        "defined skipped_metrics count": 0,
    }
    assert flux.accepted == []


def test_namespace_quota_rejects_new_metrics_beyond_the_quota() -> None:
    with FluxServer(now=lambda: NOW, namespace_quotas={"tenant": 2}) as server:
        names = ["tenant.m1", "tenant.m2", "tenant.m3", "tenant.m4"]
        response = post(server, {"key": KEY, "metrics": [item(n) for n in names]})

        assert response.status_code == 207
        body = body_of(response)
        assert body["error"] == (
            "over quota - this account is allowed 2 metrics and an additional 2 new metrics "
            "were posted that have been rejected"
        )
        assert body["rejected metrics"] == ["tenant.m3", "tenant.m4"]
        assert body["processed metrics"] == ["tenant.m1", "tenant.m2"]
        assert [p.metric for p in server.accepted] == ["tenant.m1", "tenant.m2"]

        # Known metrics still go through. Flux's known/new split looks only at the last
        # named item (a stale variable), so this batch, ending with a known metric, gets in
        # whole even though tenant.m5 is new.
        again = post(server, {"key": KEY, "metrics": [item("tenant.m5"), item("tenant.m1")]})
        assert again.status_code == 204
        assert [p.metric for p in server.accepted][-2:] == ["tenant.m5", "tenant.m1"]


# ---------------------------------------------------------------- POST: status, validate_key, test


def test_status_validate_key_and_test_only(flux: FluxServer) -> None:
    status = post(flux, {"status": True})  # no key needed
    validate = post(flux, {"key": KEY, "validate_key": True})
    test_body = {"key": KEY, "test": True, "metrics": [item("t.a"), item("t.b"), item("t.a")]}
    test_only = post(flux, test_body)
    header_test = post(flux, {"key": KEY, "metrics": [item("t.c")]}, headers={"x-test-only": "1"})

    assert (status.status_code, body_of(status)) == (200, {"status": "ok"})
    assert (validate.status_code, body_of(validate)) == (200, {"status": "key valid"})
    message = "metric ingestion test, no metrics were ingested only counts are reported"
    assert test_only.status_code == 200
    assert body_of(test_only) == {
        "namespace": "None",
        "message": message,
        "ingest_count": 3,  # the first report of a minute counts duplicates
        "drop_count": 0,
        "metrics": "['t.a', 't.b']",
        "dropped": "[]",
    }
    assert header_test.status_code == 200
    assert body_of(header_test) == {
        "namespace": "None",
        "message": message,
        "ingest_count": 3,  # later ones in the same minute: unique names so far
        "drop_count": 0,
        "metrics": "['t.c', 't.a', 't.b']",
        "dropped": "[]",
    }
    assert flux.accepted == []


def test_status_code_field_returns_canned_answers(flux: FluxServer) -> None:
    canned_207 = post(flux, {"status": True, "status_code": 207})
    canned_401 = post(flux, {"status": "yes", "status_code": "401"})

    assert canned_207.status_code == 207
    assert body_of(canned_207) == {
        "code": 207,
        "data": [
            {"metric": "server-1.unknown.metric", "status": 400},
            {"metric": "server-1.some-other-unknown.metric", "status": 400},
            {"metric": "server-1.known.metric", "status": 204},
            {"metric": "server-1.some-other-known.metric", "status": 204},
        ],
        "error": "TEST - over quota - this account is allowed x metrics and an additional y "
        "new metrics were posted that have been rejected",
        "message": "TEST - 2 metrics were processed and 2 metrics were rejected",
        "rejected metrics": ["server-1.unknown.metric", "server-1.some-other-unknown.metric"],
        "rejected metrics count": 2,
        "processed metrics": ["server-1.known.metric", "server-1.some-other-known.metric"],
        "processed metrics count": 2,
        "submitted metrics count": 4,
    }
    assert (canned_401.status_code, body_of(canned_401)) == (
        401,
        {"code": 401, "data": "Status code test - 401"},
    )


# ---------------------------------------------------------------- failure injection


def test_fail_next_answers_before_processing(flux: FluxServer) -> None:
    flux.fail_next(503, count=2, body="flux is busy")
    batch = {"key": KEY, "metrics": [item("vista.retry")]}

    first, second, third = post(flux, batch), post(flux, batch), post(flux, batch)

    assert (first.status_code, first.text) == (503, "flux is busy")
    assert (second.status_code, second.text) == (503, "flux is busy")
    assert third.status_code == 204
    assert flux.accepted == [AcceptedPoint("vista.retry", NOW - 60, 1.0, False)]
    assert [(r.status, r.metric_count) for r in flux.requests] == [(503, 1), (503, 1), (204, 1)]


def test_fail_next_also_applies_to_get(flux: FluxServer) -> None:
    flux.fail_next(502)
    response = get(flux, {"metric": "vista.g", "value": "1", "key": KEY})

    assert (response.status_code, response.content) == (502, b"")
    assert flux.accepted == []


def test_down_mode_refuses_connections_until_up_again(flux: FluxServer) -> None:
    batch = {"key": KEY, "metrics": [item("vista.down")]}
    with requests.Session() as session:  # a kept-alive connection must be dropped too
        url = f"{flux.url}/metric_data_post"
        assert session.post(url, json=batch, timeout=5).status_code == 204
        flux.set_down(True)
        with pytest.raises(requests.ConnectionError):
            session.post(url, json=batch, timeout=5)
        with pytest.raises(requests.ConnectionError):
            post(flux, batch)
        flux.set_down(False)
        assert session.post(url, json=batch, timeout=5).status_code == 204

    assert [p.metric for p in flux.accepted] == ["vista.down", "vista.down"]
    assert [r.status for r in flux.requests] == [204, 204]


# ---------------------------------------------------------------- GET /metric_data


def test_get_happy_path_is_204(flux: FluxServer) -> None:
    params = {"metric": "vista.get", "value": "2.5", "timestamp": str(NOW), "key": KEY}
    response = get(flux, params)

    assert (response.status_code, response.content) == (204, b"")
    assert flux.accepted == [AcceptedPoint("vista.get", NOW, 2.5, False)]
    [record] = flux.requests
    assert (record.method, record.status, record.metric_count, record.key_in_query) == (
        "GET",
        204,
        1,
        True,
    )


def test_get_fill_and_missing_timestamp(flux: FluxServer) -> None:
    old = NOW - 86_400
    filled = get(
        flux, {"metric": "v.f", "value": "1", "timestamp": str(old), "key": KEY, "fill": "true"}
    )
    stamped = get(flux, {"metric": "v.n", "value": "nan", "key": KEY})

    assert (filled.status_code, stamped.status_code) == (204, 204)
    assert flux.accepted[0] == AcceptedPoint("v.f", old, 1.0, True)
    assert flux.accepted[1].metric == "v.n"
    assert flux.accepted[1].timestamp == NOW
    assert math.isnan(flux.accepted[1].value)


def test_get_does_not_validate_the_metric_name(flux: FluxServer) -> None:
    response = get(flux, {"metric": "has space*", "value": "1", "key": KEY})

    assert response.status_code == 204
    assert [p.metric for p in flux.accepted] == ["has space*"]


def test_get_unknown_parameter_is_400(flux: FluxServer) -> None:
    response = get(flux, {"metric": "vista.get", "value": "1", "key": KEY, "host": "x"})

    assert response.status_code == 400
    assert body_of(response) == {"code": 400, "message": "Invalid parameter received - host"}
    assert flux.accepted == []


def test_get_checks_parameters_in_query_order(flux: FluxServer) -> None:
    key_first = get(flux, {"key": OTHER_KEY, "host": "x"})
    unknown_first = get(flux, {"host": "x", "key": OTHER_KEY})

    assert (key_first.status_code, body_of(key_first)) == (
        401,
        {"code": 401, "message": "invalid key"},
    )
    assert (unknown_first.status_code, body_of(unknown_first)) == (
        400,
        {"code": 400, "message": "Invalid parameter received - host"},
    )


def test_get_errors(flux: FluxServer) -> None:
    base = {"metric": "vista.get", "value": "1", "key": KEY}
    old = get(flux, {**base, "timestamp": str(NOW - 3601)})
    bad_value = get(flux, {**base, "value": "abc"})
    no_value = get(flux, {"metric": "vista.get", "key": KEY})
    no_metric = get(flux, {"value": "1", "key": KEY})
    no_key = get(flux, {"metric": "vista.get", "value": "1"})
    status = get(flux, {"status": "true"})

    assert body_of(old) == {
        "code": 400,
        "message": f"invalid timestamp - {NOW - 3601} - timestamp is too old, older than 3600 "
        "seconds",
    }
    assert body_of(bad_value) == {"code": 400, "message": "invalid value - abc"}
    assert body_of(no_value) == {"code": 400, "message": "no value parameter passed"}
    assert body_of(no_metric) == {"code": 400, "message": "no metric parameter passed"}
    # Flux reads an unassigned `key` local here, and falcon 3 answers its default 500.
    assert (no_key.status_code, body_of(no_key)) == (500, {"title": "500 Internal Server Error"})
    assert (status.status_code, body_of(status)) == (200, {"status": "ok"})
    assert [r.status for r in flux.requests] == [400, 400, 400, 400, 500, 200]
    assert flux.accepted == []


def test_get_rejected_metric_is_400_over_quota(flux: FluxServer) -> None:
    flux.reject_metric("vista.rejected")
    response = get(flux, {"metric": "vista.rejected", "value": "1", "key": KEY})

    assert response.status_code == 400
    assert body_of(response) == {
        "code": 400,
        "error": "over quota - this account is allowed 0 metrics and an additional metric was "
        "posted that has been rejected",
        "rejected metric": "vista.rejected",
    }
    assert flux.accepted == []


# ---------------------------------------------------------------- misc


def test_record_false_counts_without_storing() -> None:
    with FluxServer(now=lambda: NOW, record=False) as server:
        response = post(server, {"key": KEY, "metrics": [item(f"v.m{i}") for i in range(450)]})

        assert response.status_code == 204
        assert server.accepted_count == 450
        assert server.request_count == 1
        assert server.accepted == []
        assert server.requests == []


def _listener_rules_then_worker_output(emulate_worker: bool) -> tuple[int, int, set[str]]:
    """The same requests (a good POST, a 400 after a good item, a 207, a GET, an old point
    without fill) to a Flux double with or without its worker; returns what the worker
    forwarded and dropped and the flux.last keys it wrote, once it has caught up."""
    store = fakeredis.FakeRedis()
    store.hset("flux.last.metric_data", "vista.old", str({"timestamp": NOW, "value": 1.0}))
    with FluxServer(now=lambda: NOW, redis=store, emulate_worker=emulate_worker) as server:
        server.reject_metric("vista.rejected")
        good = post(server, {"key": KEY, "metrics": [item("vista.a", NOW - 60, 1.5)]})
        bad = post(server, {"key": KEY, "metrics": [item("vista.b"), item("vista.b*d")]})
        quota = post(server, {"key": KEY, "metrics": [item("vista.c"), item("vista.rejected")]})
        fetched = get(
            server, {"key": KEY, "metric": "vista.d", "value": "2", "timestamp": str(NOW)}
        )
        old = post(server, {"key": KEY, "metrics": [item("vista.old", NOW - 120, 9.0)]})

        assert [r.status_code for r in (good, bad, quota, fetched, old)] == [
            204,
            400,
            207,
            204,
            204,
        ]
        assert server.accepted == [
            AcceptedPoint("vista.a", NOW - 60, 1.5, False),
            AcceptedPoint("vista.b", NOW - 60, 1.0, False),
            AcceptedPoint("vista.c", NOW - 60, 1.0, False),
            AcceptedPoint("vista.d", NOW, 2.0, False),
            AcceptedPoint("vista.old", NOW - 120, 9.0, False),
        ]
        assert (server.accepted_count, server.request_count) == (5, 5)
        server.wait_processed()
        keys = {k.decode() for k in store.scan_iter("flux.last.*")}
        return server.forwarded_count, server.dropped_count, keys


def test_without_worker_emulation_the_listener_rules_hold_and_nothing_is_forwarded() -> None:
    # bench/deliver.py's "listener only" scenario: a real Flux's listener validates and
    # queues; its worker (flux.last checks, forwarding) runs in other processes.
    forwarded, dropped, keys = _listener_rules_then_worker_output(emulate_worker=False)

    assert (forwarded, dropped) == (0, 0)
    assert keys == {"flux.last.metric_data"}  # only the field set up above: nothing written
    # The same requests with the worker: it checks, drops and forwards (so the above is not
    # vacuous).
    forwarded, dropped, keys = _listener_rules_then_worker_output(emulate_worker=True)

    assert (forwarded, dropped) == (4, 1)  # vista.old at NOW - 120 is at or below flux.last
    assert keys == {
        "flux.last.metric_data",
        "flux.last.vista.a",
        "flux.last.vista.b",
        "flux.last.vista.c",
        "flux.last.vista.d",
    }


def _worker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "fake-flux-worker")


def test_without_worker_emulation_the_worker_thread_never_starts() -> None:
    before = _worker_threads()
    with FluxServer(now=lambda: NOW, emulate_worker=False, record=False) as server:
        response = post(server, {"key": KEY, "metrics": [item(f"v.m{i}") for i in range(450)]})

        assert response.status_code == 204
        assert server.accepted_count == 450
        assert _worker_threads() == before
        assert server.forwarded_count == 0


def test_wrong_method_and_unknown_path_get_falcon_defaults(flux: FluxServer) -> None:
    wrong_method = requests.get(f"{flux.url}/metric_data_post", timeout=5)
    unknown = requests.get(f"{flux.url}/nope", timeout=5)

    assert (wrong_method.status_code, body_of(wrong_method)) == (
        405,
        {"title": "405 Method Not Allowed"},
    )
    assert (unknown.status_code, body_of(unknown)) == (404, {"title": "404 Not Found"})


def test_url_port_and_restart_guard() -> None:
    server = FluxServer()
    try:
        assert server.start() is server
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        with pytest.raises(RuntimeError):
            server.start()
    finally:
        server.stop()
    server.stop()  # a second stop is a no-op
