"""Carbon (Graphite) sink: the pickle protocol (or plaintext) over one persistent TCP connection.

Messages carry up to 500 points (carbon's MAX_DATAPOINTS_PER_MESSAGE). A failed send closes the
connection; the next submit reconnects (the worker's backoff spaces the attempts). Everything
sent before the failure counts as handled: carbon stores a (metric, timestamp) once, so
resending the same value after a reconnect cannot duplicate it.
"""

from __future__ import annotations

import logging
import pickle
import select
import socket
import struct
from collections.abc import Iterable, Sequence

from skyline.vista.config import CarbonConfig
from skyline.vista.constants import CARBON_PICKLE_POINTS
from skyline.vista.errors import SinkError
from skyline.vista.sinks import Progress, SinkPoint, SinkResult
from skyline.vista.validate import format_value

logger = logging.getLogger(__name__)


def pickle_message(points: Sequence[SinkPoint]) -> bytes:
    payload = pickle.dumps([(e.metric, (e.timestamp, e.value)) for e in points], protocol=2)
    return struct.pack("!L", len(payload)) + payload


def plaintext_message(points: Iterable[SinkPoint]) -> bytes:
    return "".join(f"{e.metric} {format_value(e.value)} {e.timestamp}\n" for e in points).encode()


class CarbonSink:
    name = "graphite"

    def __init__(
        self, config: CarbonConfig, points_per_message: int = CARBON_PICKLE_POINTS
    ) -> None:
        self.config = config
        self.points_per_message = points_per_message
        self._sock: socket.socket | None = None
        self.connects = 0

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Carbon never writes to us: a readable socket means it closed or reset the connection
        (e.g. carbon restarted). Checked before each batch so as not to write into a dead one."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _connect(self) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            logger.info("carbon closed the connection; reconnecting")
            self.close()
        if self._sock is None:
            try:
                sock = socket.create_connection(self.config.address, timeout=self.config.timeout)
            except OSError as exc:
                host, port = self.config.address
                raise SinkError(f"cannot connect to carbon at {host}:{port}: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._sock = sock
            self.connects += 1
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                logger.debug("closing the carbon socket failed", exc_info=True)
            self._sock = None

    def submit(
        self, points: Sequence[SinkPoint], now: float, progress: Progress | None = None
    ) -> SinkResult:
        """Carbon never answers, so there is no request to report: ``progress`` is not called
        (the worker acknowledges each submit; carbon stores a (metric, timestamp) once)."""
        result = SinkResult()
        encode = pickle_message if self.config.protocol == "pickle" else plaintext_message
        size = self.points_per_message
        try:
            sock = self._connect()
            for start in range(0, len(points), size):
                chunk = points[start : start + size]
                sock.sendall(encode(chunk))
                result.handled = start + len(chunk)
        except SinkError as exc:
            result.error = exc
        except OSError as exc:
            self.close()
            host, port = self.config.address
            result.error = SinkError(f"sending to carbon at {host}:{port} failed: {exc}")
        return result
