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
from pathlib import Path

import pytest
import redis

from skyline.vista import codec, constants
from skyline.vista.fetchqueue import FLUX_WATERMARKS, FetchQueue
from skyline.vista.logs import LogSpec
from skyline.vista.model import QueueItem, dead_letter
from skyline.vista.testing.servers import RedisServer, poll_until
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import Worker, worker_id
from tests.fakes.flux import FluxServer
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


def drained(client: redis.Redis) -> bool | None:
    c = FetchQueue(client).counts()
    return True if c.queued == c.inflight == c.pending_metrics == 0 else None


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_an_interrupted_replay_item_is_not_sent_again_whole(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, how: signal.Signals
) -> None:
    """The worker is interrupted while Flux holds its second request, the first one answered
    and acknowledged; a new worker finishes the item. SIGKILL: only the request in flight may
    be sent again (Flux took it; nobody acknowledged it). SIGTERM: the worker finishes that
    request and hands the rest back, so nothing at all is sent twice."""
    points = series()
    requeue_as_replay(redis_client, points)
    with FluxServer(redis=redis_client, delay=ANSWER) as flux:
        cfg = make_config(tmp_path, redis_server, FLUX_PORT=flux.port, VISTA_FLUX_BATCH_SIZE=BATCH)
        spec = LogSpec(str(tmp_path / "vista.log"))
        first = Worker(os.getpid(), cfg, 0, spec)
        first.start()
        assert first.pid is not None
        # Flux has taken request 2 once the worker has acknowledged request 1 and sent it.
        poll_until(lambda: True if flux.accepted_count >= 2 * BATCH else None, 30,
                   what="request 2")  # fmt: skip
        os.kill(first.pid, how)
        first.join(10)
        if how == signal.SIGKILL:
            # The agent puts a dead worker's items back at once.
            FetchQueue(redis_client).recover(only_worker=worker_id(cfg.hostname, 0, first.pid))
        then = Worker(os.getpid(), cfg, 1, spec)
        then.start()
        try:
            poll_until(lambda: drained(redis_client), 60, what="the queue to drain")
        finally:
            then.terminate()
            then.join(10)
        flux.wait_processed()
        forwarded = flux.forwarded_by_metric()[METRIC]
        again = flux.forwarded_again_from()
    assert then.exitcode == 0
    # Every point reached Flux's forward, with its exact value...
    assert sorted(set(forwarded)) == points
    # ...and the first request (answered, acknowledged) never again.
    if how == signal.SIGKILL:
        assert again == {2: BATCH}, again  # the request in flight at the kill, no more
        assert len(forwarded) == POINTS + BATCH
    else:
        assert again == {}, again
        assert len(forwarded) == POINTS
    assert not redis_client.exists(constants.PROGRESS_KEY)  # nothing left behind
