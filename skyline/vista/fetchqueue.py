"""The work queue in Redis: push (fetcher), claim / ack / release / dead-letter (workers),
recovery of a dead worker's items, and watermark reads.

Every transition is one Lua script, so it is atomic: an item is always either queued (the set
``vista.fetcher.metrics.json``), held by exactly one worker (the in-flight hash), or gone
(acknowledged or dead-lettered). A metric has at most one item queued or in flight; the rest of
a long window waits in the metric's chain and is released when the head is acknowledged, so
points of one metric are delivered in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import redis.asyncio

from skyline.vista import codec, constants, queue_scripts
from skyline.vista.errors import PayloadError
from skyline.vista.holes import Hole
from skyline.vista.holes import decode as decode_holes
from skyline.vista.holes import encode as encode_holes
from skyline.vista.model import Ack, Claim, DeadLetter, Watermark, dead_letter, new_id
from skyline.vista.redisconn import text


@dataclass(frozen=True)
class WatermarkKeys:
    """Where acknowledgements write the watermark and where the fetcher reads it.

    Carbon sink: Vista is the only writer of Skyline's ``flux.last.metric_data`` and
    ``flux.last.<metric>``. Flux sink: Flux writes those itself once it has sent a point on, and
    drops queued points at or below them, so Vista keeps its own hash and reads the newer of
    the two (see constants.VISTA_WATERMARK_HASH).
    """

    write: str
    write_old_key: bool
    read: tuple[str, ...]


CARBON_WATERMARKS = WatermarkKeys(constants.WATERMARK_HASH, True, (constants.WATERMARK_HASH,))
FLUX_WATERMARKS = WatermarkKeys(
    constants.VISTA_WATERMARK_HASH,
    False,
    (constants.VISTA_WATERMARK_HASH, constants.WATERMARK_HASH),
)


def watermark_keys(sink: str) -> WatermarkKeys:
    return FLUX_WATERMARKS if sink == "flux" else CARBON_WATERMARKS


def script_keys(marks: WatermarkKeys) -> list[str]:
    return [
        constants.QUEUE_KEY,
        constants.INFLIGHT_KEY,
        constants.PENDING_KEY,
        constants.DEAD_KEY,
        constants.ATTEMPTS_KEY,
        constants.WORKERS_KEY,
        marks.write,
        constants.PROGRESS_KEY,
    ]


KEYS = script_keys(CARBON_WATERMARKS)


@dataclass(frozen=True)
class QueueCounts:
    queued: int
    inflight: int
    dead: int
    pending_metrics: int
    inflight_by_worker: dict[str, int] = field(default_factory=dict)


# --- pure argument builders (tested without Redis) --------------------------------------------


def push_args(chains: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    args = [constants.CHAIN_KEY_PREFIX]
    for metric, items in chains:
        if items:
            args += [metric, str(len(items)), *items]
    return args


def ack_args(
    worker: str, acks: Iterable[Ack], marks: WatermarkKeys = CARBON_WATERMARKS
) -> list[str]:
    args = [
        worker,
        constants.CHAIN_KEY_PREFIX,
        constants.WATERMARK_KEY_PREFIX if marks.write_old_key else "",
        str(constants.WATERMARK_KEY_TTL),
        constants.RESOLUTION_KEY_PREFIX,
        str(constants.RESOLUTION_KEY_TTL),
        constants.VISTA_METRICS_KEY,
    ]
    for ack in acks:
        mark = ack.watermark
        args += [
            ack.raw,
            ack.metric,
            str(mark.timestamp) if mark else "",
            codec.encode_watermark_hash(mark) if mark else "",
            codec.encode_watermark_key(mark) if mark else "",
            str(ack.resolution) if ack.resolution else "",
            "1" if ack.delivered else "0",
            "1" if ack.keep else "0",
            str(len(ack.dead)),
        ]
        for dead in ack.dead:
            args += [dead.id, codec.encode_dead(dead)]
    return args


def release_args(
    worker: str,
    raws: Iterable[str],
    *,
    count_attempt: bool,
    max_attempts: int,
    reason: str = "",
) -> list[str]:
    now = time.time()
    args = [worker, "1" if count_attempt else "0", str(max_attempts), constants.CHAIN_KEY_PREFIX]
    args.append(str(now))
    for raw in raws:
        metric = codec.item_metric(raw) or ""
        dead = dead_letter(raw, f"failed {max_attempts} times: {reason}", worker, metric, now=now)
        args += [raw, metric, dead.id, codec.encode_dead(dead)]
    return args


def dead_args(worker: str, dead: Iterable[tuple[str, DeadLetter]]) -> list[str]:
    args = [worker, constants.CHAIN_KEY_PREFIX]
    for raw, letter in dead:
        args += [raw, letter.metric, letter.id, codec.encode_dead(letter)]
    return args


# --- synchronous queue (workers, CLI, agent) --------------------------------------------------


class FetchQueue:
    """The queue seen from a synchronous redis-py client (decode_responses=False)."""

    def __init__(self, client: redis.Redis, marks: WatermarkKeys = CARBON_WATERMARKS) -> None:
        self.client = client
        self.marks = marks
        self.keys = script_keys(marks)
        self._push = client.register_script(queue_scripts.PUSH)
        self._claim = client.register_script(queue_scripts.CLAIM)
        self._ack = client.register_script(queue_scripts.ACK)
        self._release = client.register_script(queue_scripts.RELEASE)
        self._dead = client.register_script(queue_scripts.DEAD_LETTER)
        self._recover = client.register_script(queue_scripts.RECOVER)
        self._reconcile = client.register_script(queue_scripts.RECONCILE)

    def push(self, chains: Iterable[tuple[str, Sequence[str]]]) -> int:
        return int(self._push(keys=self.keys, args=push_args(chains)))

    def claim(self, worker: str, count: int, lease: float) -> list[str]:
        return [c.raw for c in self.claim_items(worker, count, lease)]

    def claim_items(self, worker: str, count: int, lease: float) -> list[Claim]:
        """Claim up to ``count`` items, each with its progress (constants.PROGRESS_KEY)."""
        now = time.time()
        reply = self._claim(keys=self.keys, args=[worker, count, now, now + lease])
        return [
            Claim(text(raw), None if done is None else int(text(done)))
            for raw, done in zip(reply[::2], reply[1::2], strict=True)
        ]

    def held_by(self, worker: str, raws: Sequence[str]) -> list[str]:
        """The items of ``raws`` that the in-flight hash still records as ``worker``'s."""
        if not raws:
            return []
        tags = self.client.hmget(constants.INFLIGHT_KEY, list(raws))
        held = []
        for raw, tag in zip(raws, tags, strict=True):
            try:
                if tag is not None and json.loads(tag).get("worker") == worker:
                    held.append(raw)
            except (ValueError, AttributeError):
                continue
        return held

    def renew(self, worker: str, lease: float) -> None:
        self.client.zadd(constants.WORKERS_KEY, {worker: time.time() + lease})

    def ack(self, worker: str, acks: Sequence[Ack]) -> int:
        if not acks:
            return 0
        return int(self._ack(keys=self.keys, args=ack_args(worker, acks, self.marks)))

    def release(
        self,
        worker: str,
        raws: Sequence[str],
        *,
        count_attempt: bool = False,
        max_attempts: int = 5,
        reason: str = "",
    ) -> tuple[int, int]:
        """Give items back to the queue. Returns (released, dead-lettered)."""
        if not raws:
            return (0, 0)
        args = release_args(
            worker, raws, count_attempt=count_attempt, max_attempts=max_attempts, reason=reason
        )
        released, dead = self._release(keys=self.keys, args=args)
        return int(released), int(dead)

    def dead_letter(self, worker: str, dead: Sequence[tuple[str, DeadLetter]]) -> int:
        if not dead:
            return 0
        return int(self._dead(keys=self.keys, args=dead_args(worker, dead)))

    def recover(self, only_worker: str = "") -> int:
        """Requeue items of workers whose lease expired (or of ``only_worker``)."""
        return int(self._recover(keys=self.keys, args=[time.time(), only_worker]))

    def leave(self, worker: str) -> int:
        """A worker stopping cleanly: give back everything it holds and drop its lease."""
        return self.recover(only_worker=worker)

    def reconcile(self) -> int:
        return int(self._reconcile(keys=self.keys, args=[constants.CHAIN_KEY_PREFIX]))

    def counts(self) -> QueueCounts:
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(constants.QUEUE_KEY)
        pipe.hvals(constants.INFLIGHT_KEY)
        pipe.hlen(constants.DEAD_KEY)
        pipe.hlen(constants.PENDING_KEY)
        queued, tags, dead, pending = pipe.execute()
        by_worker: dict[str, int] = {}
        for tag in tags:
            try:
                worker = str(json.loads(tag)["worker"])
            except (ValueError, KeyError, TypeError):
                worker = "?"
            by_worker[worker] = by_worker.get(worker, 0) + 1
        return QueueCounts(int(queued), len(tags), int(dead), int(pending), by_worker)

    def dead_letters(self) -> list[DeadLetter]:
        letters = []
        for raw in self.client.hvals(constants.DEAD_KEY):
            try:
                letters.append(codec.decode_dead(raw))
            except ValueError:
                continue
        return sorted(letters, key=lambda d: d.dead_at)

    def requeue_dead(self, ids: Sequence[str] = ()) -> int:
        """Put dead letters back in the queue as replay items (delivered even if at or below the
        watermark, which has moved past them). Returns how many were requeued."""
        entries = self.client.hgetall(constants.DEAD_KEY)
        moved = 0
        for key, raw in entries.items():
            dead_id = text(key)
            if ids and dead_id not in ids:
                continue
            try:
                letter = codec.decode_dead(raw)
            except ValueError:
                continue
            item = _as_replay(letter.item)
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(constants.DEAD_KEY, dead_id)
            pipe.sadd(constants.QUEUE_KEY, item)
            pipe.execute()
            moved += 1
        return moved

    def watermarks(self, metrics: Sequence[str]) -> dict[str, Watermark]:
        return read_watermarks_sync(self.client, metrics, self.marks)

    def failing_windows(self) -> dict[str, list[Hole]]:
        """Every metric's failed windows being retried (holes.py)."""
        return {
            text(metric): decode_holes(raw)
            for metric, raw in self.client.hgetall(constants.HOLES_KEY).items()
        }


def _as_replay(raw: str) -> str:
    try:
        item = codec.decode_item(raw)
    except PayloadError:
        return raw  # undecodable: requeued as is, the operator asked for it
    return codec.encode_item(replace(item, id=new_id(), replay=True))


def _newest(*marks: Watermark | None) -> Watermark | None:
    found = [m for m in marks if m is not None]
    return max(found, key=lambda m: m.timestamp) if found else None


def combine_watermarks(
    metrics: Sequence[str],
    marks: WatermarkKeys,
    hashed: Sequence[Sequence[Any]],
    keyed: dict[str, Any],
) -> dict[str, Watermark]:
    """The newest watermark of each metric over the hashes read (in ``marks.read`` order) and
    flux.last.<metric>, which stands in for flux.last.metric_data where that has no field."""
    found: dict[str, Watermark] = {}
    flux_hash = marks.read.index(constants.WATERMARK_HASH)
    for i, metric in enumerate(metrics):
        candidates = [codec.decode_watermark_hash(values[i]) for values in hashed]
        if hashed[flux_hash][i] is None:
            candidates.append(codec.decode_watermark_key(keyed.get(metric)))
        mark = _newest(*candidates)
        if mark is not None:
            found[metric] = mark
    return found


def _missing_from_flux(
    metrics: Sequence[str], marks: WatermarkKeys, hashed: Sequence[Sequence[Any]]
) -> list[str]:
    values = hashed[marks.read.index(constants.WATERMARK_HASH)]
    return [m for m, raw in zip(metrics, values, strict=True) if raw is None]


def read_watermarks_sync(
    client: redis.Redis, metrics: Sequence[str], marks: WatermarkKeys = CARBON_WATERMARKS
) -> dict[str, Watermark]:
    """The last point delivered for each metric (see WatermarkKeys)."""
    if not metrics:
        return {}
    names = list(metrics)
    pipe = client.pipeline(transaction=False)
    for key in marks.read:
        pipe.hmget(key, names)
    hashed = pipe.execute()
    missing = _missing_from_flux(names, marks, hashed)
    keyed: dict[str, Any] = {}
    if missing:
        values = client.mget([constants.WATERMARK_KEY_PREFIX + m for m in missing])
        keyed = dict(zip(missing, values, strict=True))
    return combine_watermarks(names, marks, hashed, keyed)


# --- asynchronous side (the fetcher thread's event loop) --------------------------------------


class AsyncFetchQueue:
    """What the fetcher needs: watermarks, pending metrics, and push."""

    def __init__(
        self, client: redis.asyncio.Redis, marks: WatermarkKeys = CARBON_WATERMARKS
    ) -> None:
        self.client = client
        self.marks = marks
        self.keys = script_keys(marks)
        self._push = client.register_script(queue_scripts.PUSH)
        self._reconcile = client.register_script(queue_scripts.RECONCILE)

    async def push(
        self,
        chains: Sequence[tuple[str, Sequence[str]]],
        batch: int = 500,
        *,
        holes: Mapping[str, Sequence[Hole]] | None = None,
    ) -> int:
        """Queue each metric's chain (skipped for a metric already pending). ``holes``: the
        metrics' failed windows (holes.py) to record, with the first batch, atomically."""
        queued = 0
        for start in range(0, len(chains) or 1, batch):
            part = chains[start : start + batch]
            if start == 0 and holes:
                pipe = self.client.pipeline(transaction=True)
                for metric, found in holes.items():
                    if found:
                        pipe.hset(constants.HOLES_KEY, metric, encode_holes(found))
                    else:
                        pipe.hdel(constants.HOLES_KEY, metric)
                if part:
                    await self._push(keys=self.keys, args=push_args(part), client=pipe)
                done = await pipe.execute()
                queued += int(done[-1]) if part else 0
            elif part:
                queued += int(await self._push(keys=self.keys, args=push_args(part)))
        return queued

    async def holes(self, metrics: Sequence[str]) -> dict[str, tuple[Hole, ...]]:
        """The failed windows recorded for these metrics (only those that have some)."""
        if not metrics or not await self.client.exists(constants.HOLES_KEY):
            return {}
        values = await self.client.hmget(constants.HOLES_KEY, list(metrics))
        return {
            m: tuple(decode_holes(v)) for m, v in zip(metrics, values, strict=True) if v is not None
        }

    async def pending(self, metrics: Sequence[str]) -> set[str]:
        if not metrics:
            return set()
        values = await self.client.hmget(constants.PENDING_KEY, list(metrics))
        return {m for m, v in zip(metrics, values, strict=True) if v is not None}

    async def watermarks(self, metrics: Sequence[str]) -> dict[str, Watermark]:
        if not metrics:
            return {}
        names = list(metrics)
        pipe = self.client.pipeline(transaction=False)
        for key in self.marks.read:
            pipe.hmget(key, names)
        hashed = await pipe.execute()
        missing = _missing_from_flux(names, self.marks, hashed)
        keyed: dict[str, Any] = {}
        if missing:
            values = await self.client.mget([constants.WATERMARK_KEY_PREFIX + m for m in missing])
            keyed = dict(zip(missing, values, strict=True))
        return combine_watermarks(names, self.marks, hashed, keyed)

    async def reconcile(self) -> int:
        return int(await self._reconcile(keys=self.keys, args=[constants.CHAIN_KEY_PREFIX]))
