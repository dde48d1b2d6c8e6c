"""A supervised pool of child processes: start, reap, respawn with backoff, stop.

The agent's workers and the job processes (history backfill, BigQuery) are children of the
agent, each started from a factory that returns an unstarted ``multiprocessing`` process (use
the 'spawn' context: the agent has threads, and forking a threaded process can deadlock the
child on a lock held at the time of the fork).

* :meth:`ProcessPool.start` starts a child under a name. A *long-lived* child (``respawn=True``,
  e.g. a worker) is started again when it dies, after a delay that grows while it keeps dying
  younger than ``young`` seconds; a one-shot child (a job) is forgotten once it has exited.
* :meth:`ProcessPool.poll` reaps the children that have exited and calls each one's
  ``on_exit`` with a :class:`ChildExit` (name, pid, exit code, age): the caller gives the dead
  child's work back (its queue items, its job) from there.
* :meth:`ProcessPool.stop` / :meth:`ProcessPool.stop_all` send SIGTERM, wait, then SIGKILL
  whatever is left; :meth:`ProcessPool.kill_all` is the "second Ctrl-C".

The pool is driven by one thread (the agent's supervision loop); it is not thread-safe.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from skyline.vista.backoff import compute_backoff

logger = logging.getLogger(__name__)

YOUNG_DEATH = 30.0
"""A child that dies younger than this counts towards its restart backoff."""


@dataclass(frozen=True)
class ChildExit:
    """What the pool knows about a child that has exited."""

    name: str
    pid: int | None
    exitcode: int | None
    lived: float
    """Seconds between start and the moment the pool noticed the exit."""
    killed: bool = False
    """True when the pool itself had to SIGKILL it (a stop that timed out)."""
    restart_in: float | None = None
    """Seconds until a long-lived child is started again; None for a one-shot child."""


ExitHandler = Callable[[ChildExit], None]
StartHandler = Callable[[BaseProcess], None]
ProcessFactory = Callable[[], BaseProcess]


@dataclass
class _Child:
    name: str
    factory: ProcessFactory
    respawn: bool
    on_exit: ExitHandler | None
    on_start: StartHandler | None = None
    process: BaseProcess | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


@dataclass
class ProcessPool:
    """Children by name. ``clock`` is injectable for tests of the backoff."""

    young: float = YOUNG_DEATH
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _children: dict[str, _Child] = field(default_factory=dict)
    stopping: bool = False
    """Set by stop_all: nothing is respawned any more."""

    # --- starting ---------------------------------------------------------------------------

    def start(
        self,
        name: str,
        factory: ProcessFactory,
        *,
        respawn: bool = False,
        on_exit: ExitHandler | None = None,
        on_start: StartHandler | None = None,
    ) -> BaseProcess:
        """Start a child under ``name`` (which must not be running already). ``on_start`` is
        called after each start, respawns included (e.g. to log the new pid)."""
        current = self._children.get(name)
        if current is not None and current.process is not None and current.process.is_alive():
            raise ValueError(f"child {name!r} is already running (pid {current.process.pid})")
        child = _Child(name, factory, respawn, on_exit, on_start)
        if current is not None:
            child.failures = current.failures
        self._children[name] = child
        return self._spawn(child)

    def _spawn(self, child: _Child) -> BaseProcess:
        process = child.factory()
        process.start()
        child.process = process
        child.started = self.clock()
        logger.debug("started %s (pid %s)", child.name, process.pid)
        if child.on_start is not None:
            child.on_start(process)
        return process

    # --- reaping ----------------------------------------------------------------------------

    def poll(self) -> list[ChildExit]:
        """Reap exited children (calling their ``on_exit``) and respawn the long-lived ones
        whose delay has passed. Returns the exits seen in this call."""
        exits = []
        now = self.clock()
        for child in list(self._children.values()):
            process = child.process
            if process is None:
                if child.respawn and not self.stopping and now >= child.restart_at:
                    self._spawn(child)
                continue
            if process.is_alive():
                continue
            exits.append(self._reap(child, now, killed=False))
        return exits

    def _reap(self, child: _Child, now: float, *, killed: bool) -> ChildExit:
        process = child.process
        assert process is not None
        process.join(0)
        lived = now - child.started
        restart_in: float | None = None
        if child.respawn and not self.stopping:
            child.failures = child.failures + 1 if lived < self.young else 0
            restart_in = (
                compute_backoff(child.failures, base=self.backoff_base, cap=self.backoff_cap)
                if child.failures
                else 0.0
            )
            child.restart_at = now + restart_in
            child.process = None
        else:
            del self._children[child.name]
        exit_ = ChildExit(child.name, process.pid, process.exitcode, lived, killed, restart_in)
        if child.on_exit is not None:
            child.on_exit(exit_)
        return exit_

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, name: str, timeout: float) -> ChildExit | None:
        """SIGTERM one child, wait up to ``timeout``, SIGKILL it if need be; it is forgotten
        (not respawned). Returns its exit, or None if it was not running."""
        child = self._children.get(name)
        if child is None:
            return None
        child.respawn = False
        if child.process is None:
            del self._children[name]
            return None
        _signal(child.process, signal.SIGTERM)
        child.process.join(timeout)
        killed = _kill_if_alive(child.process)
        return self._reap(child, self.clock(), killed=killed)

    def stop_all(self, timeout: float) -> list[ChildExit]:
        """SIGTERM every child, wait until ``timeout`` for them all, SIGKILL the rest."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        children = list(self._children.values())
        for child in children:
            child.respawn = False
            if child.process is not None:
                _signal(child.process, signal.SIGTERM)
        exits = []
        for child in children:
            if child.process is None:
                self._children.pop(child.name, None)
                continue
            child.process.join(max(0.0, deadline - time.monotonic()))
            killed = _kill_if_alive(child.process)
            exits.append(self._reap(child, self.clock(), killed=killed))
        return exits

    def kill_all(self) -> None:
        """SIGKILL every child now (no reaping, no callbacks): for a forced exit."""
        self.stopping = True
        for child in self._children.values():
            if child.process is not None:
                _signal(child.process, signal.SIGKILL)

    # --- looking ----------------------------------------------------------------------------

    def process(self, name: str) -> BaseProcess | None:
        child = self._children.get(name)
        return child.process if child is not None else None

    def pid(self, name: str) -> int | None:
        process = self.process(name)
        return process.pid if process is not None else None

    def running(self) -> Iterator[tuple[str, BaseProcess]]:
        """(name, process) of every child started and not yet reaped."""
        for child in list(self._children.values()):
            if child.process is not None:
                yield child.name, child.process

    def names(self) -> list[str]:
        return list(self._children)

    def __contains__(self, name: object) -> bool:
        return name in self._children

    def __len__(self) -> int:
        return len(self._children)


def _signal(process: BaseProcess, sig: int) -> None:
    if process.pid and process.is_alive():
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass


def _kill_if_alive(process: BaseProcess) -> bool:
    if not process.is_alive():
        return False
    process.kill()
    process.join(5.0)
    return True
