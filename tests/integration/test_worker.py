"""Workers and sinks: exactly-once delivery to Flux and Graphite.

``WorkerLoop`` is driven in-process (threads) where the test is about one behaviour, and real
``Worker`` processes (spawn) where processes matter: several consumers, SIGKILL mid-batch, a
Redis restart. Redis is always a real redis-server; the sinks are the Flux double
(tests/fakes/flux.py) and a real carbon-cache whose whisper files are read back.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista import codec, constants, delivery, redisconn
from skyline.vista.backoff import Backoff
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FLUX_WATERMARKS, FetchQueue, watermark_keys
from skyline.vista.logs import LogSpec
from skyline.vista.model import Point, Watermark
from skyline.vista.pool import ChildExit, ProcessPool
from skyline.vista.secret import Secret
from skyline.vista.sinks.carbon import CarbonSink
from skyline.vista.sinks.flux import FluxSink
from skyline.vista.testing.servers import SYSTEM_PYTHON, CarbonServer, RedisServer, poll_until
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import Worker, WorkerLoop, worker_id
from tests.conftest import RedisFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.items import drained, make_item, run_until_drained
from tests.support.rig import Rig
from tests.support.settings import make_config

WRONG_KEY = "Zyxwvutsrqponmlkjihgfedcba987654"  # 32 alphanumerics, not Flux's key
Triple = tuple[str, int, float]
Series = dict[str, list[Point]]


# ---------------------------------------------------------------------------------- helpers


def flux_config(tmp_path: Path, redis_url: str, flux: FluxServer, **settings: Any) -> VistaConfig:
    return make_config(tmp_path, redis_url, FLUX_PORT=flux.port, **settings)


def carbon_config(
    tmp_path: Path, redis_url: str, carbon: CarbonServer, protocol: str, **settings: Any
) -> VistaConfig:
    return make_config(
        tmp_path,
        redis_url,
        VISTA_SINK="graphite",
        CARBON_HOST="127.0.0.1",
        CARBON_PORT=carbon.line_port,
        CARBON_PICKLE_PORT=carbon.pickle_port,
        VISTA_CARBON_PROTOCOL=protocol,
        **settings,
    )


def recent_start(minutes_ago: int = 50) -> int:
    """A minute boundary ``minutes_ago`` before now: young enough for Flux without fill."""
    return current_minute_start(time.time()) - 60 * minutes_ago


def make_series(prefix: str, metrics: int, count: int, start: int, step: int = 60) -> Series:
    """Distinct, exactly representable values: metric i, point j -> i * 1000 + j + 0.25."""
    return {
        f"{prefix}.m{i:04d}": [(start + step * j, i * 1000.0 + j + 0.25) for j in range(count)]
        for i in range(metrics)
    }


def chains_of(series: Series, per_item: int) -> list[tuple[str, list[str]]]:
    chains = []
    for metric, pts in series.items():
        parts = [pts[k : k + per_item] for k in range(0, len(pts), per_item)]
        chains.append((metric, [make_item(metric, part, seq=n) for n, part in enumerate(parts)]))
    return chains


def push_series(client: redis.Redis, series: Series, per_item: int) -> None:
    queue = FetchQueue(client)
    chains = chains_of(series, per_item)
    for start in range(0, len(chains), 500):
        assert queue.push(chains[start : start + 500]) == len(chains[start : start + 500])


def queue_recent(client: redis.Redis, prefix: str, metrics: int) -> Series:
    """``metrics`` metrics of five points in one item each, young enough for Flux, queued."""
    series = make_series(prefix, metrics, 5, recent_start())
    push_series(client, series, per_item=5)
    return series


def triples(series: Series) -> list[Triple]:
    return sorted((m, ts, v) for m, pts in series.items() for ts, v in pts)


def accepted(flux: FluxServer) -> list[Triple]:
    return sorted((p.metric, p.timestamp, p.value) for p in flux.accepted)


def wait_drained(
    client: redis.Redis, timeout: float, extra: Callable[[], bool] = lambda: True
) -> None:
    try:
        poll_until(
            lambda: True if drained(client) and extra() else None,
            timeout,
            what="the queue to drain",
            interval=0.05,
            max_interval=0.2,
        )
    except TimeoutError as exc:
        held = sorted({text(t) for t in client.hvals(constants.INFLIGHT_KEY)})
        raise TimeoutError(f"{exc}: {FetchQueue(client).counts()}; held: {held[:5]}") from None


def assert_flux_posts_clean(flux: FluxServer) -> None:
    """Every request: a POST to /metric_data_post, <= 450 metrics, the key only in the body."""
    assert flux.requests
    for record in flux.requests:
        assert (record.method, record.path) == ("POST", "/metric_data_post")
        assert 1 <= record.metric_count <= 450
        assert not record.key_in_query and not record.key_in_header
        assert record.content_type == "application/json"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LoopThreads:
    """WorkerLoops each running ``run()`` on its own thread."""

    def __init__(self, loops: Sequence[WorkerLoop]) -> None:
        self.loops = list(loops)
        self.threads = [
            threading.Thread(target=loop.run, name=f"worker-{n}", daemon=True)
            for n, loop in enumerate(self.loops)
        ]

    def __enter__(self) -> LoopThreads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads), "a worker thread did not stop"


def flux_loop(
    cfg: VistaConfig, server: RedisServer, n: int = 0, *, key: str | None = None
) -> WorkerLoop:
    flux_cfg = cfg.flux if key is None else replace(cfg.flux, key=Secret(key))
    return WorkerLoop(cfg, f"test:{os.getpid()}:{n}", server.client(), FluxSink(flux_cfg))


def sink_requests(loop: WorkerLoop) -> int:
    """POSTs the loop's FluxSink has attempted (refused connections included)."""
    assert isinstance(loop.sink, FluxSink)
    return loop.sink.requests


class WorkerPool:
    """Real Worker processes (spawn) in the agent's supervised pool, handled the way the agent
    handles them: a worker that dies has its items put back at once and is respawned."""

    def __init__(self, cfg: VistaConfig, log_spec: LogSpec, size: int) -> None:
        self.cfg = cfg
        self.log_spec = log_spec
        self.size = size
        self.pool = ProcessPool(backoff_base=0.05, backoff_cap=0.2)
        self.client = redisconn.connect(cfg.redis)
        self.queue = FetchQueue(self.client, watermark_keys(cfg.sink))
        self.recovered: dict[int, int] = {}
        """pid of a dead worker -> items the pool's exit handler put back."""

    def start(self) -> None:
        for index in range(self.size):
            self._start(index)

    def _start(self, index: int) -> None:
        def factory() -> Worker:
            return Worker(os.getpid(), self.cfg, index, self.log_spec)

        def on_exit(exit_: ChildExit) -> None:
            self._exited(index, exit_)

        self.pool.start(f"worker-{index}", factory, respawn=True, on_exit=on_exit)

    def _exited(self, index: int, exit_: ChildExit) -> None:
        if exit_.pid is not None:
            self.recovered[exit_.pid] = self.queue.recover(
                only_worker=worker_id(self.cfg.hostname, index, exit_.pid)
            )

    @property
    def procs(self) -> dict[int, BaseProcess]:
        return {int(name.split("-")[1]): proc for name, proc in self.pool.running()}

    def running(self, client: redis.Redis) -> list[int]:
        """Indexes of the workers that have written a heartbeat (they are in their loop)."""
        procs = self.procs
        indexes = list(procs)
        pipe = client.pipeline(transaction=False)
        for index in indexes:
            pipe.exists(
                constants.WORKER_HEARTBEAT_PREFIX
                + worker_id(self.cfg.hostname, index, procs[index].pid)
            )
        return [index for index, found in zip(indexes, pipe.execute(), strict=True) if found]

    def wait_running(self, client: redis.Redis, timeout: float = 20) -> None:
        """Until every worker has written its first heartbeat (its signal handlers are set)."""

        def probe() -> bool | None:
            keys = [
                constants.WORKER_HEARTBEAT_PREFIX + worker_id(self.cfg.hostname, index, proc.pid)
                for index, proc in self.procs.items()
            ]
            return True if client.exists(*keys) == len(keys) == self.size else None

        poll_until(probe, timeout, what="every worker's first heartbeat", interval=0.05)

    def stop(self) -> list[int | None]:
        """SIGTERM every worker (a clean stop); returns their exit codes."""
        codes = [exit_.exitcode for exit_ in self.pool.stop_all(15)]
        self.client.close()
        return codes


@pytest.fixture
def flux() -> Iterator[FluxServer]:
    with FluxServer() as server:
        yield server


def log_text(tmp_path: Path) -> str:
    path = tmp_path / "vista.log"
    return path.read_text() if path.exists() else ""


# ----------------------------------------------------------------- Flux, in-process worker


def test_flux_delivers_every_point_once_in_posts_of_at_most_450(rig: Rig, flux: FluxServer) -> None:
    start = recent_start()
    series = make_series("vista.ok", 60, 30, start)
    # Values whose text form matters: never 1e+11 or 1e-05 on the wire.
    series["vista.ok.m0000"][:4] = [
        (start, 1.00243039089e11),
        (start + 60, 1e-05),
        (start + 120, -2.5),
        (start + 180, 0.0),
    ]
    push_series(rig.redis, series, per_item=10)  # chains of 3 items per metric
    cfg = rig.config(FLUX_PORT=flux.port)
    loop = flux_loop(cfg, rig.redis_server)
    run_until_drained(loop, rig.redis, 30)

    assert accepted(flux) == triples(series)  # every point, exact values, none twice
    assert not any(p.fill for p in flux.accepted)
    by_metric = flux.points_by_metric()
    assert all([ts for ts, _ in by_metric[m]] == [ts for ts, _ in pts] for m, pts in series.items())
    assert_flux_posts_clean(flux)
    assert all(r.status == 204 for r in flux.requests)
    assert max(r.metric_count for r in flux.requests) == 450  # 50 items x 10 points per claim
    assert sum(r.metric_count for r in flux.requests) == 1800
    assert loop.queue.watermarks(sorted(series)) == {
        m: Watermark(*pts[-1]) for m, pts in series.items()
    }
    assert {text(m) for m in rig.redis.smembers(constants.VISTA_METRICS_KEY)} == set(series)
    assert rig.redis.get(constants.RESOLUTION_KEY_PREFIX + "vista.ok.m0007") == b"60"
    stats = rig.redis.hgetall(f"{constants.HOST_STATS_KEY_PREFIX}{socket.gethostname()}")
    assert (stats[b"points_sent"], stats[b"metrics_sent"]) == (b"1800", b"180")
    assert loop.stats.points == 1800 and loop.stats.items == 180
    assert FetchQueue(rig.redis).counts().dead == 0


def test_single_point_items_keep_the_resolution_key_alive_from_the_frequency(
    rig: Rig, flux: FluxServer
) -> None:
    """Steady state is one new point per item: no step to detect, yet Skyline's
    vista.last.resolution.<metric> must not expire (it is written from the item's frequency)."""
    start = recent_start()
    queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
    queue.push([("vista.one", [make_item("vista.one", [(start, 1.5)], frequency=300)])])
    cfg = rig.config(FLUX_PORT=flux.port)
    loop = flux_loop(cfg, rig.redis_server)
    run_until_drained(loop, rig.redis, 30)
    assert accepted(flux) == [("vista.one", start, 1.5)]
    key = constants.RESOLUTION_KEY_PREFIX + "vista.one"
    assert rig.redis.get(key) == b"300"
    assert 0 < rig.redis.ttl(key) <= constants.RESOLUTION_KEY_TTL


def test_points_at_or_below_the_watermark_are_not_sent_again_unless_replayed(
    rig: Rig, flux: FluxServer
) -> None:
    start = recent_start()
    pts = [(start + 60 * j, float(j)) for j in range(6)]
    queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
    # Flux's own watermark (its worker writes it): Vista reads it and never writes it.
    flux_mark = f"{{'timestamp': {start + 120}, 'value': 2.0}}"
    rig.redis.hset(constants.WATERMARK_HASH, "vista.wm", flux_mark)
    queue.push([("vista.wm", [make_item("vista.wm", pts)])])
    loop = flux_loop(rig.config(FLUX_PORT=flux.port), rig.redis_server)
    loop.run_once()
    assert accepted(flux) == [("vista.wm", ts, v) for ts, v in pts[3:]]

    # The same points again (a stale item): nothing is sent, the item is acknowledged.
    queue.push([("vista.wm", [make_item("vista.wm", pts)])])
    requests_before = flux.request_count
    loop.run_once()
    assert flux.request_count == requests_before and drained(rig.redis)
    # A replayed dead letter is delivered although it is below the watermark.
    rig.redis.sadd(constants.QUEUE_KEY, make_item("vista.wm", pts[:2], replay=True))
    loop.run_once()
    assert accepted(flux) == sorted(
        [("vista.wm", ts, v) for ts, v in pts[3:]] + [("vista.wm", ts, v) for ts, v in pts[:2]]
    )
    assert queue.watermarks(["vista.wm"]) == {"vista.wm": Watermark(start + 300, 5.0)}
    # With the Flux sink, Vista's watermark is its own hash; flux.last.* are left to Flux,
    # whose worker would otherwise drop the points it has queued but not yet sent on.
    assert rig.redis.hget(constants.WATERMARK_HASH, "vista.wm") == flux_mark.encode()
    assert rig.redis.get(constants.WATERMARK_KEY_PREFIX + "vista.wm") is None
    assert rig.redis.hget(constants.VISTA_WATERMARK_HASH, "vista.wm") is not None
    loop.shutdown()


def test_points_older_than_flux_max_age_carry_fill(rig: Rig, flux: FluxServer) -> None:
    now_minute = current_minute_start(time.time())
    old = {"vista.fill.old": [(now_minute - 7200 + 60 * j, float(j)) for j in range(10)]}
    young = {"vista.fill.young": [(now_minute - 1800 + 60 * j, float(j)) for j in range(10)]}
    # Around the edge: FLUX_MAX_AGE (3600) minus the 60 s safety margin.
    edge = {"vista.fill.edge": [(now_minute - 3660, 1.0), (now_minute - 3300, 2.0)]}
    series = {**old, **young, **edge}
    push_series(rig.redis, series, per_item=10)
    loop = flux_loop(rig.config(FLUX_PORT=flux.port), rig.redis_server)
    loop.run_once()
    loop.shutdown()

    assert accepted(flux) == triples(series)
    fill = {(p.metric, p.timestamp): p.fill for p in flux.accepted}
    assert all(fill[("vista.fill.old", ts)] for ts, _ in old["vista.fill.old"])
    assert not any(fill[("vista.fill.young", ts)] for ts, _ in young["vista.fill.young"])
    assert fill[("vista.fill.edge", now_minute - 3660)] is True
    assert fill[("vista.fill.edge", now_minute - 3300)] is False
    assert [r.status for r in flux.requests] == [204]


def test_flux_207_rejected_metric_is_dead_lettered_with_flux_reason(
    rig: Rig, flux: FluxServer
) -> None:
    series = make_series("vista.quota", 10, 5, recent_start())
    rejected = "vista.quota.m0003"
    flux.reject_metric(rejected)
    push_series(rig.redis, series, per_item=5)
    loop = flux_loop(rig.config(FLUX_PORT=flux.port), rig.redis_server)
    loop.run_once()
    loop.shutdown()

    delivered = {m: p for m, p in series.items() if m != rejected}
    assert accepted(flux) == triples(delivered)
    assert [r.status for r in flux.requests] == [207]
    queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
    (letter,) = queue.dead_letters()
    assert letter.metric == rejected
    assert letter.reason.startswith("Flux 207: ") and "45 metrics were processed" in letter.reason
    assert codec.decode_item(letter.item).points == tuple(series[rejected])
    assert drained(rig.redis)
    # The watermark moves past the rejected points (they are in the dead letter, for replay)
    # and past every delivered point; only delivered metrics join vista.metrics.
    assert queue.watermarks(sorted(series)) == {m: Watermark(*p[-1]) for m, p in series.items()}
    assert {text(m) for m in rig.redis.smembers(constants.VISTA_METRICS_KEY)} == set(delivered)
    assert loop.stats.rejected == 5 and loop.stats.points == 45


def test_flux_400_rejects_only_the_offending_point(rig: Rig) -> None:
    """Flux's clock is 10 minutes behind ours, so a point of 2 minutes ago is "more than 1
    minute in the future" to it: a 400 quoting that item. It is dead-lettered with Flux's
    message; Flux has taken the points before it and the rest are sent again, each once."""
    series = make_series("vista.skew", 12, 5, recent_start())
    bad_metric = "vista.skew.m0005"
    bad_ts = current_minute_start(time.time()) - 120
    series[bad_metric].append((bad_ts, 99.5))
    push_series(rig.redis, series, per_item=6)
    with FluxServer(now=lambda: time.time() - 600) as flux:
        loop = flux_loop(rig.config(FLUX_PORT=flux.port), rig.redis_server)
        loop.run_once()
        loop.shutdown()

    good = [t for t in triples(series) if t != (bad_metric, bad_ts, 99.5)]
    assert accepted(flux) == good  # exactly once: nothing before the bad point was re-sent
    statuses = [r.status for r in flux.requests]
    assert statuses.count(400) == 1 and set(statuses) <= {204, 400}
    (letter,) = FetchQueue(rig.redis).dead_letters()
    assert letter.metric == bad_metric
    assert letter.reason.startswith(f"Flux 400: invalid timestamp - {bad_ts} - ")
    assert "timestamp is more than 1 minute in the future" in letter.reason
    assert f"'metric': '{bad_metric}'" in letter.reason  # Flux quotes the item
    assert codec.decode_item(letter.item).points == ((bad_ts, 99.5),)
    assert drained(rig.redis)
    assert loop.stats.points == 60 and loop.stats.rejected == 1


def test_a_point_too_far_in_the_future_is_held_back_not_rejected(
    rig: Rig, flux: FluxServer
) -> None:
    """With the current minute submitted, an item written with a point beyond Flux's +60 s
    (a source whose clock is ahead): that point is not sent (Flux would refuse it, and the
    watermark would jump past every point that arrives until then), the others are."""
    start = recent_start()
    minute = current_minute_start(time.time())
    future = minute + 600
    queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
    pts = [(start, 1.0), (start + 60, 2.0), (future, 3.0)]
    queue.push([("vista.ahead", [make_item("vista.ahead", pts)])])
    cfg = rig.config(FLUX_PORT=flux.port, VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE=False)
    loop = flux_loop(cfg, rig.redis_server)
    loop.run_once()
    assert accepted(flux) == [("vista.ahead", start, 1.0), ("vista.ahead", start + 60, 2.0)]
    assert queue.watermarks(["vista.ahead"]) == {"vista.ahead": Watermark(start + 60, 2.0)}
    assert queue.dead_letters() == [] and drained(rig.redis)
    # The next fetch brings a point of a minute ago (and the one ahead again): it is sent.
    queue.push([("vista.ahead", [make_item("vista.ahead", [(minute - 60, 4.0), (future, 3.0)])])])
    loop.run_once()
    loop.shutdown()
    assert accepted(flux)[-1] == ("vista.ahead", minute - 60, 4.0)
    assert len(flux.accepted) == 3 and all(r.status == 204 for r in flux.requests)


def test_flux_401_keeps_every_item_logs_once_and_backs_off(
    rig: Rig, flux: FluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    series = queue_recent(rig.redis, "vista.auth", 20)
    cfg = rig.config(FLUX_PORT=flux.port)
    caplog.set_level(logging.INFO)
    with LoopThreads([flux_loop(cfg, rig.redis_server, key=WRONG_KEY)]):
        poll_until(lambda: flux.request_count or None, 10, what="the first POST")
        time.sleep(2.5)  # observe: the worker must not retry in this window
        assert flux.request_count == 1
        assert [r.status for r in flux.requests] == [401]
        counts = FetchQueue(rig.redis).counts()
        assert (counts.queued, counts.inflight, counts.dead) == (20, 0, 0)
    assert flux.accepted == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "Flux refused FLUX_SELF_API_KEY (HTTP 401: invalid key)" in message
    assert "20 item(s) kept in the queue" in message
    assert WRONG_KEY not in caplog.text and DEFAULT_KEY not in caplog.text

    # With the right key, everything that waited is delivered once.
    loop = flux_loop(cfg, rig.redis_server, 1)
    loop.run_once()
    loop.shutdown()
    assert accepted(flux) == triples(series)


@pytest.mark.slow
def test_flux_503_is_retried_with_backoff_nothing_lost_or_doubled(
    rig: Rig, flux: FluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    series = queue_recent(rig.redis, "vista.busy", 30)
    flux.fail_next(503, count=3, body="Service Unavailable")
    cfg = rig.config(FLUX_PORT=flux.port)
    began = time.monotonic()
    with LoopThreads([flux_loop(cfg, rig.redis_server)]):
        wait_drained(rig.redis, 30)
    elapsed = time.monotonic() - began
    assert accepted(flux) == triples(series)
    assert [r.status for r in flux.requests] == [503, 503, 503, 204]
    # Backoff 1, 2, 4 s, each with up to 50 % jitter: at least 3.5 s before the success.
    assert elapsed >= 3.5
    assert FetchQueue(rig.redis).counts().dead == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "flux sink failed (Flux answered HTTP 503: Service Unavailable); items kept in the "
        "queue, retrying with backoff"
    ]


@pytest.mark.slow
def test_flux_down_then_up_loses_and_doubles_nothing(
    rig: Rig, flux: FluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    series = queue_recent(rig.redis, "vista.down", 40)
    flux.set_down(True)
    cfg = rig.config(FLUX_PORT=flux.port)
    loop = flux_loop(cfg, rig.redis_server)
    with LoopThreads([loop]):
        poll_until(lambda: sink_requests(loop) >= 3 or None, 15, what="3 refused attempts")
        counts = FetchQueue(rig.redis).counts()
        assert counts.queued + counts.inflight == 40 and counts.dead == 0
        flux.set_down(False)
        wait_drained(rig.redis, 30)
    assert accepted(flux) == triples(series)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("flux sink failed (cannot reach Flux" in w for w in warnings) == 1
    assert sum("flux sink accepts points again" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------- carbon


@pytest.mark.parametrize("protocol", ["pickle", "plaintext"])
def test_carbon_sink_stores_exact_points_in_whisper(
    protocol: str, rig: Rig, carbon_server: CarbonServer, metric_prefix: str
) -> None:
    start = current_minute_start(time.time()) - 3 * 3600
    series = make_series(metric_prefix, 4, 120, start)  # 2 h of minutes each
    series[f"{metric_prefix}.m0000"][:3] = [
        (start, 1.00243039089e11),
        (start + 60, 1e-05),
        (start + 120, -7.75),
    ]
    push_series(rig.redis, series, per_item=50)  # chains of 3 items
    cfg = carbon_config(rig.tmp_path, rig.redis_server.url, carbon_server, protocol)
    sink = CarbonSink(cfg.carbon)
    loop = WorkerLoop(cfg, f"test:{os.getpid()}:0", rig.redis_server.client(), sink)
    run_until_drained(loop, rig.redis, 20)
    assert drained(rig.redis)
    for metric, pts in series.items():
        stored = carbon_server.wait_for_points(metric, len(pts), timeout=15)
        assert stored == pts, metric
    assert sink.connects == 1  # one persistent connection for every batch
    assert loop.stats.points == 480
    assert FetchQueue(rig.redis).watermarks(sorted(series)) == {
        m: Watermark(*p[-1]) for m, p in series.items()
    }


# ----------------------------------------------------------------------- poison items


def test_poison_items_are_dead_lettered_and_block_nothing(
    rig: Rig, flux: FluxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    start = recent_start()
    series = make_series("vista.poison", 5, 4, start)
    push_series(rig.redis, series, per_item=4)
    # The original Vista's item: str() of a list holding one dict (a Python literal).
    original = str(
        [
            {
                "remote_host_type": "graphite",
                "remote_target": "sumSeries(a.*.b)",
                "graphite_target": "a.b",
                "metric": "vista.host.a.b",
                "namespace_prefix": "vista.host",
                "key": "secret-from-the-old-queue",
                "token": "None",
                "user": "None",
                "password": "None",
                "datapoints": f'"[[{start}, 1.5], [{start + 60}, 2.0]]"',
            }
        ]
    )
    rig.redis.sadd(constants.QUEUE_KEY, "not json", original)
    # A future item version at the head of a chain: dead-lettered, the chain goes on.
    future_version = json.dumps(
        {"v": 2, "id": "x", "metric": "vista.poison.v2", "points": [[start, 1.0]]}
    )
    after = make_item("vista.poison.v2", [(start + 60, 2.5)], seq=1)
    assert FetchQueue(rig.redis).push([("vista.poison.v2", [future_version, after])]) == 1

    loop = flux_loop(rig.config(FLUX_PORT=flux.port), rig.redis_server)
    run_until_drained(loop, rig.redis, 10)

    assert accepted(flux) == sorted(triples(series) + [("vista.poison.v2", start + 60, 2.5)])
    letters = {d.item: d for d in FetchQueue(rig.redis).dead_letters()}
    assert set(letters) == {"not json", original, future_version}
    assert letters["not json"].reason.startswith("undecodable item: not JSON: ")
    assert letters[original].reason.startswith("undecodable item: not JSON: ")
    assert letters[future_version].reason == "undecodable item: unsupported item version 2"
    assert letters[future_version].metric == "vista.poison.v2"
    assert drained(rig.redis) and rig.redis.scard(constants.QUEUE_KEY) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all(
        e.startswith("dead-lettered an undecodable item") for e in errors
    )
    assert "secret-from-the-old-queue" not in caplog.text


def test_an_item_that_triggers_a_bug_is_isolated_then_dead_lettered_after_max_attempts(
    rig: Rig, flux: FluxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that raises is retried item by item: the good items are delivered at once, the
    one that fails alone is given back with its attempt counted, then dead-lettered."""
    start = recent_start()
    series = make_series("vista.bug", 6, 3, start)
    push_series(rig.redis, series, per_item=3)
    poison = "vista.bug.m0003"
    real_plan = delivery.plan_batch

    def plan_with_a_bug(items: Any, *args: Any, **kwargs: Any) -> Any:
        if any(item.metric == poison for _, item in items):
            raise ZeroDivisionError("a bug triggered by this item")
        return real_plan(items, *args, **kwargs)

    monkeypatch.setattr(delivery, "plan_batch", plan_with_a_bug)
    cfg = rig.config(FLUX_PORT=flux.port)
    loop = flux_loop(cfg, rig.redis_server)
    loop.run_once()  # one batch of 6 items: fails, then item by item
    good = {m: p for m, p in series.items() if m != poison}
    assert accepted(flux) == sorted(triples(good))
    for _ in range(cfg.max_attempts + 2):
        loop.run_once()
    loop.shutdown()
    assert accepted(flux) == sorted(triples(good))  # nothing sent twice
    (letter,) = FetchQueue(rig.redis).dead_letters()
    assert letter.metric == poison
    assert letter.reason == (
        f"failed {cfg.max_attempts} times: ZeroDivisionError: a bug triggered by this item"
    )
    assert drained(rig.redis)


# ------------------------------------------------------------- real Worker processes


@pytest.mark.slow
def test_three_worker_processes_deliver_each_point_exactly_once(rig: Rig, flux: FluxServer) -> None:
    series = queue_recent(rig.redis, "vista.multi", 2000)
    cfg = rig.config(FLUX_PORT=flux.port, VISTA_WORKER_BATCH_ITEMS=20)
    pool = WorkerPool(cfg, LogSpec(str(rig.tmp_path / "vista.log")), 3)
    pool.start()
    try:
        wait_drained(rig.redis, 60)
        pool.wait_running(rig.redis)
    finally:
        codes = pool.stop()
    assert codes == [0, 0, 0]
    assert accepted(flux) == triples(series), log_text(rig.tmp_path)[-3000:]
    assert_flux_posts_clean(flux)
    stats = rig.redis.hgetall(f"{constants.HOST_STATS_KEY_PREFIX}{socket.gethostname()}")
    assert (stats[b"points_sent"], stats[b"metrics_sent"]) == (b"10000", b"2000")
    assert rig.redis.zcard(constants.WORKERS_KEY) == 0  # each stopped worker left cleanly
    assert "Traceback" not in log_text(rig.tmp_path)


# -------------------------------------------------------------- SIGKILL during delivery


_WHISPER_READ_MANY = r"""
import json, os, sys, time, whisper
out, unreadable = {}, {}
now = int(time.time())
for path in json.load(sys.stdin):
    try:
        info = whisper.info(path) if os.path.exists(path) else None
        if info is None:
            out[path] = []
            continue
        found = whisper.fetch(path, now - info["archives"][0]["retention"], now, now=now)
    except Exception as exc:  # a file carbon is creating right now: its header is not whole yet
        unreadable[path] = f"{type(exc).__name__}: {exc}"
        continue
    (first, _last, step), values = found
    out[path] = [[first + i * step, v] for i, v in enumerate(values) if v is not None]
print(json.dumps({"points": out, "unreadable": unreadable}))
"""


def whisper_points(carbon: CarbonServer, metrics: Sequence[str]) -> dict[str, list[Point]]:
    """The stored points of many metrics, read by one run of Debian's whisper module; a file
    that carbon is still creating is read again (for up to 5 s) once it is whole."""
    paths = {str(carbon.whisper_path(m)): m for m in metrics}
    points: dict[str, list[Point]] = {}
    todo, deadline = list(paths), time.monotonic() + 5.0
    while True:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", _WHISPER_READ_MANY],
            input=json.dumps(todo),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        found = json.loads(proc.stdout)
        for path, rows in found["points"].items():
            points[paths[path]] = [(int(ts), float(v)) for ts, v in rows]
        todo = list(found["unreadable"])
        if not todo:
            return points
        if time.monotonic() > deadline:
            raise AssertionError(f"whisper files unreadable for 5 s: {found['unreadable']}")
        time.sleep(0.2)


class Feeder(threading.Thread):
    """Pushes a new chain for every metric every ``every`` seconds, as the fetcher does: a
    metric whose previous chain is still pending is skipped. Records what was queued."""

    def __init__(
        self,
        client: redis.Redis,
        metrics: Sequence[str],
        *,
        start: int,
        step: int,
        items: int,
        per_item: int,
        generations: int,
        every: float,
        min_points: int = 0,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.queue = FetchQueue(client)
        self.metrics = list(metrics)
        self.start_ts, self.step, self.items, self.per_item = start, step, items, per_item
        self.generations, self.every, self.min_points = generations, every, min_points
        self.queued_points = 0
        self.queued: Series = {m: [] for m in metrics}
        self.skipped = 0
        self.error: BaseException | None = None

    def chain(self, index: int, metric: str, generation: int) -> list[Point]:
        first = self.start_ts + generation * self.items * self.per_item * self.step
        count = self.items * self.per_item
        return [
            (first + k * self.step, index * 100_000.0 + generation * count + k + 0.5)
            for k in range(count)
        ]

    def run(self) -> None:
        # Each metric has its own next generation, so a skipped chain is pushed at a later
        # tick (timestamps stay within ``generations`` chains). Ticks go on past
        # ``generations`` until ``min_points`` are queued (a loaded machine delivers slower,
        # so more pushes are skipped), for at most 12 times the planned feeding time.
        try:
            next_generation = dict.fromkeys(self.metrics, 0)
            tick = 0
            give_up = time.monotonic() + 12 * self.generations * self.every
            while tick < self.generations or (
                self.queued_points < self.min_points and time.monotonic() < give_up
            ):
                began = time.monotonic()
                for index, metric in enumerate(self.metrics):
                    generation = next_generation[metric]
                    if generation >= self.generations:
                        continue
                    pts = self.chain(index, metric, generation)
                    parts = [pts[k : k + self.per_item] for k in range(0, len(pts), self.per_item)]
                    raws = [make_item(metric, part, seq=n) for n, part in enumerate(parts)]
                    if self.queue.push([(metric, raws)]):
                        self.queued[metric].extend(pts)
                        self.queued_points += len(pts)
                        next_generation[metric] = generation + 1
                    else:
                        self.skipped += 1
                tick += 1
                time.sleep(max(0.0, self.every - (time.monotonic() - began)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def kill_workers_while(
    pool: WorkerPool,
    queue: FetchQueue,
    busy: Callable[[], bool],
    *,
    every: float = 0.5,
    pause_writes: bool = False,
) -> tuple[int, int]:
    """SIGKILL a random worker every ``every`` s while ``busy()``, start a new one each time,
    and requeue what the dead one held, as the agent does. Returns (kills, kills that caught
    the worker holding items).

    With ``pause_writes``, Redis is paused for writes (CLIENT PAUSE WRITE) around each kill:
    reads go on, so a worker that has claimed a batch writes it to the sink and then waits
    for its ack (a script, hence a write). The victim is then one of those, caught after the
    sink took its batch and before the ack: the case that makes a resend.
    """
    kills = mid_batch = 0
    rng = random.Random(1234)
    while busy():
        time.sleep(every)
        if pause_writes:
            queue.client.client_pause(5000, all=False)
            time.sleep(0.15)
        try:
            ready = pool.running(queue.client)
            if pause_writes:
                holding = set(queue.counts().inflight_by_worker)
                waiting = [
                    i
                    for i in ready
                    if worker_id(pool.cfg.hostname, i, pool.procs[i].pid) in holding
                ]
                ready = waiting or ready
            if not ready:
                continue
            index = rng.choice(ready)
            victim = pool.procs[index]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(10)
        finally:
            if pause_writes:
                queue.client.client_unpause()
        pool.pool.poll()  # reaped: its items are put back at once, as the agent does

        def successor(name: str = f"worker-{index}") -> bool | None:
            pool.pool.poll()
            return True if pool.pool.pid(name) else None

        poll_until(successor, 10, what="the worker's successor")
        recovered = pool.recovered.get(victim.pid, 0)
        kills += 1
        mid_batch += 1 if recovered else 0
    return kills, mid_batch


@pytest.mark.slow
def test_sigkill_of_workers_mid_batch_stores_every_point_once_at_flux(rig: Rig) -> None:
    """Workers are SIGKILLed every 0.5 s, mostly while a slow Flux holds their POST. Flux has
    taken those points (the double records them on arrival); the agent requeues the item and
    another worker sends it again. These points are young (sent without fill), so Flux's worker,
    with its default settings, checks them against flux.last: what it forwards to carbon is
    every point exactly once, and no (metric, timestamp) ever arrives with two different
    values. (Old points, sent with fill, are not checked: tests/integration/
    test_flux_kill_storm.py measures what a kill resends then.)"""
    metrics = [f"vista.kill.m{i:03d}" for i in range(60)]
    with FluxServer(delay=0.15, redis=rig.redis) as flux:
        cfg = rig.config(FLUX_PORT=flux.port, VISTA_WORKER_BATCH_ITEMS=10)
        feeder = Feeder(
            rig.redis,
            metrics,
            start=recent_start(55),
            step=10,
            items=2,
            per_item=5,
            generations=30,
            every=0.25,
            min_points=3000,
        )
        queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
        pool = WorkerPool(cfg, LogSpec(str(rig.tmp_path / "vista.log")), 3)
        pool.start()
        try:
            feeder.start()
            kills, mid_batch = kill_workers_while(pool, queue, feeder.is_alive)
            feeder.join()
            assert feeder.error is None
            wait_drained(rig.redis, 60)
            pool.wait_running(rig.redis)
        finally:
            codes = pool.stop()
        arrivals = [(p.metric, p.timestamp, p.value) for p in flux.accepted]
        flux.wait_processed()
        forwarded = [(p.metric, p.timestamp, p.value) for p in flux.forwarded]
        dropped = flux.dropped_count

    expected = triples(feeder.queued)
    assert len(expected) >= 3000 and kills >= 8 and mid_batch >= 3, (kills, mid_batch)
    assert sorted(forwarded) == expected  # every point, exact value, forwarded once
    values: dict[tuple[str, int], set[float]] = {}
    for metric, ts, value in arrivals:
        values.setdefault((metric, ts), set()).add(value)
    assert all(len(v) == 1 for v in values.values())  # a resend never differs
    duplicates = len(arrivals) - len(set(arrivals))
    assert duplicates == dropped
    # Only a batch in flight when its worker died can arrive twice.
    assert duplicates <= mid_batch * 10 * 5
    assert codes == [0, 0, 0]
    print(
        f"\nSIGKILL/Flux: {kills} kills ({mid_batch} mid-batch), {len(expected)} points, "
        f"{len(arrivals)} arrivals, {duplicates} raw duplicates at the double"
    )


@pytest.mark.slow
def test_sigkill_of_workers_mid_batch_stores_exactly_the_points_in_whisper(
    tmp_path: Path, tmp_redis: RedisFactory, carbon_server: CarbonServer, metric_prefix: str
) -> None:
    """The same against real carbon. Carbon is fast, so Redis is paused for writes around each
    kill: the victim is caught between its write to carbon and its ack, and its batch is
    written again by another worker. Whisper keeps one value per timestamp, so nothing can be
    stored twice: every point is there with its exact value, and nothing else."""
    server = tmp_redis(unix_socket=True)
    client = server.client()
    metrics = [f"{metric_prefix}.m{i:03d}" for i in range(300)]
    feeder = Feeder(
        client,
        metrics,
        start=current_minute_start(time.time()) - 5 * 3600,
        step=10,
        items=2,
        per_item=100,
        generations=6,  # 6 x 2,000 s of 10 s points: inside whisper's 6 h finest archive
        every=0.7,
        min_points=100_000,
    )
    cfg = carbon_config(tmp_path, server.url, carbon_server, "pickle", VISTA_WORKER_BATCH_ITEMS=5)
    queue = FetchQueue(client)
    pool = WorkerPool(cfg, LogSpec(str(tmp_path / "vista.log")), 3)
    pool.start()
    try:
        pool.wait_running(client)
        feeder.start()
        kills, mid_batch = kill_workers_while(
            pool, queue, feeder.is_alive, every=0.3, pause_writes=True
        )
        feeder.join()
        assert feeder.error is None
        wait_drained(client, 60)
        pool.wait_running(client)
    finally:
        codes = pool.stop()
        client.close()
    expected = {m: sorted(p) for m, p in feeder.queued.items()}
    total = sum(len(p) for p in expected.values())
    # How many kills land between a worker's write to carbon and its ack depends on timing
    # (2 to 8 of 10 here); one is enough to prove the resend stores nothing twice.
    assert total >= 100_000 and kills >= 6 and mid_batch >= 1, (total, kills, mid_batch)

    def complete() -> dict[str, list[Point]] | None:
        found = whisper_points(carbon_server, metrics)
        return found if all(len(found[m]) >= len(expected[m]) for m in metrics) else None

    stored = poll_until(complete, 30, what="every point in whisper", interval=0.5)
    assert stored == expected
    assert codes == [0, 0, 0]
    print(f"\nSIGKILL/carbon: {kills} kills ({mid_batch} mid-batch), {total} points in whisper")


# ------------------------------------------------------------------ a lost claim answer


def test_items_of_a_claim_whose_answer_was_lost_are_not_held_forever(
    rig: Rig, flux: FluxServer
) -> None:
    """Redis ran a worker's claim but the answer never came back (Redis restarted during the
    call, or redis-py re-sent it after a broken connection). The items are recorded as held
    by a live worker whose lease keeps being renewed; the worker itself must give them back."""
    series = queue_recent(rig.redis, "vista.lost", 8)
    cfg = rig.config(FLUX_PORT=flux.port)
    loop = flux_loop(cfg, rig.redis_server)
    lost = FetchQueue(rig.redis).claim(loop.wid, 5, lease=60)  # the answer nobody read
    assert len(lost) == 5
    loop.run_once()
    loop.run_once()
    assert drained(rig.redis)
    assert accepted(flux) == triples(series)
    loop.shutdown()


# ------------------------------------------------------------------- long sink outage


@pytest.mark.slow
def test_flux_down_for_two_minutes_loses_nothing_and_the_queue_stays_bounded(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Flux refuses connections for two minutes while two workers run and new windows keep being
    fetched. The queue never holds more than one item per metric (a pending metric's new
    chain is not added), the workers retry with backoff instead of spinning, nothing is
    dead-lettered, and once Flux is back every queued point arrives exactly once."""
    caplog.set_level(logging.INFO)
    start = recent_start(55)
    first = make_series("vista.outage", 200, 10, start)
    push_series(rig.redis, first, per_item=5)  # chains of 2
    queue = FetchQueue(rig.redis, FLUX_WATERMARKS)
    with FluxServer() as flux:
        flux.set_down(True)
        cfg = rig.config(FLUX_PORT=flux.port)
        loops = [flux_loop(cfg, rig.redis_server, n) for n in range(2)]
        for loop in loops:
            # The production cap is 60 s; 8 s keeps the wait after the outage short.
            loop.sink_health.backoff = Backoff(base=1.0, cap=8.0)
        late: Series = {}
        with LoopThreads(loops):
            outage_ends = time.monotonic() + 120
            round_ = 0
            while time.monotonic() < outage_ends:
                round_ += 1
                # The fetcher's next windows: every metric is still pending, none is added.
                newer = make_series("vista.outage", 200, 10, start + 600 * round_)
                assert queue.push(chains_of(newer, 5)) == 0
                # A metric seen for the first time is queued (one item per metric).
                new_metric = make_series(f"vista.outage.new{round_}", 1, 10, start)
                late.update(new_metric)
                assert queue.push(chains_of(new_metric, 5)) == 1
                counts = queue.counts()
                assert counts.pending_metrics == 200 + round_
                assert counts.queued + counts.inflight == 200 + round_
                assert counts.dead == 0
                chains = [k for k in rig.redis.scan_iter(constants.CHAIN_KEY_PREFIX + "*")]
                assert len(chains) == 200 + round_
                assert all(rig.redis.llen(k) == 1 for k in chains)
                time.sleep(5)
            attempts = [sink_requests(loop) for loop in loops]
            flux.set_down(False)
            wait_drained(rig.redis, 40)
        assert flux.requests and all(r.status == 204 for r in flux.requests)
        assert accepted(flux) == triples({**first, **late})
        assert_flux_posts_clean(flux)
    # Backoff 1, 2, 4, 8, 8, ... s with jitter: a handful of attempts a minute, not a spin.
    assert all(8 <= n <= 50 for n in attempts), attempts
    assert queue.counts().dead == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("flux sink failed (cannot reach Flux" in w for w in warnings) == 2  # once each
    # Logged by each worker that delivers again (one may find the queue already drained).
    back = sum("flux sink accepts points again" in r.getMessage() for r in caplog.records)
    assert 1 <= back <= 2


# ------------------------------------------------------------------ Redis restarted


@pytest.mark.slow
def test_redis_restart_mid_run_workers_reconnect_and_deliver_exactly_once(
    tmp_path: Path, tmp_redis: RedisFactory
) -> None:
    """Three worker processes deliver through a slow Flux while Redis (appendonly) is
    restarted twice: at once, and after 5 s down (longer than redis-py's own retries). The
    workers ride it out with backoff and every point reaches Flux exactly once: a batch Flux
    took is acknowledged when Redis is back, never sent again."""
    server = tmp_redis(appendonly=True)
    client = server.client()
    series = make_series("vista.redis", 1500, 6, recent_start())
    push_series(client, series, per_item=3)  # chains of 2
    client.close()
    with FluxServer(delay=0.05) as flux:
        cfg = flux_config(tmp_path, server.url, flux, VISTA_WORKER_BATCH_ITEMS=20)
        pool = WorkerPool(cfg, LogSpec(str(tmp_path / "vista.log")), 3)
        pool.start()
        try:
            poll_until(lambda: flux.accepted_count > 500 or None, 30, what="deliveries")
            server.restart()
            poll_until(lambda: flux.accepted_count > 3000 or None, 30, what="deliveries")
            server.stop()
            time.sleep(5)  # down: workers see connection errors
            server.start()
            with server.client() as after:
                wait_drained(after, 60)
                assert FetchQueue(after).counts().dead == 0
                pool.wait_running(after)
        finally:
            codes = pool.stop()
        log = log_text(tmp_path)
        assert accepted(flux) == triples(series), log[-3000:]
    assert codes == [0, 0, 0]
    assert "Redis unavailable" in log and "Redis is back" in log
    assert "Traceback" not in log


def test_workers_are_named_by_the_configured_hostname(
    tmp_path: Path, redis_server: RedisServer, flux: FluxServer
) -> None:
    """VISTA_HOSTNAME names the workers in the in-flight hash and heartbeat keys, as it names
    the agent and the host's stats (the machine's name is only its default)."""
    cfg = flux_config(tmp_path, redis_server.url, flux, VISTA_HOSTNAME="vista-configured")
    pool = WorkerPool(cfg, LogSpec(str(tmp_path / "vista.log")), 1)
    pool.start()
    client = redis_server.client()
    try:
        pool.wait_running(client)
        names = [k.decode() for k in client.scan_iter(f"{constants.WORKER_HEARTBEAT_PREFIX}*")]
        assert names and all(n.startswith("vista.worker.vista-configured:") for n in names)
    finally:
        assert pool.stop() == [0]
        client.close()
