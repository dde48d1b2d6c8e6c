"""Pure delivery logic: plan_batch (what to send), settle (what to ack, dead-letter, give back)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from skyline.vista import codec, delivery
from skyline.vista.delivery import Planned, plan_batch, settle, undecodable
from skyline.vista.errors import SinkError
from skyline.vista.model import Ack, Point, QueueItem, Watermark
from skyline.vista.sinks import SinkPoint, SinkResult

T0 = 1_718_000_040  # a minute boundary
NOW = T0 + 600 + 25.5  # 25.5 s into the minute that starts at T0 + 600
WORKER = "host-1:4242:0"


def series(first: int, count: int, step: int = 60, base: float = 0.0) -> tuple[Point, ...]:
    return tuple((first + i * step, base + i) for i in range(count))


def item(
    metric: str, points: Sequence[Point], *, replay: bool = False, item_id: str = ""
) -> tuple[str, QueueItem]:
    made = QueueItem(
        id=item_id or f"id-{metric}",
        metric=metric,
        source="replay" if replay else "prometheus",
        host="http://prometheus:9090",
        target=f"sum({metric})",
        points=tuple(points),
        fetched_at=T0 + 600.0,
        replay=replay,
    )
    return codec.encode_item(made), made


def plan(
    items: list[tuple[str, QueueItem]],
    watermarks: dict[str, Watermark] | None = None,
    *,
    skip_current_minute: bool = True,
) -> tuple[list[Planned], list[SinkPoint]]:
    return plan_batch(items, watermarks or {}, NOW, skip_current_minute=skip_current_minute)


A = item("vista.a", series(T0, 3))  # T0, T0+60, T0+120 → 0.0, 1.0, 2.0
B = item("vista.b", series(T0 + 60, 2, base=10.0))  # T0+60, T0+120 → 10.0, 11.0
C = item("vista.c", series(T0, 4, base=20.0))  # T0 .. T0+180 → 20.0 .. 23.0


# --- plan_batch -------------------------------------------------------------------------------


def test_plan_lays_out_every_item_in_order() -> None:
    planned, entries = plan([A, B])
    assert entries == [
        SinkPoint("vista.a", T0, 0.0),
        SinkPoint("vista.a", T0 + 60, 1.0),
        SinkPoint("vista.a", T0 + 120, 2.0),
        SinkPoint("vista.b", T0 + 60, 10.0),
        SinkPoint("vista.b", T0 + 120, 11.0),
    ]
    assert [(p.start, p.end) for p in planned] == [(0, 3), (3, 5)]
    assert [p.raw for p in planned] == [A[0], B[0]]
    assert [p.resolution for p in planned] == [60, 60]
    assert planned[0].points == series(T0, 3)


def test_points_at_or_below_the_watermark_are_not_sent() -> None:
    planned, entries = plan([A, B], {"vista.a": Watermark(T0 + 60, 1.0)})
    assert entries == [
        SinkPoint("vista.a", T0 + 120, 2.0),
        SinkPoint("vista.b", T0 + 60, 10.0),  # b's watermark is not a's
        SinkPoint("vista.b", T0 + 120, 11.0),
    ]
    assert planned[0].dropped.as_dict() == {"at_or_below_watermark": 2}
    assert planned[1].dropped.as_dict() == {}


def test_points_of_the_current_minute_are_not_sent() -> None:
    current = T0 + 600
    raw = item("vista.now", [(current - 60, 1.0), (current, 2.0), (current + 20, 3.0)])
    planned, entries = plan([raw])
    assert entries == [SinkPoint("vista.now", current - 60, 1.0)]
    assert planned[0].dropped.as_dict() == {"current_minute": 2}
    # unless the setting says otherwise
    planned, entries = plan([raw], skip_current_minute=False)
    assert [e.timestamp for e in entries] == [current - 60, current, current + 20]
    assert planned[0].dropped.total() == 0


def test_replay_items_ignore_the_watermark() -> None:
    replay = item("vista.a", series(T0, 3), replay=True, item_id="replay-1")
    planned, entries = plan([replay], {"vista.a": Watermark(T0 + 3000, 9.0)})
    assert [e.timestamp for e in entries] == [T0, T0 + 60, T0 + 120]
    assert planned[0].dropped.total() == 0
    # the current minute still is not sent
    late = item("vista.a", [(T0 + 600, 1.0)], replay=True)
    assert plan([late], {"vista.a": Watermark(T0, 0.0)})[1] == []


def test_plan_cleans_each_item() -> None:
    messy = item("vista.m", [(T0 + 120, 3.0), (T0, 1.0), (T0 + 60, 2.0), (T0 + 60, 2.5)])
    planned, entries = plan([messy])
    assert [(e.timestamp, e.value) for e in entries] == [(T0, 1.0), (T0 + 60, 2.5), (T0 + 120, 3.0)]
    assert planned[0].dropped.as_dict() == {"duplicate_ts": 1}


# --- settle -----------------------------------------------------------------------------------


def test_all_handled_acks_each_item_with_its_last_point() -> None:
    planned, entries = plan([A, B])
    out = settle(planned, entries, SinkResult(handled=5), WORKER, NOW)
    assert out.acks == [
        Ack(A[0], "vista.a", Watermark(T0 + 120, 2.0), 60, True, (), keep=False),
        Ack(B[0], "vista.b", Watermark(T0 + 120, 11.0), 60, True, (), keep=False),
    ]
    assert out.release == []
    assert (out.delivered_points, out.rejected_points) == (5, 0)
    assert (out.delivered_items, out.dead_letters) == (2, 0)


def test_rejected_points_become_dead_letters_and_the_watermark_advances() -> None:
    planned, entries = plan([A, B])
    reason = "Flux 400: invalid value - {'metric': 'vista.a', 'timestamp': 1718000100}"
    result = SinkResult(handled=5, rejected={1: reason})
    out = settle(planned, entries, result, WORKER, NOW)
    ack_a, ack_b = out.acks
    assert ack_a.watermark == Watermark(T0 + 120, 2.0)
    assert ack_a.delivered is True
    assert ack_a.keep is False
    (dead,) = ack_a.dead
    assert dead.reason == reason
    assert dead.worker == WORKER
    assert dead.metric == "vista.a"
    dead_item = codec.decode_item(dead.item)
    assert dead_item.metric == "vista.a"
    assert dead_item.points == ((T0 + 60, 1.0),)
    assert dead_item.replay is False
    assert dead_item.id != A[1].id
    assert ack_b.dead == ()
    assert (out.delivered_points, out.rejected_points) == (4, 1)
    assert (out.delivered_items, out.dead_letters) == (2, 1)
    assert out.release == []


def test_rejected_points_are_grouped_by_reason() -> None:
    planned, entries = plan([C])
    result = SinkResult(handled=4, rejected={0: "quota", 2: "quota", 3: "too old"})
    out = settle(planned, entries, result, WORKER, NOW)
    (ack,) = out.acks
    by_reason = {d.reason: codec.decode_item(d.item).points for d in ack.dead}
    assert by_reason == {"quota": ((T0, 20.0), (T0 + 120, 22.0)), "too old": ((T0 + 180, 23.0),)}
    assert ack.watermark == Watermark(T0 + 180, 23.0)  # the last point, even though rejected
    assert ack.delivered is True  # T0+60 was taken
    assert (out.delivered_points, out.rejected_points, out.dead_letters) == (1, 3, 2)


def test_an_item_whose_every_point_is_rejected_still_advances() -> None:
    planned, entries = plan([B])
    out = settle(planned, entries, SinkResult(handled=2, rejected={0: "x", 1: "x"}), WORKER, NOW)
    (ack,) = out.acks
    assert ack.watermark == Watermark(T0 + 120, 11.0)
    assert ack.delivered is False
    assert len(ack.dead) == 1
    assert (out.delivered_items, out.delivered_points, out.rejected_points) == (0, 0, 2)


def test_sink_stopping_inside_an_item_keeps_and_releases_it() -> None:
    planned, entries = plan([A, B, C])  # entries: a 0-2, b 3-4, c 5-8
    result = SinkResult(handled=4, error=SinkError("Flux answered HTTP 503"))
    out = settle(planned, entries, result, WORKER, NOW)
    assert out.acks == [
        Ack(A[0], "vista.a", Watermark(T0 + 120, 2.0), 60, True, (), keep=False),
        Ack(B[0], "vista.b", Watermark(T0 + 60, 10.0), 60, True, (), keep=True),
    ]
    assert out.release == [B[0], C[0]]  # b partly handled, c untouched
    assert (out.delivered_points, out.delivered_items) == (4, 1)
    # Claimed again with the new watermark, b sends only what was not handled.
    again, again_entries = plan([B], {"vista.b": Watermark(T0 + 60, 10.0)})
    assert again_entries == [SinkPoint("vista.b", T0 + 120, 11.0)]


def test_partial_item_with_a_rejected_point_before_the_stop() -> None:
    planned, entries = plan([C])
    result = SinkResult(handled=2, rejected={1: "bad"}, error=SinkError("timeout"))
    out = settle(planned, entries, result, WORKER, NOW)
    (ack,) = out.acks
    assert ack.keep is True
    assert ack.watermark == Watermark(T0 + 60, 21.0)
    assert [codec.decode_item(d.item).points for d in ack.dead] == [((T0 + 60, 21.0),)]
    assert out.release == [C[0]]
    assert (out.delivered_points, out.rejected_points, out.delivered_items) == (1, 1, 0)


def test_untouched_items_are_released() -> None:
    planned, entries = plan([A, B])
    result = SinkResult(handled=0, error=SinkError("connection refused"))
    out = settle(planned, entries, result, WORKER, NOW)
    assert out.acks == []
    assert out.release == [A[0], B[0]]
    assert (out.delivered_points, out.delivered_items, out.dead_letters) == (0, 0, 0)


def test_stop_exactly_between_items() -> None:
    planned, entries = plan([A, B])
    out = settle(planned, entries, SinkResult(handled=3, error=SinkError("503")), WORKER, NOW)
    assert [a.metric for a in out.acks] == ["vista.a"]
    assert out.acks[0].keep is False
    assert out.release == [B[0]]


def test_item_with_nothing_new_is_acked_without_moving_the_watermark() -> None:
    stale = item("vista.a", series(T0, 2))
    planned, entries = plan([stale, B], {"vista.a": Watermark(T0 + 60, 1.0)})
    assert [(p.start, p.end) for p in planned] == [(0, 0), (0, 2)]
    out = settle(planned, entries, SinkResult(handled=2), WORKER, NOW)
    assert out.acks[0] == Ack(stale[0], "vista.a", None, 60, False, (), keep=False)
    assert out.acks[1].watermark == Watermark(T0 + 120, 11.0)
    assert out.release == []


def test_empty_item_after_the_stop_is_released() -> None:
    stale = item("vista.c", series(T0, 2, base=20.0))
    planned, entries = plan([A, stale], {"vista.c": Watermark(T0 + 60, 21.0)})
    out = settle(planned, entries, SinkResult(handled=1, error=SinkError("503")), WORKER, NOW)
    assert [(a.metric, a.keep) for a in out.acks] == [("vista.a", True)]
    assert out.release == [A[0], stale[0]]


def test_replay_item_ack_carries_its_own_last_point() -> None:
    """(The ACK script only ever moves a watermark forward; that is tested against Redis.)"""
    replay = item("vista.a", series(T0, 2), replay=True, item_id="r")
    planned, entries = plan([replay], {"vista.a": Watermark(T0 + 3000, 9.0)})
    (ack,) = settle(planned, entries, SinkResult(handled=2), WORKER, NOW).acks
    assert ack.watermark == Watermark(T0 + 60, 1.0)
    assert ack.delivered is True


# --- an item's own progress (a replay item is delivered below the watermark) -----------------


def test_a_partly_delivered_replay_item_resumes_after_its_progress() -> None:
    replay = item("vista.a", series(T0, 5), replay=True, item_id="r")
    mark = {"vista.a": Watermark(T0 + 3000, 9.0)}
    planned, entries = plan_batch(
        [replay, B], mark, NOW, skip_current_minute=True, progress={replay[0]: T0 + 120}
    )
    assert [(e.timestamp, e.value) for e in entries[:2]] == [(T0 + 180, 3.0), (T0 + 240, 4.0)]
    assert planned[0].dropped["at_or_below_watermark"] == 3
    assert len(entries) == 4  # B has no progress: untouched
    # A live item: the newer of its metric's watermark and its own progress.
    (live,), points = plan_batch([C], {"vista.c": Watermark(T0 + 60, 21.0)}, NOW,
                                 skip_current_minute=True, progress={C[0]: T0 + 120})  # fmt: skip
    assert [e.timestamp for e in points] == [T0 + 180]


def test_progress_follows_the_acks_as_the_queue_does() -> None:
    progress = {"x": T0, "gone": T0}
    delivery.record_progress(progress, [
        Ack("x", "vista.a", Watermark(T0 + 60, 1.0), keep=True),
        Ack("new", "vista.a", Watermark(T0 + 120, 1.0), keep=True),
        Ack("new", "vista.a", None, keep=True),  # nothing new: unchanged
        Ack("gone", "vista.a", Watermark(T0 + 60, 1.0)),  # acknowledged in full
    ])  # fmt: skip
    assert progress == {"x": T0 + 60, "new": T0 + 120}


# --- merging segment results, decoding a claimed batch ---------------------------------------


def test_a_segments_result_is_merged_at_its_offset() -> None:
    total = SinkResult(handled=450, rejected={3: "bad"})
    delivery.merge_result(total, SinkResult(handled=2, rejected={1: "worse"}), 450)
    assert total.handled == 452
    assert total.rejected == {3: "bad", 451: "worse"}
    delivery.merge_result(total, SinkResult(handled=0), 0)  # never moves back
    assert total.handled == 452


def test_decode_batch_dead_letters_what_it_cannot_read() -> None:
    raw, made = B
    good, bad = delivery.decode_batch([raw, "nope"], WORKER, NOW)
    assert good == [(raw, made)]
    ((bad_raw, letter),) = bad
    assert bad_raw == "nope" and letter.item == "nope" and letter.dead_at == NOW
    assert letter.reason.startswith("undecodable item: ")


# --- purity -----------------------------------------------------------------------------------


def test_dead_letters_are_dated_by_the_clock_passed_in() -> None:
    planned, points = plan([B])
    out = settle(planned, points, SinkResult(handled=2, rejected={0: "x"}), WORKER, NOW)
    (letter,) = out.acks[0].dead
    assert letter.dead_at == NOW
    assert undecodable("nope", "not JSON", WORKER, NOW).dead_at == NOW


def test_delivery_imports_no_redis_queue_and_reads_no_clock() -> None:
    """delivery.py takes its records from model.py, not from the Redis queue module, and never
    reads the time itself (the caller passes now)."""
    source = Path(delivery.__file__).read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not imported & {"time", "redis", "skyline.vista.fetchqueue", "uuid"}, imported
