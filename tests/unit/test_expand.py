"""Name templates: parsing, the sanitising rule, collisions (pure)."""

from __future__ import annotations

import pytest

from skyline.vista import config, expand
from skyline.vista.errors import ConfigError


def test_prometheus_labels_fill_the_template_sanitised() -> None:
    template = expand.parse_template("node.{instance}.{job}", "prometheus")
    got = expand.expand_labelled(
        template,
        [
            ({"instance": "10.0.0.1:9100", "job": "node"}, [(1, "1")]),
            ({"instance": "web-2", "job": "a b/c"}, [(1, "2")]),
        ],
    )
    assert got.series == {"node.10_0_0_1_9100.node": [(1, "1")], "node.web-2.a_b_c": [(1, "2")]}
    assert got.problems == []


def test_graphite_nodes_fill_the_template() -> None:
    template = expand.parse_template("x.{node[1]}.{node[-1]}", "graphite")
    got = expand.expand_named(template, [("servers.web1.cpu", []), ("servers.web2.cpu", [])])
    assert sorted(got.series) == ["x.web1.cpu", "x.web2.cpu"]
    short = expand.expand_named(template, [("lonely", [])])
    assert short.series == {} and short.problems == [
        "series 'lonely' has 1 node(s), no node[1]; skipped"
    ]


def test_two_series_on_one_name_are_an_error_not_a_merge() -> None:
    template = expand.parse_template("n.{job}", "prometheus")
    got = expand.expand_labelled(
        template,
        [({"job": "a", "i": "1"}, [(1, "1")]), ({"job": "a", "i": "2"}, [(1, "2")]),
         ({"job": "b"}, [(1, "3")])],
    )  # fmt: skip
    assert got.series == {"n.b": [(1, "3")]}
    assert got.problems == [
        '2 series map to the name \'n.a\' ({i="1", job="a"}; {i="2", job="a"}); put a label '
        "or node that tells them apart in the template"
    ]


def test_missing_or_empty_labels_skip_that_series() -> None:
    template = expand.parse_template("n.{job}", "prometheus")
    got = expand.expand_labelled(template, [({}, []), ({"job": ""}, []), ({"job": "ok"}, [])])
    assert list(got.series) == ["n.ok"]
    assert got.problems == [
        "series {} has no label 'job'; skipped",
        'series {job=""} has an empty value for {job}; skipped',
    ]


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("n.{node[2]}", "prometheus", "field {node[2]}: a Prometheus template takes {label}"),
        ("n.{job}", "graphite", "field {job}: a Graphite template takes {node[N]} fields"),
        ("n.{job", "prometheus", "unbalanced '{' or '}'"),
        ("n..{job}", "prometheus", "a name made from it has an empty path element"),
    ],
)
def test_bad_templates(text: str, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        expand.parse_template(text, kind)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_check_config_names_the_entry_and_field() -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate(
            {
                "REDIS_SOCKET_PATH": "/tmp/r.sock",
                "VISTA_SINK": "graphite",
                "CARBON_HOST": "127.0.0.1",
                "VISTA_FETCH_METRICS": (
                    {
                        "remote_host": "http://p:9090",
                        "remote_host_type": "prometheus",
                        "remote_target": "up",
                        "graphite_target": "up.{node[0]}",
                    },
                ),
            }
        )
    assert any(
        "VISTA_FETCH_METRICS[0] (up.{node[0]}) field 'graphite_target': name template" in e
        for e in caught.value.problems
    ), caught.value


def test_entry_watermark_is_the_oldest_or_none_for_a_new_series() -> None:
    assert expand.entry_watermark([], {}) == (None, False)
    assert expand.entry_watermark(["a", "b"], {"a": 120, "b": 60}) == (60, False)
    assert expand.entry_watermark(["a", "c"], {"a": 120}) == (None, True)
    assert expand.recent({"a": 1000.0, "old": 0.0}, 4000.0) == ["a"]
