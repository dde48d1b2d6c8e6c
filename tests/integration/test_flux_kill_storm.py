"""A kill storm at Flux: how much can a killed worker make Flux store twice?

Real Prometheus history (50 series x 10 h at 60 s, ending 70 minutes ago: a backlog older than
Flux's max age, as after an outage of the source), fetched into the queue by ``vista fetch
--once`` (``populate_at_resolutions=('10h',)``), then delivered by the Vista daemon (``vista
run``, 3 workers, batches of 50 items: 60 requests for the first claim) to the Flux double with
Flux's DEFAULT settings (``FLUX_CHECK_LAST_TIMESTAMP = True``: points sent with ``fill``, i.e.
older than Flux's max age, are never checked against ``flux.last``, so a resent one is forwarded
to carbon again; every point here goes with fill, so nothing but Vista's acknowledgements stands
between a killed worker and points stored twice). A random worker (one that holds items, when
there is one) is SIGKILLed every 0.3-1 s while the daemon delivers; the agent respawns it and
gives its items back.

Vista acknowledges each request as soon as Flux has answered it, so a killed worker can have at
most its one request in flight sent again: every point Flux forwards twice must have been
carried before by the LAST request of a worker's connection (each worker keeps one), at most
one request per kill, and every point Prometheus holds for the window must reach Flux's forward
with its exact value.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import redis

from skyline.vista import constants
from skyline.vista.testing.servers import PrometheusServer, poll_until
from tests.conftest import PrometheusFactory, RedisFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.daemon import VistaHarness, children

SERIES = 50
HOURS = 10
STEP = 60
FLUX_BATCH = 450
ENDS_AGO = 70 * 60


def history(minute: int) -> str:
    lines = ["# TYPE vista_storm gauge"]
    for n in range(SERIES):
        for ts in range(minute - HOURS * 3600, minute - ENDS_AGO + 1, STEP):
            lines.append(
                f'vista_storm{{series="s{n:02d}"}} {(ts // STEP * 7 + n * 1000) % 9973} {ts}'
            )
    return "\n".join(lines) + "\n# EOF\n"


def holders(client: redis.Redis) -> set[int]:
    """Pids of the workers that hold claimed items (worker ids are host:pid:index)."""
    pids = set()
    for tag in client.hvals(constants.INFLIGHT_KEY):
        pids.add(int(str(json.loads(tag)["worker"]).split(":")[-2]))
    return pids


def reference(prom: PrometheusServer, n: int, start: int, end: int) -> dict[int, float]:
    body = prom.query_range(f'vista_storm{{series="s{n:02d}"}}', start, end, STEP)
    (series,) = body["data"]["result"]
    return {int(ts): float(v) for ts, v in series["values"]}


@pytest.mark.slow
@pytest.mark.parametrize("check_last_timestamp", [True, False], ids=["flux-default", "flux-false"])
def test_a_killed_worker_resends_at_most_its_one_request_in_flight(
    tmp_path: Path,
    tmp_prometheus: PrometheusFactory,
    tmp_redis: RedisFactory,
    check_last_timestamp: bool,
) -> None:
    """With FLUX_CHECK_LAST_TIMESTAMP False, Flux checks every point of the metrics in its copy
    of vista.metrics, fill or not, but re-reads that set only once a minute: the same bound
    holds, and fewer points are forwarded twice once Flux has read the set."""
    minute = int(time.time()) // STEP * STEP
    prom = tmp_prometheus(history=history(minute))
    redis_server = tmp_redis()
    client = redis_server.client()
    names = [f"storm.s{n:02d}" for n in range(SERIES)]
    per_metric = (HOURS * 3600 - ENDS_AGO) // STEP  # at least (plus Prometheus' lookback)
    # A slow Flux (0.2 s an answer) spreads the delivery of the ~27,000 points over many
    # seconds, so that kills land while requests are in flight.
    with FluxServer(redis=client, delay=0.2, check_last_timestamp=check_last_timestamp) as flux:
        settings: dict[str, object] = {
            "VISTA_ENABLED": True,
            "REDIS_URL": redis_server.url,
            "VISTA_SINK": "flux",
            "FLUX_IP": "127.0.0.1",
            "FLUX_PORT": flux.port,
            "FLUX_SELF_API_KEY": DEFAULT_KEY,
            "FLUX_CHECK_LAST_TIMESTAMP": check_last_timestamp,
            "VISTA_WORKER_PROCESSES": 3,
            "VISTA_WORKER_BATCH_ITEMS": 50,
            "VISTA_FETCH_METRICS": tuple(
                (
                    prom.url,
                    "prometheus",
                    STEP,
                    f'vista_storm{{series="s{n:02d}"}}',
                    f"s{n:02d}",
                    "default",
                    "storm",
                    None,
                    None,
                    None,
                    None,
                    (f"{HOURS}h",),
                )
                for n in range(SERIES)
            ),
        }
        harness = VistaHarness(tmp_path / "vista", settings)
        rng = random.Random(11)
        kills = mid_batch = 0
        try:
            fetched = harness.cli("fetch", "--once", timeout=120)
            assert fetched.returncode == 0, str(fetched)
            assert client.scard(constants.QUEUE_KEY) == SERIES  # one item of ~540 points each
            popen, agent = harness.run_foreground(tmp_path / "vista.stderr")
            harness.wait_workers(agent, 3)
            started = time.monotonic()

            def delivered() -> bool:
                stamps = flux.worker.forwarded_timestamps()
                return all(len(stamps.get(m, ())) >= per_metric for m in names)

            # The storm: a random worker every 0.3-1 s (one that holds items when there is
            # one), until every point reached Flux (at least 20 s, at most 120 s).
            while time.monotonic() - started < 120:
                if time.monotonic() - started > 20 and delivered():
                    break
                time.sleep(rng.uniform(0.3, 1.0))
                workers = [p for p in children(agent.pid) if p.is_worker]
                assert agent.alive(), harness.log_tail()
                busy = holders(client)
                victims = [p for p in workers if p.pid in busy] or workers
                if victims:
                    victim = rng.choice(victims)
                    os.kill(victim.pid, signal.SIGKILL)
                    kills += 1
                    mid_batch += victim.pid in busy
            storm = time.monotonic() - started
            poll_until(lambda: True if delivered() else None, 60, what="every point at Flux")
            assert harness.stop_foreground(popen) == 0, harness.log_tail()
        finally:
            harness.cleanup()
        flux.wait_processed()
        forwarded = flux.forwarded_by_metric()
        again_from = flux.forwarded_again_from()
        twice = flux.forwarded_twice
        posts = len(flux.requests)
        last_of_connection: dict[str, int] = {}
        for record in flux.requests:
            last_of_connection[record.peer] = record.number
        accepted = flux.accepted_count
    client.close()

    # Every point of the window, exact, at Flux's forward.
    for n, metric in enumerate(names):
        stamps = sorted({ts for ts, _ in forwarded[metric]})
        first, last = stamps[0], stamps[-1]
        assert first <= minute - HOURS * 3600 + STEP and last >= minute - ENDS_AGO
        want = reference(prom, n, first, last)
        assert len(stamps) == len(want), metric  # no gap
        assert {ts: v for ts, v in forwarded[metric]} == want, metric

    # The bound: what Flux forwarded twice was carried before by at most one request per
    # kill of a worker that held items (the request it was waiting for), each at most one
    # request's worth.
    assert kills >= 20 and mid_batch >= 3, (kills, mid_batch)
    assert len(again_from) <= mid_batch, (again_from, mid_batch)
    not_last = sorted(set(again_from) - set(last_of_connection.values()))
    assert not_last == [], (not_last, again_from)  # only a worker's request in flight
    assert all(count <= FLUX_BATCH for count in again_from.values())
    assert twice <= mid_batch * FLUX_BATCH
    total = sum(len(points) for points in forwarded.values()) - twice
    print(
        f"\nkill storm at Flux (FLUX_CHECK_LAST_TIMESTAMP = {check_last_timestamp}): "
        f"{kills} SIGKILLs "
        f"({mid_batch} of a worker holding items) in {storm:.0f} s, "
        f"{total} points, {posts} POSTs, {accepted} points "
        f"taken by Flux, {twice} forwarded twice, from {len(again_from)} request(s) "
        f"(largest {max(again_from.values(), default=0)})"
    )
