"""Shared by the real test servers: loopback, free ports, polling, and running programs (the
PATH's and Debian's ``/usr/bin/python3``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from skyline.vista.testing.errors import INSTALL_HINT, MissingBinaryError, ServerError

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's interpreter, the only one that sees carbon, whisper and graphite-web."""

LOOPBACK = "127.0.0.1"


_ports_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (never one handed out before)."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise ServerError("no free port found on 127.0.0.1")


_T = TypeVar("_T")


def poll_until(
    probe: Callable[[], _T | None],
    timeout: float,
    *,
    what: str,
    interval: float = 0.02,
    max_interval: float = 0.1,
) -> _T:
    """Call ``probe`` until it returns something other than None; TimeoutError after ``timeout``.

    The wait between calls starts at ``interval`` and grows to ``max_interval``.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        result = probe()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingBinaryError(f"`{name}` not found on PATH: {INSTALL_HINT}")
    return path


_checked_modules: set[str] = set()


def require_system_modules(*modules: str) -> None:
    """Fail loudly unless /usr/bin/python3 can import ``modules`` (Debian packages)."""
    key = ",".join(modules)
    if key in _checked_modules:
        return
    system_python(f"import {key}", f"cannot import {key}")
    _checked_modules.add(key)


def system_python(code: str, failing: str, stdin: bytes | None = None) -> str:
    """The output of ``code`` run by /usr/bin/python3 (with its Debian modules), or
    MissingBinaryError saying what ``failing`` and the last line of its error."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise MissingBinaryError(f"{SYSTEM_PYTHON} not found: {INSTALL_HINT}")
    try:
        return run_output([SYSTEM_PYTHON, "-c", code], f"{SYSTEM_PYTHON} {failing}", stdin=stdin)
    except ServerError as exc:
        raise MissingBinaryError(f"{exc}\n{INSTALL_HINT}") from None


def run_output(
    argv: list[str], failing: str, *, timeout: float = 30.0, stdin: bytes | None = None
) -> str:
    """The output of the command ``argv``, or ServerError saying what ``failing`` and what the
    command said."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        raise ServerError(f"{failing} (exit {proc.returncode}):\n{said}")
    return proc.stdout.decode()
