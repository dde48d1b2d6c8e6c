"""Smoke tests of the real-server fixtures: each really works, and the helpers are exact."""

from __future__ import annotations

import math
import socket
import time

import pytest
import redis
import requests

from skyline.vista.testing.servers import (
    CarbonServer,
    GraphiteWebServer,
    PrometheusServer,
    RedisServer,
    ServerError,
    poll_until,
)
from tests.conftest import PrometheusFactory, RedisFactory

# ---------------------------------------------------------------------------------- Redis


def test_redis_server_answers_on_its_socket(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_server.socket_path is not None and redis_server.port is None
    assert redis_client.ping() is True
    assert redis_client.dbsize() == 0  # FLUSHALLed for this test
    redis_client.set(b"k", b"\xff\x00")
    with redis.Redis.from_url(redis_server.url) as by_url:
        assert by_url.get(b"k") == b"\xff\x00"


def test_redis_restart_and_kill_keep_data_with_appendonly(tmp_redis: RedisFactory) -> None:
    server = tmp_redis(appendonly=True, password="p@ss w:rd")
    port, pid = server.port, server.pid
    assert port is not None
    with server.client() as client:
        client.set(b"k", b"v")
        client.rpush(b"l", b"a", b"b")
    # Raw socket: redis-py 8 retries an AuthenticationError with backoff for ~3.7 s.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
        anonymous.sendall(b"PING\r\n")
        assert anonymous.recv(100).startswith(b"-NOAUTH")

    server.restart()
    assert server.port == port and server.pid != pid
    with redis.Redis.from_url(server.url) as client:
        assert client.get(b"k") == b"v"
        client.rpush(b"l", b"c")  # acknowledged just before a SIGKILL: must survive too

    server.kill()
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server.start()
    with server.client() as client:
        assert client.lrange(b"l", 0, -1) == [b"a", b"b", b"c"]


def test_redis_restart_without_appendonly_starts_empty(tmp_redis: RedisFactory) -> None:
    server = tmp_redis(unix_socket=True)
    with server.client() as client:
        client.set(b"k", b"v")
    server.restart()
    with server.client() as client:
        assert client.dbsize() == 0


# ----------------------------------------------------------------------------- Prometheus


def _prom_history(t0: int) -> str:
    lines = ["# TYPE vista_smoke gauge"]
    values_a = ["0.5", "-1.25", "0", "42", "1234567.125", "NaN", "+Inf", "7"]
    for i, value in enumerate(values_a):
        lines.append(f'vista_smoke{{job="a",instance="h:1"}} {value} {t0 + 60 * i}')
    for i, value in enumerate(["1", "2", "3"]):
        lines.append(f'vista_smoke{{job="b",instance="h:2"}} {value} {t0 + 60 * i}')
    # 30 days old: loads because retention is 100y (the default 15d would delete it).
    old = t0 - 30 * 86400
    lines += [f"vista_old 1 {old}", f"vista_old 2 {old + 60}"]
    return "\n".join(lines) + "\n# EOF\n"


def test_prometheus_history_is_exact(tmp_prometheus: PrometheusFactory) -> None:
    now = int(time.time())
    t0 = now - now % 60 - 3600
    server = tmp_prometheus(history=_prom_history(t0))
    assert server.history_samples == 8 + 3 + 2

    body = server.query_range("vista_smoke", t0, t0 + 7 * 60, 60)
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix"
    by_job = {r["metric"]["job"]: r for r in body["data"]["result"]}
    assert by_job["a"]["metric"] == {"__name__": "vista_smoke", "job": "a", "instance": "h:1"}
    assert by_job["a"]["values"] == [
        [t0 + 60 * i, v]
        for i, v in enumerate(["0.5", "-1.25", "0", "42", "1234567.125", "NaN", "+Inf", "7"])
    ]
    # Lookback: "b" ends at t0+120 but is repeated at every step for 5 min (inclusive).
    b = server.query_range('vista_smoke{job="b"}', t0, t0 + 480, 60)["data"]["result"][0]
    assert b["values"] == [[t0 + 60 * i, v] for i, v in enumerate("12333333")]

    # Off-grid start: each evaluation takes the latest sample at or before it.
    off = server.query_range('vista_smoke{job="a"}', t0 - 60 + 30, t0 + 90, 60)
    assert off["data"]["result"][0]["values"] == [[t0 + 30, "0.5"], [t0 + 90, "-1.25"]]

    old = server.query_range("vista_old", t0 - 30 * 86400, t0 - 30 * 86400 + 60, 60)
    assert old["data"]["result"][0]["values"] == [
        [t0 - 30 * 86400, "1"],
        [t0 - 30 * 86400 + 60, "2"],
    ]

    assert server.query_range("nothing_here", t0, t0 + 60, 60)["data"]["result"] == []
    bad = server.query_range("sum(", t0, t0 + 60, 60)
    assert bad["status"] == "error" and bad["errorType"] == "bad_data"


def test_prometheus_history_rejects_out_of_order_samples(tmp_prometheus: PrometheusFactory) -> None:
    t0 = int(time.time()) // 60 * 60 - 3600
    server = tmp_prometheus(history=f"m 2 {t0 + 60}\nm 1 {t0}\n# EOF\n", start=False)
    with pytest.raises(ServerError, match="wrote 1 of 2 samples"):
        server.start()


def test_prometheus_basic_auth(tmp_prometheus: PrometheusFactory) -> None:
    server = tmp_prometheus(basic_auth=("vista", "s3cr:et"))
    url = f"{server.url}/api/v1/query"
    with requests.get(url, params={"query": "1"}, timeout=5) as resp:
        assert resp.status_code == 401
    with requests.get(url, params={"query": "1"}, auth=("vista", "wrong"), timeout=5) as resp:
        assert resp.status_code == 401
    with requests.get(url, params={"query": "1"}, auth=("vista", "s3cr:et"), timeout=5) as resp:
        assert resp.status_code == 200
        assert resp.json()["data"]["result"][1] == "1"
    assert server.query("1")["status"] == "success"  # the helper sends the credentials


def test_prometheus_scrapes_itself(prometheus_server: PrometheusServer) -> None:
    up = prometheus_server.wait_for_series('up{job="prometheus"}', timeout=20)
    assert up[0]["value"][1] == "1"


# --------------------------------------------------------------------------- carbon + web


def _aligned_past(seconds_ago: int = 120) -> int:
    now = int(time.time())
    return now - now % 10 - seconds_ago


def test_carbon_stores_plaintext_and_pickle_exactly(
    carbon_server: CarbonServer, metric_prefix: str
) -> None:
    t = _aligned_past()
    plain, pickled = f"{metric_prefix}.plain", f"{metric_prefix}.pickled"
    carbon_server.send_plaintext(
        [f"{plain} 1.5 {t}", f"{plain} -2.25 {t + 10}", f"{plain} 1000000 {t + 23}"]
    )
    carbon_server.send_pickle([(pickled, (t, 3.0)), (pickled, (t + 10.0, 4.5))])

    # t+23 is floored to its 10 s slot.
    assert carbon_server.wait_for_points(plain, 3) == [(t, 1.5), (t + 10, -2.25), (t + 20, 1e6)]
    assert carbon_server.wait_for_points(pickled, 2) == [(t, 3.0), (t + 10, 4.5)]
    assert carbon_server.fetch(plain, t - 10, t + 30) == [
        (t, 1.5),
        (t + 10, -2.25),
        (t + 20, 1e6),
        (t + 30, None),
    ]
    # `from` exactly on a step boundary excludes that slot; `until` includes its slot.
    assert carbon_server.fetch(plain, t, t + 10) == [(t + 10, -2.25)]
    assert carbon_server.fetch(f"{metric_prefix}.never_sent", t - 10, t + 30) == []
    assert carbon_server.cache_query(f"{metric_prefix}.never_sent") == []

    # A new point of a known metric sits in carbon's cache for up to ~1 s before whisper.
    carbon_server.send_plaintext([f"{plain} 9.5 {t + 30}"])
    in_cache = poll_until(
        lambda: carbon_server.cache_query(plain) or carbon_server.fetch(plain, t + 20, t + 30),
        5,
        what="the new point in carbon's cache or whisper",
    )
    assert in_cache in ([(t + 30.0, 9.5)], [(t + 30, 9.5)])


def test_graphite_web_renders_what_carbon_stored(
    carbon_server: CarbonServer, graphite_web: GraphiteWebServer, metric_prefix: str
) -> None:
    t = _aligned_past()
    p = metric_prefix
    weird = f"{p}.we+ird%20name"
    carbon_server.send_plaintext(
        [
            f"{p}.a.x.b 1 {t}",
            f"{p}.a.x.b 2 {t + 10}",
            f"{p}.a.y.b 10 {t}",
            f"{p}.a.y.b 20 {t + 10}",
            f"{p}.a.z.c 100 {t}",
            f"{weird} 7.25 {t + 10}",
        ]
    )
    graphite_web.wait_visible(weird)  # a new metric is invisible until its whisper file exists
    for metric, count in ((f"{p}.a.x.b", 2), (f"{p}.a.y.b", 2), (f"{p}.a.z.c", 1)):
        carbon_server.wait_for_points(metric, count)

    plain = graphite_web.render(f"{p}.a.x.b", t - 10, t + 10)
    assert plain == [
        {
            "target": f"{p}.a.x.b",
            "tags": {"name": f"{p}.a.x.b"},
            "datapoints": [[1.0, t], [2.0, t + 10]],
        }
    ]
    # `from` on a step boundary excludes that point.
    assert graphite_web.render(f"{p}.a.x.b", t, t + 10)[0]["datapoints"] == [[2.0, t + 10]]

    summed = graphite_web.render(f"sumSeries({p}.a.*.b)", t - 10, t + 10)
    assert len(summed) == 1
    assert summed[0]["target"] == f"sumSeries({p}.a.*.b)"
    assert summed[0]["datapoints"] == [[11.0, t], [22.0, t + 10]]

    globbed = graphite_web.render(f"{p}.a.*.b", t - 10, t + 10)
    assert sorted(s["target"] for s in globbed) == [f"{p}.a.x.b", f"{p}.a.y.b"]

    odd = graphite_web.render(weird, t - 10, t + 10)
    assert [(s["target"], s["datapoints"]) for s in odd] == [(weird, [[None, t], [7.25, t + 10]])]
    # Unencoded, '+' reads as a space and "%20" as a space: no such metric.
    raw = f"{graphite_web.url}/render?format=json&from={t - 10}&until={t + 10}&target={weird}"
    with requests.get(raw, timeout=10) as resp:
        assert resp.status_code == 200 and resp.json() == []

    assert graphite_web.render(f"{p}.missing", t - 10, t + 10) == []
    with pytest.raises(ServerError, match="400"):
        graphite_web.render(f"noSuchFunction({p}.a.x.b)")


def test_graphite_web_range_without_data_is_all_null(
    graphite_web: GraphiteWebServer, carbon_server: CarbonServer, metric_prefix: str
) -> None:
    """A metric with no data in range: one series, every value null."""
    t = _aligned_past(600)
    metric = f"{metric_prefix}.sparse"
    carbon_server.send_plaintext([f"{metric} 5 {t}"])
    graphite_web.wait_visible(metric)
    series = graphite_web.render(metric, t + 100, t + 130)
    assert [v for v, _ in series[0]["datapoints"]] == [None, None, None]
    assert not any(isinstance(v, float) and math.isnan(v) for v, _ in series[0]["datapoints"])
