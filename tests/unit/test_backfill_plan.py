"""Backfill planning and parameters: pure, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyline.vista import config
from skyline.vista.backfill import (
    BackfillParams,
    BackfillRequest,
    parse_duration,
    parse_time,
    resolve,
)
from skyline.vista.backfill_plan import (
    GRAPHITE_POINTS,
    PROMETHEUS_POINTS,
    BackfillMetric,
    halves,
    plan,
    select_entries,
    windows,
)
from skyline.vista.config import VistaConfig
from skyline.vista.history import history_path

NOW = 1_800_000_000.0


def prom(name: str, until: int, step: int = 60) -> BackfillMetric:
    return BackfillMetric(name, "prometheus", "http://p:9090", step, until)


def gw(name: str, until: int, host: str = "http://g") -> BackfillMetric:
    return BackfillMetric(name, "graphite", host, 60, until)


def test_windows_are_step_aligned_contiguous_and_within_the_point_limit() -> None:
    found = windows(1_000_030, 1_000_030 + 30 * 86400, 60, PROMETHEUS_POINTS)
    assert found[0][0] == 1_000_080  # the first multiple of 60 at or after the start
    for first, last in found:
        assert first % 60 == 0 and last % 60 == 0
        assert (last - first) // 60 + 1 <= PROMETHEUS_POINTS
    for (_, last), (first, _) in zip(found, found[1:], strict=False):
        assert first == last + 60  # no gap, no overlap
    assert found[-1][1] == (1_000_030 + 30 * 86400) // 60 * 60
    assert sum((b - a) // 60 + 1 for a, b in found) == 43_200


def test_chunks_run_oldest_window_first_and_batch_graphite_per_host() -> None:
    start, until = 0, 20_000 * 60
    metrics = [prom("p0", until), gw("g0", until), gw("g1", until), prom("p1", until)]
    metrics.append(gw("g2", until, host="http://other"))
    chunks = plan(metrics, start, graphite_batch=20)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)
    first_window = [c for c in chunks if c.start == 0]
    assert [tuple(m.metric for m in c.metrics) for c in first_window] == [
        ("p0",),
        ("g0", "g1"),  # one render request for the two metrics of one host
        ("p1",),
        ("g2",),
    ]
    for c in chunks:
        points = (c.end - c.start) // 60 + 1
        limit = PROMETHEUS_POINTS if c.metrics[0].source == "prometheus" else GRAPHITE_POINTS
        assert points <= limit
    assert sum(c.expected_points() for c in chunks) == 5 * 20_001


def test_a_graphite_batch_is_cut_at_the_batch_size() -> None:
    metrics = [gw(f"g{n}", 3600) for n in range(45)]
    chunks = plan(metrics, 0, graphite_batch=20)
    assert [len(c.metrics) for c in chunks] == [20, 20, 5]


def test_a_metric_stops_at_its_own_until_and_the_plan_depends_on_params_only() -> None:
    metrics = [prom("old", 3000), prom("new", 10**6)]
    chunks = plan(metrics, 0, graphite_batch=20)
    assert all(c.start <= 3000 for c in chunks if c.metrics[0].metric == "old")
    params = BackfillParams(tuple(metrics), 0, 10**6, None, "x")
    again = BackfillParams.from_json(params.as_json())
    assert again == params
    assert plan(again.metrics, again.start, 20) == chunks


def test_times_and_resolutions_are_parsed() -> None:
    assert parse_time("now", NOW) == int(NOW)
    assert parse_time("-30d", NOW) == int(NOW) - 30 * 86400
    assert parse_time("-90m", NOW) == int(NOW) - 5400
    assert parse_time("1700000000", NOW) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20", NOW) == 1_700_000_000  # naive = UTC
    assert parse_time("2023-11-14T23:13:20+01:00", NOW) == 1_700_000_000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", NOW)
    assert parse_duration("60") == parse_duration("60s") == parse_duration("1m") == 60
    assert parse_duration("1h") == 3600
    with pytest.raises(ValueError, match="not a resolution"):
        parse_duration("0s")


def settings(tmp_path: Path, **extra: object) -> VistaConfig:
    entries = [
        (
            "http://p:9090",
            "prometheus",
            60,
            "up",
            f"m{n}",
            "default",
            "a",
            None,
            None,
            None,
            None,
            (),
        )
        for n in range(3)
    ]
    values = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": tuple(entries),
        "REDIS_URL": "redis://127.0.0.1:1",
        "FLUX_SELF_API_KEY": "f" * 32,
        "LOG_PATH": str(tmp_path),
        "PID_PATH": str(tmp_path),
        **extra,
    }
    return config.validate(values, str(tmp_path / "settings.py"))


def test_resolve_selects_names_globs_or_all_and_stops_at_watermarks(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    assert select_entries(cfg.fetch_metrics, metrics=["a.m1", "zz"]).unknown == ["zz"]
    until = int(NOW) - 3600
    params = resolve(
        cfg,
        BackfillRequest(match="a.m[01]", start=until - 86400, until=until),
        {"a.m1": until - 600},
        NOW,
    )
    assert not isinstance(params, str)
    assert [(m.metric, m.until) for m in params.metrics] == [("a.m0", until), ("a.m1", until - 600)]
    everything = resolve(
        cfg, BackfillRequest(all_=True, start=int(NOW) - 86400, until=int(NOW) + 999), {}, NOW
    )
    assert not isinstance(everything, str)
    assert everything.until == int(NOW) // 60 * 60 - 1  # never the open minute
    assert resolve(cfg, BackfillRequest(metrics=("nope",), start=0, until=1), {}, NOW) == (
        "not in VISTA_FETCH_METRICS (nor a name a template has made): nope"
    )
    assert resolve(cfg, BackfillRequest(all_=True, start=10, until=5), {}, NOW) == (
        "--from (1970-01-01 00:00:10 UTC) is after --until (1970-01-01 00:00:05 UTC)"
    )


def test_history_path_follows_the_sink_and_flux_check_last_timestamp(tmp_path: Path) -> None:
    assert history_path(settings(tmp_path)).kind == "flux-fill"
    beside = settings(
        tmp_path,
        FLUX_CHECK_LAST_TIMESTAMP=False,
        FLUX_CARBON_HOST="c",
        FLUX_CARBON_PICKLE_PORT=2104,
    )
    path = history_path(beside)
    assert path.kind == "carbon-beside-flux" and "c:2104" in path.description
    carbon = settings(tmp_path, VISTA_SINK="graphite", CARBON_HOST="graphite.example")
    assert history_path(carbon).kind == "carbon"
    lonely = settings(tmp_path, FLUX_CHECK_LAST_TIMESTAMP=False)
    assert any("FLUX_CARBON_HOST" in w for w in lonely.warnings)


def test_check_config_says_which_path_history_takes(tmp_path: Path) -> None:
    from skyline.vista.report import config_summary

    beside = settings(
        tmp_path,
        FLUX_CHECK_LAST_TIMESTAMP=False,
        FLUX_CARBON_HOST="c",
        FLUX_CARBON_PICKLE_PORT=2104,
    )
    line = "  history (vista backfill): to the carbon beside Flux at c:2104 (FLUX_CHECK_LAST_"
    assert line in config_summary(beside)
    assert "history (vista backfill): POST to Flux at http://127.0.0.1:8000 with fill" in (
        config_summary(settings(tmp_path))
    )


def test_the_fast_path_agrees_with_clean_and_steps_aside_for_anything_unusual() -> None:
    import json

    from skyline.vista.backfill_fetch import fast_points, matrix_values
    from skyline.vista.sinks import SinkPoint
    from skyline.vista.sources.http import Answer
    from skyline.vista.validate import clean

    def answer(values: object, **changes: object) -> Answer:
        body: dict[str, object] = {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"values": values}]},
        }
        body.update(changes)
        return Answer(200, json.dumps(body).encode(), "application/json")

    values = [[1_000_020 + 60 * i, f"{i * 0.25!r}"] for i in range(50)]
    got = fast_points("m", matrix_values(answer(values)), 1_000_020, 1_000_020 + 60 * 49)
    assert got == [SinkPoint("m", ts, v) for ts, v in clean([(t, v) for t, v in values]).points]
    assert matrix_values(answer(values, status="error")) is None
    assert matrix_values(Answer(200, b"<html>", "text/html")) is None
    two = {"resultType": "matrix", "result": [{"values": values}, {"values": values}]}
    assert matrix_values(answer(values, data=two)) is None  # several series: the full parser
    for odd in (
        [[1, "1"], [1, "2"]],  # duplicate timestamp
        [[2, "1"], [1, "2"]],  # out of order
        [[1, "NaN"]],
        [[1, "+Inf"]],
        [[1, None]],
        [[1, "x"]],
        [[1, "1", 3]],
        [[1.5, "1"]],  # a timestamp off the second
    ):
        assert fast_points("m", matrix_values(answer(odd)), 0, 10) is None, odd
    assert fast_points("m", [(5, 1.0)], 6, 10) is None  # before the window
    assert fast_points("m", [(11, 1.0)], 0, 10) is None  # after it
    assert fast_points("m", matrix_values(answer([])), 0, 10) == []


def test_the_graphite_batch_is_fixed_in_the_job_and_fits_the_body_cap(tmp_path: Path) -> None:
    request = BackfillRequest(all_=True, start=int(NOW) - 86400, until=int(NOW))
    small = resolve(settings(tmp_path, VISTA_GRAPHITE_BATCH_SIZE=5), request, {}, NOW)
    big = resolve(settings(tmp_path, VISTA_GRAPHITE_BATCH_SIZE=500), request, {}, NOW)
    assert not isinstance(small, str) and not isinstance(big, str)
    assert small.graphite_batch == 5
    assert big.graphite_batch == 16 * 1024 * 1024 // (GRAPHITE_POINTS * 40)  # 41 a request
    assert BackfillParams.from_json(big.as_json()) == big


def test_a_range_beyond_vista_backfill_max_range_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    until = int(NOW) // 60 * 60 - 1
    huge = BackfillRequest(all_=True, start=until - 100_000 * 86400, until=until)
    refused = resolve(settings(tmp_path), huge, {}, NOW)
    assert isinstance(refused, str)
    assert refused.endswith(
        "UTC spans 100,000.0 days, more than VISTA_BACKFILL_MAX_RANGE (730.0 days = 63072000 s): "
        "ask for a shorter range, or raise VISTA_BACKFILL_MAX_RANGE in the settings "
        "(seconds; 0: no bound)"
    )
    at_bound = BackfillRequest(all_=True, start=until - 730 * 86400, until=until)
    assert not isinstance(resolve(settings(tmp_path), at_bound, {}, NOW), str)
    unbounded = settings(tmp_path, VISTA_BACKFILL_MAX_RANGE=0)
    assert not isinstance(resolve(unbounded, huge, {}, NOW), str)
    raised = settings(tmp_path, VISTA_BACKFILL_MAX_RANGE=200_000 * 86400)
    assert not isinstance(resolve(raised, huge, {}, NOW), str)


def templated_settings(tmp_path: Path) -> VistaConfig:
    entries = (
        {
            "remote_host": "http://p:9090",
            "remote_host_type": "prometheus",
            "remote_target": "node_load1",
            "graphite_target": "{instance}.load1",
            "namespace_prefix": "nodes",
        },
        {
            "remote_host": "http://g",
            "remote_host_type": "graphite",
            "remote_target": "servers.*.cpu",
            "graphite_target": "{node[1]}.cpu",
            "namespace_prefix": "gw",
        },
    )
    values = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": entries,
        "REDIS_URL": "redis://127.0.0.1:1",
        "FLUX_SELF_API_KEY": "f" * 32,
        "LOG_PATH": str(tmp_path),
        "PID_PATH": str(tmp_path),
    }
    return config.validate(values, str(tmp_path / "settings.py"))


def test_templated_entries_are_chosen_by_template_or_by_the_names_they_made(
    tmp_path: Path,
) -> None:
    cfg = templated_settings(tmp_path)
    made = {"nodes.{instance}.load1": ["nodes.a.load1", "nodes.b.load1"], "gw.{node[1]}.cpu": []}
    until = int(NOW) - 3600
    marks = {"nodes.a.load1": until - 600, "nodes.b.load1": until - 1200}

    def asked(**kw: object) -> BackfillParams:
        request = BackfillRequest(start=until - 86400, until=until, **kw)  # type: ignore[arg-type]
        params = resolve(cfg, request, marks, NOW, made)
        assert not isinstance(params, str), params
        return params

    # The template (exactly, or by a glob matching it) and --all: every series of the answer.
    for params in (asked(metrics=("nodes.{instance}.load1",)), asked(match="nodes.*")):
        (m,) = params.metrics
        assert m.template is not None and m.template.patterns == ()
        assert m.template.caps == marks and m.template.default_cap == until - 1200
        assert m.until == until - 600  # the newest any name wants
    assert [m.metric for m in asked(all_=True).metrics] == [e.metric for e in cfg.fetch_metrics]
    # A name the template made, or a glob matching only made names: those series only.
    (m,) = asked(metrics=("nodes.b.load1",)).metrics
    assert m.template is not None and m.template.patterns == ("nodes.b.load1",)
    assert m.template.known() == ["nodes.b.load1"] and m.until == until - 1200
    (m,) = asked(match="nodes.?.load1").metrics
    assert m.template is not None and m.template.wants("nodes.c.load1")  # new in history too
    assert not m.template.wants("nodes.cc.load1")
    # A Graphite template with no name made yet: everything up to --until.
    (g,) = asked(match="gw.*").metrics
    assert g.template is not None and g.until == until and g.template.default_cap == until
    assert resolve(
        cfg, BackfillRequest(metrics=("nodes.z.load1",), start=0, until=1), {}, NOW, made
    ) == ("not in VISTA_FETCH_METRICS (nor a name a template has made): nodes.z.load1")
    # The scope survives the job record, and a templated Graphite entry goes alone.
    params = asked(all_=True)
    assert BackfillParams.from_json(params.as_json()) == params
    chunks = plan([*params.metrics, gw("g.plain", until)], until - 8 * 86400, graphite_batch=20)
    assert all(len(c.metrics) == 1 for c in chunks)
    assert {c.metrics[0].metric for c in chunks} == {
        "nodes.{instance}.load1",
        "gw.{node[1]}.cpu",
        "g.plain",
    }


def test_a_template_window_fits_its_series_in_the_body_cap() -> None:
    from skyline.vista.backfill_plan import template_window

    cap = 16 * 1024 * 1024
    assert template_window("prometheus", 3, cap) == PROMETHEUS_POINTS  # 11,000 x 3 fits
    assert template_window("prometheus", 100, cap) == cap // (40 * 100)  # 4,194 steps
    assert template_window("graphite", 0, cap) == GRAPHITE_POINTS  # no name known yet: 1
    assert template_window("graphite", 10**6, 1024) == 1


def test_a_refused_template_window_is_cut_in_step_aligned_halves_down_to_one_step() -> None:
    assert halves(600, 600 + 9 * 60, 60) == ((600, 840), (900, 1140))  # 10 steps: 5 + 5
    assert halves(600, 600 + 10 * 60, 60) == ((600, 900), (960, 1200))  # 11: 6 + 5
    assert halves(600, 660, 60) == ((600, 600), (660, 660))
    assert halves(600, 600, 60) is None  # one step: no smaller window
    # Halving again and again covers every step once, in order, whatever the size.
    for steps in (1, 2, 3, 7, 819, 11_000):
        todo, done = [(0, (steps - 1) * 60)], []
        while todo:
            first, last = todo.pop(0)
            cut = halves(first, last, 60)
            if cut is None:
                done.append(first)
            else:
                todo[:0] = list(cut)
        assert done == list(range(0, steps * 60, 60))
