"""The work queue against a real redis-server: every Lua transition, concurrency, chains,
watermarks, dead letters, recovery and reconciliation (skyline/vista/fetchqueue.py)."""

from __future__ import annotations

import ast
import json
import threading
import time
from dataclasses import replace

import redis

from skyline.vista import codec, constants
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.model import Ack, Watermark, dead_letter
from skyline.vista.testing.servers import RedisServer
from tests.support.items import make_item, points

T0 = 1_700_000_040  # a minute boundary
W1 = "host-a:101:0"
W2 = "host-b:202:1"


def chain(metric: str, windows: int, per_item: int, start: int = T0) -> list[str]:
    """One long window of ``windows * per_item`` points cut into ``windows`` items."""
    return [
        make_item(metric, points(start + 60 * per_item * n, per_item, first_value=n * 100.0), seq=n)
        for n in range(windows)
    ]


def last_point(raw: str) -> Watermark:
    ts, value = codec.decode_item(raw).points[-1]
    return Watermark(ts, value)


def ack_of(raw: str, *, resolution: int | None = 60, delivered: bool = True) -> Ack:
    return Ack(
        raw=raw,
        metric=codec.decode_item(raw).metric,
        watermark=last_point(raw),
        resolution=resolution,
        delivered=delivered,
    )


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def queued(client: redis.Redis) -> set[str]:
    return {text(m) for m in client.smembers(constants.QUEUE_KEY)}


def inflight(client: redis.Redis) -> dict[str, str]:
    tags = client.hgetall(constants.INFLIGHT_KEY)
    return {text(k): json.loads(v)["worker"] for k, v in tags.items()}


def pending(client: redis.Redis) -> dict[str, str]:
    return {text(k): text(v) for k, v in client.hgetall(constants.PENDING_KEY).items()}


def chain_len(client: redis.Redis, metric: str) -> int:
    return int(client.llen(constants.CHAIN_KEY_PREFIX + metric))


# ------------------------------------------------------------------------- push, claim, ack


def test_push_claim_ack_round_trip(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    items = {m: make_item(m, points(T0, 5)) for m in ("vista.a", "vista.b", "vista.c")}

    assert queue.push([(m, [raw]) for m, raw in items.items()]) == 3
    assert queued(redis_client) == set(items.values())
    assert pending(redis_client) == items
    counts = queue.counts()
    assert (counts.queued, counts.inflight, counts.pending_metrics, counts.dead) == (3, 0, 3, 0)

    claimed = queue.claim(W1, 10, lease=60)
    assert sorted(claimed) == sorted(items.values())
    assert queued(redis_client) == set()
    assert inflight(redis_client) == {raw: W1 for raw in items.values()}
    lease = redis_client.zscore(constants.WORKERS_KEY, W1)
    assert lease is not None and time.time() + 55 < lease <= time.time() + 60
    assert queue.claim(W2, 10, lease=60) == []  # nothing left for anyone else

    assert queue.ack(W1, [ack_of(raw) for raw in claimed]) == 3
    counts = queue.counts()
    assert (counts.queued, counts.inflight, counts.pending_metrics, counts.dead) == (0, 0, 0, 0)
    assert queue.watermarks(sorted(items)) == {m: Watermark(T0 + 240, 4.5) for m in sorted(items)}
    # The metric is free again: a new item is queued.
    assert queue.push([("vista.a", [make_item("vista.a", points(T0 + 300, 1))])]) == 1


def test_concurrent_consumers_claim_every_item_exactly_once(redis_server: RedisServer) -> None:
    """4 threads, each on its own connection, claim and acknowledge 1,500 metrics x 3-item
    chains: every item is claimed once, and each metric's items in chain order."""
    metrics = [f"vista.concurrent.m{i:04d}" for i in range(1500)]
    chains = {m: chain(m, 3, 2) for m in metrics}
    seq_of = {raw: n for items in chains.values() for n, raw in enumerate(items)}
    with redis_server.client() as setup:
        setup.flushall()
        assert FetchQueue(setup).push(list(chains.items())) == len(metrics)

    log_lock = threading.Lock()
    claims: list[tuple[str, str]] = []  # (worker, raw) in claim order, appended before the ack
    by_worker: dict[str, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def consume(worker: str) -> None:
        try:
            with redis_server.client() as client:
                queue = FetchQueue(client)
                start.wait()
                idle = 0
                while idle < 20:
                    raws = queue.claim(worker, 7, lease=60)
                    if not raws:
                        idle += 1
                        time.sleep(0.005)
                        continue
                    idle = 0
                    with log_lock:
                        claims.extend((worker, raw) for raw in raws)
                        by_worker[worker] = by_worker.get(worker, 0) + len(raws)
                    queue.ack(worker, [ack_of(raw) for raw in raws])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)

    raws = [raw for _, raw in claims]
    assert len(raws) == len(seq_of) == 4500
    assert set(raws) == set(seq_of)  # every item, and (same length) none twice
    assert len(by_worker) == 4 and all(n > 0 for n in by_worker.values())
    order: dict[str, list[int]] = {}
    for raw in raws:
        order.setdefault(codec.decode_item(raw).metric, []).append(seq_of[raw])
    assert all(seqs == [0, 1, 2] for seqs in order.values())
    with redis_server.client() as check:
        counts = FetchQueue(check).counts()
        assert (counts.queued, counts.inflight, counts.pending_metrics) == (0, 0, 0)
        assert check.keys(constants.CHAIN_KEY_PREFIX + "*") == []


def test_a_metric_already_pending_is_not_pushed_again(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    first = make_item("vista.p", points(T0, 2))
    assert queue.push([("vista.p", [first])]) == 1

    # Queued: a newer fetch of the same metric is not added (neither head nor chain).
    later = chain("vista.p", 2, 2, start=T0 + 600)
    other = make_item("vista.q", [(T0, 1.0)])
    assert queue.push([("vista.p", later), ("vista.q", [other])]) == 1
    assert queued(redis_client) == {first, other}
    assert chain_len(redis_client, "vista.p") == 0
    assert pending(redis_client)["vista.p"] == first

    # In flight: still not added.
    assert first in queue.claim(W1, 10, lease=60)
    assert queue.push([("vista.p", later)]) == 0
    assert [r for r in queued(redis_client) if "vista.p" in r] == []

    # Acknowledged: the metric can be queued again.
    queue.ack(W1, [ack_of(first)])
    assert queue.push([("vista.p", later)]) == 1
    assert pending(redis_client)["vista.p"] == later[0]
    assert chain_len(redis_client, "vista.p") == 1


# ----------------------------------------------------------------------------------- chains


def test_a_chain_is_delivered_strictly_in_order(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    items = chain("vista.long", 3, 4)
    assert queue.push([("vista.long", items)]) == 1
    assert queued(redis_client) == {items[0]}
    assert chain_len(redis_client, "vista.long") == 2

    for n, expected in enumerate(items):
        got = queue.claim(W1, 50, lease=60)
        assert got == [expected], f"item {n}"
        assert queue.claim(W2, 50, lease=60) == []  # only the head is ever claimable
        assert queue.push([("vista.long", chain("vista.long", 3, 4, start=T0 + 9000))]) == 0
        assert queue.ack(W1, [ack_of(expected)]) == 1
        assert queue.watermarks(["vista.long"])["vista.long"] == last_point(expected)
    assert pending(redis_client) == {}
    assert not redis_client.exists(constants.CHAIN_KEY_PREFIX + "vista.long")
    assert queue.claim(W1, 50, lease=60) == []


def test_release_puts_items_back_and_the_chain_waits(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    items = chain("vista.rel", 2, 3)
    other = make_item("vista.other", points(T0, 3))
    queue.push([("vista.rel", items), ("vista.other", [other])])
    claimed = queue.claim(W1, 10, lease=60)
    assert sorted(claimed) == sorted([items[0], other])

    assert queue.release(W2, claimed) == (0, 0)  # not W2's to give back
    assert queued(redis_client) == set()
    assert queue.release(W1, claimed) == (2, 0)
    assert queued(redis_client) == {items[0], other}
    assert inflight(redis_client) == {}
    assert redis_client.hlen(constants.ATTEMPTS_KEY) == 0  # count_attempt=False
    assert chain_len(redis_client, "vista.rel") == 1  # released, not acknowledged: no advance
    assert sorted(queue.claim(W2, 10, lease=60)) == sorted([items[0], other])


# ------------------------------------------------------------------------------ watermarks


def test_ack_writes_skyline_compatible_watermark_metrics_and_resolution(
    redis_client: redis.Redis,
) -> None:
    queue = FetchQueue(redis_client)
    metric = "vista.prom.node_load1"
    raw = make_item(metric, [(T0, 0.25), (T0 + 60, 1.5), (T0 + 120, 100243039089.0)])
    queue.push([(metric, [raw])])
    assert queue.claim(W1, 1, lease=60) == [raw]
    assert queue.ack(W1, [ack_of(raw, resolution=60)]) == 1

    hashed = redis_client.hget(constants.WATERMARK_HASH, metric)
    assert hashed is not None
    expected = {"timestamp": T0 + 120, "value": 100243039089.0}
    assert json.loads(hashed) == expected
    assert ast.literal_eval(text(hashed)) == expected  # what Skyline's flux reads
    keyed = redis_client.get(constants.WATERMARK_KEY_PREFIX + metric)
    assert keyed is not None
    assert json.loads(keyed) == [T0 + 120, 100243039089.0]
    assert ast.literal_eval(text(keyed)) == [T0 + 120, 100243039089.0]
    assert 3590 <= redis_client.ttl(constants.WATERMARK_KEY_PREFIX + metric) <= 3600
    assert redis_client.smembers(constants.VISTA_METRICS_KEY) == {metric.encode()}
    assert redis_client.get(constants.RESOLUTION_KEY_PREFIX + metric) == b"60"
    assert 3590 <= redis_client.ttl(constants.RESOLUTION_KEY_PREFIX + metric) <= 3600
    assert queued(redis_client) == set() and inflight(redis_client) == {}
    assert pending(redis_client) == {}


def test_ack_without_delivery_leaves_vista_metrics_alone(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raw = make_item("vista.none", [])
    queue.push([("vista.none", [raw])])
    queue.claim(W1, 1, lease=60)
    assert queue.ack(W1, [Ack(raw, "vista.none", None, None, delivered=False)]) == 1
    assert redis_client.smembers(constants.VISTA_METRICS_KEY) == set()
    assert not redis_client.hexists(constants.WATERMARK_HASH, "vista.none")
    assert not redis_client.exists(constants.RESOLUTION_KEY_PREFIX + "vista.none")
    assert queued(redis_client) == set() and inflight(redis_client) == {}


def test_the_watermark_never_moves_backwards(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    newer = make_item("vista.wm", points(T0 + 600, 2))  # ends at T0 + 660
    older = make_item("vista.wm", points(T0, 2), replay=True)  # a replay: ends at T0 + 60
    redis_client.sadd(constants.QUEUE_KEY, newer, older)
    claimed = queue.claim(W1, 2, lease=60)
    assert sorted(claimed) == sorted([newer, older])

    queue.ack(W1, [ack_of(newer)])
    queue.ack(W1, [ack_of(older)])
    assert queue.watermarks(["vista.wm"]) == {"vista.wm": Watermark(T0 + 660, 1.5)}
    assert redis_client.get(constants.WATERMARK_KEY_PREFIX + "vista.wm") == b"[1700000700, 1.5]"

    # A watermark flux wrote as a Python literal is compared too, and a newer one replaces it.
    redis_client.hset(
        constants.WATERMARK_HASH, "vista.py", f"{{'timestamp': {T0 + 3000}, 'value': 7.0}}"
    )
    stale = make_item("vista.py", points(T0, 3))
    fresh = make_item("vista.py", points(T0 + 3600, 1, first_value=9.0))
    redis_client.sadd(constants.QUEUE_KEY, stale, fresh)
    queue.claim(W1, 2, lease=60)
    queue.ack(W1, [ack_of(stale)])
    assert queue.watermarks(["vista.py"]) == {"vista.py": Watermark(T0 + 3000, 7.0)}
    queue.ack(W1, [ack_of(fresh)])
    assert queue.watermarks(["vista.py"]) == {"vista.py": Watermark(T0 + 3600, 9.0)}


def test_partial_ack_keeps_the_item_held_until_released(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raw = make_item("vista.part", points(T0, 4))
    queue.push([("vista.part", [raw])])
    queue.claim(W1, 1, lease=60)
    partial = Ack(raw, "vista.part", Watermark(T0 + 60, 1.5), 60, delivered=True, keep=True)
    assert queue.ack(W1, [partial]) == 0
    assert inflight(redis_client) == {raw: W1}
    assert queue.watermarks(["vista.part"]) == {"vista.part": Watermark(T0 + 60, 1.5)}
    assert queue.release(W1, [raw]) == (1, 0)
    assert queued(redis_client) == {raw} and pending(redis_client) == {"vista.part": raw}


def progress(client: redis.Redis) -> dict[str, int]:
    return {text(k): int(v) for k, v in client.hgetall(constants.PROGRESS_KEY).items()}


def test_a_partial_ack_records_the_items_progress_for_the_next_claim(
    redis_client: redis.Redis,
) -> None:
    """The progress is written in the ACK step, only forward, outlives a release and a
    recovery, comes back with the next claim, and leaves with the item."""
    queue = FetchQueue(redis_client)
    raw = make_item("vista.prog", points(T0, 6))
    queue.push([("vista.prog", [raw])])
    assert [(c.raw, c.progress) for c in queue.claim_items(W1, 5, lease=60)] == [(raw, None)]

    def keep(ts: int) -> Ack:
        return Ack(raw, "vista.prog", Watermark(ts, 1.0), 60, delivered=True, keep=True)

    queue.ack(W1, [keep(T0 + 120)])
    queue.ack(W1, [keep(T0 + 60)])  # an older answer never moves it back
    assert progress(redis_client) == {raw: T0 + 120}
    queue.release(W1, [raw])
    assert [(c.raw, c.progress) for c in queue.claim_items(W2, 5, lease=60)] == [(raw, T0 + 120)]
    queue.ack(W2, [keep(T0 + 180)])
    assert queue.recover(only_worker=W2) == 1  # the worker died: the progress stays
    assert [c.progress for c in queue.claim_items(W1, 5, lease=60)] == [T0 + 180]
    assert queue.ack(W1, [ack_of(raw)]) == 1
    assert progress(redis_client) == {}


def test_an_items_progress_leaves_when_it_is_dead_lettered_or_lost(
    redis_client: redis.Redis,
) -> None:
    queue = FetchQueue(redis_client)
    a, b, c = (make_item(f"vista.prog.{n}", points(T0, 4)) for n in "abc")
    queue.push([(f"vista.prog.{n}", [raw]) for n, raw in zip("abc", (a, b, c), strict=True)])
    assert len(queue.claim(W1, 5, lease=60)) == 3
    queue.ack(W1, [Ack(raw, codec.decode_item(raw).metric, Watermark(T0 + 60, 0.0), keep=True)
                   for raw in (a, b, c)])  # fmt: skip
    assert set(progress(redis_client)) == {a, b, c}
    assert queue.release(W1, [a], count_attempt=True, max_attempts=1, reason="boom") == (0, 1)
    queue.dead_letter(W1, [(b, dead_letter(b, "undecodable", W1, "vista.prog.b", now=T0))])
    assert set(progress(redis_client)) == {c}
    queue.release(W1, [c])
    redis_client.delete(constants.QUEUE_KEY)  # an operator deleted the queue
    queue.reconcile()
    assert progress(redis_client) == {}


def test_watermarks_fall_back_to_the_old_key_and_read_python_literals(
    redis_client: redis.Redis,
) -> None:
    queue = FetchQueue(redis_client)
    redis_client.hset(constants.WATERMARK_HASH, "h.json", '{"timestamp": 100, "value": 1.5}')
    redis_client.hset(constants.WATERMARK_HASH, "h.py", "{'timestamp': 200, 'value': None}")
    redis_client.set(constants.WATERMARK_KEY_PREFIX + "k.py", "[300, 2.5]")
    redis_client.set(constants.WATERMARK_KEY_PREFIX + "k.none", "[400, None]")
    redis_client.hset(constants.WATERMARK_HASH, "garbage", "not a watermark")
    marks = queue.watermarks(["h.json", "h.py", "k.py", "k.none", "garbage", "absent"])
    assert marks == {
        "h.json": Watermark(100, 1.5),
        "h.py": Watermark(200, None),
        "k.py": Watermark(300, 2.5),
        "k.none": Watermark(400, None),
    }


# ---------------------------------------------------------------------------- dead letters


def test_count_attempt_dead_letters_a_poison_item_with_its_reason(
    redis_client: redis.Redis,
) -> None:
    queue = FetchQueue(redis_client)
    items = chain("vista.poison", 2, 2)
    queue.push([("vista.poison", items)])
    for attempt in (1, 2):
        assert queue.claim(W1, 5, lease=60) == [items[0]]
        assert queue.release(W1, [items[0]], count_attempt=True, max_attempts=3, reason="boom") == (
            1,
            0,
        )
        assert redis_client.hget(constants.ATTEMPTS_KEY, items[0]) == str(attempt).encode()
    assert queue.claim(W1, 5, lease=60) == [items[0]]
    assert queue.release(W1, [items[0]], count_attempt=True, max_attempts=3, reason="boom") == (
        0,
        1,
    )

    letters = queue.dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.reason == "failed 3 times: boom"
    assert (letter.item, letter.metric, letter.worker) == (items[0], "vista.poison", W1)
    assert redis_client.hlen(constants.ATTEMPTS_KEY) == 0
    assert queue.counts().dead == 1
    # The poison head no longer blocks its metric: the chain's next item is released.
    assert queued(redis_client) == {items[1]}
    assert pending(redis_client) == {"vista.poison": items[1]}


def test_dead_letter_and_ack_with_dead_points(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    bad, good = make_item("vista.bad", points(T0, 2)), make_item("vista.good", points(T0, 3))
    queue.push([("vista.bad", [bad]), ("vista.good", [good])])
    queue.claim(W1, 5, lease=60)
    letter = dead_letter(bad, "undecodable item: test", W1, "vista.bad", now=time.time())
    assert queue.dead_letter(W1, [(bad, letter)]) == 1
    rejected = dead_letter(
        make_item("vista.good", [(T0, 0.5)]), "Flux 207: quota", W1, "vista.good", now=T0
    )
    ack = replace(ack_of(good), dead=(rejected,))
    assert queue.ack(W1, [ack]) == 1
    assert {(d.metric, d.reason) for d in queue.dead_letters()} == {
        ("vista.bad", "undecodable item: test"),
        ("vista.good", "Flux 207: quota"),
    }
    counts = queue.counts()
    assert (counts.queued, counts.inflight, counts.pending_metrics, counts.dead) == (0, 0, 0, 2)


def test_requeue_dead_turns_dead_letters_into_replay_items(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raws = [make_item(f"vista.dead{n}", points(T0, 2)) for n in range(3)]
    queue.push([(f"vista.dead{n}", [raw]) for n, raw in enumerate(raws)])
    queue.claim(W1, 5, lease=60)
    letters = [
        dead_letter(raw, "Flux 400: bad", W1, f"vista.dead{n}", now=time.time())
        for n, raw in enumerate(raws)
    ]
    queue.dead_letter(W1, list(zip(raws, letters, strict=True)))
    assert queue.counts().dead == 3 and queued(redis_client) == set()

    assert queue.requeue_dead([letters[1].id]) == 1
    assert {d.id for d in queue.dead_letters()} == {letters[0].id, letters[2].id}
    (replayed,) = queued(redis_client)
    item, original = codec.decode_item(replayed), codec.decode_item(raws[1])
    assert item.replay is True and item.id != original.id
    assert (item.metric, item.points, item.source) == (
        original.metric,
        original.points,
        "prometheus",
    )

    assert queue.requeue_dead() == 2
    assert queue.counts().dead == 0
    requeued = [codec.decode_item(r) for r in queued(redis_client)]
    assert sorted(i.metric for i in requeued) == ["vista.dead0", "vista.dead1", "vista.dead2"]
    assert all(i.replay for i in requeued)
    everything = queued(redis_client)
    assert len(everything) == 3 and replayed in everything
    assert sorted(queue.claim(W2, 10, lease=60)) == sorted(everything)


# -------------------------------------------------------------------------------- recovery


def test_recover_requeues_items_of_expired_leases_only(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raws = [make_item(f"vista.r{n}", points(T0, 1)) for n in range(6)]
    queue.push([(f"vista.r{n}", [raw]) for n, raw in enumerate(raws)])
    dying = queue.claim(W1, 3, lease=0.05)
    alive = queue.claim(W2, 3, lease=60)
    assert len(dying) == len(alive) == 3
    time.sleep(0.1)  # W1's lease runs out

    assert queue.recover() == 3
    assert queued(redis_client) == set(dying)
    assert inflight(redis_client) == {raw: W2 for raw in alive}
    assert redis_client.zscore(constants.WORKERS_KEY, W1) is None  # stale lease dropped
    assert redis_client.zscore(constants.WORKERS_KEY, W2) is not None
    assert queue.recover() == 0
    # A live worker's items are never taken, and it can still acknowledge them.
    assert queue.ack(W2, [ack_of(raw) for raw in alive]) == 3
    assert queue.counts().pending_metrics == 3


def test_recover_only_worker_takes_back_a_dead_workers_items(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raws = [make_item(f"vista.o{n}", points(T0, 1)) for n in range(4)]
    queue.push([(f"vista.o{n}", [raw]) for n, raw in enumerate(raws)])
    died = queue.claim(W1, 2, lease=60)  # its lease is still valid: the agent saw it die
    alive = queue.claim(W2, 2, lease=60)
    assert queue.recover() == 0

    assert queue.recover(only_worker=W1) == 2
    assert queued(redis_client) == set(died)
    assert inflight(redis_client) == {raw: W2 for raw in alive}
    assert redis_client.zscore(constants.WORKERS_KEY, W1) is None
    assert queue.leave(W2) == 2  # a clean stop gives everything back too
    assert queued(redis_client) == set(raws)
    assert redis_client.zcard(constants.WORKERS_KEY) == 0


def test_a_worker_without_a_lease_record_is_recovered(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raw = make_item("vista.nolease", points(T0, 1))
    queue.push([("vista.nolease", [raw])])
    queue.claim(W1, 1, lease=60)
    redis_client.delete(constants.WORKERS_KEY)  # e.g. an operator cleaned up
    assert queue.recover() == 1
    assert queued(redis_client) == {raw}


# --------------------------------------------------------------------------- reconcile


def test_reconcile_fixes_pending_marks_of_deleted_items(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    single = make_item("vista.single", points(T0, 1))
    long = chain("vista.chained", 3, 2)
    held = make_item("vista.held", points(T0, 1))
    queue.push([("vista.held", [held])])
    assert queue.claim(W1, 1, lease=60) == [held]
    queue.push([("vista.single", [single]), ("vista.chained", long)])

    redis_client.delete(constants.QUEUE_KEY)  # an operator: DEL vista.fetcher.metrics.json
    # The stale marks block the metrics: nothing can be queued for them.
    assert queue.push([("vista.single", [make_item("vista.single", points(T0 + 60, 1))])]) == 0

    assert queue.reconcile() == 2  # not vista.held: it is in flight
    assert pending(redis_client) == {"vista.chained": long[1], "vista.held": held}
    assert queued(redis_client) == {long[1]}
    assert queue.reconcile() == 0
    fresh = make_item("vista.single", points(T0 + 60, 1))
    assert queue.push([("vista.single", [fresh])]) == 1
    assert queued(redis_client) == {long[1], fresh}


# ------------------------------------------------------------------------------- counts


def test_counts_per_worker(redis_client: redis.Redis) -> None:
    queue = FetchQueue(redis_client)
    raws = [make_item(f"vista.c{n}", points(T0, 1)) for n in range(8)]
    queue.push([(f"vista.c{n}", [raw]) for n, raw in enumerate(raws)])
    queue.claim(W1, 3, lease=60)
    queue.claim(W2, 2, lease=60)
    redis_client.hset(constants.INFLIGHT_KEY, "orphan", "not json")
    letter = dead_letter("x", "reason", W1, now=time.time())
    redis_client.hset(constants.DEAD_KEY, letter.id, codec.encode_dead(letter))

    counts = queue.counts()
    assert counts.queued == 3
    assert counts.inflight == 6
    assert counts.inflight_by_worker == {W1: 3, W2: 2, "?": 1}
    assert counts.pending_metrics == 8
    assert counts.dead == 1


def test_the_watermark_never_moves_backwards_from_the_old_key(redis_client: redis.Redis) -> None:
    """An older Flux writes only flux.last.<metric>; a replay of older points must not pull
    the watermark back below it."""
    queue = FetchQueue(redis_client)
    redis_client.set(constants.WATERMARK_KEY_PREFIX + "vista.old", f"[{T0 + 3000}, 7.0]")
    replayed = make_item("vista.old", points(T0, 2), replay=True)
    redis_client.sadd(constants.QUEUE_KEY, replayed)
    queue.claim(W1, 1, lease=60)
    queue.ack(W1, [ack_of(replayed)])
    assert queue.watermarks(["vista.old"]) == {"vista.old": Watermark(T0 + 3000, 7.0)}


def test_a_metric_named_like_a_shared_key_cannot_replace_it_or_fail_the_others(
    redis_client: redis.Redis,
) -> None:
    """'metric_data' makes flux.last.<metric> the watermark hash itself (an item queued before
    check-config refused the name): its ack must neither turn the hash into a string nor make
    every later ack fail with WRONGTYPE."""
    queue = FetchQueue(redis_client)
    items = {m: make_item(m, points(T0, 3)) for m in ("vista.a", "metric_data", "vista.b")}
    assert queue.push([(m, [raw]) for m, raw in items.items()]) == 3
    claimed = queue.claim(W1, 10, 30)
    assert sorted(claimed) == sorted(items.values())
    order = [items["vista.a"], items["metric_data"], items["vista.b"]]
    assert queue.ack(W1, [ack_of(raw) for raw in order]) == 3
    assert redis_client.type(constants.WATERMARK_HASH) == b"hash"
    # A second round: acks keep working for every metric.
    again = {m: make_item(m, points(T0 + 180, 2)) for m in items}
    assert queue.push([(m, [raw]) for m, raw in again.items()]) == 3
    assert queue.ack(W1, [ack_of(raw) for raw in queue.claim(W1, 10, 30)]) == 3
    assert queue.watermarks(sorted(items)) == {m: last_point(again[m]) for m in items}
    assert queue.counts() == queue.counts().__class__(0, 0, 0, 0, {})


def test_a_foreign_key_of_the_wrong_type_costs_only_its_own_metric_a_write(
    redis_client: redis.Redis,
) -> None:
    """Per-metric keys that something else made a hash, a list or a string: no WRONGTYPE error
    fails a push or an ack for the other metrics of the batch."""
    redis_client.hset(constants.RESOLUTION_KEY_PREFIX + "vista.a", "x", "1")
    redis_client.rpush(constants.WATERMARK_KEY_PREFIX + "vista.b", "x")
    redis_client.set(constants.CHAIN_KEY_PREFIX + "vista.c", "not a list")
    queue = FetchQueue(redis_client)
    a, b, d = (make_item(m, points(T0, 3)) for m in ("vista.a", "vista.b", "vista.d"))
    c_chain = chain("vista.c", 2, 3)
    d_chain = [d, make_item("vista.d", points(T0 + 180, 3), seq=1)]
    # vista.c's chain cannot be stored: the metric is left for a later cycle, the others go.
    assert (
        queue.push([("vista.a", [a]), ("vista.b", [b]), ("vista.c", c_chain), ("vista.d", d_chain)])
        == 3
    )
    assert not redis_client.hexists(constants.PENDING_KEY, "vista.c")
    assert queue.ack(W1, [ack_of(raw) for raw in queue.claim(W1, 10, 30)]) == 3
    assert queue.watermarks(["vista.a", "vista.b", "vista.d"]) == {
        "vista.a": last_point(a),
        "vista.b": last_point(b),
        "vista.d": last_point(d),
    }
    assert redis_client.get(constants.RESOLUTION_KEY_PREFIX + "vista.b") == b"60"
    assert redis_client.type(constants.RESOLUTION_KEY_PREFIX + "vista.a") == b"hash"
    assert redis_client.type(constants.WATERMARK_KEY_PREFIX + "vista.b") == b"list"
    # vista.d's chain moved on: its second item is queued.
    assert queued(redis_client) == {d_chain[1]}
