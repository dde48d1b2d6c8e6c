"""The processes of one Vista instance, as seen from outside (``vista stop``), from /proc (Linux).

A process is known by its pid and its start time, so that a pid reused by an unrelated process
after ours was reaped is never taken for ours (and never signalled). It has *exited* once it is
gone or a zombie; it is *gone* once its parent (or init, for an orphan) has reaped it: only then
do ``kill -0``, ``ps`` and ``pgrep`` stop showing it.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    state: str  # R, S, D, Z, ...
    started: int  # clock ticks after boot: with the pid, the identity of a process


def read(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    # comm may hold spaces or parentheses: split after the last ')'.
    rest = stat.rsplit(")", 1)[-1].split()
    try:
        return ProcInfo(pid, int(rest[1]), rest[0], int(rest[19]))
    except (IndexError, ValueError):
        return None


def snapshot() -> dict[int, ProcInfo]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read(int(entry))
            if info is not None:
                found[info.pid] = info
    return found


def tree(root: int) -> list[ProcInfo]:
    """``root`` and all its descendants now (children, grandchildren, ...)."""
    procs = snapshot()
    if root not in procs:
        return []
    kids: dict[int, list[int]] = {}
    for info in procs.values():
        kids.setdefault(info.ppid, []).append(info.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(procs[pid])
        todo.extend(kids.get(pid, ()))
    return found


def same(info: ProcInfo) -> ProcInfo | None:
    """The process now, if it is still the one ``info`` describes (not a reused pid)."""
    now = read(info.pid)
    return now if now is not None and now.started == info.started else None


def exited(info: ProcInfo) -> bool:
    now = same(info)
    return now is None or now.state == "Z"


def gone(info: ProcInfo) -> bool:
    return same(info) is None


def kill(info: ProcInfo, sig: int = signal.SIGKILL) -> None:
    """Signal the process if it is still the same one (never a reused pid)."""
    if same(info) is None:
        return
    try:
        os.kill(info.pid, sig)
    except ProcessLookupError:
        pass
