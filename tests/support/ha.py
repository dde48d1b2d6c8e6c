"""Series whose every value is known, and the checks of what reached carbon, for the
high-availability tests (live membership, Redis Sentinel failover).

Each series is ``vector(time() + i)`` on a real Prometheus: it is evaluated for any past time,
so every slot of metric ``i`` exists at the source with the value ``ts + i`` and a missing
slot can only be Vista's.
"""

from __future__ import annotations

import functools

from skyline.vista.testing.servers import CarbonServer, poll_until
from tests.support.carbon_proxy import PickleRecorder


def vector_entries(
    prom_url: str, prefix: str, count: int, step: int
) -> tuple[dict[str, int], tuple[tuple[object, ...], ...]]:
    """The metric names (-> i) and VISTA_FETCH_METRICS entries of ``count`` such series."""
    names = {f"{prefix}.m{i:02d}": i for i in range(count)}
    entries = tuple(
        (
            prom_url,
            "prometheus",
            step,
            f"vector(time() + {i})",
            f"m{i:02d}",
            "default",
            prefix,
            None,
            None,
            None,
            None,
            None,
        )  # fmt: skip
        for i in range(count)
    )
    return names, entries


def closed_slot(now: float, step: int) -> int:
    """The last slot Vista may have sent at ``now``: the one before the open minute."""
    return int(now) // 60 * 60 - step


def caught_up(recorder: PickleRecorder, names: dict[str, int], now: float, step: int) -> int | None:
    """The last closed slot as of ``now`` once every metric has been sent up to it."""
    last = closed_slot(now, step)
    sent = recorder.by_metric()
    ok = all(any(s.timestamp == last for s in sent.get(m, [])) for m in names)
    return last if ok else None


def drained(carbon: CarbonServer, metric: str) -> bool | None:
    return True if not carbon.cache_query(metric) else None


def check_delivered(
    recorder: PickleRecorder,
    carbon: CarbonServer,
    names: dict[str, int],
    end: int,
    step: int,
    *,
    resent_window: tuple[float, float] | None = None,
) -> int:
    """Every slot of every metric from its first point to ``end`` was sent, with its exact
    value, and is in whisper. No point was sent twice, except (when ``resent_window`` is given)
    points first sent within that span of time. Returns the number of points sent twice."""
    assert recorder.errors == []
    sent = recorder.by_metric()
    twice = 0
    for metric, i in names.items():
        seen: dict[int, float] = {}
        for point in sent[metric]:
            if point.timestamp in seen:
                twice += 1
                first_sent = seen[point.timestamp]
                allowed = resent_window is not None and (
                    resent_window[0] <= first_sent <= resent_window[1]
                )
                assert allowed, f"{metric} {point.timestamp} sent at {first_sent} and again"
            else:
                seen[point.timestamp] = point.received
        first = min(seen)
        want = {ts: float(ts + i) for ts in range(first, end + 1, step)}
        got = {s.timestamp: s.value for s in sent[metric] if s.timestamp <= end}
        assert got == want, (metric, sorted(set(want) ^ set(got)))  # every slot, exact
        poll_until(functools.partial(drained, carbon, metric), 30, what="carbon to write")
        stored = carbon.fetch(metric, first - step, end)
        assert {ts: v for ts, v in stored if v is not None} == want, metric
    return twice
