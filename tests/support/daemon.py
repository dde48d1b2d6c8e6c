"""Run the ``vista`` command and the Vista daemon as real subprocesses, and watch their processes.

* :class:`Proc` names one process by pid *and* start time (``/proc/<pid>/stat`` field 22), so a
  reused pid is never mistaken for the process we saw; a zombie counts as gone.
* :class:`VistaHarness` owns one settings file, LOG_PATH and PID_PATH in a temporary directory,
  runs ``vista --settings PATH <command>``, finds the agent and its workers in ``/proc``, reads
  the log, and kills every process it has seen (by pid, SIGKILL) in :meth:`VistaHarness.cleanup`.
* :func:`push_items` puts items straight into the work queue (one item per metric).

Nothing here depends on pytest.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import redis

from skyline.vista.codec import encode_item
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.model import QueueItem, new_id
from skyline.vista.procutil import cmdline
from skyline.vista.testing.servers import poll_until

__all__ = [
    "VISTA_CMD",
    "CliResult",
    "Proc",
    "VistaHarness",
    "children",
    "push_items",
    "settings_text",
    "sigterm_and_wait",
    "wait_gone",
]

_T = TypeVar("_T")

_SCRIPT = Path(sys.executable).parent / "vista"
VISTA_CMD: list[str] = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "skyline.vista"]
)
"""The console script next to the interpreter running the tests (the project's .venv)."""

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Processes


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of pid, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    rest = raw.rsplit(")", 1)[-1].split()
    try:
        return rest[0], int(rest[1]), int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Proc:
    """One process, told apart from a later process that reuses its pid."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat[2])

    def alive(self) -> bool:
        """Running (a zombie, or another process with the same pid, does not count)."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] == self.start and stat[0] not in ("Z", "X")

    @property
    def cmdline(self) -> str:
        return cmdline(self.pid)

    @property
    def is_worker(self) -> bool:
        """A spawn-context multiprocessing child (the resource tracker is not a worker)."""
        return "spawn_main" in self.cmdline

    def kill(self) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children(pid: int) -> list[Proc]:
    """Live direct children of pid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
            found.append(Proc(int(entry), stat[2]))
    return sorted(found, key=lambda p: p.pid)


def wait_gone(procs: Iterable[Proc], timeout: float) -> float:
    """Seconds until every process in procs is gone; TimeoutError naming the survivors."""
    began = time.monotonic()
    procs = list(procs)
    try:
        poll_until(
            lambda: True if not any(p.alive() for p in procs) else None,
            timeout,
            what="processes to exit",
            interval=0.01,
            max_interval=0.02,
        )
    except TimeoutError:
        left = [f"{p.pid} ({p.cmdline})" for p in procs if p.alive()]
        raise TimeoutError(f"still running after {timeout:g} s: {left}") from None
    return time.monotonic() - began


def sigterm_and_wait(
    popen: subprocess.Popen[bytes], tree: Iterable[Proc], timeout: float
) -> tuple[int, float]:
    """SIGTERM a foreground agent: its exit code (within 15 s) and the seconds from the signal
    until every process of ``tree`` is gone (within ``timeout``)."""
    began = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    code = popen.wait(15)
    wait_gone(tree, timeout)
    return code, time.monotonic() - began


def wait_for(probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
    return poll_until(probe, timeout, what=what, interval=0.02, max_interval=0.1)


# --------------------------------------------------------------------------------------------
# Settings and the command


def settings_text(values: Mapping[str, object]) -> str:
    """A settings.py assigning each name its repr()."""
    lines = ['"""Vista settings written by a test."""', ""]
    lines += [f"{name} = {value!r}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"vista {' '.join(self.args)} -> {self.returncode} in {self.seconds:.2f}s\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


_STARTED = re.compile(r"vista started \(pid (\d+)\)")
_WORKER_LINE = re.compile(r"^\s+worker pid (\d+)$", re.MULTILINE)


class VistaHarness:
    """One Vista installation in a directory: settings file, LOG_PATH, PID_PATH."""

    def __init__(self, root: Path, settings: Mapping[str, object]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.settings_path = root / "settings.py"
        self.log_dir = root / "log"
        self.pid_dir = root / "run"
        self.logfile = self.log_dir / "vista.log"
        self.pidfile = self.pid_dir / "vista.pid"
        self.settings: dict[str, object] = {
            **settings,
            "LOG_PATH": str(self.log_dir),
            "PID_PATH": str(self.pid_dir),
        }
        self.current_log = self.logfile
        """The log read by log(): LOG_PATH/vista.log, or the stderr of `vista run`."""
        self.last_start: CliResult | None = None
        self.seen: set[Proc] = set()
        self.popens: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        self.write_settings()

    # --- settings -----------------------------------------------------------------------

    def write_settings(self, **changes: object) -> None:
        """Apply changes to the current settings and (re)write the file atomically."""
        self.settings.update(changes)
        self.write_raw(settings_text(self.settings))

    def write_raw(self, text: str) -> None:
        tmp = self.settings_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.settings_path)

    # --- the command --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VISTA_SETTINGS",)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        argv = [*VISTA_CMD, "--settings", str(self.settings_path), *args]
        return self.run_argv(argv, args, timeout)

    def run_argv(
        self, argv: list[str], label: tuple[str, ...] = (), timeout: float = 60.0
    ) -> CliResult:
        began = time.monotonic()
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.root,
            check=False,
        )
        result = CliResult(
            label or tuple(argv),
            proc.returncode,
            proc.stdout,
            proc.stderr,
            time.monotonic() - began,
        )
        self._remember_agent()
        return result

    def start(self) -> Proc:
        """``vista start`` must exit 0 and name the pid; returns the agent (workers up)."""
        self.current_log = self.logfile
        result = self.last_start = self.cli("start")
        assert result.returncode == 0, str(result)
        match = _STARTED.search(result.stdout)
        assert match, str(result)
        agent = Proc.of(int(match.group(1)))
        assert agent is not None and agent.alive(), f"agent {match.group(1)} not running"
        self.seen.add(agent)
        return agent

    def stop_foreground(self, popen: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM an agent that :meth:`run_foreground` started; its exit code."""
        popen.send_signal(signal.SIGTERM)
        return popen.wait(timeout)

    def run_foreground(
        self, stderr_path: Path, *, new_session: bool = False
    ) -> tuple[subprocess.Popen[bytes], Proc]:
        """``vista run`` (logs to stderr_path); returns the process once it holds the pidfile.
        ``new_session``: in a session and process group of its own (like a login shell's job)."""
        self.current_log = stderr_path
        log = open(stderr_path, "ab")
        self._files.append(log)
        popen = subprocess.Popen(
            [*VISTA_CMD, "--settings", str(self.settings_path), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self.env(),
            cwd=self.root,
            start_new_session=new_session,
        )
        self.popens.append(popen)
        agent = Proc.of(popen.pid)
        assert agent is not None
        self.seen.add(agent)

        def holds_pidfile() -> bool | None:
            if popen.poll() is not None:
                raise AssertionError(
                    f"vista run exited with {popen.returncode}:\n{stderr_path.read_text()}"
                )
            return True if self.pidfile_pid() == popen.pid else None

        wait_for(holds_pidfile, 30.0, "vista run to write its pidfile")
        return popen, agent

    # --- processes ----------------------------------------------------------------------

    def pidfile_pid(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _remember_agent(self) -> None:
        pid = self.pidfile_pid()
        if pid is not None and str(self.settings_path) in cmdline(pid):
            agent = Proc.of(pid)
            if agent is not None:
                self.seen.add(agent)

    def tree(self, agent: Proc) -> list[Proc]:
        """The agent and its live children (remembered for cleanup)."""
        found = [agent, *children(agent.pid)] if agent.alive() else []
        self.seen.update(found)
        return found

    def workers(self, agent: Proc) -> list[Proc]:
        found = [p for p in children(agent.pid) if p.is_worker]
        self.seen.update(found)
        return found

    def wait_workers(self, agent: Proc, count: int, timeout: float = 20.0) -> list[Proc]:
        """Wait until the agent has exactly ``count`` workers that have logged their start."""

        def probe() -> list[Proc] | None:
            assert agent.alive(), f"the agent died:\n{self.log_tail()}"
            found = self.workers(agent)
            if len(found) != count:
                return None
            log = self.log()
            ready = all(f"[{w.pid}] skyline.vista.worker: worker " in log for w in found)
            return found if ready else None

        return wait_for(probe, timeout, f"{count} running workers")

    @staticmethod
    def status_worker_pids(stdout: str) -> set[int]:
        return {int(pid) for pid in _WORKER_LINE.findall(stdout)}

    # --- the log ------------------------------------------------------------------------

    def log(self, path: Path | None = None) -> str:
        try:
            return (path or self.current_log).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40, path: Path | None = None) -> str:
        return "\n".join(self.log(path).splitlines()[-lines:])

    def wait_log(
        self, needle: str, *, count: int = 1, timeout: float = 20.0, path: Path | None = None
    ) -> str:
        """Wait until ``needle`` occurs ``count`` times in the log; returns the log text."""

        def probe() -> str | None:
            text = self.log(path)
            return text if text.count(needle) >= count else None

        try:
            return wait_for(probe, timeout, f"{needle!r} x{count} in the log")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log tail ---\n{self.log_tail(path=path)}") from None

    # --- cleanup ------------------------------------------------------------------------

    def _agents_by_cmdline(self) -> list[Proc]:
        """Every process whose command line names this settings file (agents, CLIs)."""
        needle = str(self.settings_path)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and needle in cmdline(int(entry)):
                proc = Proc.of(int(entry))
                if proc is not None and proc.pid != os.getpid():
                    found.append(proc)
        return found

    def cleanup(self) -> list[Proc]:
        """SIGKILL every process of this installation still running; returns them."""
        candidates = set(self.seen) | set(self._agents_by_cmdline())
        for proc in list(candidates):
            candidates.update(children(proc.pid))
        survivors = [p for p in candidates if p.alive()]
        for proc in survivors:
            proc.kill()
        for popen in self.popens:
            if popen.poll() is None:
                popen.kill()
            popen.wait(10)
        for handle in self._files:
            handle.close()
        try:
            wait_gone(survivors, 10.0)
        except TimeoutError:
            pass
        return survivors


# --------------------------------------------------------------------------------------------
# The queue


def push_items(
    client: redis.Redis, metrics: Iterable[str], points: tuple[tuple[int, float], ...]
) -> int:
    """One queued item per metric (all with the same points). Returns the items pushed."""
    chains = []
    for metric in metrics:
        item = QueueItem(
            id=new_id(),
            metric=metric,
            source="prometheus",
            host="http://127.0.0.1:9",
            target="vista_test",
            points=points,
            fetched_at=time.time(),
            frequency=60,
        )
        chains.append((metric, [encode_item(item)]))
    FetchQueue(client).push(chains)
    return len(chains)
