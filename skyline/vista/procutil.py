"""Small process helpers: parent-death signal, liveness checks, interruptible sleeps, fewer
GC passes, a child process's start (:class:`AgentChild`)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import gc
import multiprocessing.context
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from skyline.vista import constants, logs
from skyline.vista.logs import LogSpec

if TYPE_CHECKING:
    from skyline.vista.config import VistaConfig

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (even by SIGKILL)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def parent_alive(parent_pid: int) -> bool:
    """True while our parent is the process we were started by."""
    return os.getppid() == parent_pid


def sleep_until(deadline: float, stop: Callable[[], bool], step: float = 0.1) -> bool:
    """Sleep until the monotonic ``deadline`` or until ``stop()``; returns True if stopped."""
    while not stop():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(step, remaining))
    return True


def interruptible_sleep(seconds: float, stop: Callable[[], bool], step: float = 0.1) -> bool:
    return sleep_until(time.monotonic() + seconds, stop, step)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces or parentheses
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 1 and rest[1] == str(pid):
            found.append(int(entry))
    return sorted(found)


@contextlib.contextmanager
def fewer_gc_passes(gen0: int = constants.GC_GEN0_THRESHOLD) -> Iterator[None]:
    """Raise the GC's first threshold to ``gen0`` for the block (never lower it), then restore."""
    saved = gc.get_threshold()
    if 0 < saved[0] < gen0:
        gc.set_threshold(gen0, *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def start_child(parent_pid: int, log_spec: LogSpec, death_signal: int) -> None:
    """What each child process of the agent (worker, job) does first: die with the agent (its
    parent-death signal; exit at once if the agent is already gone), log as configured, run
    the GC less often, and leave Ctrl-C and hangups to the agent, which coordinates stops and
    reloads."""
    set_parent_death_signal(death_signal)
    if not parent_alive(parent_pid):
        sys.exit(constants.EXIT_OK)
    logs.configure(log_spec)
    gc.set_threshold(constants.GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class AgentChild(multiprocessing.context.SpawnProcess):
    """A process the agent spawns and supervises (a job; a worker may be one too). Started with
    the 'spawn' method: the agent has threads, and forking a threaded process can deadlock the
    child on a lock held at the time of the fork. In the child, :meth:`run` does
    :func:`start_child` (``death_signal`` is sent when the agent dies) and then :meth:`main`."""

    def __init__(
        self, name: str, parent_pid: int, config: VistaConfig, log_spec: LogSpec, death_signal: int
    ) -> None:
        super().__init__(name=name, daemon=False)
        self.parent_pid = parent_pid
        self.config = config
        self.log_spec = log_spec
        self.death_signal = death_signal

    def run(self) -> None:
        start_child(self.parent_pid, self.log_spec, self.death_signal)
        self.main()

    def main(self) -> None:
        raise NotImplementedError
