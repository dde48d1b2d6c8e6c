"""FetchCycle against a real Prometheus with exact history, queuing into a real Redis.

One Prometheus per module holds promtool history of known samples (every 60 s, on whole
minutes, ending a few minutes before "now"); every cycle runs with a fixed clock at that "now",
so the expected points (and Prometheus' 5 min lookback after the last sample) are exact. The
queued items are read back from Redis and decoded, and compared with the history and with what
Prometheus' own ``query_range`` returns for the same range.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from skyline.vista import codec, constants
from skyline.vista.fetch_cycle import FetchCycle
from skyline.vista.fetch_once import fetch_once
from skyline.vista.model import Point, QueueItem
from skyline.vista.schedule import Window
from skyline.vista.testing.servers import PrometheusServer
from tests.conftest import PrometheusFactory
from tests.support.cycle import (
    by_metric,
    cycle_into_redis,
    fetch_queue,
    queued_chain,
    queued_metrics,
    run_cycle,
)
from tests.support.rig import Rig

LOOKBACK = 300

# ------------------------------------------------------------------------------- history


@dataclass(frozen=True)
class History:
    """The samples loaded into the module's Prometheus, and the fixed clock of every cycle."""

    now: float  # the clock of every cycle in this module
    minute: int  # start of the current minute of ``now``
    gauge: dict[int, float]  # vista_gauge{job="g"}: every minute, 3 h, ending minute-180
    text: str


def _gauge_value(ts: int) -> str:
    # Varies every minute, has fractions, negative values and large magnitudes.
    k = ts // 60
    return f"{(k * 37) % 1009 - 500}.{k % 8 * 125:03d}" if k % 5 else f"{k % 100000 * 1000.5}"


def _build_history(now: float) -> History:
    minute = int(now) // 60 * 60
    lines = ["# TYPE vista_gauge gauge"]
    gauge: dict[int, float] = {}
    for ts in range(minute - 3 * 3600, minute - 180 + 1, 60):
        value = _gauge_value(ts)
        lines.append(f'vista_gauge{{job="g"}} {value} {ts}')
        gauge[ts] = float(value)
    # Two counters with increments that differ per minute: sum(rate(...)) is not trivial.
    lines.append("# TYPE vista_counter counter")
    for instance, factor in (("a", 3), ("b", 7)):
        total = 0
        for ts in range(minute - 3 * 3600, minute - 180 + 1, 60):
            total += (ts // 60) % 11 * factor + 1
            lines.append(f'vista_counter_total{{instance="{instance}"}} {total} {ts}')
    # Three series of one name: a query for it must fail, naming the count.
    lines.append("# TYPE vista_multi gauge")
    for instance in ("a", "b", "c"):
        for ts in range(minute - 600, minute - 120 + 1, 60):
            lines.append(f'vista_multi{{job="m",instance="{instance}"}} 1 {ts}')
    # Non-finite samples inside the last 5 minutes.
    lines.append("# TYPE vista_special gauge")
    special = [("NaN", 300), ("2.5", 240), ("+Inf", 180), ("-Inf", 120), ("7.25", 60)]
    for value, ago in special:
        lines.append(f"vista_special {value} {minute - ago}")
    return History(now=now, minute=minute, gauge=gauge, text="\n".join(lines) + "\n# EOF\n")


def lookback(samples: Mapping[int, float], at: int) -> float | None:
    """What Prometheus evaluates at ``at``: the latest sample at or before it, within 5 min."""
    for ts in range(at, at - LOOKBACK - 1, -1):
        if ts in samples:
            return samples[ts]
    return None


def expected_points(samples: Mapping[int, float], first: int, last: int) -> list[Point]:
    """Evaluations every 60 s in [first, last] that have a value."""
    points = []
    for ts in range(first, last + 1, 60):
        value = lookback(samples, ts)
        if value is not None:
            points.append((ts, value))
    return points


@pytest.fixture(scope="module")
def history() -> History:
    # Every cycle of the module runs with its clock fixed at this instant.
    return _build_history(time.time())


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, history: History) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prom-history"), history=history.text) as server:
        yield server


# ------------------------------------------------------------------------------- helpers


def entry(
    host: str,
    target: str,
    name: str,
    *,
    uri: str = "default",
    user: str | None = None,
    password: str | None = None,
    populate: tuple[str, ...] = (),
    frequency: int = 60,
) -> tuple[object, ...]:
    return (
        host,
        "prometheus",
        frequency,
        target,
        name,
        uri,
        "prom",
        None,
        None,
        user,
        password,
        populate,
    )


def prom_points(body: dict[str, Any]) -> list[Point]:
    """query_range's one series as (int ts, float value), NaN/Inf included."""
    assert body["status"] == "success", body
    result = body["data"]["result"]
    if not result:
        return []
    assert len(result) == 1, result
    return [(int(ts), float(v)) for ts, v in result[0]["values"]]


def finite(points: list[Point]) -> list[Point]:
    return [(ts, v) for ts, v in points if math.isfinite(v)]


def check_item(item: QueueItem, metric: str, host: str, target: str, seq: int = 0) -> None:
    assert item.metric == metric
    assert item.source == "prometheus"
    assert item.host == host
    assert item.target == target
    assert item.frequency == 60
    assert item.seq == seq
    assert item.replay is False


# --------------------------------------------------------------------------------- tests


async def test_single_metric_without_watermark_fetches_the_last_five_minutes(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    target = 'vista_gauge{job="g"}'
    cfg = rig.config([entry(prom.url, target, "gauge")])
    report = await cycle_into_redis(cfg, history.now)

    m = history.minute
    result = by_metric(report)["prom.gauge"]
    assert result.error is None and result.skipped is None and result.done
    assert result.windows == [Window(m - 300, m)]
    assert result.requests == 1
    # The gauge's last sample is at m-180: m-120 and m-60 are Prometheus' lookback of it.
    # The evaluation at m (the current minute) is fetched but never queued.
    want = expected_points(history.gauge, m - 300, m - 60)
    assert [ts for ts, _ in want] == [m - 300, m - 240, m - 180, m - 120, m - 60]
    assert want[-1][1] == want[-2][1] == want[-3][1] == history.gauge[m - 180]
    assert list(result.points) == want
    assert result.dropped.as_dict() == {"current_minute": 1}
    assert want == prom_points(prom.query_range(target, m - 300, m - 60, 60))

    items = queued_chain(rig.redis, "prom.gauge")
    assert len(items) == 1 and report.queued == 1
    check_item(items[0], "prom.gauge", prom.url, target)
    assert list(items[0].points) == want
    assert items[0].fetched_at == pytest.approx(history.now, abs=0.001)
    assert queued_metrics(rig.redis) == {"prom.gauge"}


@pytest.mark.parametrize("offset", [0, 17], ids=["aligned", "mid-minute"])
async def test_watermark_from_redis_fetches_only_points_after_it(
    rig: Rig, prom: PrometheusServer, history: History, offset: int
) -> None:
    m = history.minute
    mark = m - 1800 + offset
    target = 'vista_gauge{job="g"}'
    cfg = rig.config([entry(prom.url, target, "gauge")])
    # The watermark as an unmodified Skyline writes it (a Python literal in the hash).
    rig.redis.hset(constants.WATERMARK_HASH, "prom.gauge", f"{{'timestamp': {mark}, 'value': 1.0}}")
    async with fetch_queue(cfg) as queue:
        marks = await queue.watermarks(["prom.gauge"])
        assert marks["prom.gauge"].timestamp == mark
        report = await run_cycle(cfg, history.now, {"prom.gauge": mark}, queue=queue)

    result = by_metric(report)["prom.gauge"]
    assert result.error is None
    assert result.windows == [Window(m - 1800, m)]  # aligned to the step, at or before it
    want = expected_points(history.gauge, m - 1740, m - 60)
    assert len(want) == 29 and want[0][0] == m - 1740 and want[-1][0] == m - 60
    assert list(result.points) == want
    assert result.dropped.as_dict() == {"at_or_below_watermark": 1, "current_minute": 1}
    items = queued_chain(rig.redis, "prom.gauge")
    assert [list(i.points) for i in items] == [want]
    assert all(ts > mark for ts, _ in items[0].points)


@pytest.mark.parametrize(
    "query",
    [
        "sum(rate(vista_counter_total[5m]))",
        'avg_over_time(vista_gauge{job="g"}[10m]) * 2 - vista_gauge{job="g"}',
    ],
    ids=["sum-rate", "avg-over-time"],
)
async def test_function_query_matches_prometheus_query_range(
    rig: Rig, prom: PrometheusServer, history: History, query: str
) -> None:
    m = history.minute
    mark = m - 3600
    cfg = rig.config([entry(prom.url, query, "fn")])
    report = await cycle_into_redis(cfg, history.now, {"prom.fn": mark})

    result = by_metric(report)["prom.fn"]
    assert result.error is None and result.requests == 1
    reference = prom_points(prom.query_range(query, mark + 60, m - 60, 60))
    assert len(reference) == 59
    assert len({v for _, v in reference}) > 10  # really varies
    assert list(result.points) == reference  # same timestamps, bit-identical values
    items = queued_chain(rig.redis, "prom.fn")
    assert len(items) == 1
    check_item(items[0], "prom.fn", prom.url, query)
    assert list(items[0].points) == reference


@pytest.mark.parametrize(
    ("days", "requests", "last_window_points"),
    [(10, 2, 14401 - 11000), (20, 3, 28801 - 22000)],
)
async def test_gap_longer_than_one_request_is_fetched_in_aligned_chunks(
    rig: Rig,
    prom: PrometheusServer,
    history: History,
    days: int,
    requests: int,
    last_window_points: int,
) -> None:
    """time() has a value at every evaluation: every point of the range is known exactly."""
    m = history.minute
    mark = m - days * 86400
    target = "time()"
    cfg = rig.config([entry(prom.url, target, "clock")], VISTA_QUEUE_ITEM_MAX_POINTS=4000)
    report = await cycle_into_redis(cfg, history.now, {"prom.clock": mark})

    result = by_metric(report)["prom.clock"]
    assert result.error is None
    assert result.requests == requests == len(result.windows)
    assert report.hosts[prom.url].requests == requests
    # Consecutive windows: each ends one step before the next starts; ≤ 11,000 points each.
    span = 10999 * 60
    assert result.windows == [
        Window(mark + k * 11000 * 60, min(m, mark + k * 11000 * 60 + span)) for k in range(requests)
    ]
    sizes = [len(raw) for _, raw in sorted(result.raw.items()) if isinstance(raw, list)]
    assert sizes == [11000] * (requests - 1) + [last_window_points]

    want = [(ts, float(ts)) for ts in range(mark + 60, m, 60)]
    assert len(want) == days * 1440 - 1
    assert list(result.points) == want
    assert result.dropped.as_dict() == {"at_or_below_watermark": 1, "current_minute": 1}

    items = queued_chain(rig.redis, "prom.clock")
    assert [i.seq for i in items] == list(range(len(items)))
    assert [len(i.points) for i in items] == [4000] * (len(want) // 4000) + [len(want) % 4000]
    queued = [p for item in items for p in item.points]
    assert queued == want  # every point once, in order, across the chain
    assert rig.redis.scard(constants.QUEUE_KEY) == 1  # only the head is claimable


async def test_per_cycle_budget_stops_early_and_the_next_cycle_continues(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    m = history.minute
    mark = m - 20 * 86400
    cfg = rig.config([entry(prom.url, "time()", "clock")], VISTA_FETCH_MAX_POINTS=12000)
    first = by_metric(await run_cycle(cfg, history.now, {"prom.clock": mark}))["prom.clock"]
    assert first.windows == [
        Window(mark, mark + 10999 * 60),
        Window(mark + 11000 * 60, mark + 12000 * 60),
    ]
    assert list(first.points) == [(ts, float(ts)) for ts in range(mark + 60, mark + 12001 * 60, 60)]
    # Delivered up to its last point: the next cycle goes on from there, without overlap.
    resume = first.points[-1][0]
    second = by_metric(await run_cycle(cfg, history.now, {"prom.clock": resume}))["prom.clock"]
    assert second.points[0] == (resume + 60, float(resume + 60))
    assert len(second.points) == 12000
    assert rig.redis.scard(constants.QUEUE_KEY) == 0  # queue=None: a dry run writes nothing


async def test_nan_and_inf_samples_are_dropped_and_counted(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    m = history.minute
    cfg = rig.config([entry(prom.url, "vista_special", "special")])
    report = await cycle_into_redis(cfg, history.now)

    raw = prom_points(prom.query_range("vista_special", m - 300, m, 60))
    assert [ts for ts, _ in raw] == [m - 300, m - 240, m - 180, m - 120, m - 60, m]
    assert sum(1 for _, v in raw if not math.isfinite(v)) == 3
    result = by_metric(report)["prom.special"]
    assert result.error is None
    assert list(result.points) == [(m - 240, 2.5), (m - 60, 7.25)]
    assert result.dropped.as_dict() == {"non_finite": 3, "current_minute": 1}
    items = queued_chain(rig.redis, "prom.special")
    assert [list(i.points) for i in items] == [[(m - 240, 2.5), (m - 60, 7.25)]]


async def test_query_returning_several_series_is_an_error_naming_the_count(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    cfg = rig.config(
        [
            entry(prom.url, "vista_multi", "multi"),
            entry(prom.url, 'vista_gauge{job="g"}', "gauge"),
        ],
    )
    errors: list[str] = []
    async with fetch_queue(cfg) as queue, aiohttp.ClientSession() as session:
        cycle = FetchCycle(
            cfg,
            session,
            {},
            queue=queue,
            clock=lambda: history.now,
            on_error=lambda r: errors.append(r.metric),
        )
        report = await cycle.run(cfg.fetch_metrics, {}, set())

    result = by_metric(report)["prom.multi"]
    assert result.error is not None and result.error.kind == "too_many_series"
    message = str(result.error)
    assert "returned 3 series" in message
    assert "instance=[a, b, c]" in message
    assert "job" not in message  # the same in every series: not a difference
    assert result.points == () and result.items == []
    assert errors == ["prom.multi"]
    # The other metric of the cycle is not held back by it.
    assert queued_metrics(rig.redis) == {"prom.gauge"}
    assert rig.redis.hget(constants.PENDING_KEY, "prom.multi") is None


async def test_basic_auth_prometheus(
    rig: Rig, tmp_prometheus: PrometheusFactory, history: History
) -> None:
    # ':' and ' ' inside. (ASCII only: the fixture's own probe, requests, sends latin-1.)
    password = "s3cr:et p@ss/word"
    server = tmp_prometheus(history=history.text, basic_auth=("vista", password))
    target = 'vista_gauge{job="g"}'
    cfg = rig.config(
        [
            entry(server.url, target, "authed", user="vista", password=password),
            entry(server.url, target, "anonymous"),
            entry(server.url, target, "wrong", user="vista", password="not-it"),
        ],
    )
    report = await cycle_into_redis(cfg, history.now)
    results = by_metric(report)

    m = history.minute
    want = expected_points(history.gauge, m - 300, m - 60)
    assert results["prom.authed"].error is None
    assert list(results["prom.authed"].points) == want
    for name in ("prom.anonymous", "prom.wrong"):
        error = results[name].error
        assert error is not None and error.kind == "http_401", (name, error)
        assert str(error).startswith("HTTP 401: "), str(error)
        assert "Unauthorized" in str(error)
        assert results[name].points == () and results[name].items == []

    raw_items = [rig.redis.hget(constants.PENDING_KEY, "prom.authed")]
    assert queued_metrics(rig.redis) == {"prom.authed"}
    item = codec.decode_item(raw_items[0] or b"")
    assert list(item.points) == want and item.host == server.url
    assert password.encode() not in (raw_items[0] or b"")  # never in a queue item
    assert b"s3cr" not in (raw_items[0] or b"")


@pytest.mark.parametrize("ago", [600, 3000])
async def test_custom_uri_instant_vector(
    rig: Rig, prom: PrometheusServer, history: History, ago: int
) -> None:
    m = history.minute
    at = m - ago
    # A custom uri is used verbatim: it is already URL-encoded.
    instant = f"/api/v1/query?query=vista_gauge%7Bjob%3D%22g%22%7D&time={at}"
    ranged = f"/api/v1/query?query=vista_gauge%7Bjob%3D%22g%22%7D%5B5m%5D&time={at}"
    cfg = rig.config(
        [
            entry(prom.url, 'vista_gauge{job="g"}', "instant", uri=instant),
            entry(prom.url, 'vista_gauge{job="g"}', "ranged", uri=ranged),
        ],
    )
    report = await cycle_into_redis(cfg, history.now)
    results = by_metric(report)

    instant_result = results["prom.instant"]
    assert instant_result.windows == [Window(None, None)] and instant_result.requests == 1
    assert instant_result.error is None
    assert list(instant_result.points) == [(at, history.gauge[at])]
    # A range vector in an instant query: the raw samples of (at-5m, at].
    ranged_result = results["prom.ranged"]
    assert ranged_result.error is None
    assert list(ranged_result.points) == [
        (ts, history.gauge[ts]) for ts in range(at - 300, at + 1, 60)
    ]
    assert [list(i.points) for i in queued_chain(rig.redis, "prom.instant")] == [
        [(at, history.gauge[at])]
    ]
    assert len(queued_chain(rig.redis, "prom.ranged")[0].points) == 6


async def test_custom_uri_is_sent_as_written_with_what_must_be_encoded_encoded(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    """Written unencoded, with a '+' (addition), spaces, braces and quotes: Prometheus must get
    the expression exactly as written, not 'vista_gauge{job="g"}   1'."""
    at = history.minute - 600
    uri = f'/api/v1/query?query=vista_gauge{{job="g"}} + 1&time={at}'
    encoded = f"/api/v1/query?query=vista_gauge%7Bjob%3D%22g%22%7D%20%2B%201&time={at}"
    cfg = rig.config(
        [
            entry(prom.url, 'vista_gauge{job="g"}', "plus", uri=uri),
            entry(prom.url, 'vista_gauge{job="g"}', "encoded", uri=encoded),
        ],
    )
    results = by_metric(await cycle_into_redis(cfg, history.now))
    want = [(at, history.gauge[at] + 1)]
    for name in ("prom.plus", "prom.encoded"):
        assert results[name].error is None, results[name].error
        assert list(results[name].points) == want
        assert [list(i.points) for i in queued_chain(rig.redis, name)] == [want]


def test_fetch_once_reports_a_redis_type_error_in_one_line(
    rig: Rig, prom: PrometheusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Skyline's watermark hash replaced by a string (as a metric named 'metric_data' did): a
    clear line and exit 1, not a traceback; --dry-run still fetches."""
    rig.redis.set(constants.WATERMARK_HASH, "[1, 2.0]")
    cfg = rig.config([entry(prom.url, "vista_gauge", "g")])
    assert fetch_once(cfg, dry_run=False) == constants.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("vista fetch: Redis refused a command: "), err
    assert "HMGET flux.last.metric_data" in err and "WRONGTYPE" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert fetch_once(cfg, dry_run=True) == constants.EXIT_OK
    out = capsys.readouterr()
    assert "WRONGTYPE" in out.err and "prom.g" in out.out


async def test_custom_uri_instant_query_at_now_is_the_current_minute(
    rig: Rig, prom: PrometheusServer
) -> None:
    """Without time= Prometheus evaluates at its own now: a scalar in the current minute."""
    uri = "/api/v1/query?query=time()"
    metrics = [entry(prom.url, "time()", "now", uri=uri)]
    kept_cfg = rig.config(metrics, VISTA_DO_NOT_SUBMIT_CURRENT_MINUTE=False)
    before = time.time()
    kept = by_metric(await run_cycle(kept_cfg, time.time()))["prom.now"]
    after = time.time()
    assert kept.error is None and len(kept.points) == 1
    ts, value = kept.points[0]
    assert int(before) <= ts <= after and ts == int(value)  # the scalar's value is its time

    dropped_cfg = rig.config(metrics)
    dropped = by_metric(await cycle_into_redis(dropped_cfg, time.time()))["prom.now"]
    assert dropped.error is None and dropped.points == ()
    assert dropped.dropped.as_dict() == {"current_minute": 1}
    assert rig.redis.scard(constants.QUEUE_KEY) == 0


async def test_populate_at_resolutions_fetches_the_whole_period(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    m = history.minute
    target = 'vista_gauge{job="g"}'
    cfg = rig.config(
        [
            entry(prom.url, target, "populated", populate=("2h",)),
            entry(prom.url, target, "resumed", populate=("2h",)),
        ],
        VISTA_QUEUE_ITEM_MAX_POINTS=50,
    )
    report = await cycle_into_redis(cfg, history.now, {"prom.resumed": m - 600})
    results = by_metric(report)

    populated = results["prom.populated"]
    assert populated.error is None and populated.requests == 1
    assert populated.windows == [Window(m - 7200, m)]
    want = expected_points(history.gauge, m - 7200, m - 60)
    assert len(want) == 120
    assert list(populated.points) == want
    assert want == prom_points(prom.query_range(target, m - 7200, m - 60, 60))
    items = queued_chain(rig.redis, "prom.populated")
    assert [(i.seq, len(i.points)) for i in items] == [(0, 50), (1, 50), (2, 20)]
    assert [p for i in items for p in i.points] == want

    # With a watermark, populate does not apply: only the points after it.
    resumed = results["prom.resumed"]
    assert list(resumed.points) == expected_points(history.gauge, m - 540, m - 60)
    assert [p for i in queued_chain(rig.redis, "prom.resumed") for p in i.points] == list(
        resumed.points
    )


async def test_every_metric_of_a_large_cycle_is_queued(
    rig: Rig, prom: PrometheusServer, history: History
) -> None:
    """More finished metrics than one mid-cycle push (500): none may be left out of the queue."""
    count = 700
    target = 'vista_gauge{job="g"}'
    cfg = rig.config(
        [entry(prom.url, target, f"many.m{i:04d}") for i in range(count)],
        VISTA_MAX_CONCURRENCY_PER_HOST=50,
    )
    report = await cycle_into_redis(cfg, history.now)

    m = history.minute
    want = expected_points(history.gauge, m - 300, m - 60)
    assert all(list(r.points) == want and len(r.items) == 1 for r in report.results)
    assert report.queued == count
    assert rig.redis.hlen(constants.PENDING_KEY) == count
    assert rig.redis.scard(constants.QUEUE_KEY) == count
