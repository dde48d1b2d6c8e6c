"""A recording proxy in front of carbon's pickle port.

It forwards every byte to carbon and notes each point with the time it arrived, so duplicates
and current-minute points are seen where they happen, not only in whisper (which keeps one value
per slot). :meth:`PickleRecorder.set_down` makes the sink unreachable (connections refused and
closed) without stopping carbon, whose SIGTERM loses what is still in its cache.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from skyline.vista.testing.servers import LOOPBACK


@dataclass(frozen=True)
class Sent:
    metric: str
    timestamp: int
    value: float
    received: float  # wall clock when the proxy read the frame


@dataclass
class PickleRecorder:
    """Forwards carbon pickle connections to carbon and records every point they carry."""

    target: tuple[str, int]
    points: list[Sent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, self.port))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self._spawn(self._accept)

    def _spawn(self, run: object, *args: object) -> None:
        thread = threading.Thread(target=run, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self._spawn(self._relay, client)

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError as exc:
            self.errors.append(f"cannot reach carbon: {exc}")
            client.close()
            return
        with self._lock:
            self._conns += [client, upstream]
        buffer = b""
        try:
            while chunk := client.recv(1 << 16):
                upstream.sendall(chunk)
                buffer = self._parse(buffer + chunk, time.time())
        except OSError:
            pass  # the daemon went away, or close() below
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
            self.errors.append(f"not a carbon pickle frame: {exc!r}")
        finally:
            if buffer:
                self.errors.append(f"{len(buffer)} bytes of an incomplete frame")
            client.close()
            upstream.close()

    def _parse(self, buffer: bytes, now: float) -> bytes:
        while len(buffer) >= 4:
            (size,) = struct.unpack("!L", buffer[:4])
            if len(buffer) < 4 + size:
                break
            batch = pickle.loads(buffer[4 : 4 + size])  # our own daemon, on loopback
            buffer = buffer[4 + size :]
            with self._lock:
                for metric, (ts, value) in batch:
                    self.points.append(Sent(metric, int(ts), float(value), now))
        return buffer

    def set_down(self) -> None:
        """The sink goes away: new connections are refused, open ones are closed."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def set_up(self) -> None:
        """The sink is back on the same port."""
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, self.port))
        self.listener.listen(16)
        self._spawn(self._accept)

    def by_metric(self) -> dict[str, list[Sent]]:
        found: dict[str, list[Sent]] = {}
        with self._lock:
            for point in self.points:
                found.setdefault(point.metric, []).append(point)
        return found

    def sent(self, metric: str) -> list[Sent]:
        with self._lock:
            return [p for p in self.points if p.metric == metric]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self.listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
