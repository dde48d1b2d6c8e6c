"""A replay item (a requeued dead letter, a refilled failed window) is delivered below the
metric's watermark, so the watermark cannot say how far it got. Each request the sink answers
records the item's own progress in the same Lua step that acknowledges it, and the next claim
skips what was confirmed: a replay item interrupted mid-delivery is not sent again whole.

Real redis-server, real Worker processes (spawn), the Flux double with Flux's defaults: replayed
points go with ``fill``, which Flux never checks against flux.last, so whatever is sent twice
is forwarded twice (the double counts it, by the request that carried it first).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from skyline.vista import codec, constants
from skyline.vista.fetchqueue import FLUX_WATERMARKS, FetchQueue
from skyline.vista.logs import LogSpec
from skyline.vista.model import QueueItem, dead_letter
from skyline.vista.testing.servers import RedisServer, poll_until
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import Worker, worker_id
from tests.conftest import RedisFactory
from tests.fakes.flux import FluxServer
from tests.support.items import drained
from tests.support.settings import make_config

METRIC = "vista.replay.resume"
BATCH = 100  # points per request (VISTA_FLUX_BATCH_SIZE)
POINTS = 5 * BATCH  # one replay item: five requests
ANSWER = 1.0  # seconds Flux takes to answer each request


def series() -> list[tuple[int, float]]:
    start = current_minute_start(time.time()) - 6 * 3600  # older than flux.last, sent with fill
    return [(start + 10 * j, 1000.0 + j + 0.25) for j in range(POINTS)]


def requeue_as_replay(client: redis.Redis, points: list[tuple[int, float]]) -> None:
    """A dead letter of the points, put back by 'vista queue requeue-dead'."""
    raw = codec.encode_item(
        QueueItem(
            uuid.uuid4().hex,
            METRIC,
            "prometheus",
            "http://prometheus.example:9090",
            METRIC,
            tuple(points),
            time.time(),
        )  # fmt: skip
    )
    letter = dead_letter(raw, "Flux answered 207", "test:0:0", METRIC, now=time.time())
    client.hset(constants.DEAD_KEY, letter.id, codec.encode_dead(letter))
    assert FetchQueue(client, FLUX_WATERMARKS).requeue_dead() == 1


def interrupted_then_finished(
    tmp_path: Path,
    server: RedisServer,
    flux: FluxServer,
    interrupt: Callable[[Worker], None],
    **settings: Any,
) -> list[tuple[int, float]]:
    """A worker delivers the replay item until Flux holds its second request (the first one
    answered and acknowledged), then ``interrupt(worker)``; a new worker finishes the item.
    Returns the points Flux forwarded, in order."""
    cfg = make_config(tmp_path, server, FLUX_PORT=flux.port, VISTA_FLUX_BATCH_SIZE=BATCH,
                      **settings)  # fmt: skip
    spec = LogSpec(str(tmp_path / "vista.log"))
    first = Worker(os.getpid(), cfg, 0, spec)
    first.start()
    poll_until(lambda: True if flux.accepted_count >= 2 * BATCH else None, 30, what="request 2")
    interrupt(first)
    then = Worker(os.getpid(), cfg, 1, spec)
    then.start()
    with server.client() as client:
        try:
            poll_until(lambda: drained(client) or None, 60, what="the queue to drain")
        finally:
            then.terminate()
            then.join(10)
        assert then.exitcode == 0
        assert not client.exists(constants.PROGRESS_KEY)  # nothing left behind
    flux.wait_processed()
    return flux.forwarded_by_metric()[METRIC]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_an_interrupted_replay_item_is_not_sent_again_whole(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, how: signal.Signals
) -> None:
    """SIGKILL: only the request in flight may be sent again (Flux took it; nobody acknowledged
    it). SIGTERM: the worker finishes that request and hands the rest back, so nothing at all
    is sent twice."""

    def interrupt(worker: Worker) -> None:
        assert worker.pid is not None
        os.kill(worker.pid, how)
        worker.join(10)
        if how == signal.SIGKILL:  # the agent puts a dead worker's items back at once
            wid = worker_id(make_config(tmp_path).hostname, 0, worker.pid)
            FetchQueue(redis_client).recover(only_worker=wid)

    points = series()
    requeue_as_replay(redis_client, points)
    with FluxServer(redis=redis_client, delay=ANSWER) as flux:
        forwarded = interrupted_then_finished(tmp_path, redis_server, flux, interrupt)
        again = flux.forwarded_again_from()
    # Every point reached Flux's forward, with its exact value...
    assert sorted(set(forwarded)) == points
    # ...and the first request (answered, acknowledged) never again.
    if how == signal.SIGKILL:
        assert again == {2: BATCH}, again  # the request in flight at the kill, no more
        assert len(forwarded) == POINTS + BATCH
    else:
        assert again == {}, again
        assert len(forwarded) == POINTS


@pytest.mark.slow
@pytest.mark.parametrize("down", [3.0, 9.0], ids=["back-within-the-patience", "back-after"])
def test_a_replay_item_stopped_during_a_redis_outage(
    tmp_path: Path, tmp_redis: RedisFactory, down: float
) -> None:
    """Redis goes down while Flux holds the second request (its answer comes within 2 s), and
    the worker is stopped. It goes on trying to acknowledge that request for
    worker.stop_patience (here 4 s: half its 8 s lease). Redis back within it: the request is
    acknowledged, the rest handed back, nothing is sent twice. Back after it: the worker has
    given up, the item stays held until its lease ends, then another worker sends it again
    from its recorded progress: the one request that was never acknowledged, not the first."""
    server = tmp_redis(appendonly=True)
    points = series()
    with server.client() as client:
        requeue_as_replay(client, points)

    def interrupt(worker: Worker) -> None:
        assert worker.pid is not None
        server.stop()
        os.kill(worker.pid, signal.SIGTERM)
        time.sleep(down)
        server.start()
        worker.join(15)
        assert worker.exitcode == 0

    with FluxServer(delay=2 * ANSWER) as flux:  # Flux's own Redis is not the one that stops
        forwarded = interrupted_then_finished(
            tmp_path, server, flux, interrupt, VISTA_WORKER_LEASE=8
        )
        again = flux.forwarded_again_from()
    assert sorted(set(forwarded)) == points
    if down < 2 * ANSWER + 4.0:  # Flux answers at 2 s at the most, then 4 s of patience
        assert again == {}, again
        assert len(forwarded) == POINTS
    else:
        assert again == {2: BATCH}, again
        assert len(forwarded) == POINTS + BATCH
