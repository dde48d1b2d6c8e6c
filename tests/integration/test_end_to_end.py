"""The whole path against real servers, in several time zones.

Prometheus (promtool history: 3 metrics, 4 h of samples every minute, ending 2 minutes before
now) → the Vista daemon as a subprocess (``vista --settings S run``, ``VISTA_SINK='graphite'``,
``populate_at_resolutions=('3h',)``) → carbon-cache (pickle) → whisper.

A recording proxy sits between the daemon and carbon's pickle port: it forwards every byte and
notes each point with the time it arrived, so duplicates and current-minute points are seen
where they happen, not only in whisper (which keeps one value per slot).

Whisper must then hold, per metric, exactly the evaluations of Prometheus' ``query_range`` over
the 3 h populate window up to the last closed minute: nothing missing, nothing extra, the exact
values, no point of the minute in which it was sent. Run with the daemon's ``TZ`` set to zones
east and west of UTC (the original computed the current minute with ``strftime('%s')``).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from skyline.vista.testing.servers import LOOPBACK, CarbonServer, PrometheusServer, poll_until
from tests.conftest import PrometheusFactory, RedisFactory
from tests.support.carbon_proxy import PickleRecorder
from tests.support.daemon import VistaHarness

METRICS = ("alpha", "beta", "gamma")
HISTORY_HOURS = 4
POPULATE = 3 * 3600
STEP = 60


# --------------------------------------------------------------------------- the source


def value(n: int, ts: int) -> str:
    """Varies every minute; fractions, negatives and large magnitudes; exact in binary."""
    k = ts // STEP
    return f"{((k * 7919 + n * 104729) % 200003 - 100000) / 8}"


@pytest.fixture
def prometheus(tmp_prometheus: PrometheusFactory) -> tuple[PrometheusServer, int]:
    minute = int(time.time()) // STEP * STEP
    lines = ["# TYPE vista_e2e gauge"]
    for n, name in enumerate(METRICS):
        for ts in range(minute - HISTORY_HOURS * 3600, minute - 2 * STEP + 1, STEP):
            lines.append(f'vista_e2e{{series="{name}"}} {value(n, ts)} {ts}')
    return tmp_prometheus(history="\n".join(lines) + "\n# EOF\n"), minute


class ZonedHarness(VistaHarness):
    def __init__(self, root: Path, settings: dict[str, object], tz: str) -> None:
        super().__init__(root, settings)
        self.tz = tz

    def env(self) -> dict[str, str]:
        return {**super().env(), "TZ": self.tz}


def reference(prom: PrometheusServer, name: str, start: int, end: int) -> dict[int, float]:
    body = prom.query_range(f'vista_e2e{{series="{name}"}}', start, end, STEP)
    assert body["status"] == "success"
    (series,) = body["data"]["result"]
    return {int(ts): float(v) for ts, v in series["values"]}


def contiguous_to(stamps: set[int], last: int) -> bool:
    """A run of whole minutes without holes that ends at ``last``."""
    return bool(stamps) and max(stamps) == last and len(stamps) == (last - min(stamps)) // 60 + 1


def drained(carbon: CarbonServer, metric: str) -> bool | None:
    """True once nothing of ``metric`` waits in carbon's cache (all of it is in whisper)."""
    return True if not carbon.cache_query(metric) else None


# -------------------------------------------------------------------------------- test


@pytest.mark.slow
@pytest.mark.parametrize("tz", ["Asia/Kolkata", "America/Los_Angeles"])
def test_prometheus_to_whisper_through_the_daemon(
    tmp_path: Path,
    tz: str,
    prometheus: tuple[PrometheusServer, int],
    tmp_redis: RedisFactory,
    carbon_server: CarbonServer,
    recorder: PickleRecorder,
    metric_prefix: str,
) -> None:
    prom, history_minute = prometheus
    redis_server = tmp_redis()
    names = {name: f"{metric_prefix}.{name}" for name in METRICS}
    settings: dict[str, object] = {
        "VISTA_ENABLED": True,
        "VISTA_VERBOSE_LOGGING": True,
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "VISTA_SINK": "graphite",
        "VISTA_CARBON_PROTOCOL": "pickle",
        "CARBON_HOST": LOOPBACK,
        "CARBON_PORT": carbon_server.line_port,  # self-metrics (skyline.vista.*)
        "CARBON_PICKLE_PORT": recorder.port,
        "VISTA_WORKER_PROCESSES": 1,
        "VISTA_FETCH_METRICS": tuple(
            (
                prom.url,
                "prometheus",
                STEP,
                f'vista_e2e{{series="{name}"}}',
                name,
                "default",
                metric_prefix,
                None,
                None,
                None,
                None,
                ("3h",),
            )
            for name in METRICS
        ),
    }
    harness = ZonedHarness(tmp_path / "vista", settings, tz)
    launched = time.time()
    try:
        popen, _agent = harness.run_foreground(tmp_path / "vista.stderr")

        def caught_up() -> float | None:
            """Every metric sent up to the last closed minute (as of now)."""
            now = time.time()
            last = int(now) // STEP * STEP - STEP
            ok = all(
                contiguous_to({s.timestamp for s in recorder.sent(m)}, last) for m in names.values()
            )
            return now if ok else None

        seen = poll_until(caught_up, 30, what="the daemon to send every closed minute")
        assert harness.stop_foreground(popen) == 0, harness.log_tail()
    finally:
        harness.cleanup()
    log = harness.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert recorder.errors == []

    for name, metric in names.items():
        sent = recorder.sent(metric)
        stamps = [s.timestamp for s in sent]
        # No duplicates on the wire, in time order per metric.
        assert len(stamps) == len(set(stamps)) and stamps == sorted(stamps), name
        # Never a point of the minute in which it was sent (whatever the daemon's TZ).
        late = [s for s in sent if s.timestamp >= int(s.received) // STEP * STEP]
        assert late == [], late[:3]
        first, last = stamps[0], stamps[-1]
        # The populate window of the first cycle: 3 h back from its minute, on the minute.
        first_cycle_minutes = range(int(launched) // STEP * STEP, int(seen) // STEP * STEP + 1, 60)
        assert first in {m - POPULATE for m in first_cycle_minutes}, (first, launched, seen)
        assert last >= int(seen) // STEP * STEP - STEP
        assert contiguous_to(set(stamps), last)

        # Prometheus' own answer for the same range and step: equal point for point.
        want = reference(prom, name, first, last)
        assert len(want) == (last - first) // STEP + 1
        assert {s.timestamp: s.value for s in sent} == want
        # Lookback: after the last sample (history_minute - 120) Prometheus repeats it.
        assert want[last] == float(value(METRICS.index(name), min(last, history_minute - 120)))

        # And whisper holds exactly that: every slot of the range, nothing around it.
        poll_until(functools.partial(drained, carbon_server, metric), 30, what="carbon to write")
        stored = carbon_server.fetch(metric, first - 3600, int(time.time()))
        assert {ts: v for ts, v in stored if v is not None} == want, name
