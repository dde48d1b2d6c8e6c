"""Where history goes with the Flux sink, and that it is really stored, under both values of
Flux's FLUX_CHECK_LAST_TIMESTAMP (the Flux double applies Flux's worker rules)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from skyline.vista import backfill_fetch, constants
from skyline.vista.backfill import BackfillRequest, resolve
from skyline.vista.config import VistaConfig
from skyline.vista.jobs.commands import list_jobs, wait_exit_code
from skyline.vista.jobs.process import run_job
from skyline.vista.jobs.record import Progress, Status, new_job
from skyline.vista.jobs.registry import kind
from skyline.vista.jobs.store import JobStore
from skyline.vista.testing.servers import CarbonServer, PrometheusServer
from tests.conftest import PrometheusFactory
from tests.fakes.flux import FluxServer
from tests.support.rig import Rig

STEP = 60
METRICS = 2
HOURS = 3


def value(n: int, ts: int) -> float:
    return n * 1000 + (ts // STEP) % 1000 + 0.5


@pytest.fixture
def span() -> tuple[int, int]:
    now = int(time.time()) // STEP * STEP
    return now - HOURS * 3600, now - 10 * STEP


@pytest.fixture
def prom(tmp_prometheus: PrometheusFactory, span: tuple[int, int]) -> PrometheusServer:
    start, end = span
    lines = ["# TYPE fh gauge"]
    for n in range(METRICS):
        lines += [f'fh{{n="{n}"}} {value(n, ts)!r} {ts}' for ts in range(start, end + 1, STEP)]
    return tmp_prometheus(history="\n".join(lines))


def names() -> list[str]:
    return [f"fh.m{n}" for n in range(METRICS)]


def expected(span: tuple[int, int]) -> dict[str, list[tuple[int, float]]]:
    start, end = span
    return {
        f"fh.m{n}": [(ts, value(n, ts)) for ts in range(start, end + 1, STEP)]
        for n in range(METRICS)
    }


def settings(
    rig: Rig,
    prom: PrometheusServer,
    targets: dict[int, tuple[str, str]] | None = None,
    **extra: Any,
) -> VistaConfig:
    """``targets``: metric number -> (remote_host, remote_target) in place of the real ones."""
    targets = targets or {}
    entries = [
        {
            "remote_host": targets.get(n, (prom.url, ""))[0],
            "remote_host_type": "prometheus",
            "frequency": STEP,
            "remote_target": targets.get(n, ("", f'fh{{n="{n}"}}'))[1],
            "graphite_target": f"m{n}",
            "uri": "default",
            "namespace_prefix": "fh",
        }
        for n in range(METRICS)
    ]
    return rig.config(entries, **extra)


def already_delivered(client: redis.Redis, last: int) -> None:
    """The metrics are Vista's (vista.metrics) and Flux has sent points up to ``last``."""
    for name in names():
        client.sadd(constants.VISTA_METRICS_KEY, name)
        client.hset(constants.WATERMARK_HASH, name, str({"timestamp": last, "value": 1.0}))


def run_inline(cfg: VistaConfig, client: redis.Redis, span: tuple[int, int]) -> Status | None:
    """Add a backfill of every metric over ``span`` and run it in this process."""
    params = resolve(cfg, BackfillRequest(all_=True, start=span[0], until=span[1]), {}, time.time())
    assert not isinstance(params, str)
    job_kind = kind("backfill")
    store = JobStore(client, job_kind.name, job_kind.keys)
    job = store.submit(new_job("backfill", params.as_json()))
    claimed = store.claim()
    assert claimed is not None and claimed[0].id == job.id
    return run_job(job_kind, job.id, claimed[1], cfg, client)


@pytest.fixture
def flux_default(redis_client: redis.Redis) -> Iterator[FluxServer]:
    with FluxServer(redis=redis_client, check_last_timestamp=True) as flux:
        yield flux


def test_with_flux_defaults_history_is_posted_with_fill_and_stored_below_flux_last(
    rig: Rig, prom: PrometheusServer, span: tuple[int, int], flux_default: FluxServer
) -> None:
    already_delivered(rig.redis, span[1] + 600)  # everything backfilled is below flux.last
    cfg = settings(rig, prom, FLUX_PORT=flux_default.port)
    assert run_inline(cfg, rig.redis, span) is Status.DONE
    flux_default.wait_processed()
    assert flux_default.forwarded_by_metric() == expected(span)  # all stored, none dropped
    assert flux_default.dropped_count == 0
    assert all(p.fill for p in flux_default.accepted)
    # No watermark moved: Flux does not move flux.last for fill points, and Vista wrote none.
    for name in names():
        raw = rig.redis.hget(constants.WATERMARK_HASH, name)
        assert raw is not None and str(span[1] + 600) in str(raw)
    assert not rig.redis.exists(constants.VISTA_WATERMARK_HASH)


def test_with_check_last_timestamp_false_history_goes_to_the_carbon_beside_flux(
    rig: Rig, prom: PrometheusServer, span: tuple[int, int]
) -> None:
    already_delivered(rig.redis, span[1] + 600)
    with (
        FluxServer(redis=rig.redis, check_last_timestamp=False) as flux,
        CarbonServer(rig.tmp_path / "carbon") as carbon,
    ):
        # What Flux itself would do with this history sent with fill: drop every point.
        cfg_flux = settings(rig, prom, FLUX_PORT=flux.port)
        assert run_inline(cfg_flux, rig.redis, span) is Status.DONE
        flux.wait_processed()
        assert flux.forwarded_by_metric() == {} and flux.dropped_count == len(expected(span)) * len(
            expected(span)["fh.m0"]
        )
        # Vista mirrors the setting and sends history to the carbon beside Flux instead.
        cfg = settings(
            rig,
            prom,
            FLUX_PORT=flux.port,
            FLUX_CHECK_LAST_TIMESTAMP=False,
            FLUX_CARBON_HOST="127.0.0.1",
            FLUX_CARBON_PICKLE_PORT=carbon.pickle_port,
            VISTA_CARBON_MAX_CREATES_PER_MINUTE=float("inf"),
        )
        accepted_before = flux.accepted_count
        assert run_inline(cfg, rig.redis, span) is Status.DONE
        assert flux.accepted_count == accepted_before  # nothing more went to Flux
        for name, points in expected(span).items():
            stored = carbon.wait_for_points(
                name, len(points), timeout=20, from_ts=span[0] - 1, until_ts=span[1]
            )
            assert stored == points


def test_a_backfill_whose_chunks_fail_ends_failed_naming_how_many_and_the_last_error(
    rig: Rig,
    prom: PrometheusServer,
    span: tuple[int, int],
    flux_default: FluxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill_fetch, "FETCH_ATTEMPTS", 1)  # no retries with backoff
    already_delivered(rig.redis, span[1] + 600)
    store = JobStore(rig.redis, "backfill", kind("backfill").keys)
    # Every chunk fails: the source does not answer (nothing listens on port 1).
    dead = {n: ("http://127.0.0.1:1", f'fh{{n="{n}"}}') for n in range(METRICS)}
    cfg = settings(rig, prom, dead, FLUX_PORT=flux_default.port)
    assert run_inline(cfg, rig.redis, span) is Status.FAILED
    (record,) = store.all()
    assert record.status is Status.FAILED and wait_exit_code(record) == constants.EXIT_FAILURE
    assert record.error.startswith(
        "BackfillFailed: 2 of 2 chunk(s) failed, 0 point(s) delivered; last error: fh.m1: "
    )
    assert record.progress.done == record.progress.total == 2
    listing = io.StringIO()
    list_jobs(rig.redis, listing)
    assert "failed             2/2 100%" in listing.getvalue()
    assert "(BackfillFailed: 2 of 2 chunk(s) failed" in listing.getvalue()
    assert flux_default.accepted_count == 0
    # Some chunks fail (a query Prometheus refuses): the others are delivered, the job fails.
    bad = {1: (prom.url, 'fh{n="1"')}
    cfg = settings(rig, prom, bad, FLUX_PORT=flux_default.port)
    assert run_inline(cfg, rig.redis, span) is Status.FAILED
    (record,) = [r for r in store.all() if r.id != record.id]
    points = len(expected(span)["fh.m0"])
    assert record.error.startswith(
        f"BackfillFailed: 1 of 2 chunk(s) failed, {points:,} point(s) delivered; "
        "last error: fh.m1: "
    )
    flux_default.wait_processed()
    assert flux_default.forwarded_by_metric() == {"fh.m0": expected(span)["fh.m0"]}


def test_a_resumed_backfill_remembers_the_chunks_that_failed_before(
    rig: Rig, prom: PrometheusServer, span: tuple[int, int], flux_default: FluxServer
) -> None:
    already_delivered(rig.redis, span[1] + 600)
    cfg = settings(rig, prom, FLUX_PORT=flux_default.port)
    params = resolve(cfg, BackfillRequest(all_=True, start=span[0], until=span[1]), {}, time.time())
    assert not isinstance(params, str)
    store = JobStore(rig.redis, "backfill", kind("backfill").keys)
    # A run stopped (SIGTERM) after chunk 0 (fh.m0) failed: it resumes at chunk 1.
    earlier = {"next": 1, "failed": 1, "last_error": "fh.m0: cannot connect (earlier run)"}
    job = store.submit(
        new_job("backfill", params.as_json()).with_(
            checkpoint=earlier, progress=Progress(done=1, total=2, errors=1)
        )
    )
    claimed = store.claim()
    assert claimed is not None and claimed[0].id == job.id
    assert run_job(kind("backfill"), job.id, claimed[1], cfg, rig.redis) is Status.FAILED
    record = store.get(job.id)
    assert record is not None
    points = len(expected(span)["fh.m1"])
    assert record.error == (
        f"BackfillFailed: 1 of 2 chunk(s) failed, {points:,} point(s) delivered; "
        "last error: fh.m0: cannot connect (earlier run)"
    )
    flux_default.wait_processed()
    assert flux_default.forwarded_by_metric() == {"fh.m1": expected(span)["fh.m1"]}
