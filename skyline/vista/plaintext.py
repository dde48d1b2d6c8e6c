"""Carbon's plaintext protocol, one connection per send: how the self-metrics
(``skyline.vista<S>.*``, BigQuery's per-interval figures) reach carbon. Points for the sink go
by :mod:`skyline.vista.sinks.carbon` instead (pickle, kept connection).

A module of its own, beneath both :mod:`skyline.vista.telemetry` and the sinks, so that the
metrics module (which the sources use) does not import a sink (docs/architecture.md).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence


def send_plaintext(address: tuple[str, int], lines: Sequence[str], timeout: float = 5.0) -> None:
    """One-shot plaintext send (self-metrics). Raises OSError on failure."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall("".join(lines).encode())
