"""Queue items (versioned JSON) and Skyline's watermark values, both ways."""

from __future__ import annotations

import ast
import json
import math
import random
from dataclasses import replace
from typing import Any

import pytest

from skyline.vista import codec
from skyline.vista.errors import PayloadError
from skyline.vista.model import ITEM_VERSION, DeadLetter, QueueItem, Watermark

ITEM = QueueItem(
    id="0123456789abcdef0123456789abcdef",
    metric="vista.prom.up.total",
    source="prometheus",
    host="http://prometheus.example.org:9090",
    target='sum(up{job="node"})',
    points=((1718000040, 1.0), (1718000100, 2.5), (1718000160, -3.25e-07)),
    fetched_at=1718000222.123456,
    frequency=60,
    seq=2,
)


def body_of(item: QueueItem = ITEM) -> dict[str, Any]:
    loaded = json.loads(codec.encode_item(item))
    assert isinstance(loaded, dict)
    return loaded


def test_item_round_trip() -> None:
    decoded = codec.decode_item(codec.encode_item(ITEM))
    assert decoded == replace(ITEM, fetched_at=1718000222.123)  # fetched_at kept to the ms
    assert decoded.first_ts == 1718000040
    assert decoded.last_ts == 1718000160


def test_item_round_trip_from_bytes_and_with_replay() -> None:
    item = replace(ITEM, source="replay", replay=True, seq=0, fetched_at=1.5)
    raw = codec.encode_item(item).encode()
    assert codec.decode_item(raw) == item


def test_encoded_item_is_compact_versioned_json() -> None:
    raw = codec.encode_item(ITEM)
    assert " " not in raw.replace(ITEM.target, "")
    body = body_of()
    assert body == {
        "v": ITEM_VERSION,
        "id": ITEM.id,
        "metric": ITEM.metric,
        "source": "prometheus",
        "host": ITEM.host,
        "target": ITEM.target,
        "frequency": 60,
        "fetched_at": 1718000222.123,
        "seq": 2,
        "points": [[1718000040, 1.0], [1718000100, 2.5], [1718000160, -3.25e-07]],
    }
    assert "replay" not in body


def test_integer_values_decode_as_floats() -> None:
    body = body_of()
    body["points"] = [[1718000040, 7]]
    decoded = codec.decode_item(json.dumps(body))
    assert decoded.points == ((1718000040, 7.0),)
    assert isinstance(decoded.points[0][1], float)


def test_defaults_for_optional_fields() -> None:
    body = body_of()
    for key in ("host", "target", "frequency", "seq"):
        del body[key]
    decoded = codec.decode_item(json.dumps(body))
    assert (decoded.host, decoded.target, decoded.frequency, decoded.seq) == ("", "", 60, 0)
    assert decoded.replay is False


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_on_encode(value: float) -> None:
    item = replace(ITEM, points=((1718000040, 1.0), (1718000100, value)))
    with pytest.raises(PayloadError, match="cannot be encoded"):
        codec.encode_item(item)


def _mutated(**changes: object) -> str:
    body = body_of()
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body)


_DELETE = object()

DECODE_ERRORS: list[tuple[str, str | bytes, str]] = [
    ("not JSON", "this is not json", "not JSON"),
    ("truncated JSON", codec.encode_item(ITEM)[:-5], "not JSON"),
    ("not UTF-8", b'{"v": 1, "metric": "\xff"}', "not JSON"),
    ("empty", "", "not JSON"),
    ("a list", json.dumps([1, "metric", [[1, 2.0]]]), "not a JSON object"),
    ("a string", json.dumps("item"), "not a JSON object"),
    ("the original's Python literal", str([{"metric": "a", "timestamp": 1}]), "not JSON"),
    ("no version", _mutated(v=_DELETE), "unsupported item version None"),
    ("version 2", _mutated(v=2), "unsupported item version 2"),
    ("version as text", _mutated(v="1"), "unsupported item version '1'"),
    ("missing id", _mutated(id=_DELETE), "missing field 'id'"),
    ("missing metric", _mutated(metric=_DELETE), "missing field 'metric'"),
    ("missing source", _mutated(source=_DELETE), "missing field 'source'"),
    ("missing points", _mutated(points=_DELETE), "missing field 'points'"),
    ("missing fetched_at", _mutated(fetched_at=_DELETE), "missing field 'fetched_at'"),
    ("empty metric", _mutated(metric=""), "'metric' is not a non-empty string"),
    ("metric not a string", _mutated(metric=5), "'metric' is not a non-empty string"),
    ("unknown source", _mutated(source="influx"), "unknown source 'influx'"),
    ("points not a list", _mutated(points={"1": 2}), "'points' is not a list"),
    ("point not a pair", _mutated(points=[[1718000040, 1.0, 3]]), "is not \\[timestamp, value\\]"),
    ("point not a list", _mutated(points=[1718000040]), "is not \\[timestamp, value\\]"),
    ("bool timestamp", _mutated(points=[[True, 1.0]]), "timestamp True is not an integer"),
    ("float timestamp", _mutated(points=[[1718000040.5, 1.0]]), "is not an integer"),
    ("text timestamp", _mutated(points=[["1718000040", 1.0]]), "is not an integer"),
    ("bool value", _mutated(points=[[1718000040, False]]), "value False is not a number"),
    ("null value", _mutated(points=[[1718000040, None]]), "value None is not a number"),
    ("text value", _mutated(points=[[1718000040, "1.0"]]), "value '1.0' is not a number"),
    ("fetched_at text", _mutated(fetched_at="yesterday"), "bad field"),
    ("frequency text", _mutated(frequency="often"), "bad field"),
]


@pytest.mark.parametrize(
    ("raw", "message"), [pytest.param(r, m, id=name) for name, r, m in DECODE_ERRORS]
)
def test_decode_errors_raise_payload_error(raw: str | bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        codec.decode_item(raw)


def test_item_metric_of_items_that_fail_decoding() -> None:
    assert codec.item_metric(_mutated(v=2)) == ITEM.metric
    assert codec.item_metric(_mutated(points="x")) == ITEM.metric
    assert codec.item_metric(_mutated(metric="")) is None
    assert codec.item_metric("[1, 2]") is None
    assert codec.item_metric(b"\xff\xfe") is None
    assert codec.item_metric("not json") is None


# --- watermarks -------------------------------------------------------------------------------

HASH_VALUES: list[tuple[str | bytes | None, Watermark | None]] = [
    ('{"timestamp": 1718000100, "value": 2.5}', Watermark(1718000100, 2.5)),
    (b'{"timestamp": 1718000100, "value": 2.5}', Watermark(1718000100, 2.5)),
    ("{'timestamp': 1718000100, 'value': None}", Watermark(1718000100, None)),
    ("{'timestamp': 1718000100, 'value': 2.0}", Watermark(1718000100, 2.0)),
    ("{'timestamp': 1718000100.0, 'value': 7}", Watermark(1718000100, 7.0)),
    ('{"timestamp": 1718000100, "value": null}', Watermark(1718000100, None)),
    ('{"timestamp": 1718000100}', Watermark(1718000100, None)),
    (
        "{'timestamp': 1718000100, 'value': 1.00243039089e+11}",
        Watermark(1718000100, 100243039089.0),
    ),
    ('{"timestamp": "1718000100", "value": 1}', None),
    ('{"timestamp": true, "value": 1}', None),
    ('{"timestamp": NaN, "value": 1}', None),
    ('{"value": 1}', None),
    ("[1718000100, 2.0]", None),
    ("garbage", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), HASH_VALUES)
def test_decode_watermark_hash(raw: str | bytes | None, expected: Watermark | None) -> None:
    assert codec.decode_watermark_hash(raw) == expected


KEY_VALUES: list[tuple[str | bytes | None, Watermark | None]] = [
    ("[1718000100, 2.0]", Watermark(1718000100, 2.0)),
    (b"[1718000100, 2.0]", Watermark(1718000100, 2.0)),
    ("(1718000100, 2.0)", Watermark(1718000100, 2.0)),
    ("[1718000100.0, -4]", Watermark(1718000100, -4.0)),
    ("[1718000100, None]", Watermark(1718000100, None)),
    ("[1718000100, null]", Watermark(1718000100, None)),
    ("[1718000100]", Watermark(1718000100, None)),
    ("[]", None),
    ('["1718000100", 2.0]', None),
    ("[False, 2.0]", None),
    ("{'timestamp': 1718000100, 'value': 2.0}", None),
    ("not a list", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), KEY_VALUES)
def test_decode_watermark_key(raw: str | bytes | None, expected: Watermark | None) -> None:
    assert codec.decode_watermark_key(raw) == expected


def _values() -> list[float]:
    rng = random.Random(20240610)
    values = [0.0, -0.0, 1.0, 2.5, -3.0, 1e22, 1e-05, -7.5e-12, 5e-324, 1.7976931348623157e308]
    values += [1.00243039089e11, 0.1 + 0.2, 123456789.123456789]
    values += [rng.uniform(-1e6, 1e6) for _ in range(50)]
    values += [rng.lognormvariate(0, 20) * rng.choice((-1, 1)) for _ in range(50)]
    return values


@pytest.mark.parametrize("value", _values())
def test_encoded_watermarks_are_read_by_json_and_literal_eval(value: float) -> None:
    mark = Watermark(1718000100, value)
    hash_text = codec.encode_watermark_hash(mark)
    key_text = codec.encode_watermark_key(mark)
    expected_hash = {"timestamp": 1718000100, "value": value}
    assert json.loads(hash_text) == expected_hash
    assert ast.literal_eval(hash_text) == expected_hash
    assert json.loads(key_text) == [1718000100, value]
    assert ast.literal_eval(key_text) == [1718000100, value]
    assert codec.decode_watermark_hash(hash_text) == mark
    assert codec.decode_watermark_key(key_text) == mark


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_watermark_without_a_finite_value_is_written_as_zero(value: float | None) -> None:
    mark = Watermark(1718000100, value)
    assert codec.encode_watermark_hash(mark) == '{"timestamp": 1718000100, "value": 0.0}'
    assert codec.encode_watermark_key(mark) == "[1718000100, 0.0]"
    for text in (codec.encode_watermark_hash(mark), codec.encode_watermark_key(mark)):
        assert json.loads(text) == ast.literal_eval(text)


def test_encoded_watermark_exact_text() -> None:
    mark = Watermark(1718000100, 2.0)
    assert codec.encode_watermark_hash(mark) == '{"timestamp": 1718000100, "value": 2.0}'
    assert codec.encode_watermark_key(mark) == "[1718000100, 2.0]"


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letter_round_trip() -> None:
    dead = DeadLetter(
        id="d" * 32,
        reason="Flux 400: invalid timestamp",
        dead_at=1718000300.4567,
        worker="host-1:4242:0",
        item=codec.encode_item(ITEM),
        metric=ITEM.metric,
    )
    raw = codec.encode_dead(dead)
    decoded = codec.decode_dead(raw)
    assert decoded == replace(dead, dead_at=1718000300.457)
    assert codec.decode_item(decoded.item) == replace(ITEM, fetched_at=1718000222.123)
    assert json.loads(raw)["reason"] == "Flux 400: invalid timestamp"


def test_dead_letter_defaults_and_errors() -> None:
    minimal = json.dumps({"id": "x", "reason": "r", "dead_at": 1.0, "item": "{}"})
    assert codec.decode_dead(minimal) == DeadLetter("x", "r", 1.0, "", "{}", "")
    for raw in (
        "not json",
        json.dumps({"id": "x"}),
        json.dumps([1]),
        json.dumps({**json.loads(minimal), "dead_at": "soon"}),
    ):
        with pytest.raises(PayloadError, match="bad dead letter"):
            codec.decode_dead(raw)
