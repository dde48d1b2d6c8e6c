"""The Flux double's worker applies Flux's own rules (skyline/flux/worker.py) to what its
listener took: when a point is checked against flux.last, what is dropped, how flux.last is
written, when vista.metrics is read, and what would reach carbon twice."""

from __future__ import annotations

import ast
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import requests

from skyline.vista import codec
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.fakes.flux_worker import FluxWorker, QueuedPoint, last_timestamp

NOW = 1_700_000_040
KEY = DEFAULT_KEY


def post(server: FluxServer, metrics: list[dict[str, Any]], timeout: float = 5) -> int:
    response = requests.post(
        f"{server.url}/metric_data_post",
        data=json.dumps({"key": KEY, "metrics": metrics}),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
    )
    return response.status_code


def item(metric: str, timestamp: int, value: float = 1.0, fill: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"metric": metric, "timestamp": timestamp, "value": value}
    if fill:
        body["fill"] = "true"
    return body


@pytest.fixture
def store() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def flux(store: fakeredis.FakeRedis) -> Iterator[FluxServer]:
    with FluxServer(now=lambda: NOW, redis=store) as server:
        yield server


def text(raw: object) -> str:
    assert isinstance(raw, bytes)
    return raw.decode()


# ---------------------------------------------------------------- FLUX_CHECK_LAST_TIMESTAMP True


def test_default_drops_a_resent_plain_point_and_writes_flux_last_as_flux_does(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    points = [item("v.a", NOW - 120, 1.5), item("v.a", NOW - 60, 2.5)]
    assert post(flux, points) == 204
    flux.wait_processed()
    # Flux writes Python literals: the hash field and the old key (SETEX 3600).
    field = text(store.hget("flux.last.metric_data", "v.a"))
    assert field == "{'timestamp': 1699999980, 'value': 2.5}"
    assert ast.literal_eval(field) == {"timestamp": NOW - 60, "value": 2.5}
    assert text(store.get("flux.last.v.a")) == "[1699999980, 2.5]"
    assert 3590 <= int(store.ttl("flux.last.v.a")) <= 3600
    # Vista reads what Flux wrote.
    assert codec.decode_watermark_hash(field) == codec.decode_watermark_key("[1699999980, 2.5]")

    assert post(flux, points + [item("v.a", NOW, 3.5)]) == 204  # resent, plus one new
    flux.wait_processed()

    assert len(flux.accepted) == 5  # the listener took everything
    assert flux.forwarded_by_metric() == {"v.a": [(NOW - 120, 1.5), (NOW - 60, 2.5), (NOW, 3.5)]}
    assert (flux.forwarded_count, flux.dropped_count, flux.forwarded_twice) == (3, 2, 0)
    assert text(store.get("flux.last.v.a")) == f"[{NOW}, 3.5]"


def test_default_never_checks_fill_points_and_they_never_move_flux_last(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    store.sadd("vista.metrics", "v.f")  # never read with the default setting
    old = [item("v.f", NOW - 7200 + 60 * i, float(i), fill=True) for i in range(3)]
    assert post(flux, old) == 204
    assert post(flux, old) == 204
    flux.wait_processed()

    assert flux.forwarded_count == 6
    assert flux.forwarded_twice == 3  # every resent fill point reaches carbon again
    assert flux.dropped_count == 0
    assert store.hget("flux.last.metric_data", "v.f") is None
    assert store.get("flux.last.v.f") is None
    assert flux.worker.vista_metrics == frozenset()


def test_a_plain_point_at_or_below_flux_last_is_dropped_and_a_fill_one_is_not(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    store.hset("flux.last.metric_data", "v.b", str({"timestamp": NOW - 60, "value": 1.0}))
    assert post(flux, [item("v.b", NOW - 120), item("v.b", NOW - 60)]) == 204
    assert post(flux, [item("v.b", NOW - 120, fill=True)]) == 204
    flux.wait_processed()

    assert flux.forwarded_by_metric() == {"v.b": [(NOW - 120, 1.0)]}
    assert flux.forwarded[0].fill and not flux.forwarded[0].checked
    assert flux.dropped_count == 2


def test_last_comes_from_the_hash_else_from_the_old_key() -> None:
    assert last_timestamp(b"{'timestamp': 200, 'value': 1.0}", b"[300, 1.0]") == 200
    assert last_timestamp(None, b"[300, 1.0]") == 300
    assert last_timestamp(None, "[300, None]") == 300
    assert last_timestamp('{"timestamp": 5, "value": 1}', None) == 5  # JSON is a literal too
    assert last_timestamp(None, None) == 0
    assert last_timestamp(b"garbage(", None) == 0  # Flux logs it and checks nothing


def test_the_old_key_is_used_when_the_hash_has_no_field(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    store.set("flux.last.v.c", f"[{NOW - 60}, 1.0]")
    assert post(flux, [item("v.c", NOW - 60), item("v.c", NOW)]) == 204
    flux.wait_processed()
    assert flux.forwarded_by_metric() == {"v.c": [(NOW, 1.0)]}


# ---------------------------------------------------------------- FLUX_CHECK_LAST_TIMESTAMP False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(worker: FluxWorker, *points: QueuedPoint) -> None:
    worker.expect(len(points))
    worker.hand_over(points)
    assert worker.wait_idle(5)


def test_false_checks_only_vista_metrics_read_at_start_then_once_a_minute() -> None:
    store = fakeredis.FakeRedis()
    store.sadd("vista.metrics", "v.known")
    clock = Clock()
    worker = FluxWorker(store, check_last_timestamp=False, clock=clock)
    worker.start()
    try:
        assert worker.vista_metrics == {"v.known"}  # read at start
        store.sadd("vista.metrics", "v.new")
        for _ in range(2):  # the same points twice, fill and not
            run(
                worker,
                QueuedPoint("v.known", 1.0, NOW - 60, False),
                QueuedPoint("v.known", 1.0, NOW - 7200, True),
                QueuedPoint("v.new", 1.0, NOW - 60, False),
                QueuedPoint("v.other", 1.0, NOW - 60, False),
            )
        # v.known is checked, fill or not: its fill point is older than the plain one just
        # forwarded, so it is dropped, and so is the whole second round.
        by_metric = worker.forwarded_by_metric()
        assert by_metric["v.known"] == [(NOW - 60, 1.0)]
        assert by_metric["v.new"] == [(NOW - 60, 1.0)] * 2  # not in Flux's copy yet
        assert by_metric["v.other"] == [(NOW - 60, 1.0)] * 2
        assert worker.forwarded_twice == 2
        assert store.hget("flux.last.metric_data", "v.new") is None  # unchecked: not moved

        clock.now += 59.0
        time.sleep(1.3)  # the worker wakes each second; not a minute yet
        assert worker.vista_metrics == {"v.known"}
        clock.now += 1.0
        deadline = time.monotonic() + 5
        while worker.vista_metrics != {"v.known", "v.new"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.vista_metrics == {"v.known", "v.new"}  # re-read after a minute

        run(worker, QueuedPoint("v.new", 2.0, NOW, False), QueuedPoint("v.new", 2.0, NOW, False))
        assert worker.forwarded_by_metric()["v.new"][-1] == (NOW, 2.0)
        assert worker.forwarded_twice == 2  # the second copy was checked and dropped
        assert text(store.get("flux.last.v.new")) == f"[{NOW}, 2.0]"
    finally:
        worker.stop()


def test_false_with_vista_disabled_never_checks() -> None:
    store = fakeredis.FakeRedis()
    store.sadd("vista.metrics", "v.m")
    worker = FluxWorker(store, check_last_timestamp=False, vista_enabled=False)
    worker.start()
    try:
        run(worker, QueuedPoint("v.m", 1.0, NOW, False), QueuedPoint("v.m", 1.0, NOW, False))
        assert worker.forwarded_twice == 1
        assert worker.vista_metrics == frozenset()
    finally:
        worker.stop()


def test_server_passes_its_settings_to_the_worker(store: fakeredis.FakeRedis) -> None:
    store.sadd("vista.metrics", "v.s")
    with FluxServer(now=lambda: NOW, redis=store, check_last_timestamp=False) as server:
        old = [item("v.s", NOW - 7200, 1.0, fill=True), item("v.s", NOW - 7140, 2.0, fill=True)]
        assert post(server, old) == 204
        assert post(server, old) == 204
        server.wait_processed()
        assert server.forwarded_count == 2 and server.forwarded_twice == 0
        assert server.dropped_count == 2


# ---------------------------------------------------------------- timing and partial answers


def test_flux_last_moves_only_after_the_answer_is_written(store: fakeredis.FakeRedis) -> None:
    with FluxServer(now=lambda: NOW, redis=store, delay=0.6) as server:
        status: list[int] = []
        sender = threading.Thread(target=lambda: status.append(post(server, [item("v.t", NOW)])))
        sender.start()
        deadline = time.monotonic() + 5
        while not server.accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.accepted  # taken by the listener...
        time.sleep(0.2)
        assert store.get("flux.last.v.t") is None  # ...but not processed before the answer
        sender.join()
        server.wait_processed()
        assert status == [204]
        assert text(store.get("flux.last.v.t")) == f"[{NOW}, 1.0]"


def test_points_of_a_client_that_gave_up_are_still_forwarded(store: fakeredis.FakeRedis) -> None:
    with FluxServer(now=lambda: NOW, redis=store, delay=1.0) as server:
        with pytest.raises(requests.Timeout):
            post(server, [item("v.g", NOW - 60), item("v.g", NOW)], timeout=0.3)
        deadline = time.monotonic() + 5
        while server.forwarded_count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.wait_processed()
        assert server.forwarded_by_metric() == {"v.g": [(NOW - 60, 1.0), (NOW, 1.0)]}


def test_a_400_forwards_the_items_before_the_bad_one(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    points = [item("v.p", NOW - 120), item("v.p", NOW - 60), item("v.p", 12), item("v.p", NOW)]
    assert post(flux, points) == 400
    flux.wait_processed()
    assert flux.forwarded_by_metric() == {"v.p": [(NOW - 120, 1.0), (NOW - 60, 1.0)]}
    assert text(store.get("flux.last.v.p")) == f"[{NOW - 60}, 1.0]"


def test_get_points_go_through_the_same_worker(
    flux: FluxServer, store: fakeredis.FakeRedis
) -> None:
    params = {"key": KEY, "metric": "v.get", "value": "4", "timestamp": str(NOW)}
    for _ in range(2):
        assert requests.get(f"{flux.url}/metric_data", params=params, timeout=5).status_code == 204
    flux.wait_processed()
    assert (flux.forwarded_count, flux.dropped_count) == (1, 1)


def test_record_false_still_counts_what_is_forwarded_twice(store: fakeredis.FakeRedis) -> None:
    with FluxServer(now=lambda: NOW, redis=store, record=False) as server:
        points = [item(f"v.r{i}", NOW - 7200, fill=True) for i in range(10)]
        assert post(server, points) == 204
        assert post(server, points) == 204
        server.wait_processed()
        assert server.forwarded == []
        assert (server.forwarded_count, server.forwarded_twice) == (20, 10)


def test_points_forwarded_again_are_traced_to_the_request_that_carried_them_before(
    flux: FluxServer,
) -> None:
    old = [item("v.q", NOW - 7200 + 60 * i, fill=True) for i in range(4)]
    assert post(flux, old[:2]) == 204  # request 1
    assert post(flux, old[2:]) == 204  # request 2
    assert post(flux, old[1:3]) == 204  # request 3: one point of each, again
    assert post(flux, old[3:]) == 204  # request 4: request 2's last point, again
    assert post(flux, old[2:3]) == 204  # request 5: a point request 3 carried the last time
    flux.wait_processed()
    assert flux.forwarded_twice == 4
    assert flux.forwarded_again_from() == {1: 1, 2: 2, 3: 1}
    assert [p.request for p in flux.forwarded] == [1, 1, 2, 2, 3, 3, 4, 5]
