"""Big answers parsed as they arrive (sources/stream.py) give what decoding them whole gives:
the same points, the same errors; and they are kept to the asked window."""

from __future__ import annotations

import json
from typing import Any

import pytest

from skyline.vista.errors import SourceError
from skyline.vista.sources import graphite, prometheus, stream
from skyline.vista.sources.stream import BodyReader, Bounds, StreamParser
from tests import data

PROMETHEUS = sorted(n for n in data.manifest()["answers"] if n.startswith("prometheus_"))
GRAPHITE = sorted(
    n for n in data.manifest()["answers"] if n.startswith("graphite_") and n.endswith(".json")
)


class Chunks:
    """An aiohttp StreamReader stand-in: gives the body in small pieces."""

    def __init__(self, body: bytes, size: int = 7) -> None:
        self.body = body
        self.size = size

    async def read(self, n: int = -1) -> bytes:
        piece, self.body = self.body[: self.size], self.body[self.size :]
        return piece


async def streamed(parser: StreamParser, body: bytes, head: int = 5) -> Any:
    reader = BodyReader(Chunks(body[head:]), body[:head], max_bytes=1 << 30)
    return await stream.parse(parser, reader, lambda: "<excerpt>")


async def outcome(parser: StreamParser, body: bytes) -> Any:
    try:
        return await streamed(parser, body)
    except SourceError as exc:
        return (exc.kind, str(exc))


def decoded(parse: Any, body: bytes) -> Any:
    try:
        return parse(json.loads(body))
    except SourceError as exc:
        return (exc.kind, str(exc))


@pytest.mark.parametrize("name", PROMETHEUS)
async def test_prometheus_recorded_answers_stream_as_they_decode(name: str) -> None:
    body = data.body(name)
    bounds = Bounds()
    assert await outcome(prometheus.stream_parser(bounds), body) == decoded(
        lambda b: prometheus.parse(b, bounds), body
    )


@pytest.mark.parametrize("name", GRAPHITE)
async def test_graphite_recorded_answers_stream_as_they_decode(name: str) -> None:
    body = data.body(name)
    bounds = Bounds()
    got = await outcome(graphite.stream_parser(bounds), body)
    want = decoded(lambda b: graphite.parse_render_within(b, bounds), body)
    assert (got.series if isinstance(got, graphite.Rendered) else got) == want


def matrix(*series: object, **top: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": list(series)}, **top}
    ).encode()


PROMETHEUS_SHAPES = [
    matrix({"metric": {"a": "1"}, "values": [[1, "2"], [2]]}),
    matrix({"metric": {}, "values": [[1, "2"], 3]}),
    matrix({"metric": {}, "values": [{"ts": 1}]}),
    matrix({"metric": {"job": "a"}, "values": []}, {"metric": {"job": "b"}, "values": []}),
    matrix([1, "2"]),
    matrix({"metric": {}, "values": [[1, "2"]]}, warnings=["careful", "twice"]),
    b'{"status": "error", "errorType": "bad_data", "error": "parse error"}',
    b'{"status": "error", "errorType": "Bearer xyz: a long echoed header", "error": "no"}',
    b'{"status": "weird"}',
    b'{"status": "success", "data": {"resultType": "streams", "result": []}}',
    b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, '
    b'"value": [5, "6"]}]}}',
    b'{"status": "success", "data": {"resultType": "scalar", "result": [5, "6"]}}',
    b"[1, 2]",
]


@pytest.mark.parametrize("body", PROMETHEUS_SHAPES)
async def test_prometheus_shapes_stream_as_they_decode(body: bytes) -> None:
    bounds = Bounds()
    got = await outcome(prometheus.stream_parser(bounds), body)
    want = decoded(lambda b: prometheus.parse(b, bounds), body)
    if b'{"ts": 1}' in body:  # an object where a sample should be: not shown when streamed
        assert got == ("shape", 'sample {...} is not [timestamp, "value"]')
        assert want == ("shape", "sample {'ts': 1} is not [timestamp, \"value\"]")
    else:
        assert got == want


GRAPHITE_SHAPES = [
    b'[{"target": "a", "tags": {"x": {"y": [1]}}, "datapoints": [[1.5, 60], [null, 120]]}]',
    b'[{"target": "a", "datapoints": [[1.5, 60], [2]]}]',
    b'[{"target": "a", "datapoints": [7]}]',
    b'[{"target": 5, "datapoints": []}]',
    b'[{"target": "a"}]',
    b"[3]",
    b'{"target": "a"}',
    b"[]",
]


@pytest.mark.parametrize("body", GRAPHITE_SHAPES)
async def test_graphite_shapes_stream_as_they_decode(body: bytes) -> None:
    bounds = Bounds()
    got = await outcome(graphite.stream_parser(bounds), body)
    want = decoded(lambda b: graphite.parse_render_within(b, bounds), body)
    assert (got.series if isinstance(got, graphite.Rendered) else got) == want


async def test_points_outside_the_window_are_counted_not_kept() -> None:
    values = [[ts, str(ts)] for ts in range(0, 100_000, 60)]
    bounds = Bounds(50_000, 50_600, max_points=1000)
    parsed = await streamed(prometheus.stream_parser(bounds), matrix({"values": values}))
    assert [ts for ts, _ in parsed.points] == list(range(50_040, 50_600 + 1, 60))
    assert parsed.outside_window == len(values) - 10
    assert prometheus.parse(json.loads(matrix({"values": values})), bounds) == parsed


def test_bounds_of_a_window_keep_an_hour_of_slack_and_ten_points_a_step() -> None:
    bounds = Bounds.of_window(10_000, 10_300, 60)
    assert (bounds.low, bounds.high) == (10_000 - 3600, 10_300 + 3600)
    assert bounds.max_points == 10 * ((7200 + 300) // 60 + 1)
    assert Bounds.of_window(10_000, 10_000, 3600).max_points == 1000  # at least
    assert Bounds.of_window(0, 86_400, 10).max_points == 10 * ((86_400 + 7200) // 10 + 1)
    assert Bounds.of_window(None, None, 60) == Bounds()
    assert not Bounds().outside(0) and not bounds.outside("x") and bounds.outside("1.5")


async def test_too_deep_truncated_and_invalid_bodies() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for parser, body in (
        (prometheus.stream_parser(Bounds()), b'{"status": ' + deep + b"}"),
        (graphite.stream_parser(Bounds()), b'[{"target": "a", "tags": ' + deep + b"}]"),
    ):
        with pytest.raises(SourceError) as caught:
            await streamed(parser, body, head=4096)
        assert (caught.value.kind, str(caught.value)) == (
            "invalid_json",
            "JSON nested deeper than 32 levels",
        )
    body = matrix({"metric": {}, "values": [[1, "2"], [2, "3"]]})
    with pytest.raises(SourceError) as caught:
        await streamed(prometheus.stream_parser(Bounds()), body[:-9])
    assert caught.value.kind == "truncated_json"
    assert str(caught.value).startswith("truncated JSON near byte ")
    with pytest.raises(SourceError) as caught:
        await streamed(prometheus.stream_parser(Bounds()), body[:-3] + b"}}}")
    assert caught.value.kind == "invalid_json"
    assert str(caught.value).endswith(": <excerpt>")


async def test_the_body_cap_holds_while_streaming() -> None:
    body = matrix({"metric": {}, "values": [[ts, "1"] for ts in range(10_000)]})
    reader = BodyReader(Chunks(body[1000:], 4096), body[:1000], max_bytes=len(body) - 1)
    with pytest.raises(SourceError) as caught:
        await stream.parse(prometheus.stream_parser(Bounds()), reader, lambda: "")
    assert (caught.value.kind, str(caught.value)) == (
        "too_large",
        f"body exceeds the {len(body) - 1}-byte cap",
    )


@pytest.mark.parametrize("body", [*PROMETHEUS_SHAPES, *(data.body(n) for n in PROMETHEUS)])
async def test_every_series_streams_as_it_decodes_for_name_templates(body: bytes) -> None:
    """A templated entry keeps every series with its labels, streamed or decoded whole."""
    bounds = Bounds()
    got = await outcome(prometheus.stream_parser(bounds, every=True), body)
    want = decoded(lambda b: prometheus.parse_every(b, bounds), body)
    if b'{"ts": 1}' in body:  # as above: the object is not shown when streamed
        assert got == ("shape", 'sample {...} is not [timestamp, "value"]')
    else:
        assert got == want


async def test_every_series_keeps_its_own_window_and_counts_the_rest() -> None:
    values = [[ts, str(ts)] for ts in range(0, 100_000, 60)]
    bounds = Bounds(50_000, 50_600, max_points=1000)
    body = matrix(
        {"metric": {"i": "a"}, "values": values}, {"values": values, "metric": {"i": "b"}}
    )
    parsed = await streamed(prometheus.stream_parser(bounds, every=True), body)
    inside = [(ts, str(ts)) for ts in range(50_040, 50_600 + 1, 60)]
    assert parsed.series == [({"i": "a"}, inside), ({"i": "b"}, inside)]  # labels after values too
    assert parsed.outside_window == 2 * (len(values) - 10)
    assert prometheus.parse_every(json.loads(body), bounds) == parsed
