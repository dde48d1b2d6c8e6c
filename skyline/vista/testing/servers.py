"""Real servers on loopback for tests, benchmarks and demos.

Each class starts one real daemon (redis-server, prometheus, carbon-cache, graphite-web) on a
free 127.0.0.1 port inside a directory of its own, with its stdout/stderr in ``<dir>/<name>.log``,
and stops it by PID (SIGTERM, then SIGKILL).  Nothing here depends on pytest.

    with RedisServer(tmp / "redis", appendonly=True) as redis_server:
        redis_server.client().set(b"k", b"v")
        redis_server.restart()              # same port, same data dir: the key survives

Carbon and graphite-web are Debian Python packages and run under ``/usr/bin/python3`` (never the
venv's interpreter).  A missing binary raises :class:`MissingBinaryError` ("run `make install`").
Every process started here is also stopped by an ``atexit`` hook, as a safety net.

Behaviours of the real servers that tests of fetchers and sinks must know are listed in the
docstrings of :class:`PrometheusServer`, :class:`CarbonServer` and :class:`GraphiteWebServer`.
"""

# One module per server; this module is the import path the tests, bench/ and bin/vista-demo use.
from skyline.vista.testing.base import HttpServer, Server, StartStop
from skyline.vista.testing.carbon import CarbonServer
from skyline.vista.testing.common import LOOPBACK, SYSTEM_PYTHON, free_port, poll_until
from skyline.vista.testing.errors import MissingBinaryError, ServerError
from skyline.vista.testing.graphite_web import GraphiteWebServer
from skyline.vista.testing.prometheus import PrometheusServer
from skyline.vista.testing.redis_server import RedisServer
from skyline.vista.testing.sentinel import SentinelServer, SentinelSet, Watched

__all__ = [
    "LOOPBACK",
    "SYSTEM_PYTHON",
    "CarbonServer",
    "GraphiteWebServer",
    "HttpServer",
    "MissingBinaryError",
    "PrometheusServer",
    "RedisServer",
    "SentinelServer",
    "SentinelSet",
    "Server",
    "ServerError",
    "StartStop",
    "Watched",
    "free_port",
    "poll_until",
]
