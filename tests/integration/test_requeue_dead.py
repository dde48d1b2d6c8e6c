"""`vista queue requeue-dead` after newer points of the metric were delivered: the replayed points
are older than what the sink holds. They must go by a path that really stores them, and nothing
may be counted delivered that the sink is known to discard.

Flux with its default FLUX_CHECK_LAST_TIMESTAMP = True drops a point at or below flux.last unless
it was sent with fill, so they go with fill; with False it drops them even with fill (the metric
is in vista.metrics), so they go to the carbon beside Flux.
"""

from __future__ import annotations

import os
import time

import redis

from skyline.vista import codec, constants
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FLUX_WATERMARKS, FetchQueue
from skyline.vista.model import DeadLetter
from skyline.vista.report import queue_command
from skyline.vista.sinks.flux import FluxSink
from skyline.vista.testing.servers import CarbonServer
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import WorkerLoop
from tests.fakes.flux import FluxServer
from tests.support.items import make_item
from tests.support.rig import Rig

Point = tuple[int, float]


def dead_then_newer_then_requeued(
    cfg: VistaConfig, client: redis.Redis, flux: FluxServer, metric: str
) -> tuple[WorkerLoop, list[Point]]:
    """Three points rejected by Flux (dead-lettered), three newer ones delivered, then the dead
    letter requeued and run. Returns the loop and the six points."""
    start = current_minute_start(time.time()) - 30 * 60  # young: sent without fill when live
    points = [(start + 60 * j, 100.0 + j) for j in range(6)]
    loop = WorkerLoop(cfg, f"test:{os.getpid()}:0", client, FluxSink(cfg.flux))
    queue = FetchQueue(client, FLUX_WATERMARKS)
    flux.reject_metric(metric)  # over its namespace quota: Flux answers 207
    queue.push([(metric, [make_item(metric, points[:3], target=metric)])])
    loop.run_once()
    assert [letter.metric for letter in queue.dead_letters()] == [metric]
    flux.accept_metric(metric)  # the quota was raised
    queue.push([(metric, [make_item(metric, points[3:], target=metric)])])
    loop.run_once()
    flux.wait_processed()
    assert flux.forwarded_by_metric() == {metric: points[3:]}  # flux.last is now points[5]
    flux.refresh_vista_metrics()  # as Flux does within a minute
    assert queue_command(cfg, "requeue-dead", []) == 0
    loop.run_once()
    flux.wait_processed()
    return loop, points


def test_requeued_points_below_flux_last_are_stored_with_flux_defaults(rig: Rig) -> None:
    metric = "vista.requeue.default"
    with FluxServer(redis=rig.redis) as flux:
        cfg = rig.config(FLUX_PORT=flux.port)
        loop, points = dead_then_newer_then_requeued(cfg, rig.redis, flux, metric)
        loop.shutdown()
        forwarded = flux.forwarded_by_metric()
        dropped, twice = flux.dropped_count, flux.forwarded_twice
    # Flux forwarded every point once: the replayed ones went with fill, which it never checks.
    assert sorted(forwarded[metric]) == points
    assert (dropped, twice) == (0, 0)
    # What Vista counts delivered is what Flux stored.
    assert loop.stats.points == len(points)
    assert FetchQueue(rig.redis).counts().dead == 0


def test_requeued_points_go_to_the_carbon_beside_flux_when_flux_checks_fill_too(
    rig: Rig, carbon_server: CarbonServer, metric_prefix: str
) -> None:
    metric = f"{metric_prefix}.m"
    rig.redis.sadd("vista.metrics", metric)  # delivered before: Flux checks all its points
    with FluxServer(redis=rig.redis, check_last_timestamp=False) as flux:
        cfg = rig.config(
            FLUX_PORT=flux.port,
            FLUX_CHECK_LAST_TIMESTAMP=False,
            FLUX_CARBON_HOST="127.0.0.1",
            FLUX_CARBON_PICKLE_PORT=carbon_server.pickle_port,
        )
        loop, points = dead_then_newer_then_requeued(cfg, rig.redis, flux, metric)
        loop.shutdown()
        forwarded = flux.forwarded_by_metric()
        dropped = flux.dropped_count
    # Flux itself took only the live points (it would have dropped the old ones: the metric is
    # in vista.metrics and they are below flux.last)...
    assert sorted(forwarded[metric]) == points[3:]
    assert dropped == 0
    # ...and the replayed ones are in whisper, from the carbon beside Flux.
    stored = carbon_server.wait_for_points(metric, 3, from_ts=points[0][0] - 60)
    assert sorted(stored) == points[:3]
    assert loop.stats.points == len(points)


def test_an_undecodable_dead_letter_is_requeued_as_it_is(redis_client: redis.Redis) -> None:
    """It was dead-lettered because it cannot be decoded; requeue-dead puts it back unchanged
    (the operator asked for it) instead of failing with a traceback."""
    queue = FetchQueue(redis_client)
    letter = DeadLetter("d1", "undecodable item", time.time(), "w", '{"v": 0}', "vista.u")
    redis_client.hset(constants.DEAD_KEY, letter.id, codec.encode_dead(letter))
    assert queue.requeue_dead() == 1
    assert redis_client.smembers(constants.QUEUE_KEY) == {b'{"v": 0}'}
