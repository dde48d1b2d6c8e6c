"""carbon-cache (Debian's graphite-carbon, /usr/bin/python3) and its whisper files."""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from skyline.vista.testing.base import Server
from skyline.vista.testing.common import (
    LOOPBACK,
    SYSTEM_PYTHON,
    free_port,
    poll_until,
    require_system_modules,
    run_output,
)
from skyline.vista.testing.errors import INSTALL_HINT, MissingBinaryError, ServerError

_WHISPER_FETCH = r"""
import json, sys, time, whisper
path, start, end = sys.argv[1], sys.argv[2], sys.argv[3]
info = whisper.info(path)  # None if the file does not exist
if info is None:
    print("[]")
    sys.exit(0)
now = int(time.time())
if start == "finest":
    start, end = now - info["archives"][0]["retention"], now
found = whisper.fetch(path, int(start), int(end), now=now)
if found is None:
    print("[]")
else:
    (first, _last, step), values = found
    print(json.dumps([[first + i * step, v] for i, v in enumerate(values)]))
"""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ServerError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _carbon_number(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:g}"


class CarbonServer(Server):
    """``carbon-cache`` (under /usr/bin/python3) with its line, pickle and cache-query ports.

    Every metric gets ``retentions`` (default ``10s:6h,60s:1d``), average aggregation and
    xFilesFactor 0; ``MAX_CREATES_PER_MINUTE``/``MAX_UPDATES_PER_SECOND`` are ``inf`` (Debian's
    defaults silently drop points of metrics it has not created yet; ``max_creates_per_minute``
    sets the former).  Facts (carbon 1.1.7,
    whisper 1.1.4):

    * A timestamp is floored to its archive step (``ts - ts % 10``); a later point for the same
      slot overwrites the earlier one.
    * Points are written asynchronously: the writer thread sleeps 1 s whenever the cache is
      empty, so a point reaches its whisper file 0–1 s after carbon received it (the file of a
      new metric is created then too).  Poll with :meth:`wait_for_points`.
    * Future points are stored but ``fetch`` (and graphite-web) hide them until their time;
      points older than the finest archive go to the coarser one only; points older than the
      whole retention are dropped silently.
    * ``fetch(m, from_ts, until_ts)`` returns slots ``floor(from_ts)+step`` …
      ``floor(until_ts)`` inclusive: a ``from_ts`` exactly on a step boundary *excludes* that
      point; the archive used is the finest one whose retention covers ``now - from_ts``.
    * Points older than the finest archive are written straight into the coarser one, where
      a later point in the same slot *overwrites* (no averaging: 5 then 7 in one 60 s slot
      reads 7); averaging only happens when finer points roll up.
    * ``stop()`` (SIGTERM) *loses* points still in carbon's cache (anything received in the
      last ~1 s): the writer thread exits without a final flush.  Wait for
      :meth:`wait_for_points` before stopping if the points matter; :meth:`cache_query` shows
      what is still only in memory.  ``stop()`` takes ~0.9 s (the writer's 1 s sleep).
    """

    name = "carbon"

    def __init__(
        self,
        dir: Path | str,
        *,
        retentions: str = "10s:6h,60s:1d",
        max_creates_per_minute: float = float("inf"),
    ) -> None:
        super().__init__(dir)
        self.retentions = retentions
        self.max_creates_per_minute = max_creates_per_minute
        """carbon's MAX_CREATES_PER_MINUTE: a finite value makes carbon drop the points of a
        new metric when its create token bucket (capacity = value, refill value/60 per second,
        full at start) is empty, as Debian's default of 50 does."""
        self.line_port = free_port()
        self.pickle_port = free_port()
        self.cache_query_port = free_port()
        self.storage_dir = self.dir / "storage"
        self.whisper_dir = self.storage_dir / "whisper"
        self.config_path = self.dir / "carbon.conf"
        self.pid_path = self.dir / "carbon.pid"

    def _repick_ports(self) -> None:
        self.line_port, self.pickle_port = free_port(), free_port()
        self.cache_query_port = free_port()

    def _check_installed(self) -> None:
        if not os.path.exists("/usr/bin/carbon-cache"):
            raise MissingBinaryError(f"/usr/bin/carbon-cache not found: {INSTALL_HINT}")
        require_system_modules("carbon", "whisper")

    def _prepare(self) -> None:
        for sub in (self.whisper_dir, self.storage_dir / "lists", self.dir / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "[cache]\n"
            f"STORAGE_DIR = {self.storage_dir}/\n"
            f"LOCAL_DATA_DIR = {self.whisper_dir}/\n"
            f"WHITELISTS_DIR = {self.storage_dir}/lists/\n"
            f"CONF_DIR = {self.dir}/\n"
            f"LOG_DIR = {self.dir}/log/\n"
            f"PID_DIR = {self.dir}/\n"
            "USER =\n"
            "DATABASE = whisper\n"
            "ENABLE_LOGROTATION = False\n"
            "MAX_CACHE_SIZE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\n"
            f"MAX_CREATES_PER_MINUTE = {_carbon_number(self.max_creates_per_minute)}\n"
            "MIN_TIMESTAMP_RESOLUTION = 0\n"
            f"LINE_RECEIVER_INTERFACE = {LOOPBACK}\n"
            f"LINE_RECEIVER_PORT = {self.line_port}\n"
            f"PICKLE_RECEIVER_INTERFACE = {LOOPBACK}\n"
            f"PICKLE_RECEIVER_PORT = {self.pickle_port}\n"
            f"CACHE_QUERY_INTERFACE = {LOOPBACK}\n"
            f"CACHE_QUERY_PORT = {self.cache_query_port}\n"
            "ENABLE_UDP_LISTENER = False\n"
            "ENABLE_TAGS = False\n"
            "USE_FLOW_CONTROL = True\n"
            "CARBON_METRIC_INTERVAL = 0\n"
            "LOG_LISTENER_CONN_SUCCESS = False\n"
            "LOG_UPDATES = False\n"
            "LOG_CREATES = True\n"
        )
        (self.dir / "storage-schemas.conf").write_text(
            f"[default]\npattern = .*\nretentions = {self.retentions}\n"
        )
        (self.dir / "storage-aggregation.conf").write_text(
            "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n"
        )
        if not self.running:
            self.pid_path.unlink(missing_ok=True)  # stale after a kill(): twistd would refuse

    def _argv(self) -> list[str]:
        return [
            SYSTEM_PYTHON,
            "/usr/bin/carbon-cache",
            f"--config={self.config_path}",
            f"--logdir={self.dir / 'log'}",
            f"--pidfile={self.pid_path}",
            "--nodaemon",
            "start",
        ]

    def _is_ready(self) -> bool:
        log = self.log_text(since_start=True)
        return all(
            f"starting on {port}\n" in log
            for port in (self.line_port, self.pickle_port, self.cache_query_port)
        )

    # feeding -----------------------------------------------------------------------------
    def send_plaintext(self, lines: str | Iterable[str]) -> None:
        """Send ``"metric value timestamp"`` lines over one TCP connection to the line port."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        if not text.endswith("\n"):
            text += "\n"
        with socket.create_connection((LOOPBACK, self.line_port), timeout=10.0) as sock:
            sock.sendall(text.encode())

    def send_pickle(self, points: Iterable[tuple[str, tuple[float, float]]]) -> None:
        """Send ``[(metric, (timestamp, value)), ...]`` as one pickle frame (protocol 2)."""
        payload = pickle.dumps(list(points), protocol=2)
        with socket.create_connection((LOOPBACK, self.pickle_port), timeout=10.0) as sock:
            sock.sendall(struct.pack("!L", len(payload)) + payload)

    # reading -----------------------------------------------------------------------------
    def cache_query(self, metric: str) -> list[tuple[float, float]]:
        """Points of ``metric`` still in carbon's cache (not yet in whisper), as received.

        Uses the cache-query port (what graphite-web's CARBONLINK asks).
        """
        request = pickle.dumps({"type": "cache-query", "metric": metric}, protocol=2)
        with socket.create_connection((LOOPBACK, self.cache_query_port), timeout=10.0) as sock:
            sock.sendall(struct.pack("!L", len(request)) + request)
            (length,) = struct.unpack("!L", _recv_exact(sock, 4))
            reply = pickle.loads(_recv_exact(sock, length))  # our own loopback carbon
        if not isinstance(reply, dict) or "datapoints" not in reply:
            raise ServerError(f"carbon cache-query of {metric!r} answered {reply!r}")
        return sorted((float(ts), float(value)) for ts, value in reply["datapoints"])

    def whisper_path(self, metric: str) -> Path:
        return self.whisper_dir / (metric.replace(".", "/") + ".wsp")

    def _fetch(self, metric: str, start: str, end: str) -> list[tuple[int, float | None]]:
        argv = [SYSTEM_PYTHON, "-c", _WHISPER_FETCH, str(self.whisper_path(metric)), start, end]
        output = run_output(argv, f"whisper fetch of {metric!r} failed")
        return [(int(ts), None if v is None else float(v)) for ts, v in json.loads(output)]

    def fetch(self, metric: str, from_ts: int, until_ts: int) -> list[tuple[int, float | None]]:
        """Every slot of the whisper file in (from_ts, until_ts] as ``(ts, value or None)``.

        Empty if the file does not exist yet or the range is wholly in the future.
        """
        return self._fetch(metric, str(int(from_ts)), str(int(until_ts)))

    def wait_for_points(
        self,
        metric: str,
        expected_count: int,
        timeout: float = 10.0,
        *,
        from_ts: int | None = None,
        until_ts: int | None = None,
    ) -> list[tuple[int, float]]:
        """Poll until the whisper file holds at least ``expected_count`` non-null points.

        Looks at the finest archive's whole retention unless ``from_ts``/``until_ts`` are
        given; returns the non-null points.  TimeoutError says what it saw last.
        """
        path = self.whisper_path(metric)
        seen: list[tuple[int, float]] = []

        def probe() -> list[tuple[int, float]] | None:
            nonlocal seen
            if not path.exists():
                return None
            if from_ts is None:
                rows = self._fetch(metric, "finest", "")
            else:
                rows = self.fetch(metric, from_ts, until_ts or int(time.time()))
            seen = [(ts, v) for ts, v in rows if v is not None]
            return seen if len(seen) >= expected_count else None

        try:
            return poll_until(
                probe, timeout, what=f"{expected_count} points of {metric!r}", interval=0.02
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; saw {seen}") from None
