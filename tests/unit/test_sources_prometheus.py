"""Prometheus HTTP API: query_range URL encoding, and parsing of recorded answers (matrix,
vector, scalar, empty, bad_data error, several series, NaN/±Inf) and of wrong shapes."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from skyline.vista.errors import SourceError
from skyline.vista.sources.prometheus import parse_result, query_range_url, warnings_of
from skyline.vista.validate import clean
from tests import data
from tests.data import record

T0 = data.prometheus_t0()

QUERIES = [
    'up{job="x"}',
    'sum(rate(http_requests_total{job="api", code=~"5.."}[5m])) + 1',
    "node_load1 / on(instance) group_left count(node_cpu_seconds_total{mode='idle'})",
    'a{path="/x/y%20z", q="b&c=d#e?"} * 100',
    "histogram_quantile(0.99, sum by (le) (rate(x_bucket[1h30m])))",
    'metric{l="caf\u00e9 \u65e5\u672c"}',
]


@pytest.mark.parametrize("query", QUERIES)
def test_query_range_url_sends_the_query_exactly(query: str) -> None:
    url = query_range_url("http://prom.example:9090", query, 1_700_000_000, 1_700_003_600, 60)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "http",
        "prom.example:9090",
        "/api/v1/query_range",
    )
    assert parse_qs(parts.query, keep_blank_values=True, strict_parsing=True) == {
        "query": [query],
        "start": ["1700000000"],
        "end": ["1700003600"],
        "step": ["60s"],
    }
    encoded = parts.query.split("&", 1)[0].removeprefix("query=")
    assert re.fullmatch(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+", encoded), encoded


def test_query_range_url_escapes_plus_braces_brackets_and_spaces() -> None:
    url = query_range_url("http://p:9090", 'sum(x{job="x"}[5m]) + 1', 10, 70, 30)
    assert url == (
        "http://p:9090/api/v1/query_range?query=sum%28x%7Bjob%3D%22x%22%7D%5B5m%5D%29%20%2B%201"
        "&start=10&end=70&step=30s"
    )


def test_query_range_url_keeps_a_base_path() -> None:
    url = query_range_url("https://gw.example/prometheus", "up", 0, 60, 15)
    assert urlsplit(url).path == "/prometheus/api/v1/query_range"


def test_query_range_url_matches_what_prometheus_was_sent_when_recording() -> None:
    """The recorded matrix came from this very query; Prometheus understood it exactly."""
    end = T0 + 60 * (len(record.PROM_A) - 1)
    url = query_range_url("", record.PROM_MATRIX_QUERY, T0, end, 60)
    assert url == data.meta("prometheus_query_range_matrix.json")["url"]


# ------------------------------------------------------------------ recorded answers


def test_parse_result_recorded_matrix() -> None:
    pairs = parse_result(data.answer("prometheus_query_range_matrix.json"))
    assert pairs == [(T0 + 60 * i, v) for i, v in enumerate(record.PROM_A)]
    assert clean(pairs).points == (
        (T0, 1.0),
        (T0 + 60, 2.5),
        (T0 + 120, -3.25),
        (T0 + 180, 0.0),
        (T0 + 240, 42.0),
        (T0 + 300, 1234567.125),
        (T0 + 360, 7.0),
        (T0 + 420, 8.0),
    )


def test_parse_result_recorded_instant_vector() -> None:
    answer = data.answer("prometheus_query_vector.json")
    assert answer["data"]["resultType"] == "vector"
    assert parse_result(answer) == [(record.PROM_VECTOR_TIME, "-3.25")]


def test_parse_result_recorded_scalar() -> None:
    answer = data.answer("prometheus_query_scalar.json")
    assert answer["data"]["resultType"] == "scalar"
    assert parse_result(answer) == [(record.PROM_VECTOR_TIME, "-6.5")]


def test_parse_result_recorded_empty_result() -> None:
    assert parse_result(data.answer("prometheus_query_range_empty.json")) == []


def test_parse_result_recorded_error_carries_prometheus_text() -> None:
    assert data.meta("prometheus_query_range_bad_data.json")["status"] == 400
    with pytest.raises(SourceError) as caught:
        parse_result(data.answer("prometheus_query_range_bad_data.json"))
    assert caught.value.kind == "prometheus_bad_data"
    assert str(caught.value) == (
        "Prometheus error (bad_data): 1:14: parse error: unclosed left parenthesis"
    )


def test_parse_result_error_without_error_type() -> None:
    with pytest.raises(SourceError) as caught:
        parse_result({"status": "error", "error": "query timed out in expression evaluation"})
    assert caught.value.kind == "prometheus_error"
    assert "query timed out in expression evaluation" in str(caught.value)


def test_parse_result_recorded_multi_series_names_count_and_differing_labels() -> None:
    with pytest.raises(SourceError) as caught:
        parse_result(data.answer("prometheus_query_range_multi_series.json"))
    assert caught.value.kind == "too_many_series"
    assert str(caught.value) == (
        "the query returned 2 series; it must return one. Labels that differ: "
        "instance=[h:1, h:2]; job=[a, b]. Aggregate it (e.g. sum by ()) or add label matchers, "
        "or give the entry a name template (e.g. graphite_target='x.{instance}')"
    )


def test_multi_series_names_labels_missing_from_some_series_and_shortens_long_lists() -> None:
    series = [
        {"metric": {"__name__": "m", "pod": f"p{n}", "zone": "z"}, "values": []} for n in range(6)
    ]
    series.append({"metric": {"__name__": "m", "pod": "p0", "zone": "z", "canary": "1"}})
    with pytest.raises(SourceError) as caught:
        parse_result({"status": "success", "data": {"resultType": "matrix", "result": series}})
    message = str(caught.value)
    assert "returned 7 series" in message
    assert "Labels that differ: canary=[1]; pod=[p0, p1, p2, p3, ...]." in message
    assert "__name__" not in message and "zone" not in message


def test_multi_series_with_identical_label_sets() -> None:
    same = {"metric": {"job": "a"}, "values": [[1, "1"]]}
    with pytest.raises(SourceError) as caught:
        parse_result({"status": "success", "data": {"resultType": "vector", "result": [same] * 2}})
    assert "returned 2 series" in str(caught.value)
    assert "identical label sets" in str(caught.value)


def test_parse_result_recorded_nan_and_infinities_are_kept_for_validation_to_drop() -> None:
    pairs = parse_result(data.answer("prometheus_query_range_non_finite.json"))
    assert pairs == [(T0 + 60 * i, v) for i, v in enumerate(record.PROM_SPECIAL)]
    assert [v for _, v in pairs] == ["1", "NaN", "2", "+Inf", "3", "-Inf", "4"]
    cleaned = clean(pairs)
    assert cleaned.points == ((T0, 1.0), (T0 + 120, 2.0), (T0 + 240, 3.0), (T0 + 360, 4.0))
    assert cleaned.dropped.as_dict() == {"non_finite": 3}


def test_warnings_are_read_when_present() -> None:
    assert warnings_of({"status": "success", "warnings": ["PromQL info: x", 3]}) == [
        "PromQL info: x",
        "3",
    ]
    assert warnings_of(data.answer("prometheus_query_range_matrix.json")) == []
    assert warnings_of({"warnings": "not a list"}) == []
    assert warnings_of(["not", "an", "object"]) == []


# ----------------------------------------------------------------------- wrong shapes


def _ok(kind: str, result: object) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": kind, "result": result}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "expected a JSON object, got list"),
        ("success", "expected a JSON object, got str"),
        ({"data": {}}, "'status' is None, expected 'success'"),
        ({"status": "fail", "data": {}}, "'status' is 'fail', expected 'success'"),
        ({"status": "success"}, "'data' is missing or not an object"),
        ({"status": "success", "data": []}, "'data' is missing or not an object"),
        (_ok("string", [1, "x"]), "unsupported resultType 'string' (expected matrix or vector)"),
        (_ok("streams", []), "unsupported resultType 'streams'"),
        (_ok("matrix", {"values": []}), "unsupported resultType 'matrix'"),
        (_ok("matrix", None), "unsupported resultType 'matrix'"),
        (_ok("matrix", ["a series"]), "a result entry is not an object"),
        (_ok("matrix", [{"metric": {}}]), "matrix series without a 'values' list"),
        (_ok("matrix", [{"metric": {}, "values": "1,2"}]), "without a 'values' list"),
        (_ok("matrix", [{"metric": {}, "values": [[T0]]}]), f"sample [{T0}] is not [timestamp"),
        (_ok("matrix", [{"values": [[T0, "1", 2]]}]), f"sample [{T0}, '1', 2] is not [time"),
        (_ok("matrix", [{"values": [{"t": T0, "v": "1"}]}]), "sample {'t':"),
        (_ok("vector", [{"metric": {}}]), 'sample None is not [timestamp, "value"]'),
        (_ok("vector", [{"metric": {}, "value": "1"}]), "sample '1' is not [timestamp"),
        (_ok("scalar", "1"), "sample '1' is not [timestamp, \"value\"]"),
        # Several entries, not all of them objects: a shape error, not a crash while naming
        # the labels that differ.
        (_ok("matrix", [{"metric": {}, "values": []}, "x"]), "a result entry is not an object"),
        (_ok("vector", [1, 2]), "a result entry is not an object"),
    ],
)
def test_parse_result_wrong_shapes(body: object, message: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_result(body)
    assert caught.value.kind == "shape"
    assert message in str(caught.value)
