"""Worker processes: claim items from ``vista.fetcher.metrics.json``, validate each time series
and deliver it to Flux or carbon, then acknowledge (watermark, ``vista.metrics``, item removal)
in one atomic step.

What can be sent twice: an item is claimed by one worker at a time; points at or below the
metric's watermark are never sent; each request the sink answers is acknowledged at once
(batch_delivery.py), and a stop ends a batch between two requests. A worker that dies has its
items recovered by the agent (at once) or by any other worker (when its lease expires); only
the one request it was waiting for can then be sent again. A replay item, delivered below the
watermark, is resumed from its own progress, written by the same acknowledgements
(constants.PROGRESS_KEY). Carbon keeps one value per (metric,
timestamp); Flux, with its default settings, forwards a resent point sent with ``fill`` again
(docs/skyline-compatibility.md §3.3, README "Once at the sink").
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing.context
import os
import signal
import time
from types import FrameType

import redis

from skyline.vista import constants, delivery, logs, poison, procutil, redisconn, telemetry
from skyline.vista.acknowledge import Acknowledger, WorkerStats
from skyline.vista.admission import NewMetricGate
from skyline.vista.batch_delivery import BatchDelivery
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FetchQueue, watermark_keys
from skyline.vista.history import build_history_sink
from skyline.vista.logs import LogSpec
from skyline.vista.model import QueueItem
from skyline.vista.sink_health import SinkHealth
from skyline.vista.sinks import Sink
from skyline.vista.sinks.build import build_sink

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0
RECOVER_EVERY = 15.0
POLL_IDLE = 0.5
PARENT_DEATH_SIGNAL = signal.SIGUSR1
"""Sent by Linux when the agent dies, once for each agent thread that exits while the worker
is its child (so often several times): not SIGTERM, whose second arrival means 'exit now'."""


def stop_patience(config: VistaConfig) -> float:
    """How long a worker stopped while Redis is away goes on trying to acknowledge what the
    sink took (instead of leaving it to be sent again once its lease ends): within the agent's
    drain (VISTA_SHUTDOWN_TIMEOUT, less a second) and half its lease (VISTA_WORKER_LEASE), so
    that nobody has recovered its items meanwhile."""
    return max(0.0, min(config.shutdown_timeout - 1.0, config.worker_lease / 2))


def worker_id(hostname: str, index: int, pid: int | None = None) -> str:
    """``<VISTA_HOSTNAME>:<pid>:<index>``: the worker's name in the queue's in-flight hash and
    heartbeat keys."""
    return f"{hostname}:{os.getpid() if pid is None else pid}:{index}"


class WorkerLoop:
    """The worker's job, apart from process management (so tests can drive it in-process):
    claim, decode, admit (admission.py), deliver (batch_delivery.py), acknowledge
    (acknowledge.py), with the sink's health in sink_health.py."""

    def __init__(
        self,
        config: VistaConfig,
        wid: str,
        client: redis.Redis,
        sink: Sink,
        *,
        parent_pid: int | None = None,
        history_sink: Sink | None = None,
    ) -> None:
        self.config = config
        self.wid = wid
        self.client = client
        self.queue = FetchQueue(client, watermark_keys(config.sink))
        self.sink = sink
        self._history_sink = history_sink
        self.parent_pid = parent_pid
        self._stop = False
        self.redis_outage = redisconn.RedisOutage(logger, f"worker {wid}")
        self.sink_health = SinkHealth(sink.name)
        self._next_heartbeat = 0.0
        self._next_recover = 0.0
        self.gate = NewMetricGate(self.queue, wid, config.carbon_max_creates_per_minute)
        self.acknowledge = Acknowledger(
            self.queue, wid, config.hostname, sink.name, self.redis_outage, lambda: self._stop,
            patience=stop_patience(config),
        )  # fmt: skip
        self.stats = self.acknowledge.stats
        self.batches = BatchDelivery(
            config, self.acknowledge, self.sink_health, stopped=lambda: self._stop
        )

    # --- control ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop = True

    def stopping(self) -> bool:
        if self._stop:
            return True
        if self.parent_pid is not None and not procutil.parent_alive(self.parent_pid):
            logger.warning("agent (pid %d) is gone; worker stopping", self.parent_pid)
            self._stop = True
        return self._stop

    def _nap(self, seconds: float) -> None:
        procutil.interruptible_sleep(seconds, lambda: self._stop)

    def run(self) -> None:
        logger.info("worker %s started (sink %s)", self.wid, self.sink.name)
        while not self.stopping():
            try:
                self.run_once()
            except redisconn.REDIS_ERRORS as exc:
                self._next_recover = 0.0  # give back what the failed call may have claimed
                self._nap(self.redis_outage.failed(exc))
        self.shutdown()

    def shutdown(self) -> None:
        """Hand back whatever is still held and drop the lease (best effort)."""
        try:
            returned = self.queue.leave(self.wid)
            self.client.delete(constants.WORKER_HEARTBEAT_PREFIX + self.wid)
            if returned:
                logger.info("worker %s handed back %d item(s)", self.wid, returned)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning(
                "worker %s could not hand back its items (%s); they are recovered "
                "when its lease expires",
                self.wid,
                exc,
            )
        self.sink.close()
        if self._history_sink is not None:
            self._history_sink.close()
        logger.info("worker %s stopped", self.wid)

    # --- one iteration ------------------------------------------------------------------

    def run_once(self) -> int:
        """Heartbeat, recovery, claim and deliver one batch. Returns the items processed."""
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.heartbeat()
            self._next_heartbeat = now + HEARTBEAT_EVERY
        if now >= self._next_recover:
            self.recover(now)
        if not self.sink_health.ready():
            self._nap(min(self.sink_health.remaining(), 1.0))
            return 0
        claims = self.queue.claim_items(
            self.wid, self.config.worker_batch_items, self.config.worker_lease
        )
        raws = self.acknowledge.claimed(claims)
        self.redis_outage.ok()
        if not raws:
            self._nap(POLL_IDLE)
            return 0
        self.process_safely(raws)
        return len(raws)

    def recover(self, now: float) -> None:
        """Requeue this worker's orphans and the items of workers whose lease ended; next
        time RECOVER_EVERY seconds after ``now`` (monotonic)."""
        # Between batches this worker holds nothing: an item the queue still records as ours
        # was claimed by a call whose answer was lost (Redis restarted during it, or redis-py
        # retried it), and would otherwise stay held for as long as we live.
        orphans = self.queue.recover(only_worker=self.wid)
        if orphans:
            logger.warning("requeued %d item(s) claimed by a call that failed", orphans)
        recovered = self.queue.recover()
        if recovered:
            logger.warning("recovered %d item(s) held by workers that stopped", recovered)
        self._next_recover = now + RECOVER_EVERY

    def process_safely(self, raws: list[str]) -> None:
        """process(), but a failing batch is retried item by item (poison.py)."""
        poison.process_safely(self.process, raws, self.queue, self.wid, self.config.max_attempts)

    def heartbeat(self) -> None:
        write_heartbeat(self.client, self.wid, self.config.worker_lease, self.stats,
                        self.sink.name)  # fmt: skip

    def _dead_letter_undecodable(self, raws: list[str]) -> list[tuple[str, QueueItem]]:
        """The decoded items; the undecodable ones are dead-lettered."""
        good, bad = delivery.decode_batch(raws, self.wid, time.time())
        if bad:
            self.queue.dead_letter(self.wid, bad)
            telemetry.ITEMS_DEAD.labels("undecodable").inc(len(bad))
            for _, letter in bad:
                logger.error("dead-lettered an undecodable item (%s): %s",
                             letter.metric or "?", letter.reason)  # fmt: skip
        return good

    def process(self, raws: list[str]) -> None:
        admitted = self.gate.admit(self._dead_letter_undecodable(raws))
        if admitted.nap:
            self._nap(admitted.nap)
        live = [(raw, item) for raw, item in admitted.items if not item.replay]
        replay = [(raw, item) for raw, item in admitted.items if item.replay]
        if live:
            watermarks = self.queue.watermarks(sorted({item.metric for _, item in live}))
            self.batches.deliver(live, watermarks, self.sink)
        if replay and not self._stop:
            # Points below the watermark (requeued dead letters, refilled holes): the live sink
            # may discard them (Flux drops a point at or below flux.last unless it is sent with
            # fill, and with FLUX_CHECK_LAST_TIMESTAMP False even then), so they go by the
            # history path, which really stores them (skyline/vista/history.py).
            self.batches.deliver(replay, {}, self.history_sink())
        elif replay:
            self.queue.release(self.wid, [raw for raw, _ in replay])

    def history_sink(self) -> Sink:
        if self._history_sink is None:
            self._history_sink = build_history_sink(self.config)
        return self._history_sink


def write_heartbeat(
    client: redis.Redis, wid: str, lease: float, stats: WorkerStats, sink_name: str
) -> None:
    """The worker's heartbeat (vista status shows it), its lease renewed, and the ERROR lines
    logged since the last one counted."""
    now = time.time()
    record = {"pid": os.getpid(), "at": int(now), "items": stats.items, "points": stats.points,
              "sink": sink_name}  # fmt: skip
    pipe = client.pipeline(transaction=False)
    pipe.set(constants.WORKER_HEARTBEAT_KEY, int(now), ex=constants.HEARTBEAT_TTL)
    pipe.set(constants.WORKER_HEARTBEAT_PREFIX + wid, json.dumps(record),
             ex=constants.HEARTBEAT_TTL)  # fmt: skip
    pipe.zadd(constants.WORKERS_KEY, {wid: now + lease})
    errors = logs.error_counter.take()
    if errors:
        pipe.incrby(constants.LOG_ERRORS_KEY, errors)
        pipe.expire(constants.LOG_ERRORS_KEY, constants.LOG_ERRORS_TTL)
    pipe.execute()


class Worker(multiprocessing.context.SpawnProcess):
    """A worker process. Started with the 'spawn' method: the agent has threads, and forking a
    threaded process can deadlock the child on a lock held at the time of the fork."""

    def __init__(self, parent_pid: int, config: VistaConfig, index: int, log_spec: LogSpec) -> None:
        super().__init__(name=f"vista-worker-{index}", daemon=False)
        self.body = functools.partial(run_worker, parent_pid, config, index, log_spec)

    def run(self) -> None:
        self.body()


def run_worker(parent_pid: int, config: VistaConfig, index: int, log_spec: LogSpec) -> None:
    """The body of a worker process: a WorkerLoop until SIGTERM (twice: exit at once) or the
    agent's death."""
    procutil.start_child(parent_pid, log_spec, PARENT_DEATH_SIGNAL)
    client = redisconn.connect(config.redis)
    loop = WorkerLoop(
        config,
        worker_id(config.hostname, index),
        client,
        build_sink(config),
        parent_pid=parent_pid,
    )

    def on_term(signum: int, frame: FrameType | None) -> None:
        if loop.stopping():
            # second signal: leave at once; the lease covers held items
            os._exit(constants.EXIT_FAILURE)
        loop.stop()

    def on_parent_death(signum: int, frame: FrameType | None) -> None:
        loop.stop()  # may come several times: never the "second signal"

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(PARENT_DEATH_SIGNAL, on_parent_death)
    loop.run()
