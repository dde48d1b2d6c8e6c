"""The Flux double's worker: what Skyline Flux does with a point after its listener took it.

Flux's listener (``skyline/flux/listen.py``) puts each valid item on an in-memory queue and
answers 204; its worker (``skyline/flux/worker.py``) takes the items one by one, decides whether
to check them against ``flux.last``, drops a checked point at or below it, and adds the others to
the pickle batch for carbon, writing ``flux.last`` as it does. These are its rules (see
``docs/skyline-compatibility.md`` and the module docstring of ``tests/fakes/flux.py``):

* ``FLUX_CHECK_LAST_TIMESTAMP`` (default True): a point sent **without** ``fill`` is checked.
* With ``VISTA_ENABLED``, any point (``fill`` or not) of a metric in Flux's copy of the Redis set
  ``vista.metrics`` is checked; but Flux reads that set (SSCAN) only when
  ``FLUX_CHECK_LAST_TIMESTAMP`` is False, at start and then once a minute. With the default the
  set is never read, so ``fill`` points are never checked.
* A checked point is dropped when ``ts <= last``, where ``last`` comes from the hash field
  ``flux.last.metric_data[<metric>]`` (a Python literal ``{'timestamp': ts, 'value': v}``), else
  from ``flux.last.<metric>`` (``[ts, v]``). A ``last`` that is missing, unreadable or 0 checks
  nothing.
* A point that is forwarded and was checked writes ``HSET flux.last.metric_data <metric>
  "{'timestamp': ts, 'value': v}"`` and ``SETEX flux.last.<metric> 3600 "[ts, v]"``. A point that
  was not checked (``fill`` with the default settings) does not move ``flux.last``.

What it forwards is counted per (metric, timestamp): ``forwarded_twice`` is the number of points
Flux would have sent to carbon again, which everything downstream of Flux sees twice, and
``forwarded_again_from`` says which request (numbered in arrival order) had carried each of
them the time before: a client that can only ever send its one unacknowledged request again has
at most one such request per crash, and each holds at most one request's worth.

The worker runs in its own thread, as Flux's runs in its own process. The listener hands it a
request's items only once the answer has been written, so ``flux.last`` never moves before the
client has its 204.
"""

from __future__ import annotations

import ast
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import redis

__all__ = [
    "FLUX_LAST_HASH",
    "FLUX_LAST_KEY_PREFIX",
    "FLUX_LAST_KEY_TTL",
    "VISTA_METRICS_KEY",
    "FluxWorker",
    "ForwardedPoint",
    "QueuedPoint",
    "last_timestamp",
]

FLUX_LAST_HASH: Final = "flux.last.metric_data"
FLUX_LAST_KEY_PREFIX: Final = "flux.last."
FLUX_LAST_KEY_TTL: Final = 3600
VISTA_METRICS_KEY: Final = "vista.metrics"
VISTA_METRICS_EVERY: Final = 60.0
"""Flux re-reads vista.metrics when 60 s have passed since it last sent its own stats."""


@dataclass(frozen=True, slots=True)
class QueuedPoint:
    """One item of Flux's httpMetricDataQueue: ``[metric, value, timestamp, backfill]``."""

    metric: str
    value: float
    timestamp: int
    fill: bool


@dataclass(frozen=True, slots=True)
class ForwardedPoint:
    """One point Flux's worker added to its pickle batch for carbon."""

    metric: str
    timestamp: int
    value: float
    fill: bool
    checked: bool  # compared with flux.last (and so it moved flux.last)
    again: bool  # this (metric, timestamp) had been forwarded before
    request: int  # the request that carried it (numbered from 1 in arrival order)


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


def last_timestamp(hash_value: bytes | str | None, key_value: bytes | str | None) -> int:
    """Flux's ``last_metric_timestamp``: from the hash field, else the old key; 0 if none.

    Each is read with ``literal_eval``; anything unreadable counts as no timestamp (Flux logs
    the error and goes on without the check).
    """
    text = _text(hash_value)
    if text:
        try:
            body = ast.literal_eval(text)
            return int(body["timestamp"])
        except (ValueError, SyntaxError, TypeError, KeyError, IndexError, MemoryError):
            return 0
    text = _text(key_value)
    if text:
        try:
            body = ast.literal_eval(text)
            return int(body[0])
        except (ValueError, SyntaxError, TypeError, KeyError, IndexError, MemoryError):
            return 0
    return 0


def hash_literal(timestamp: int, value: float) -> str:
    """What Flux writes in flux.last.metric_data: ``str({'timestamp': ts, 'value': v})``."""
    return str({"timestamp": int(timestamp), "value": float(value)})


def key_literal(timestamp: int, value: float) -> str:
    """What Flux writes in flux.last.<metric>: ``str([ts, v])``."""
    return str([int(timestamp), float(value)])


class FluxWorker:
    """Flux's worker in a thread: check, drop or forward, write flux.last, count.

    ``client`` is the Redis that holds ``flux.last.*`` and ``vista.metrics`` (bytes or decoded
    replies). ``clock`` is the monotonic clock of the once-a-minute ``vista.metrics`` read.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        check_last_timestamp: bool = True,
        vista_enabled: bool = True,
        vista_metrics_every: float = VISTA_METRICS_EVERY,
        lag: float = 0.0,
        record: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.check_last_timestamp = check_last_timestamp
        self.vista_enabled = vista_enabled
        self.vista_metrics_every = vista_metrics_every
        self.lag = lag
        self.record = record
        self._clock = clock
        self._queue: queue.Queue[tuple[float, int, Sequence[QueuedPoint]] | tuple[()] | None] = (
            queue.Queue()
        )
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # points handed over and not processed yet
        self._vista_metrics: frozenset[str] = frozenset()
        self._next_vista_read = 0.0
        self._seen: dict[str, dict[int, int]] = {}  # metric -> timestamp -> last carrier
        self._again_from: dict[int, int] = {}  # previous carrier -> its points forwarded again
        self._forwarded: list[ForwardedPoint] = []
        self.forwarded_count = 0
        self.forwarded_twice = 0
        self.dropped_count = 0  # checked and at or below flux.last
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        # Flux reads vista.metrics once when its worker starts (when it would read it at all).
        self._read_vista_metrics()
        self._thread = threading.Thread(target=self._run, name="fake-flux-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout=timeout)
        self._thread = None

    # ------------------------------------------------------------------ input

    def expect(self, count: int) -> None:
        """The listener has taken ``count`` items that it hands over later (after its answer):
        :meth:`wait_idle` waits for them too."""
        if count:
            with self._lock:
                self._pending += count

    def hand_over(self, points: Sequence[QueuedPoint], request: int = 0) -> None:
        """The listener's queued items of request number ``request`` (announced with
        :meth:`expect`)."""
        if points:
            self._queue.put((self._clock(), request, tuple(points)))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every point handed over has been processed. False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def refresh_vista_metrics(self) -> None:
        """Read vista.metrics now, as Flux does once a minute (when it reads it at all)."""
        self._read_vista_metrics()

    @property
    def vista_metrics(self) -> frozenset[str]:
        """Flux's current copy of vista.metrics (empty unless it reads the set)."""
        return self._vista_metrics

    # ------------------------------------------------------------------ results

    @property
    def forwarded(self) -> list[ForwardedPoint]:
        with self._lock:
            return list(self._forwarded)

    def forwarded_by_metric(self) -> dict[str, list[tuple[int, float]]]:
        """Each metric's forwarded ``(timestamp, value)`` pairs, in order (record=True)."""
        result: dict[str, list[tuple[int, float]]] = {}
        for point in self.forwarded:
            result.setdefault(point.metric, []).append((point.timestamp, point.value))
        return result

    def forwarded_timestamps(self) -> dict[str, set[int]]:
        """The distinct timestamps forwarded per metric (kept even when record=False)."""
        with self._lock:
            return {metric: set(stamps) for metric, stamps in self._seen.items()}

    def forwarded_again_from(self) -> dict[int, int]:
        """For each request whose points were forwarded again by a later request: how many
        of them (each point is counted against the request that carried it just before)."""
        with self._lock:
            return dict(self._again_from)

    # ------------------------------------------------------------------ the worker

    def _reads_vista_metrics(self) -> bool:
        return not self.check_last_timestamp and self.vista_enabled

    def _read_vista_metrics(self) -> None:
        self._next_vista_read = self._clock() + self.vista_metrics_every
        if not self._reads_vista_metrics():
            self._vista_metrics = frozenset()
            return
        try:
            members = self.client.sscan_iter(VISTA_METRICS_KEY, match="*")
            self._vista_metrics = frozenset(_text(m) or "" for m in members)
        except redis.RedisError as exc:  # Flux: `except: vista_metrics = []`
            self.errors.append(f"vista.metrics: {exc}")
            self._vista_metrics = frozenset()

    def _run(self) -> None:
        while True:
            try:
                entry = self._queue.get(timeout=1.0)
            except queue.Empty:
                entry = ()
            if entry is None:
                return
            if self._clock() >= self._next_vista_read:
                self._read_vista_metrics()
            if entry:
                self._handle(*entry)

    def _handle(self, handed_at: float, request: int, points: Sequence[QueuedPoint]) -> None:
        if self.lag:
            wait = handed_at + self.lag - self._clock()
            if wait > 0:
                time.sleep(wait)
        try:
            self._process(points, request)
        except redis.RedisError as exc:
            self.errors.append(f"processing: {exc}")
        finally:
            with self._idle:
                self._pending -= len(points)
                self._idle.notify_all()

    def _must_check(self, point: QueuedPoint) -> bool:
        check = not point.fill and self.check_last_timestamp
        if self.vista_enabled and point.metric in self._vista_metrics:
            check = True
        return check

    def _process(self, points: Sequence[QueuedPoint], request: int) -> None:
        checked_metrics = sorted({p.metric for p in points if self._must_check(p)})
        last: dict[str, int] = {}
        if checked_metrics:
            # Flux GETs the keys point by point; only this worker writes them, so one read per
            # request and a running value within it decide exactly the same.
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(FLUX_LAST_HASH, checked_metrics)
            pipe.mget([FLUX_LAST_KEY_PREFIX + m for m in checked_metrics])
            hashed, keyed = pipe.execute()
            for metric, h, k in zip(checked_metrics, hashed, keyed, strict=True):
                last[metric] = last_timestamp(h, k)
        writes: dict[str, tuple[int, float]] = {}
        for point in points:
            checked = self._must_check(point)
            if checked:
                known = last.get(point.metric, 0)
                if known and point.timestamp <= known:
                    with self._lock:
                        self.dropped_count += 1
                    continue
                last[point.metric] = point.timestamp
                writes[point.metric] = (point.timestamp, point.value)
            self._forward(point, checked, request)
        if writes:
            pipe = self.client.pipeline(transaction=False)
            for metric, (ts, value) in writes.items():
                pipe.hset(FLUX_LAST_HASH, metric, hash_literal(ts, value))
                # SETEX (redis-py spells it set(ex=)).
                pipe.set(
                    FLUX_LAST_KEY_PREFIX + metric, key_literal(ts, value), ex=FLUX_LAST_KEY_TTL
                )
            pipe.execute()

    def _forward(self, point: QueuedPoint, checked: bool, request: int) -> None:
        with self._lock:
            stamps = self._seen.setdefault(point.metric, {})
            previous = stamps.get(point.timestamp)
            stamps[point.timestamp] = request
            again = previous is not None
            self.forwarded_count += 1
            if previous is not None:
                self.forwarded_twice += 1
                self._again_from[previous] = self._again_from.get(previous, 0) + 1
            if self.record:
                self._forwarded.append(
                    ForwardedPoint(
                        point.metric,
                        point.timestamp,
                        point.value,
                        point.fill,
                        checked,
                        again,
                        request,
                    )
                )
