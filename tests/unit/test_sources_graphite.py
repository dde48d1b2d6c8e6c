"""Graphite render API: URL building (exact encoding), parsing of recorded graphite-web answers
and of wrong shapes, and mapping a batched answer back to its targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from skyline.vista.errors import SourceError
from skyline.vista.sources import graphite
from skyline.vista.sources.graphite import RenderSeries, map_batch, parse_render, render_url
from skyline.vista.validate import clean
from tests import data
from tests.data import record

BASE = "http://graphite.example:8080"

AWKWARD_TARGETS = [
    "carbon.agents.host-1.cpu+usage",  # '+' is a space in a query string unless encoded
    "a/b.c",
    "disk.100%.used",
    "50%25.literally",  # already looks percent-encoded: must not be decoded
    "my metric.with spaces",
    'alias(sumSeries(web.*.requests),"all requests")',
    "aliasByNode(stats.'quoted'.count, 1)",
    "app.{a,b}.x[0-9]?.y*",
    "a=b&target=evil#frag?q",
    "caf\u00e9.\u65e5\u672c",
]


def _query(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE
    return parts.query


@pytest.mark.parametrize("target", AWKWARD_TARGETS)
def test_render_url_sends_each_target_exactly(target: str) -> None:
    url = render_url(BASE, "/render/", [], [target], from_="-10minutes", until=None)
    query = _query(url)
    assert parse_qs(query, keep_blank_values=True, strict_parsing=True) == {
        "from": ["-10minutes"],
        "format": ["json"],
        "target": [target],
    }
    # Only unreserved characters stay as they are: nothing a query parser could misread.
    encoded = query.split("&target=", 1)[1]
    assert re.fullmatch(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+", encoded), encoded
    assert "+" not in query and " " not in query


def test_render_url_encodes_plus_slash_percent_space_and_quotes_as_escapes() -> None:
    url = render_url(BASE, "/render/", [], ["a+b/c%d e\"f'g"], from_="1", until="2")
    assert url == (f"{BASE}/render/?from=1&until=2&format=json&target=a%2Bb%2Fc%25d%20e%22f%27g")


def test_render_url_multiple_targets_in_order_with_from_until_and_uri_params() -> None:
    targets = [graphite.wrap_target(t, n) for n, t in enumerate(AWKWARD_TARGETS)]
    url = render_url(
        BASE,
        "/graphite/render",
        [("noCache", "true"), ("maxDataPoints", "500")],
        targets,
        from_="1700000000",
        until="1700003600",
    )
    assert urlsplit(url).path == "/graphite/render"
    assert parse_qsl(_query(url), keep_blank_values=True, strict_parsing=True) == [
        ("noCache", "true"),
        ("maxDataPoints", "500"),
        ("from", "1700000000"),
        ("until", "1700003600"),
        ("format", "json"),
        *[("target", f'alias({t},"vista.{n}")') for n, t in enumerate(AWKWARD_TARGETS)],
    ]


def test_render_url_without_until_leaves_it_out() -> None:
    url = render_url(BASE, "/render/", [], ["a.b"], from_="-2hours", until=None)
    assert parse_qs(_query(url)) == {"from": ["-2hours"], "format": ["json"], "target": ["a.b"]}


def test_render_url_matches_what_graphite_web_was_sent_when_recording() -> None:
    """The recorded answers came from URLs built by render_url; graphite-web understood them
    (the alias batch answer names every alias it was asked for)."""
    meta = data.meta("graphite_render_alias_batch.json")
    g = data.manifest()["graphite"]
    targets = [graphite.wrap_target(t, n) for n, t in enumerate(record.GRAPHITE_BATCH)]
    url = render_url("", "/render/", [], targets, from_=str(g["from"]), until=str(g["until"]))
    assert url == meta["url"]


def test_wrap_target_and_alias_name() -> None:
    assert graphite.alias_name(3) == "vista.3"
    assert graphite.wrap_target("sumSeries(a.*.b)", 12) == 'alias(sumSeries(a.*.b),"vista.12")'


# ------------------------------------------------------------------ recorded answers


def _expected(values: Sequence[float | None]) -> list[tuple[object, object]]:
    t0 = data.graphite_t0()
    return [(t0 + record.GRAPHITE_STEP * i, v) for i, v in enumerate(values)]


def test_parse_render_plain_metric_keeps_nulls_as_received() -> None:
    series = parse_render(data.answer("graphite_render_nulls.json"))
    assert series == [RenderSeries(record.GRAPHITE_PLAIN, _expected(record.GRAPHITE_PLAIN_VALUES))]
    cleaned = clean(series[0].points)
    t0 = data.graphite_t0()
    assert cleaned.points == ((t0, 1.5), (t0 + 120, 3.0), (t0 + 300, 6.25), (t0 + 360, 7.0),
                              (t0 + 420, -8.5))  # fmt: skip
    assert cleaned.dropped.as_dict() == {"none": 3}


def test_parse_render_sum_series_is_one_series_named_by_the_expression() -> None:
    series = parse_render(data.answer("graphite_render_sumseries.json"))
    sums = [b + c for b, c in zip(*record.GRAPHITE_X.values(), strict=True)]
    assert series == [RenderSeries(record.GRAPHITE_SUM, _expected(sums))]
    assert sums == [11.0, 22.0, 33.0, 44.0, 55.0, 66.0, 77.0, 88.0]


def test_parse_render_glob_gives_one_series_per_metric() -> None:
    series = parse_render(data.answer("graphite_render_glob.json"))
    assert [(s.name, s.points) for s in series] == [
        (name, _expected(values)) for name, values in record.GRAPHITE_X.items()
    ]


def test_parse_render_alias_batch_names_series_by_alias() -> None:
    series = parse_render(data.answer("graphite_render_alias_batch.json"))
    assert [s.name for s in series] == ["vista.0", "vista.1"]  # vista.2 (missing): absent
    assert series[0].points == _expected(record.GRAPHITE_PLAIN_VALUES)


def test_parse_render_empty_answer() -> None:
    assert parse_render([]) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target": "a", "datapoints": []}, "expected a JSON list of series, got dict"),
        ("[]", "expected a JSON list of series, got str"),
        (None, "expected a JSON list of series, got NoneType"),
        ([["a", [[1, 2]]]], "series 0 is a list, not an object"),
        ([{"target": "a", "datapoints": []}, 5], "series 1 is a int, not an object"),
        ([{"target": "a"}], "series 0 lacks 'target' (str) or 'datapoints' (list)"),
        ([{"datapoints": [[1.0, 1]]}], "series 0 lacks 'target' (str) or 'datapoints' (list)"),
        ([{"target": 7, "datapoints": []}], "series 0 lacks 'target' (str) or 'datapoints'"),
        ([{"target": "a", "datapoints": {"1": 2}}], "series 0 lacks 'target' (str) or"),
        ([{"target": "a", "datapoints": [[1.0]]}], "series 'a': datapoint [1.0] is not"),
        ([{"target": "a", "datapoints": [[1.0, 1, 2]]}], "datapoint [1.0, 1, 2] is not [value"),
        ([{"target": "a", "datapoints": [[1.0, 1], 5]}], "series 'a': datapoint 5 is not"),
        ([{"target": "a", "datapoints": [{"v": 1, "t": 2}]}], "datapoint {'v': 1, 't': 2}"),
        ([{"target": "a", "datapoints": ["1,2"]}], "series 'a': datapoint '1,2' is not"),
    ],
)
def test_parse_render_wrong_shapes(body: object, message: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_render(body)
    assert caught.value.kind == "shape"
    assert message in str(caught.value)


# ------------------------------------------------------------------------- map_batch


def test_map_batch_recorded_alias_batch_with_a_missing_target() -> None:
    series = parse_render(data.answer("graphite_render_alias_batch.json"))
    mapped = map_batch(series, 3, aliased=True)
    assert sorted(mapped) == [0, 1]  # target 2 (no such metric) is absent, not an error
    assert mapped[0] == series[0] and mapped[1] == series[1]


def test_map_batch_aliases_in_any_order() -> None:
    a, b, c = (RenderSeries(f"vista.{n}", [(n, float(n))]) for n in (2, 0, 1))
    assert map_batch([a, b, c], 3, aliased=True) == {2: a, 0: b, 1: c}


def test_map_batch_ignores_series_that_are_not_our_aliases() -> None:
    mine = RenderSeries("vista.1", [(1, 1.0)])
    others = [
        RenderSeries(name, [(1, 9.0)])
        for name in ("vista.2", "vista.-1", "vista.x", "vista.", "vista.01x", "other", "vista")
    ]
    assert map_batch([*others, mine], 2, aliased=True) == {1: mine}


def test_map_batch_two_series_for_one_alias_is_too_many_series() -> None:
    """Recorded: alias(<glob matching 2 metrics>,"vista.0") answers two series 'vista.0'."""
    series = parse_render(data.answer("graphite_render_alias_glob_batch.json"))
    assert [s.name for s in series] == ["vista.0", "vista.0", "vista.1"]
    mapped = map_batch(series, 2, aliased=True)
    assert mapped[1] == series[2]
    error = mapped[0]
    assert isinstance(error, SourceError)
    assert error.kind == "too_many_series"
    assert str(error).startswith("the target returned 2 series (vista.0); it must return one")


def test_map_batch_unaliased_single_target() -> None:
    series = parse_render(data.answer("graphite_render_nulls.json"))
    assert map_batch(series, 1, aliased=False) == {0: series[0]}
    # An unaliased single may come back under any name (graphite-web rewrites expressions).
    renamed = [RenderSeries("whatever(graphite, called it)", series[0].points)]
    assert map_batch(renamed, 1, aliased=False) == {0: renamed[0]}
    assert map_batch([], 1, aliased=False) == {}


def test_map_batch_unaliased_glob_names_count_and_series() -> None:
    mapped = map_batch(parse_render(data.answer("graphite_render_glob.json")), 1, aliased=False)
    error = mapped[0]
    assert isinstance(error, SourceError) and error.kind == "too_many_series"
    assert str(error) == (
        "the target returned 2 series (vista.rec.b.x, vista.rec.c.x); it must return one "
        "(wrap it in sumSeries() or make the path exact)"
    )


def test_map_batch_many_series_are_shortened_in_the_message() -> None:
    series = [RenderSeries(f"m.{n}", []) for n in range(9)]
    error = map_batch(series, 1, aliased=False)[0]
    assert isinstance(error, SourceError)
    assert "returned 9 series (m.0, m.1, m.2, m.3, m.4, ...)" in str(error)
