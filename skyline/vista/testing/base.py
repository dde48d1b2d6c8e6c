"""The base classes of the real test servers: :class:`StartStop` (``with``), :class:`Server`
(spawn, poll readiness, stop by PID; every process also stopped at interpreter exit) and
:class:`HttpServer`."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from skyline.vista.testing.common import LOOPBACK, free_port, poll_until
from skyline.vista.testing.errors import ServerError

# Every process we started and have not reaped yet: stopped at interpreter exit at the latest.
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with _live_lock:
        _live.discard(proc)


def _stop_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _terminate(proc, 5.0)


atexit.register(_stop_all_at_exit)


class StartStop:
    """``with thing:`` starts it and stops it, for anything with ``start()`` and ``stop()``
    (the servers here, the test doubles, the benchmarks' helper processes)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Server(StartStop):
    """One daemon: spawn, poll readiness, stop by PID.  Subclasses fill in the hooks."""

    name = "server"
    start_timeout = 30.0

    def __init__(self, dir: Path | str) -> None:
        self.dir = Path(dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_once = False
        self.ready_seconds: float | None = None
        """Seconds from spawning the daemon to it answering (last start)."""
        self.startup_seconds: float | None = None
        """Seconds the whole last ``start()`` took, preparation (promtool, migrate) included."""

    # hooks ------------------------------------------------------------------------------
    def _check_installed(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config, create data: run before every spawn (must be idempotent)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> Mapping[str, str] | None:
        return None

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _repick_ports(self) -> None:
        """Choose new free ports (first start only, when one was taken meanwhile)."""

    # lifecycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Prepare, spawn and wait until ready; raise ServerError (with the log) on failure."""
        if self.running:
            return self
        self.stop()  # reap a process that died by itself
        began = time.monotonic()
        self._check_installed()
        for attempt in range(3):
            self._prepare()
            self._spawn(self._argv(), env=self._env())
            spawned = time.monotonic()
            try:
                self.wait_ready(self.start_timeout if timeout is None else timeout)
                break
            except ServerError:
                self.stop()
                port_taken = "already in use" in self.log_text(since_start=True).lower()
                if not port_taken or self._started_once or attempt == 2:
                    raise
                self._repick_ports()  # another process took a port free_port() handed us
            except BaseException:
                self.stop()
                raise
        self._started_once = True
        now = time.monotonic()
        self.ready_seconds = now - spawned
        self.startup_seconds = now - began
        return self

    def _spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> None:
        full_env = None if env is None else {**os.environ, **env}
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"==== {time.strftime('%H:%M:%S')} $ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=full_env,
                # Its own session: a Ctrl-C meant for a script using these servers (bin/vista-demo)
                # must not stop Redis under a Vista that is still draining. Stopped by pid.
                start_new_session=True,
            )
        with _live_lock:
            _live.add(proc)
        self._proc = proc

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server answers; ServerError if it exits, TimeoutError if too slow."""

        def probe() -> bool | None:
            if self._proc is None:
                raise ServerError(f"{self.name} was not started")
            code = self._proc.poll()
            if code is not None:
                raise ServerError(
                    f"{self.name} exited with code {code} before it was ready:\n{self.log_tail()}"
                )
            return True if self._is_ready() else None

        try:
            poll_until(probe, timeout, what=f"{self.name} to become ready", interval=0.005)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL.  Safe to call twice."""
        if self._proc is not None:
            _terminate(self._proc, timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL (no clean shutdown) and reap."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            with _live_lock:
                _live.discard(self._proc)
            self._proc = None

    def restart(self, timeout: float | None = None) -> Self:
        """Stop (cleanly) if running, then start again with the same ports and directories."""
        self.stop()
        return self.start(timeout)

    def log_text(self, *, since_start: bool = False) -> str:
        try:
            with open(self.log_path, "rb") as log:
                if since_start:
                    log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text(since_start=True).splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(tail)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {state} dir={self.dir}>"


class HttpServer(Server):
    """A daemon answering HTTP on one free loopback port (:attr:`url`)."""

    def __init__(self, dir: Path | str) -> None:
        super().__init__(dir)
        self.port = free_port()

    def _repick_ports(self) -> None:
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"
