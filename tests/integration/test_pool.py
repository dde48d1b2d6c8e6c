"""The supervised process pool with real spawned children."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType

from skyline.vista.pool import ChildExit, ProcessPool
from skyline.vista.testing.servers import poll_until

_SPAWN = multiprocessing.get_context("spawn")


def sleeper(seconds: float) -> None:
    time.sleep(seconds)


def stubborn(ready: EventType) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def child(target: Callable[..., object], *args: object) -> BaseProcess:
    return _SPAWN.Process(target=target, args=args)


def test_a_long_lived_child_is_respawned_with_growing_backoff_and_its_exit_reported() -> None:
    exits: list[ChildExit] = []
    pool = ProcessPool(backoff_base=0.2, backoff_cap=0.4)
    first = pool.start("w", lambda: child(sleeper, 0.0), respawn=True, on_exit=exits.append)
    poll_until(lambda: True if (pool.poll() or exits) else None, 20, what="the first exit")
    assert exits[0].name == "w" and exits[0].pid == first.pid and exits[0].exitcode == 0
    assert exits[0].restart_in is not None and 0.0 < exits[0].restart_in <= 0.2
    poll_until(lambda: True if (pool.poll() or len(exits) >= 2) else None, 20, what="a respawn")
    assert exits[1].pid != first.pid  # a new process under the same name
    assert exits[1].restart_in is not None and exits[1].restart_in <= 0.4
    pool.stop_all(5)
    assert len(pool) == 0


def test_a_one_shot_child_is_forgotten_after_its_exit() -> None:
    exits: list[ChildExit] = []
    pool = ProcessPool()
    pool.start("job", lambda: child(sleeper, 0.0), on_exit=exits.append)
    poll_until(lambda: True if (pool.poll() or exits) else None, 20, what="the exit")
    assert exits[0].restart_in is None and "job" not in pool
    pool.poll()
    assert len(exits) == 1


def test_stop_kills_a_child_that_ignores_sigterm_and_a_stopped_child_is_not_respawned() -> None:
    exits: list[ChildExit] = []
    pool = ProcessPool()
    ready = _SPAWN.Event()
    process = pool.start("s", lambda: child(stubborn, ready), respawn=True, on_exit=exits.append)
    assert ready.wait(30)  # its SIGTERM handler is installed (a spawn is slow under load)
    stopped = pool.stop("s", 1.0)
    assert stopped is not None and stopped.killed and stopped.exitcode == -signal.SIGKILL
    assert stopped.restart_in is None and not process.is_alive()
    assert exits == [stopped] and "s" not in pool
    polite = pool.start("p", lambda: child(sleeper, 30.0), respawn=True)
    (exit_,) = pool.stop_all(5)
    assert exit_.name == "p" and not exit_.killed and exit_.exitcode == -signal.SIGTERM
    assert not polite.is_alive()
