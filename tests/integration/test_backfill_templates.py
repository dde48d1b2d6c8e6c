"""History backfill of entries with a name template (one query, many metrics: expand.py)
against a real Prometheus (history loaded with promtool) and a real graphite-web reading whisper
files, into the Flux double and a real carbon-cache: the exact names, timestamps and values
stored, each name stopping at its own watermark, a series new in history included, no gap, no
duplicate, a job stopped after its first chunk resumed without sending anything twice, a window
whose answer is refused as too large fetched in halves until every point is delivered, and two
series on one name an error, not a merge."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from skyline.vista import constants, expand
from skyline.vista.backfill import Backfill, BackfillParams, BackfillRequest, chunks_of, resolve
from skyline.vista.backfill_command import backfill_command
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.context import JobContext
from skyline.vista.jobs.process import run_job
from skyline.vista.jobs.record import Status, new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore
from skyline.vista.sinks import SinkPoint
from skyline.vista.testing.servers import (
    CarbonServer,
    poll_until,
)
from tests.conftest import PrometheusFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.integration.test_backfill import Span
from tests.support import whisper
from tests.support.rig import Rig

STEP = 60
DAYS = 8  # two Prometheus windows (11,000 points each) and two Graphite weeks
INSTANCES = ("a", "b", "c")


def value(instance: str, ts: int) -> float:
    """Exact in binary and in text."""
    return {"a": 1000.25, "b": 2000.5, "c": 3000.75}[instance] + (ts // STEP) % 10_000


@pytest.fixture
def span() -> Span:
    now = int(time.time()) // STEP * STEP
    return Span(now - DAYS * 86400, now - 10 * STEP)


def prom_entry(url: str, query: str, name: str) -> dict[str, object]:
    """A templated Prometheus entry: ``name`` is ``prefix.template``."""
    prefix, template = name.split(".", 1)
    return {
        "remote_host": url,
        "remote_host_type": "prometheus",
        "remote_target": query,
        "graphite_target": template,
        "namespace_prefix": prefix,
    }


def capped_config(rig: Rig, flux: FluxServer, entry: dict[str, object]) -> VistaConfig:
    """Settings delivering to ``flux`` with answers capped at 32 KiB."""
    return rig.config(
        [entry],
        FLUX_PORT=flux.port,
        FLUX_SELF_API_KEY=DEFAULT_KEY,
        VISTA_MAX_RESPONSE_BYTES=32 * 1024,
    )


def accepted(flux: FluxServer) -> dict[str, list[tuple[int, float]]]:
    """What Flux took, by name, in the order it came."""
    flux.wait_processed()
    got: dict[str, list[tuple[int, float]]] = {}
    for p in flux.accepted:
        got.setdefault(p.metric, []).append((p.timestamp, p.value))
    return got


def watermark(client: redis.Redis, name: str, ts: int, key: str) -> None:
    client.hset(key, name, str({"timestamp": ts, "value": 1.0}))


def submit(cfg: VistaConfig, request: BackfillRequest) -> tuple[str, str]:
    """`vista backfill` without --wait: (its output, the job id)."""
    out = io.StringIO()
    assert backfill_command(cfg, request, dry_run=False, wait=False, out=out) == 0
    text = out.getvalue()
    job_id = text.split("job ", 1)[1].split()[0]
    return text, job_id


def run_claimed(cfg: VistaConfig, client: redis.Redis, stop_after: int | None = None) -> Status:
    """Claim the pending backfill job and run it here; ``stop_after``: stop it (as SIGTERM
    does) once that many chunks are checkpointed."""
    job_kind = kind("backfill")
    store = JobStore(client, job_kind.name, job_kind.keys)
    claimed = store.claim()
    assert claimed is not None

    def on_context(ctx: JobContext) -> None:
        if stop_after is None:
            return
        checkpoint = ctx.checkpoint

        def then_stop(data: dict[str, Any], **progress: Any) -> None:
            checkpoint(data, **progress)
            if int(data["next"]) >= stop_after:
                ctx.request_stop("signal")

        ctx.checkpoint = then_stop  # type: ignore[method-assign]

    status = run_job(job_kind, claimed[0].id, claimed[1], cfg, client, on_context)
    assert status is not None
    return status


@pytest.mark.slow
def test_prometheus_template_backfilled_by_name_through_a_stop_and_resume(
    rig: Rig, tmp_prometheus: PrometheusFactory, span: Span
) -> None:
    """Three series; a and b made by the live fetcher (watermarks: a an hour ago, b half an
    hour ago), c only in history. `--match` on the template: every series, each up to its own
    watermark (c, new, up to the oldest). Stopped after chunk 1 and resumed: Flux took each
    point exactly once, with fill."""
    lines = ["# TYPE vista_bt gauge"]
    for i in INSTANCES:
        lines += [
            f'vista_bt{{instance="{i}:9100",job="node"}} {value(i, ts)!r} {ts}'
            for ts in span.stamps
        ]
    prom = tmp_prometheus(history="\n".join(lines))
    entry = prom_entry(prom.url, "vista_bt", "bt.{instance}.{job}")
    names = {i: f"bt.{i}_9100.node" for i in INSTANCES}
    caps = {"a": span.end - 3600, "b": span.end - 1800, "c": span.end - 3600}
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = rig.config([entry], FLUX_PORT=flux.port, FLUX_SELF_API_KEY=DEFAULT_KEY)
        template = cfg.fetch_metrics[0].metric
        rig.redis.hset(expand.key(template), mapping={names["a"]: 1.0, names["b"]: 1.0})
        watermark(rig.redis, names["a"], caps["a"], constants.VISTA_WATERMARK_HASH)
        watermark(rig.redis, names["b"], caps["b"], constants.VISTA_WATERMARK_HASH)
        request = BackfillRequest(match="bt.{instance}*", start=span.start, until=span.end)
        dry = io.StringIO()
        assert backfill_command(cfg, request, dry_run=True, wait=False, out=dry) == 0
        said = dry.getvalue().splitlines()
        assert said[0].startswith("1 metric(s) (prometheus), from "), said
        assert "2 chunk(s)" in said[0]  # 11,000 + 481 steps (up to b's watermark)
        assert said[2] == (
            "bt.{instance}.{job}: 2 Prometheus query_range request(s) of 'vista_bt' at step 60s, "
            f"every series of the answer, each by the template; names known so far: {names['a']}, "
            f"{names['b']} (each stops at its watermark)"
        ), said
        assert said[-1] == "dry run: no job added"
        _, job_id = submit(cfg, request)
        assert run_claimed(cfg, rig.redis, stop_after=1) is Status.PENDING
        store = JobStore(rig.redis, "backfill", kind("backfill").keys)
        record = store.get(job_id)
        assert record is not None and record.progress.done == 1 and record.checkpoint["next"] == 1
        assert run_claimed(cfg, rig.redis) is Status.DONE
        flux.wait_processed()
        got: dict[str, list[tuple[int, float]]] = {}
        for p in flux.accepted:
            assert p.fill
            got.setdefault(p.metric, []).append((p.timestamp, p.value))
    want = {
        names[i]: [(ts, value(i, ts)) for ts in span.stamps if ts <= caps[i]] for i in INSTANCES
    }
    assert sorted(got) == sorted(want)
    for name, points in want.items():
        assert got[name] == points, (name, len(got[name]), len(points))  # no gap, no duplicate
    record = store.get(job_id)
    assert record is not None and record.status is Status.DONE
    assert record.progress.points == sum(len(p) for p in want.values())
    assert record.progress.errors == 0 and record.progress.done == record.progress.total == 2
    assert not rig.redis.hexists(constants.VISTA_WATERMARK_HASH, names["c"])  # none written


@pytest.mark.slow
def test_prometheus_template_by_a_made_name_and_a_collision_is_an_error(
    rig: Rig, tmp_prometheus: PrometheusFactory, span: Span
) -> None:
    """A METRIC that a template made backfills that series alone; two series on one name are
    delivered under neither name, counted as errors, and the job ends failed naming both."""
    start = span.end - 3 * 3600
    stamps = range(start, span.end + 1, STEP)
    lines = ["# TYPE vista_bc gauge"]
    for n, instance in enumerate(("x:1", "x.1", "y:1", "z:1")):
        lines += [f'vista_bc{{instance="{instance}"}} {n}.5 {ts}' for ts in stamps]
    prom = tmp_prometheus(history="\n".join(lines))
    entry = prom_entry(prom.url, "vista_bc", "bc.{instance}")
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = rig.config([entry], FLUX_PORT=flux.port, FLUX_SELF_API_KEY=DEFAULT_KEY)
        rig.redis.hset(expand.key("bc.{instance}"), mapping={"bc.y_1": 1.0, "bc.z_1": 1.0})
        _, job_id = submit(cfg, BackfillRequest(metrics=("bc.y_1",), start=start, until=span.end))
        assert run_claimed(cfg, rig.redis) is Status.DONE
        _, every = submit(cfg, BackfillRequest(all_=True, start=start, until=span.end))
        assert run_claimed(cfg, rig.redis) is Status.FAILED
        flux.wait_processed()
        got: dict[str, list[tuple[int, float]]] = {}
        for p in flux.accepted:
            got.setdefault(p.metric, []).append((p.timestamp, p.value))
    one = [(ts, 2.5) for ts in stamps]
    assert got == {"bc.y_1": one + one, "bc.z_1": [(ts, 3.5) for ts in stamps]}
    store = JobStore(rig.redis, "backfill", kind("backfill").keys)
    record = store.get(every)
    assert record is not None and record.status is Status.FAILED
    assert "2 series map to the name 'bc.x_1'" in record.error, record.error
    assert record.progress.points == 2 * len(stamps) and record.progress.errors == 1


def test_a_template_window_is_cut_so_that_its_answer_fits_the_body_cap(
    rig: Rig, tmp_prometheus: PrometheusFactory, span: Span
) -> None:
    """An answer holds every series of the query: with three names known and
    VISTA_MAX_RESPONSE_BYTES at 32 KiB, a window is 273 steps (not 11,000), so no answer is
    refused as too large (before: one request of 3 x 2,880 points, ~260 KB: too_large, the job
    failed with nothing delivered)."""
    start = span.end - 2 * 86400 + STEP
    stamps = range(start, span.end + 1, STEP)
    lines = ["# TYPE vista_bw gauge"]
    for i in INSTANCES:
        lines += [f'vista_bw{{instance="{i}"}} {value(i, ts)!r} {ts}' for ts in stamps]
    prom = tmp_prometheus(history="\n".join(lines))
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = capped_config(rig, flux, prom_entry(prom.url, "vista_bw", "bw.{instance}"))
        rig.redis.hset(expand.key("bw.{instance}"), mapping={f"bw.{i}": 1.0 for i in INSTANCES})
        out, job_id = submit(cfg, BackfillRequest(all_=True, start=start, until=span.end))
        assert "11 chunk(s)" in out, out  # 2,880 steps in windows of 273
        assert run_claimed(cfg, rig.redis) is Status.DONE
        got = accepted(flux)
    assert got == {f"bw.{i}": [(ts, value(i, ts)) for ts in stamps] for i in INSTANCES}


BsWant = dict[str, list[tuple[int, float]]]
"""Each name's (timestamp, value) pairs a backfill must deliver."""


def eight_series(span: Span) -> tuple[int, range, str, BsWant]:
    """A day of eight series of one query, ``vista_bs``: its first timestamp, its timestamps,
    the Prometheus history and what a backfill named ``bs.{instance}`` must deliver."""
    start = span.end - 86400 + STEP
    stamps = range(start, span.end + 1, STEP)
    lines = ["# TYPE vista_bs gauge"]
    want: dict[str, list[tuple[int, float]]] = {}
    for n in range(8):
        lines += [
            f'vista_bs{{instance="s{n}"}} {n * 100 + (ts // STEP) % 997}.25 {ts}' for ts in stamps
        ]
        want[f"bs.s{n}"] = [(ts, n * 100 + (ts // STEP) % 997 + 0.25) for ts in stamps]
    return start, stamps, "\n".join(lines), want


@pytest.fixture
def bs_prometheus(tmp_prometheus: PrometheusFactory, span: Span) -> tuple[str, int, range, BsWant]:
    """A Prometheus holding :func:`eight_series`: its URL, the first timestamp, the
    timestamps and what must be delivered."""
    start, stamps, history, want = eight_series(span)
    return tmp_prometheus(history=history).url, start, stamps, want


@pytest.mark.slow
def test_a_refused_template_window_is_split_until_every_series_is_delivered(
    rig: Rig,
    tmp_prometheus: PrometheusFactory,
    span: Span,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entry has made no name yet, so its windows are sized for one series (819 steps at
    32 KiB), but the query returns eight: every window's answer (~150 KB) is refused as too
    large. Each refused window is fetched in halves (again and again) until the answers fit:
    every point of every series reaches Flux once with its exact value, through a stop after
    the first chunk and a resume. Before: each chunk failed `too_large` after its tries, the
    job ended failed with nothing delivered. Each part is delivered as soon as it answers: the
    points held for delivery at once are one part's (8 series x 103 steps), never the
    chunk's (8 x 819). Before: the parts were merged and the chunk delivered whole (6,552)."""
    held: list[int] = []
    deliver = Backfill.deliver

    def counted(self: Backfill, entries: list[SinkPoint]) -> int:
        held.append(len(entries))
        return deliver(self, entries)

    monkeypatch.setattr(Backfill, "deliver", counted)
    start, stamps, history, want = eight_series(span)
    prom = tmp_prometheus(history=history)
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = capped_config(rig, flux, prom_entry(prom.url, "vista_bs", "bs.{instance}"))
        out, job_id = submit(cfg, BackfillRequest(all_=True, start=start, until=span.end))
        assert "2 chunk(s)" in out, out  # 1,440 steps in windows of 819 (one series assumed)
        with caplog.at_level(logging.INFO, logger="skyline.vista.backfill"):
            assert run_claimed(cfg, rig.redis, stop_after=1) is Status.PENDING
            assert run_claimed(cfg, rig.redis) is Status.DONE
        got = accepted(flux)
    assert sorted(got) == sorted(want)
    for name, points in want.items():
        assert got[name] == points, (name, len(got[name]), len(points))  # no gap, no duplicate
    record = JobStore(rig.redis, "backfill", kind("backfill").keys).get(job_id)
    assert record is not None and record.status is Status.DONE
    assert record.progress.errors == 0 and record.progress.done == record.progress.total == 2
    assert record.progress.points == 8 * len(stamps)
    assert sum(held) == 8 * len(stamps), held  # every point handed to the sink once
    assert max(held) <= 8 * 103, held  # one part (103 steps) at a time, not the chunk
    splits = [r for r in caplog.records if "too large" in r.getMessage()]
    assert splits, [r.getMessage() for r in caplog.records]
    for r in splits:  # one INFO line per split, naming the entry and the new window
        assert r.levelno == logging.INFO and "bs.{instance}" in r.getMessage(), r.getMessage()
        assert prom.url not in r.getMessage()


@pytest.mark.slow
def test_a_split_window_stopped_between_parts_resumes_with_the_learned_window(
    rig: Rig,
    bs_prometheus: tuple[str, int, range, BsWant],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job is stopped after the third part of its first (split) chunk is delivered: it
    stops there, the chunk not checkpointed, the window its answers needed (103 steps, or less
    when the second chunk, fetched ahead, was split further) saved.
    Resumed, it asks in that window at once (no answer refused again) and sends the three
    parts again (the chunk in flight at the stop: the bound of skyline/vista/backfill.py;
    whisper keeps one value per timestamp) and nothing else twice: every point reaches Flux,
    with its exact value, no gap, only those parts twice."""
    url, start, stamps, want = bs_prometheus
    held: list[int] = []
    deliver = Backfill.deliver

    def stopping(self: Backfill, entries: list[SinkPoint]) -> int:
        held.append(len(entries))
        if len(held) == 3:
            self.ctx.request_stop("signal")
        return deliver(self, entries)

    monkeypatch.setattr(Backfill, "deliver", stopping)
    store = JobStore(rig.redis, "backfill", kind("backfill").keys)
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = capped_config(rig, flux, prom_entry(url, "vista_bs", "bs.{instance}"))
        _, job_id = submit(cfg, BackfillRequest(all_=True, start=start, until=stamps[-1]))
        assert run_claimed(cfg, rig.redis) is Status.PENDING
        record = store.get(job_id)
        assert record is not None and record.progress.done == 0 and len(held) == 3, held
        windows = record.checkpoint.get("windows")  # 103, or less if chunk 2 split ahead
        assert windows and 0 < windows["bs.{instance}"] <= 103, record.checkpoint
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="skyline.vista.backfill"):
            assert run_claimed(cfg, rig.redis) is Status.DONE
        got = accepted(flux)
    splits = [r.getMessage() for r in caplog.records if "too large" in r.getMessage()]
    assert not splits, splits  # the resumed job started with the learned window
    assert sorted(got) == sorted(want)
    twice = 0
    for name, points in want.items():
        once = sorted(set(got[name]))
        assert once == points, (name, len(once), len(points))  # every point, its exact value
        twice += len(got[name]) - len(once)
    assert twice == sum(held[:3]), (twice, held)  # only the stopped chunk's parts sent twice
    assert sum(held) == sum(held[:3]) + 8 * len(stamps), held
    assert max(held) <= 8 * 103, held
    record = store.get(job_id)
    assert record is not None and record.status is Status.DONE
    assert record.progress.errors == 0 and record.progress.points == 8 * len(stamps)


@pytest.fixture
def graphite_source(tmp_path_factory: pytest.TempPathFactory, span: Span) -> Iterator[str]:
    spec = {f"srv/{i}/cpu.wsp": [(ts, value(i, ts)) for ts in span.stamps] for i in INSTANCES}
    with whisper.graphite_source(
        tmp_path_factory.mktemp("carbon-tsrc"), tmp_path_factory.mktemp("graphite-tsrc"), spec
    ) as web:
        yield web.url


@pytest.mark.slow
def test_graphite_wildcard_template_backfilled_into_carbon(
    rig: Rig, graphite_source: str, span: Span, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`srv.*.cpu` named `{node[1]}.cpu`: a week per render request, the three series stored
    in a real carbon-cache exactly as the source has them; b stops at its watermark."""
    sink = CarbonServer(tmp_path_factory.mktemp("carbon-tsink"), retentions=whisper.RETENTION)
    sink.start()
    try:
        entry = {
            "remote_host": graphite_source,
            "remote_host_type": "graphite",
            "remote_target": "srv.*.cpu",
            "graphite_target": "{node[1]}.cpu",
            "namespace_prefix": "gt",
            "uri": "/render/?from=-10minutes&format=json&target=",
        }
        cfg = rig.config(
            [entry],
            VISTA_SINK="graphite",
            CARBON_HOST="127.0.0.1",
            CARBON_PICKLE_PORT=sink.pickle_port,
            CARBON_PORT=sink.line_port,
            VISTA_CARBON_MAX_CREATES_PER_MINUTE=1e12,
        )
        names = {i: f"gt.{i}.cpu" for i in INSTANCES}
        rig.redis.hset(expand.key("gt.{node[1]}.cpu"), names["b"], 1.0)
        watermark(rig.redis, names["b"], span.end - 7200, constants.WATERMARK_HASH)
        caps = {"a": span.end - 7200, "b": span.end - 7200, "c": span.end - 7200}
        out, job_id = submit(cfg, BackfillRequest(all_=True, start=span.start, until=span.end))
        assert "2 Graphite render request(s) of 'srv.*.cpu'" in out, out
        assert run_claimed(cfg, rig.redis) is Status.DONE
        want = {
            names[i]: [[ts, value(i, ts)] for ts in span.stamps if ts <= caps[i]] for i in INSTANCES
        }
        got = poll_until(
            lambda: (lambda found: found if found == want else None)(
                whisper.stored(sink, sorted(want), span.start, span.end)
            ),
            60,
            what="the backfilled points in carbon",
        )
        assert got == want
        store = JobStore(rig.redis, "backfill", kind("backfill").keys)
        record = store.get(job_id)
        assert record is not None
        assert record.progress.points == sum(len(p) for p in want.values())
    finally:
        sink.stop()


@pytest.mark.slow
def test_a_refused_graphite_template_window_is_split_and_later_chunks_start_smaller(
    rig: Rig, graphite_source: str, span: Span, caplog: pytest.LogCaptureFixture
) -> None:
    """`srv.*.cpu` from graphite-web, no name made yet, 32 KiB cap: windows of 819 steps whose
    answers (3 series, ~55 KB) are refused. The first chunk is fetched in halves; one chunk at
    a time, the second starts at the smaller window and is never refused. Every point reaches
    Flux once, exactly (render windows after a split neither overlap nor leave a gap)."""
    start = span.end - 86400 + STEP
    stamps = [ts for ts in span.stamps if ts >= start]
    entry = {
        "remote_host": graphite_source,
        "remote_host_type": "graphite",
        "remote_target": "srv.*.cpu",
        "graphite_target": "{node[1]}.cpu",
        "namespace_prefix": "gs",
        "uri": "/render/?from=-10minutes&format=json&target=",
    }
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = rig.config(
            [entry],
            FLUX_PORT=flux.port,
            FLUX_SELF_API_KEY=DEFAULT_KEY,
            VISTA_MAX_RESPONSE_BYTES=32 * 1024,
            VISTA_BACKFILL_CONCURRENCY=1,
        )
        out, job_id = submit(cfg, BackfillRequest(all_=True, start=start, until=span.end))
        assert "2 Graphite render request(s) of 'srv.*.cpu'" in out, out  # 1,440 steps / 819
        with caplog.at_level(logging.INFO, logger="skyline.vista.backfill"):
            assert run_claimed(cfg, rig.redis) is Status.DONE
        got = accepted(flux)
    assert got == {f"gs.{i}.cpu": [(ts, value(i, ts)) for ts in stamps] for i in INSTANCES}
    splits = [r.getMessage() for r in caplog.records if "too large" in r.getMessage()]
    assert splits
    first_chunk_end = stamps[0] + 818 * STEP
    for said in splits:  # all in the first chunk: the second started at the smaller window
        window = said.split("the answer for ", 1)[1].split()[0]
        assert int(window.split("..")[1]) <= first_chunk_end, (said, first_chunk_end)


@pytest.mark.slow
def test_a_graphite_batch_whose_first_entry_became_templated_delivers_both(
    rig: Rig, graphite_source: str, span: Span
) -> None:
    """A job planned when `srv.*.cpu` was a plain entry (no template scope: a job added before
    the entry was templated) batches it with a plain metric of the same host, templated one
    first. Its chunk fetches the templated entry alone (named by the template, up to the
    job's --until) and the plain metric as usual: every point of both reaches Flux once with
    its exact value. Before: `(m,) = asked.metrics` raised ValueError out of the job."""
    uri = "/render/?from=-10minutes&format=json&target="
    templated = {
        "remote_host": graphite_source,
        "remote_host_type": "graphite",
        "remote_target": "srv.*.cpu",
        "graphite_target": "{node[1]}.cpu",
        "namespace_prefix": "gt",
        "uri": uri,
    }
    plain = templated | {"remote_target": "srv.a.cpu", "graphite_target": "plain.a.cpu"}
    start = span.end - 86400 + STEP
    with FluxServer(redis=rig.redis, check_last_timestamp=True) as flux:
        cfg = rig.config([templated, plain], FLUX_PORT=flux.port, FLUX_SELF_API_KEY=DEFAULT_KEY)
        params = resolve(
            cfg, BackfillRequest(all_=True, start=start, until=span.end), {}, time.time()
        )
        assert isinstance(params, BackfillParams), params
        metrics = (replace(params.metrics[0], template=None), *params.metrics[1:])
        params = replace(params, metrics=metrics)
        (chunk,) = chunks_of(cfg, params)
        assert [m.metric for m in chunk.metrics] == ["gt.{node[1]}.cpu", "gt.plain.a.cpu"]
        job_kind = kind("backfill")
        store = JobStore(rig.redis, job_kind.name, job_kind.keys)
        job = store.submit(new_job(job_kind.name, params.as_json(), time.time()))
        assert run_claimed(cfg, rig.redis) is Status.DONE
        got = accepted(flux)
    stamps = range(start, span.end + 1, STEP)
    want = {f"gt.{i}.cpu": [(ts, value(i, ts)) for ts in stamps] for i in INSTANCES}
    want["gt.plain.a.cpu"] = [(ts, value("a", ts)) for ts in stamps]
    assert got == want
    record = store.get(job.id)
    assert record is not None and record.progress.errors == 0
    assert record.progress.points == 4 * len(stamps)
