"""Pidfile, daemonisation and the start/stop/status controls (LSB exit codes).

The pidfile holds the agent's pid and stays ``flock``-ed by the agent for its whole life, so
``status`` can tell a live agent from a stale file even when the pid has been reused: the lock
is released by the kernel when the agent dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from skyline.vista import constants, proctree, procutil


class State(Enum):
    RUNNING = constants.EXIT_OK
    DEAD = constants.EXIT_FAILURE  # dead, but the pidfile exists
    NOT_RUNNING = constants.EXIT_NOT_RUNNING


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"vista is already running (pid {pid})")


def read_pid(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _locked(path: str) -> bool:
    """True if some process holds the lock on the pidfile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@dataclass(frozen=True)
class Status:
    state: State
    pid: int | None


def status(path: str) -> Status:
    if not os.path.exists(path):
        return Status(State.NOT_RUNNING, None)
    pid = read_pid(path)
    if pid is not None and procutil.pid_alive(pid) and _locked(path):
        return Status(State.RUNNING, pid)
    return Status(State.DEAD, pid)


class PidFile:
    """Created and locked by the agent; removed when it exits cleanly."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise AlreadyRunning(read_pid(self.path)) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    @property
    def fd(self) -> int | None:
        return self._fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if read_pid(self.path) == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def remove_stale(path: str) -> bool:
    """Remove a pidfile whose agent is gone. Returns True if one was removed."""
    current = status(path)
    if current.state is State.DEAD:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    return False


REAP_WAIT = 5.0
"""After every process of the instance has exited, how long ``stop`` waits for the zombies to
be reaped (by init: the agent is a daemon, and its orphans are reparented)."""


def stop(path: str, timeout: float, *, echo: Callable[[str], None] = print) -> int:
    """SIGTERM the agent and wait until every process of the instance (the agent, its workers,
    the multiprocessing resource tracker, job processes and anything they started) has exited
    and been reaped; SIGKILL what is left after ``timeout``. LSB: 0 when everything is gone
    (also when it was not running), 1 when a process could not be stopped."""
    current = status(path)
    if current.state is State.NOT_RUNNING:
        echo("vista is not running")
        return constants.EXIT_OK
    if current.state is State.DEAD:
        remove_stale(path)
        echo(f"vista was not running; removed the stale pidfile (pid {current.pid})")
        return constants.EXIT_OK
    pid = current.pid
    assert pid is not None
    instance = {info.pid: info for info in proctree.tree(pid)}
    if pid not in instance:  # it exited between the two looks
        remove_stale(path)
        echo(f"vista stopped (pid {pid})")
        return constants.EXIT_OK
    os.kill(pid, signal.SIGTERM)
    if not _wait(instance, pid, timeout, proctree.exited):
        echo(f"vista (pid {pid}) did not stop within {timeout:g}s; sending SIGKILL")
        for info in list(instance.values()):
            proctree.kill(info)
        _wait(instance, pid, 5.0, proctree.exited)
    running = sorted(p for p, info in instance.items() if not proctree.exited(info))
    if running:
        echo(f"vista (pid {pid}) could not be stopped: pid(s) {_pids(running)} still running")
        return constants.EXIT_FAILURE
    _wait(instance, pid, REAP_WAIT, proctree.gone)
    remove_stale(path)
    unreaped = sorted(p for p, info in instance.items() if not proctree.gone(info))
    note = f"; pid(s) {_pids(unreaped)} exited, not yet reaped by their parent" if unreaped else ""
    echo(f"vista stopped (pid {pid}){note}")
    return constants.EXIT_OK


def _wait(
    instance: dict[int, proctree.ProcInfo],
    agent: int,
    timeout: float,
    done: Callable[[proctree.ProcInfo], bool],
) -> bool:
    """Wait until ``done`` holds for every process of the instance; processes the agent starts
    meanwhile (a worker respawned during the drain) join the instance while it lives."""
    deadline = time.monotonic() + timeout
    while True:
        root = proctree.same(instance[agent])
        if root is not None and root.state != "Z":
            for info in proctree.tree(agent):
                instance.setdefault(info.pid, info)
        if all(done(info) for info in instance.values()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _pids(pids: list[int]) -> str:
    return ", ".join(str(p) for p in pids)


def daemonize(
    body: Callable[[Callable[[str], None]], int],
    *,
    preserve: list[int],
    stderr_path: str,
    ready_timeout: float = 30.0,
) -> tuple[int, str]:
    """Run ``body`` in a detached daemon (python-daemon's DaemonContext, PEP 3143).

    ``body(notify)`` must call ``notify('ok <pid>')`` once it runs (or ``notify('error ...')``).
    The calling process waits for that message and returns ``(exit code, message)``, so that
    ``vista start`` reports a failure instead of exiting 0 before the daemon has even started.
    """
    import daemon  # python-daemon

    read_end, write_end = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_end)
        message = _read_message(read_end, ready_timeout)
        os.close(read_end)
        os.waitpid(first, 0)
        if message.startswith("ok"):
            return constants.EXIT_OK, message[2:].strip()
        return constants.EXIT_FAILURE, message.removeprefix(
            "error"
        ).strip() or "no answer from the daemon"
    os.close(read_end)
    code = constants.EXIT_FAILURE
    try:
        log = open(stderr_path, "a", buffering=1, encoding="utf-8")
        context = daemon.DaemonContext(
            working_directory="/",
            umask=0o022,
            files_preserve=[write_end, log.fileno(), *preserve],
            stdout=log,
            stderr=log,
            signal_map={},
        )
        with context:

            def notify(text: str) -> None:
                try:
                    os.write(write_end, (text + "\n").encode())
                    os.close(write_end)
                except OSError:
                    pass

            code = body(notify)
    finally:
        os._exit(code)


def _read_message(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if b"\n" in data:
            break
    return data.decode(errors="replace").strip()
