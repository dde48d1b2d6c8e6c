"""A worker told to stop (SIGTERM: the agent's drain) stops between two requests to the sink,
with what it sent acknowledged and the rest given back: nothing is sent twice, and it is gone
long before the agent's shutdown deadline would SIGKILL it mid-batch."""

from __future__ import annotations

import os
import signal
import time

from skyline.vista import constants
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.logs import LogSpec
from skyline.vista.testing.servers import poll_until
from skyline.vista.validate import current_minute_start
from skyline.vista.worker import Worker, worker_id
from tests.fakes.flux import FluxServer
from tests.support.items import make_item
from tests.support.rig import Rig

METRICS = 20
POINTS = 540  # 10 s apart: 24 requests of 450 for one claim of 20 items
ANSWER = 0.3  # seconds Flux takes to answer each request


def test_sigterm_stops_a_worker_between_requests_and_nothing_is_sent_twice(rig: Rig) -> None:
    start = current_minute_start(time.time()) - 5 * 3600  # older than Flux's max age: fill
    series = {
        f"vista.drain.m{i:02d}": tuple((start + 10 * j, i * 1000.0 + j) for j in range(POINTS))
        for i in range(METRICS)
    }
    FetchQueue(rig.redis).push([(m, [make_item(m, p, target=m)]) for m, p in series.items()])
    with FluxServer(redis=rig.redis, delay=ANSWER) as flux:
        cfg = rig.config(FLUX_PORT=flux.port, VISTA_WORKER_BATCH_ITEMS=METRICS)
        spec = LogSpec(str(rig.tmp_path / "vista.log"))
        worker = Worker(os.getpid(), cfg, 0, spec)
        worker.start()
        assert worker.pid is not None
        poll_until(lambda: True if len(flux.requests) >= 3 else None, 30, what="3 requests")
        os.kill(worker.pid, signal.SIGTERM)
        asked = time.monotonic()
        worker.join(10)
        took = time.monotonic() - asked
        sent_before = len(flux.requests)
        assert worker.exitcode == 0
        # It finished the request it was waiting for, then stopped: not the 24 of its batch.
        assert took < 2 * ANSWER + 1.5, took
        assert sent_before < 10
        counts = FetchQueue(rig.redis).counts()
        # What it acknowledged is gone, every other item is back in the queue.
        assert counts.inflight == 0 and 0 < counts.queued == counts.pending_metrics < METRICS
        assert not rig.redis.exists(
            constants.WORKER_HEARTBEAT_PREFIX + worker_id(cfg.hostname, 0, worker.pid)
        )

        again = Worker(os.getpid(), cfg, 1, spec)
        again.start()
        try:

            def drained() -> bool | None:
                c = FetchQueue(rig.redis).counts()
                return True if c.queued == c.inflight == c.pending_metrics == 0 else None

            poll_until(drained, 60, what="the queue to drain")
        finally:
            again.terminate()
            again.join(10)
        flux.wait_processed()
        forwarded = flux.forwarded_by_metric()
        twice = flux.forwarded_twice
    assert again.exitcode == 0
    assert twice == 0
    assert {m: tuple(p) for m, p in forwarded.items()} == series
    print(f"\nSIGTERM mid-batch: worker gone in {took:.2f} s after {sent_before} requests")
