"""Worker processes: claim items from ``vista.fetcher.metrics.json``, validate each time series
and deliver it to Flux or carbon, then acknowledge (watermark, ``vista.metrics``, item removal)
in one atomic step.

What can be sent twice: an item is claimed by one worker at a time; points at or below the
metric's watermark are never sent; each request the sink answers is acknowledged at once (see
``WorkerLoop._submit``), and a stop ends a batch between two requests. A worker that dies has its
items recovered by the agent (at once) or by any other worker (when its lease expires); only the
one request it was waiting for can then be sent again. Carbon keeps one value per (metric,
timestamp); Flux, with its default settings, forwards a resent point sent with ``fill`` again
(docs/skyline-compatibility.md §3.3, README "Once at the sink").
"""

from __future__ import annotations

import json
import logging
import multiprocessing.context
import os
import signal
import time
from dataclasses import dataclass
from types import FrameType

import redis

from skyline.vista import codec, constants, delivery, lag, logs, procutil, redisconn, telemetry
from skyline.vista.backoff import Backoff
from skyline.vista.codec import decode_item
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import CreateBudget
from skyline.vista.errors import PayloadError, SinkAuthError, SinkError
from skyline.vista.fetchqueue import FetchQueue, watermark_keys
from skyline.vista.history import build_history_sink
from skyline.vista.logs import LogSpec
from skyline.vista.model import DeadLetter, QueueItem, Watermark
from skyline.vista.sinks import Sink, SinkPoint, SinkResult, build_sink

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0
RECOVER_EVERY = 15.0
POLL_IDLE = 0.5
CREATE_WAIT_MAX = 1.0
"""Longest nap when every claimed item waits for a carbon create token (seconds)."""
PARENT_DEATH_SIGNAL = signal.SIGUSR1
"""Sent by Linux when the agent dies, once for each agent thread that exits while the worker
is its child (so often several times): not SIGTERM, whose second arrival means 'exit now'."""
SEGMENT_POINTS = 5000
"""Points handed to carbon at once (10 pickle messages); the lease is renewed between segments.
The Flux sink gets one request's worth (VISTA_FLUX_BATCH_SIZE) at a time, each bounded by its
timeout, so a slow Flux cannot outlast the lease either."""


def worker_id(hostname: str, index: int, pid: int | None = None) -> str:
    """``<VISTA_HOSTNAME>:<pid>:<index>``: the worker's name in the queue's in-flight hash and
    heartbeat keys."""
    return f"{hostname}:{os.getpid() if pid is None else pid}:{index}"


@dataclass
class WorkerStats:
    items: int = 0
    points: int = 0
    rejected: int = 0
    dead_items: int = 0
    sink_errors: int = 0


class WorkerLoop:
    """The worker's job, apart from process management (so tests can drive it in-process)."""

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
        self.stats = WorkerStats()
        self.redis_outage = redisconn.RedisOutage(logger, f"worker {wid}")
        self.sink_backoff = Backoff(base=1.0, cap=60.0)
        self._sink_failing = False
        self._last_auth_log = 0.0
        self._next_heartbeat = 0.0
        self._next_recover = 0.0
        self.host_stats_key = f"{constants.HOST_STATS_KEY_PREFIX}{config.hostname}"
        self.create_budget = CreateBudget(client, config.carbon_max_creates_per_minute)

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

    def run(self) -> None:
        logger.info("worker %s started (sink %s)", self.wid, self.sink.name)
        while not self.stopping():
            try:
                self.run_once()
            except redisconn.REDIS_ERRORS as exc:
                self._next_recover = 0.0  # give back what the failed call may have claimed
                delay = self.redis_outage.failed(exc)
                procutil.interruptible_sleep(delay, lambda: self._stop)
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
            # Between batches this worker holds nothing: an item the queue still records as
            # ours was claimed by a call whose answer was lost (Redis restarted during it, or
            # redis-py retried it), and would otherwise stay held for as long as we live.
            orphans = self.queue.recover(only_worker=self.wid)
            if orphans:
                logger.warning("requeued %d item(s) claimed by a call that failed", orphans)
            recovered = self.queue.recover()
            if recovered:
                logger.warning("recovered %d item(s) held by workers that stopped", recovered)
            self._next_recover = now + RECOVER_EVERY
        if not self.sink_backoff.ready():
            procutil.interruptible_sleep(
                min(self.sink_backoff.remaining(), 1.0), lambda: self._stop
            )
            return 0
        raws = self.queue.claim(self.wid, self.config.worker_batch_items, self.config.worker_lease)
        self.redis_outage.ok()
        if not raws:
            procutil.interruptible_sleep(POLL_IDLE, lambda: self._stop)
            return 0
        self.process_safely(raws)
        return len(raws)

    def process_safely(self, raws: list[str]) -> None:
        """process(), but a batch that fails for an unexpected reason (a bug, or an item that
        triggers one) does not kill the worker: each item still held is retried alone, and one
        that fails alone is given back with its attempt counted; after VISTA_MAX_ATTEMPTS it is
        dead-lettered, so a poison item cannot crash workers for ever."""
        try:
            self.process(raws)
            return
        except redisconn.REDIS_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - isolate the item, log the traceback once
            logger.exception(
                "a batch of %d item(s) failed; retrying its items one by one", len(raws)
            )
        for raw in self.queue.held_by(self.wid, raws):
            try:
                self.process([raw])
            except redisconn.REDIS_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - counted, then dead-lettered
                reason = f"{type(exc).__name__}: {exc}"
                _, dead = self.queue.release(
                    self.wid,
                    [raw],
                    count_attempt=True,
                    max_attempts=self.config.max_attempts,
                    reason=reason,
                )
                if dead:
                    telemetry.ITEMS_DEAD.labels("attempts").inc(dead)
                    self.stats.dead_items += dead
                logger.error("an item of %s failed (%s)%s", codec.item_metric(raw) or "?",
                             reason, "; dead-lettered" if dead else "; given back")  # fmt: skip

    def heartbeat(self) -> None:
        now = time.time()
        record = json.dumps(
            {
                "pid": os.getpid(),
                "at": int(now),
                "items": self.stats.items,
                "points": self.stats.points,
                "sink": self.sink.name,
            }
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.set(constants.WORKER_HEARTBEAT_KEY, int(now), ex=constants.HEARTBEAT_TTL)
        pipe.set(constants.WORKER_HEARTBEAT_PREFIX + self.wid, record, ex=constants.HEARTBEAT_TTL)
        pipe.zadd(constants.WORKERS_KEY, {self.wid: now + self.config.worker_lease})
        errors = logs.error_counter.take()
        if errors:
            pipe.incrby(constants.LOG_ERRORS_KEY, errors)
            pipe.expire(constants.LOG_ERRORS_KEY, constants.LOG_ERRORS_TTL)
        pipe.execute()

    def _decode(
        self, raws: list[str]
    ) -> tuple[list[tuple[str, QueueItem]], list[tuple[str, DeadLetter]]]:
        good: list[tuple[str, QueueItem]] = []
        bad: list[tuple[str, DeadLetter]] = []
        for raw in raws:
            try:
                good.append((raw, decode_item(raw)))
            except PayloadError as exc:
                bad.append((raw, delivery.undecodable(raw, str(exc), self.wid, time.time())))
        return good, bad

    def process(self, raws: list[str]) -> None:
        items, bad = self._decode(raws)
        if bad:
            self.queue.dead_letter(self.wid, bad)
            telemetry.ITEMS_DEAD.labels("undecodable").inc(len(bad))
            self.stats.dead_items += len(bad)
            for _, letter in bad:
                logger.error(
                    "dead-lettered an undecodable item (%s): %s",
                    letter.metric or "?",
                    letter.reason,
                )
        items = self._admit_new_metrics(items)
        live = [(raw, item) for raw, item in items if not item.replay]
        replay = [(raw, item) for raw, item in items if item.replay]
        if live:
            watermarks = self.queue.watermarks(sorted({item.metric for _, item in live}))
            self._deliver(live, watermarks, self.sink)
        if replay and not self._stop:
            # Points below the watermark (requeued dead letters, refilled holes): the live sink
            # may discard them (Flux drops a point at or below flux.last unless it is sent with
            # fill, and with FLUX_CHECK_LAST_TIMESTAMP False even then), so they go by the
            # history path, which really stores them (skyline/vista/history.py).
            self._deliver(replay, {}, self.history_sink())
        elif replay:
            self.queue.release(self.wid, [raw for raw, _ in replay])

    def history_sink(self) -> Sink:
        if self._history_sink is None:
            self._history_sink = build_history_sink(self.config)
        return self._history_sink

    def _deliver(
        self, items: list[tuple[str, QueueItem]], watermarks: dict[str, Watermark], sink: Sink
    ) -> None:
        now = time.time()
        planned, sink_points = delivery.plan_batch(
            items, watermarks, now, skip_current_minute=self.config.do_not_submit_current_minute
        )
        for plan in planned:
            for reason, count in plan.dropped.as_dict().items():
                telemetry.POINTS_DROPPED.labels(reason).inc(count)
        try:
            result = self._submit(planned, sink_points, now, sink)
        except SinkAuthError as exc:
            self._auth_failed(exc, [p.raw for p in planned if not p.settled])
            return
        self._acknowledge(
            delivery.settle(planned, sink_points, result, self.wid, time.time(), final=True)
        )
        if result.error is not None:
            self._sink_failed(result.error)
        elif sink_points:
            self._sink_ok()

    def _admit_new_metrics(self, items: list[tuple[str, QueueItem]]) -> list[tuple[str, QueueItem]]:
        """Carbon's create budget: the items of a metric name carbon may not create yet are
        given back untouched (no attempt counted) and wait for a token; the rest go on. When
        nothing is left, wait a little (at most until the next token) before claiming again."""
        if not self.create_budget.enabled or not items:
            return items
        admission = self.create_budget.admit(item.metric for _, item in items)
        if admission.granted:
            telemetry.CREATES_GRANTED.inc(len(admission.granted))
        if not admission.deferred:
            return items
        keep = [(raw, item) for raw, item in items if item.metric not in admission.deferred]
        wait = [raw for raw, item in items if item.metric in admission.deferred]
        self.queue.release(self.wid, wait)
        telemetry.CREATES_DEFERRED.inc(len(wait))
        logger.debug(
            "%d item(s) of %d new metric(s) wait for a carbon create token (next in %.1fs)",
            len(wait),
            len(admission.deferred),
            admission.wait,
        )
        if not keep:
            delay = min(max(admission.wait, 0.05), CREATE_WAIT_MAX)
            procutil.interruptible_sleep(delay, lambda: self._stop)
        return keep

    def _submit(
        self,
        planned: list[delivery.Planned],
        sink_points: list[SinkPoint],
        now: float,
        sink: Sink,
    ) -> SinkResult:
        """Hand the batch to the sink in segments, acknowledging what each request carried as
        soon as the sink has taken it, and renewing the lease between segments, so that a long
        delivery is not mistaken for a dead worker. A worker killed at any moment can then have
        at most its one request in flight sent again. A stop (SIGTERM) ends it between two
        requests; what was not sent goes back to the queue."""
        total = SinkResult()
        size = self.config.flux.batch_size if sink.name == "flux" else SEGMENT_POINTS
        offset = 0

        def progress(partial: SinkResult) -> bool:
            self._merge(total, partial, offset)
            self._settle_so_far(planned, sink_points, total)
            return not self._stop

        for offset in range(0, len(sink_points), size):
            segment = sink_points[offset : offset + size]
            started = time.monotonic()
            result = sink.submit(segment, now, progress)
            telemetry.SINK_LATENCY.labels(sink.name).observe(time.monotonic() - started)
            self._merge(total, result, offset)
            if result.error is not None:
                total.error = result.error
                break
            self._settle_so_far(planned, sink_points, total)
            if self._stop or result.stopped:
                break  # draining: the rest goes back to the queue
            if offset + size < len(sink_points):
                try:
                    self.queue.renew(self.wid, self.config.worker_lease)
                except redisconn.REDIS_ERRORS:
                    logger.debug("lease not renewed (Redis unavailable)")
        return total

    def _settle_so_far(
        self, planned: list[delivery.Planned], sink_points: list[SinkPoint], total: SinkResult
    ) -> None:
        """Acknowledge what the sink has taken so far (keeping what is only partly sent)."""
        settlement = delivery.settle(
            planned, sink_points, total, self.wid, time.time(), final=False
        )
        self._acknowledge(settlement)

    @staticmethod
    def _merge(total: SinkResult, part: SinkResult, offset: int) -> None:
        """Fold a segment's result (indexes from its first point) into the batch's."""
        total.handled = max(total.handled, offset + part.handled)
        total.rejected.update({offset + i: reason for i, reason in part.rejected.items()})

    def _acknowledge(self, settlement: delivery.Settlement) -> None:
        """Record what the sink handled. Retried while Redis is away: giving the items back
        instead would send them twice."""
        while True:
            try:
                self.queue.ack(self.wid, settlement.acks)
                if settlement.release:
                    self.queue.release(self.wid, settlement.release)
                break
            except redisconn.REDIS_ERRORS as exc:
                delay = self.redis_outage.failed(exc)
                if procutil.interruptible_sleep(delay, lambda: self._stop):
                    return  # stopping: the items stay held and are recovered with the lease
        self.redis_outage.ok()
        s = settlement
        self.stats.items += s.delivered_items
        self.stats.points += s.delivered_points
        self.stats.rejected += s.rejected_points
        self.stats.dead_items += s.dead_letters
        telemetry.POINTS_DELIVERED.labels(self.sink.name).inc(s.delivered_points)
        if s.rejected_points:
            telemetry.POINTS_DEAD.inc(s.rejected_points)
            telemetry.ITEMS_DEAD.labels("rejected").inc(s.dead_letters)
            logger.error(
                "the sink rejected %d point(s); dead-lettered (see 'vista queue dead')",
                s.rejected_points,
            )
        if s.delivered_items or s.delivered_points:
            acked_at = time.time()
            lags = [acked_at - a.watermark.timestamp for a in s.acks if a.delivered and a.watermark]
            for seconds in lags:
                telemetry.DELIVERY_LAG.observe(seconds)
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrby(self.host_stats_key, "metrics_sent", s.delivered_items)
            pipe.hincrby(self.host_stats_key, "points_sent", s.delivered_points)
            lag.record(pipe, lags, acked_at)
            pipe.execute()

    def _sink_failed(self, error: SinkError) -> None:
        self.stats.sink_errors += 1
        telemetry.SINK_ERRORS.labels(self.sink.name, "transient").inc()
        delay = self.sink_backoff.failure()
        if not self._sink_failing:
            logger.warning(
                "%s sink failed (%s); items kept in the queue, retrying with backoff",
                self.sink.name,
                error,
            )
            self._sink_failing = True
        else:
            logger.debug(
                "%s sink still failing (%s); next try in %.1fs", self.sink.name, error, delay
            )

    def _sink_ok(self) -> None:
        if self._sink_failing:
            logger.info("%s sink accepts points again", self.sink.name)
        self._sink_failing = False
        self.sink_backoff.success()

    def _auth_failed(self, exc: SinkAuthError, raws: list[str]) -> None:
        telemetry.SINK_ERRORS.labels(self.sink.name, "auth").inc()
        self.queue.release(self.wid, raws)
        self.sink_backoff.failure(at_least=30.0)
        if time.monotonic() - self._last_auth_log > 300 or not self._last_auth_log:
            logger.error(
                "%s; %d item(s) kept in the queue, nothing is delivered until this is "
                "fixed (vista reload after fixing the settings)",
                exc,
                len(raws),
            )
            self._last_auth_log = time.monotonic()


class Worker(multiprocessing.context.SpawnProcess):
    """A worker process. Started with the 'spawn' method: the agent has threads, and forking a
    threaded process can deadlock the child on a lock held at the time of the fork."""

    def __init__(self, parent_pid: int, config: VistaConfig, index: int, log_spec: LogSpec) -> None:
        super().__init__(name=f"vista-worker-{index}", daemon=False)
        self.parent_pid = parent_pid
        self.config = config
        self.index = index
        self.log_spec = log_spec

    def run(self) -> None:
        procutil.start_child(self.parent_pid, self.log_spec, PARENT_DEATH_SIGNAL)
        client = redisconn.connect(self.config.redis)
        loop = WorkerLoop(
            self.config,
            worker_id(self.config.hostname, self.index),
            client,
            build_sink(self.config),
            parent_pid=self.parent_pid,
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
