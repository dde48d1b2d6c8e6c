"""Real servers on loopback for tests, benchmarks and demos.

Each class starts one real daemon (redis-server, prometheus, carbon-cache, graphite-web) on a
free 127.0.0.1 port inside a directory of its own, with its stdout/stderr in ``<dir>/<name>.log``,
and stops it by PID (SIGTERM, then SIGKILL).  Nothing here depends on pytest.

    with RedisServer(tmp / "redis", appendonly=True) as redis_server:
        redis_server.client().set(b"k", b"v")
        redis_server.restart()              # same port, same data dir: the key survives

Carbon and graphite-web are Debian Python packages and run under ``/usr/bin/python3`` (never the
venv's interpreter).  A missing binary raises :class:`MissingBinaryError` ("run `make install`").
Every process started here is also stopped by an ``atexit`` hook, as a safety net.

Behaviours of the real servers that tests of fetchers and sinks must know are listed in the
docstrings of :class:`PrometheusServer`, :class:`CarbonServer` and :class:`GraphiteWebServer`.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import redis
import requests

__all__ = [
    "CarbonServer",
    "GraphiteWebServer",
    "MissingBinaryError",
    "PrometheusServer",
    "RedisServer",
    "Server",
    "StartStop",
    "ServerError",
    "free_port",
    "poll_until",
]

SYSTEM_PYTHON = "/usr/bin/python3"
"""Debian's interpreter, the only one that sees carbon, whisper and graphite-web."""

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run `make install` (it apt-installs the real servers the tests need)"


class ServerError(RuntimeError):
    """A server could not be prepared, did not become ready, or died."""


class MissingBinaryError(ServerError):
    """A program or Debian Python package a server needs is not installed."""


# --------------------------------------------------------------------------------------------
# Small helpers


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


def _require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingBinaryError(f"`{name}` not found on PATH: {INSTALL_HINT}")
    return path


_checked_modules: set[str] = set()


def _require_system_modules(*modules: str) -> None:
    """Fail loudly unless /usr/bin/python3 can import ``modules`` (Debian packages)."""
    key = ",".join(modules)
    if key in _checked_modules:
        return
    _system_python(f"import {key}", f"cannot import {key}")
    _checked_modules.add(key)


def _system_python(code: str, failing: str, stdin: bytes | None = None) -> str:
    """The output of ``code`` run by /usr/bin/python3 (with its Debian modules), or
    MissingBinaryError saying what ``failing`` and the last line of its error."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise MissingBinaryError(f"{SYSTEM_PYTHON} not found: {INSTALL_HINT}")
    try:
        return _output([SYSTEM_PYTHON, "-c", code], f"{SYSTEM_PYTHON} {failing}", stdin=stdin)
    except ServerError as exc:
        raise MissingBinaryError(f"{exc}\n{INSTALL_HINT}") from None


def _output(
    argv: list[str], failing: str, *, timeout: float = 30.0, stdin: bytes | None = None
) -> str:
    """The output of the command ``argv``, or ServerError saying what ``failing`` and what the
    command said."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        raise ServerError(f"{failing} (exit {proc.returncode}):\n{said}")
    return proc.stdout.decode()


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


# --------------------------------------------------------------------------------------------
# Base classes


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


# --------------------------------------------------------------------------------------------
# Redis


def _resp(*args: str | bytes) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class RedisServer(Server):
    """``redis-server`` on a free 127.0.0.1 port, or on a unix socket only.

    Data (AOF with ``appendonly=True``; RDB snapshots are off) lives in ``<dir>/data``, so
    ``restart()`` and ``kill()`` + ``start()`` keep it when appendonly is on; without it a restart
    starts empty.  Redis writes the AOF before it replies, so even SIGKILL loses nothing that
    was acknowledged.
    """

    name = "redis"

    def __init__(
        self,
        dir: Path | str,
        *,
        unix_socket: bool = False,
        appendonly: bool = False,
        password: str | None = None,
        replica_of: int | None = None,
    ) -> None:
        super().__init__(dir)
        self.appendonly = appendonly
        self.password = password
        self.replica_of = replica_of
        """The port of the primary this server replicates (on loopback), with ``password``
        as its ``masterauth`` (primary and replicas share one password, as Sentinel needs)."""
        self.data_dir = self.dir / "data"
        self.port: int | None = None
        self.socket_path: Path | None = None
        if unix_socket:
            path = self.dir / "redis.sock"
            if len(str(path)) > 100:  # sun_path holds 107 bytes
                short_dir = tempfile.mkdtemp(prefix="vista-redis-")
                atexit.register(shutil.rmtree, short_dir, True)
                path = Path(short_dir) / "redis.sock"
            self.socket_path = path
        else:
            self.port = free_port()

    def _repick_ports(self) -> None:
        if self.port is not None:
            self.port = free_port()

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.socket_path is not None:
            return f"unix://{auth}{self.socket_path}?db=0"
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` (bytes replies) for this server; close it when done."""
        options: dict[str, Any] = {"decode_responses": False, "password": self.password}
        if self.socket_path is not None:
            options["unix_socket_path"] = str(self.socket_path)
        else:
            options.update(host=LOOPBACK, port=self.port)
        options.update(kwargs)
        return redis.Redis(**options)

    def _check_installed(self) -> None:
        _require_binary("redis-server")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        argv = [
            _require_binary("redis-server"),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port or 0),
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            "",
        ]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", LOOPBACK, str(self.replica_of)]
        return argv

    def _connect(self, timeout: float) -> socket.socket:
        if self.socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.socket_path))
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((LOOPBACK, self.port or 0), timeout=timeout)

    def _is_ready(self) -> bool:
        """PING (after AUTH) answers +PONG; -LOADING (AOF replay) means not yet."""
        request = (_resp("AUTH", self.password) if self.password else b"") + _resp("PING")
        want_lines = 2 if self.password else 1
        try:
            with self._connect(1.0) as sock:
                sock.sendall(request)
                data = b""
                while data.count(b"\r\n") < want_lines:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
        except OSError:
            return False
        last = data.split(b"\r\n")[want_lines - 1]
        if last == b"+PONG":
            return True
        if last.startswith(b"-LOADING"):
            return False
        raise ServerError(f"redis answered {data!r} to PING")


# --------------------------------------------------------------------------------------------
# Prometheus


@dataclass(frozen=True)
class Watched:
    """The primary a :class:`SentinelServer` watches (at ``port`` on loopback, under
    ``service``) and how it judges it. Fast failover for tests: the primary is judged down
    after ``down_after_ms`` (1 s) without an answer, by ``quorum`` sentinels. ``password`` is
    the primary's and replicas' ``requirepass``."""

    port: int
    service: str = "mymaster"
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 10000
    password: str | None = None

    def config_lines(self) -> list[str]:
        name = self.service
        lines = [
            f"sentinel monitor {name} {LOOPBACK} {self.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        return lines


class SentinelServer(Server):
    """``redis-sentinel`` (Debian's redis-sentinel package) on a free 127.0.0.1 port, watching
    the primary that ``watched`` describes.  ``password`` is the sentinels' own
    (``requirepass`` + ``sentinel-pass``, so that they still talk to each other).  Sentinel
    rewrites its config file as it learns replicas and peers, so the file is written once, at
    the first start.
    """

    name = "sentinel"

    def __init__(self, dir: Path | str, watched: Watched, *, password: str | None = None) -> None:
        super().__init__(dir)
        self.watched = watched
        self.password = password
        self.port = free_port()
        self.config_path = self.dir / "sentinel.conf"

    def _repick_ports(self) -> None:
        self.port = free_port()
        self.config_path.unlink(missing_ok=True)

    def _check_installed(self) -> None:
        _require_binary("redis-sentinel")

    def _prepare(self) -> None:
        if self.config_path.exists():
            return  # Sentinel's own rewrites (known replicas, peers, epoch) are kept
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            "daemonize no",
            'logfile ""',
            f"dir {self.dir}",
            "sentinel resolve-hostnames no",
            *self.watched.config_lines(),
        ]
        if self.password is not None:
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [_require_binary("redis-sentinel"), str(self.config_path)]

    def _is_ready(self) -> bool:
        try:
            with self.client(socket_timeout=1.0) as client:
                return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this sentinel (SENTINEL commands); close it when done."""
        return redis.Redis(host=LOOPBACK, port=self.port, password=self.password, **kwargs)

    def primary(self) -> tuple[str, int] | None:
        """Where this sentinel says the primary is now."""
        with self.client(socket_timeout=2.0, decode_responses=True) as client:
            found = client.sentinel_get_master_addr_by_name(self.watched.service)
        return None if not found else (str(found[0]), int(found[1]))

    def knows(self, replicas: int, sentinels: int) -> bool | None:
        """True once it has found ``replicas`` replicas and ``sentinels`` other sentinels."""
        with self.client(socket_timeout=2.0, decode_responses=True) as client:
            info = client.sentinel_master(self.watched.service)
        enough = info["num-slaves"] >= replicas and info["num-other-sentinels"] >= sentinels
        return True if enough else None


class SentinelSet:
    """A primary, one replica and three sentinels (quorum 2), all with passwords: what Vista's
    Sentinel support is tested against. ``start()`` returns once every sentinel has found the
    replica and its two peers, so a failover can happen."""

    def __init__(
        self,
        dir: Path | str,
        *,
        service: str = "mymaster",
        password: str = "data-secret",
        sentinel_password: str = "sentinel-secret",
    ) -> None:
        root = Path(dir)
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.primary = RedisServer(root / "primary", password=password)
        self.replica: RedisServer | None = None
        self.sentinels: list[SentinelServer] = []
        self._root = root

    def start(self, timeout: float = 30.0) -> Self:
        self.primary.start()
        assert self.primary.port is not None
        self.replica = RedisServer(
            self._root / "replica", password=self.password, replica_of=self.primary.port
        ).start()
        watched = Watched(self.primary.port, service=self.service, password=self.password)
        for n in range(3):
            self.sentinels.append(
                SentinelServer(
                    self._root / f"sentinel{n}", watched, password=self.sentinel_password
                ).start()
            )
        poll_until(
            lambda: all(s.knows(1, 2) for s in self.sentinels) or None,
            timeout,
            what="the sentinels to find the replica and each other",
            interval=0.1,
            max_interval=0.5,
        )
        return self

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(f"{LOOPBACK}:{s.port}" for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels sees it now."""
        seen = [s.primary() for s in self.sentinels if s.running]
        ports = [p[1] for p in seen if p is not None]
        for port in set(ports):
            if ports.count(port) >= 2:
                return port
        return None

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            if server is not None:
                server.stop()


def _bcrypt_hash(password: str) -> str:
    """bcrypt via Debian's python3-bcrypt (a dependency of graphite-carbon's twisted).

    Cost 4 (the minimum) keeps Prometheus' per-request check cheap; this is test-only.
    """
    code = (
        "import bcrypt, sys; "
        "print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())"
    )
    failing = "cannot hash with bcrypt (python3-bcrypt, pulled in by graphite-carbon)"
    return _system_python(code, failing, password.encode()).strip()


class PrometheusServer(HttpServer):
    """``prometheus`` on a free port, optionally pre-loaded with exact history.

    ``history`` is OpenMetrics text (``name{l="v"} value ts_seconds`` lines; ``# EOF`` is
    appended if missing).  It is turned into TSDB blocks with ``promtool tsdb
    create-blocks-from openmetrics`` before the first start, so it is queryable at once.
    Retention is set to 100y, so history of any age loads (with Prometheus' default 15d, blocks
    older than 15 days *before the newest block* are deleted at startup); future timestamps load
    too.  Facts checked on Prometheus 2.42:

    * promtool silently drops a sample whose timestamp is not later than the previous sample of
      its series (out of order or duplicate); this class counts the samples and raises.
    * ``query_range`` evaluates at ``start + k*step`` exactly; the value is the latest sample at
      or before that instant within the 5 min lookback, so a series keeps its last value for
      5 min (inclusive) after its last sample, and an evaluation before the first sample is
      absent.  With ``start`` aligned to the samples and ``step`` equal to their interval the
      result is exactly the samples.  Values are strings (``"NaN"``, ``"+Inf"``); timestamps are
      numbers (ints when whole seconds).
    * ``/-/ready`` answers ~0.1 s after spawn; a self-scrape's first sample appears 5–7 s later.
    """

    name = "prometheus"

    def __init__(
        self,
        dir: Path | str,
        *,
        history: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        scrape_self: bool = False,
        scrape_interval: str = "2s",
    ) -> None:
        super().__init__(dir)
        self.history = history
        self.basic_auth = basic_auth
        self.scrape_self = scrape_self
        self.scrape_interval = scrape_interval
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "prometheus.yml"
        self.web_config_path = self.dir / "web.yml"
        self.history_path = self.dir / "history.om"
        self._history_loaded = False
        self.history_samples: int | None = None
        """Samples promtool wrote (equals the sample lines of ``history``)."""

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials for ``requests`` (``auth=server.auth``), or None."""
        return self.basic_auth

    def _check_installed(self) -> None:
        _require_binary("prometheus")
        if self.history is not None:
            _require_binary("promtool")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
            "scrape_configs:",
        ]
        if self.scrape_self:
            lines += [
                "  - job_name: prometheus",
                "    static_configs:",
                f"      - targets: ['{LOOPBACK}:{self.port}']",
            ]
            if self.basic_auth is not None:
                user, password = self.basic_auth
                lines += [
                    "    basic_auth:",
                    f"      username: {json.dumps(user)}",
                    f"      password: {json.dumps(password)}",
                ]
        else:
            lines[-1] = "scrape_configs: []"
        self.config_path.write_text("\n".join(lines) + "\n")
        if self.basic_auth is not None and not self.web_config_path.exists():
            user, password = self.basic_auth
            hashed = _bcrypt_hash(password)
            self.web_config_path.write_text(
                f"basic_auth_users:\n  {json.dumps(user)}: {json.dumps(hashed)}\n"
            )
        if self.history is not None and not self._history_loaded:
            self._load_history(self.history)
            self._history_loaded = True

    def add_history(self, history: str) -> None:
        """Load more OpenMetrics history (series that 'appear later'): stop, write the blocks
        with promtool next to the existing ones (Prometheus merges overlapping blocks), start
        again on the same port."""
        self.stop()
        self._load_history(history)
        self.start()

    def _load_history(self, history: str) -> None:
        text = history if history.endswith("\n") else history + "\n"
        if text.rstrip().splitlines()[-1:] != ["# EOF"]:
            text += "# EOF\n"
        self.history_path.write_text(text)
        expected = sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))
        # promtool reads the whole file once per 2-hour block it writes: 30 days at 60 s of 50
        # series in one file took over two minutes, one file per day (two promtools at once)
        # 25 s (one file per block: 33 s, the per-process cost then dominates).
        slices = _history_slices(text)
        paths = []
        for n, part in enumerate(slices):
            path = self.history_path.with_name(f"history.{n}.om") if len(slices) > 1 else None
            if path is not None:
                path.write_text(part)
            paths.append(path or self.history_path)
        written = 0
        with ThreadPoolExecutor(max_workers=2) as pool:
            for count in pool.map(self._promtool, paths):
                written += count
        if written != expected:
            raise ServerError(
                f"promtool wrote {written} of {expected} samples: within a series timestamps "
                "must strictly increase (it silently drops the others)"
            )
        self.history_samples = written

    def _promtool(self, path: Path) -> int:
        argv = ["tsdb", "create-blocks-from", "openmetrics", str(path), str(self.data_dir)]
        output = _output([_require_binary("promtool"), *argv], "promtool failed", timeout=120)
        rows = output.splitlines()
        if not rows or "NUM SAMPLES" not in rows[0]:
            return 0
        column = rows[0].split().index("NUM") - 3  # "BLOCK ULID", "MIN TIME", "MAX TIME"
        return sum(int(row.split()[column]) for row in rows[1:] if row.strip())

    def _argv(self) -> list[str]:
        argv = [
            _require_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
        ]
        if self.basic_auth is not None:
            argv.append(f"--web.config.file={self.web_config_path}")
        return argv

    def _is_ready(self) -> bool:
        try:
            resp = requests.get(f"{self.url}/-/ready", auth=self.basic_auth, timeout=1.0)
        except requests.RequestException:
            return False
        with resp:
            if resp.status_code == 401:
                raise ServerError("prometheus rejected our own credentials")
            return resp.status_code == 200

    def api(self, path: str, params: Mapping[str, str | float]) -> dict[str, Any]:
        """GET ``/api/v1/<path>`` and return the parsed JSON (errors included, not raised)."""
        with requests.get(
            f"{self.url}/api/v1/{path}", params=params, auth=self.basic_auth, timeout=10.0
        ) as resp:
            if not resp.headers.get("Content-Type", "").startswith("application/json"):
                raise ServerError(f"prometheus answered {resp.status_code}: {resp.text[:200]}")
            body: dict[str, Any] = resp.json()
            return body

    def query_range(
        self, query: str, start: float, end: float, step: float | str
    ) -> dict[str, Any]:
        """``/api/v1/query_range`` → parsed JSON (``{"status": ..., "data": {...}}``)."""
        return self.api("query_range", {"query": query, "start": start, "end": end, "step": step})

    def query(self, query: str, time: float | None = None) -> dict[str, Any]:
        """``/api/v1/query`` (instant) → parsed JSON."""
        params: dict[str, str | float] = {"query": query}
        if time is not None:
            params["time"] = time
        return self.api("query", params)

    def wait_for_series(self, query: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result (e.g. self-scraped ``up``)."""

        def probe() -> list[dict[str, Any]] | None:
            result: list[dict[str, Any]] = self.query(query)["data"]["result"]
            return result or None

        return poll_until(probe, timeout, what=f"prometheus series {query!r}", max_interval=0.25)


# --------------------------------------------------------------------------------------------
# Carbon


_WHISPER_FETCH = r"""
import json, sys, time, whisper
path, start, end = sys.argv[1], sys.argv[2], sys.argv[3]
info = whisper.info(path)  # None if the file does not exist
if info is None:
    print("[]")
    sys.exit(0)
now = int(time.time())
if start == "finest":
    start, end = now - info["archives"][0]["retention"], now
found = whisper.fetch(path, int(start), int(end), now=now)
if found is None:
    print("[]")
else:
    (first, _last, step), values = found
    print(json.dumps([[first + i * step, v] for i, v in enumerate(values)]))
"""


SLICE_SECONDS = 86400
"""History is handed to promtool a day at a time (see PrometheusServer._load_history)."""


def _history_slices(text: str) -> list[str]:
    """OpenMetrics history split into one text per UTC day of its samples (each keeps every
    comment line in its place); a single day comes back whole."""
    lines: list[tuple[int | None, str]] = []  # (day of the sample, or None for a comment)
    for line in text.splitlines():
        if line == "# EOF":
            continue
        if not line.strip() or line.startswith("#"):
            lines.append((None, line))
        else:
            lines.append((int(float(line.rsplit(" ", 1)[1])) // SLICE_SECONDS, line))
    days: dict[int, list[str]] = {day: [] for day, _ in lines if day is not None}
    if len(days) <= 1:
        return [text]
    for day, line in lines:
        if day is None:
            for kept in days.values():
                kept.append(line)
        else:
            days[day].append(line)
    return ["\n".join(days[day]) + "\n# EOF\n" for day in sorted(days)]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ServerError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _carbon_number(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:g}"


class CarbonServer(Server):
    """``carbon-cache`` (under /usr/bin/python3) with its line, pickle and cache-query ports.

    Every metric gets ``retentions`` (default ``10s:6h,60s:1d``), average aggregation and
    xFilesFactor 0; ``MAX_CREATES_PER_MINUTE``/``MAX_UPDATES_PER_SECOND`` are ``inf`` (Debian's
    defaults silently drop points of metrics it has not created yet; ``max_creates_per_minute``
    sets the former).  Facts (carbon 1.1.7,
    whisper 1.1.4):

    * A timestamp is floored to its archive step (``ts - ts % 10``); a later point for the same
      slot overwrites the earlier one.
    * Points are written asynchronously: the writer thread sleeps 1 s whenever the cache is
      empty, so a point reaches its whisper file 0–1 s after carbon received it (the file of a
      new metric is created then too).  Poll with :meth:`wait_for_points`.
    * Future points are stored but ``fetch`` (and graphite-web) hide them until their time;
      points older than the finest archive go to the coarser one only; points older than the
      whole retention are dropped silently.
    * ``fetch(m, from_ts, until_ts)`` returns slots ``floor(from_ts)+step`` …
      ``floor(until_ts)`` inclusive: a ``from_ts`` exactly on a step boundary *excludes* that
      point; the archive used is the finest one whose retention covers ``now - from_ts``.
    * Points older than the finest archive are written straight into the coarser one, where
      a later point in the same slot *overwrites* (no averaging: 5 then 7 in one 60 s slot
      reads 7); averaging only happens when finer points roll up.
    * ``stop()`` (SIGTERM) *loses* points still in carbon's cache (anything received in the
      last ~1 s): the writer thread exits without a final flush.  Wait for
      :meth:`wait_for_points` before stopping if the points matter; :meth:`cache_query` shows
      what is still only in memory.  ``stop()`` takes ~0.9 s (the writer's 1 s sleep).
    """

    name = "carbon"

    def __init__(
        self,
        dir: Path | str,
        *,
        retentions: str = "10s:6h,60s:1d",
        max_creates_per_minute: float = float("inf"),
    ) -> None:
        super().__init__(dir)
        self.retentions = retentions
        self.max_creates_per_minute = max_creates_per_minute
        """carbon's MAX_CREATES_PER_MINUTE: a finite value makes carbon drop the points of a
        new metric when its create token bucket (capacity = value, refill value/60 per second,
        full at start) is empty, as Debian's default of 50 does."""
        self.line_port = free_port()
        self.pickle_port = free_port()
        self.cache_query_port = free_port()
        self.storage_dir = self.dir / "storage"
        self.whisper_dir = self.storage_dir / "whisper"
        self.config_path = self.dir / "carbon.conf"
        self.pid_path = self.dir / "carbon.pid"

    def _repick_ports(self) -> None:
        self.line_port, self.pickle_port = free_port(), free_port()
        self.cache_query_port = free_port()

    def _check_installed(self) -> None:
        if not os.path.exists("/usr/bin/carbon-cache"):
            raise MissingBinaryError(f"/usr/bin/carbon-cache not found: {INSTALL_HINT}")
        _require_system_modules("carbon", "whisper")

    def _prepare(self) -> None:
        for sub in (self.whisper_dir, self.storage_dir / "lists", self.dir / "log"):
            sub.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "[cache]\n"
            f"STORAGE_DIR = {self.storage_dir}/\n"
            f"LOCAL_DATA_DIR = {self.whisper_dir}/\n"
            f"WHITELISTS_DIR = {self.storage_dir}/lists/\n"
            f"CONF_DIR = {self.dir}/\n"
            f"LOG_DIR = {self.dir}/log/\n"
            f"PID_DIR = {self.dir}/\n"
            "USER =\n"
            "DATABASE = whisper\n"
            "ENABLE_LOGROTATION = False\n"
            "MAX_CACHE_SIZE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\n"
            f"MAX_CREATES_PER_MINUTE = {_carbon_number(self.max_creates_per_minute)}\n"
            "MIN_TIMESTAMP_RESOLUTION = 0\n"
            f"LINE_RECEIVER_INTERFACE = {LOOPBACK}\n"
            f"LINE_RECEIVER_PORT = {self.line_port}\n"
            f"PICKLE_RECEIVER_INTERFACE = {LOOPBACK}\n"
            f"PICKLE_RECEIVER_PORT = {self.pickle_port}\n"
            f"CACHE_QUERY_INTERFACE = {LOOPBACK}\n"
            f"CACHE_QUERY_PORT = {self.cache_query_port}\n"
            "ENABLE_UDP_LISTENER = False\n"
            "ENABLE_TAGS = False\n"
            "USE_FLOW_CONTROL = True\n"
            "CARBON_METRIC_INTERVAL = 0\n"
            "LOG_LISTENER_CONN_SUCCESS = False\n"
            "LOG_UPDATES = False\n"
            "LOG_CREATES = True\n"
        )
        (self.dir / "storage-schemas.conf").write_text(
            f"[default]\npattern = .*\nretentions = {self.retentions}\n"
        )
        (self.dir / "storage-aggregation.conf").write_text(
            "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n"
        )
        if not self.running:
            self.pid_path.unlink(missing_ok=True)  # stale after a kill(): twistd would refuse

    def _argv(self) -> list[str]:
        return [
            SYSTEM_PYTHON,
            "/usr/bin/carbon-cache",
            f"--config={self.config_path}",
            f"--logdir={self.dir / 'log'}",
            f"--pidfile={self.pid_path}",
            "--nodaemon",
            "start",
        ]

    def _is_ready(self) -> bool:
        log = self.log_text(since_start=True)
        return all(
            f"starting on {port}\n" in log
            for port in (self.line_port, self.pickle_port, self.cache_query_port)
        )

    # feeding -----------------------------------------------------------------------------
    def send_plaintext(self, lines: str | Iterable[str]) -> None:
        """Send ``"metric value timestamp"`` lines over one TCP connection to the line port."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        if not text.endswith("\n"):
            text += "\n"
        with socket.create_connection((LOOPBACK, self.line_port), timeout=10.0) as sock:
            sock.sendall(text.encode())

    def send_pickle(self, points: Iterable[tuple[str, tuple[float, float]]]) -> None:
        """Send ``[(metric, (timestamp, value)), ...]`` as one pickle frame (protocol 2)."""
        payload = pickle.dumps(list(points), protocol=2)
        with socket.create_connection((LOOPBACK, self.pickle_port), timeout=10.0) as sock:
            sock.sendall(struct.pack("!L", len(payload)) + payload)

    # reading -----------------------------------------------------------------------------
    def cache_query(self, metric: str) -> list[tuple[float, float]]:
        """Points of ``metric`` still in carbon's cache (not yet in whisper), as received.

        Uses the cache-query port (what graphite-web's CARBONLINK asks).
        """
        request = pickle.dumps({"type": "cache-query", "metric": metric}, protocol=2)
        with socket.create_connection((LOOPBACK, self.cache_query_port), timeout=10.0) as sock:
            sock.sendall(struct.pack("!L", len(request)) + request)
            (length,) = struct.unpack("!L", _recv_exact(sock, 4))
            reply = pickle.loads(_recv_exact(sock, length))  # our own loopback carbon
        if not isinstance(reply, dict) or "datapoints" not in reply:
            raise ServerError(f"carbon cache-query of {metric!r} answered {reply!r}")
        return sorted((float(ts), float(value)) for ts, value in reply["datapoints"])

    def whisper_path(self, metric: str) -> Path:
        return self.whisper_dir / (metric.replace(".", "/") + ".wsp")

    def _fetch(self, metric: str, start: str, end: str) -> list[tuple[int, float | None]]:
        argv = [SYSTEM_PYTHON, "-c", _WHISPER_FETCH, str(self.whisper_path(metric)), start, end]
        output = _output(argv, f"whisper fetch of {metric!r} failed")
        return [(int(ts), None if v is None else float(v)) for ts, v in json.loads(output)]

    def fetch(self, metric: str, from_ts: int, until_ts: int) -> list[tuple[int, float | None]]:
        """Every slot of the whisper file in (from_ts, until_ts] as ``(ts, value or None)``.

        Empty if the file does not exist yet or the range is wholly in the future.
        """
        return self._fetch(metric, str(int(from_ts)), str(int(until_ts)))

    def wait_for_points(
        self,
        metric: str,
        expected_count: int,
        timeout: float = 10.0,
        *,
        from_ts: int | None = None,
        until_ts: int | None = None,
    ) -> list[tuple[int, float]]:
        """Poll until the whisper file holds at least ``expected_count`` non-null points.

        Looks at the finest archive's whole retention unless ``from_ts``/``until_ts`` are
        given; returns the non-null points.  TimeoutError says what it saw last.
        """
        path = self.whisper_path(metric)
        seen: list[tuple[int, float]] = []

        def probe() -> list[tuple[int, float]] | None:
            nonlocal seen
            if not path.exists():
                return None
            if from_ts is None:
                rows = self._fetch(metric, "finest", "")
            else:
                rows = self.fetch(metric, from_ts, until_ts or int(time.time()))
            seen = [(ts, v) for ts, v in rows if v is not None]
            return seen if len(seen) >= expected_count else None

        try:
            return poll_until(
                probe, timeout, what=f"{expected_count} points of {metric!r}", interval=0.02
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; saw {seen}") from None


# --------------------------------------------------------------------------------------------
# graphite-web


class GraphiteWebServer(HttpServer):
    """graphite-web (Django ``runserver``, /usr/bin/python3) reading a :class:`CarbonServer`.

    Own settings module in ``<dir>/conf``, sqlite and logs in ``<dir>/storage``, DummyCache,
    TIME_ZONE UTC, CARBONLINK to the carbon's cache-query port.  Facts (graphite-web 1.1.8):

    * ``/render?format=json`` → ``[{"target", "tags", "datapoints": [[value|null, ts], ...]}]``;
      a missing metric, a missing ``target=`` and a syntax error answer 200 ``[]``; an unknown
      function answers 400 (HTML).  A glob gives one object per metric; ``sumSeries(...)`` one
      object whose ``target`` is the expression text.
    * ``from`` exactly on a step boundary excludes that point, ``until`` includes it (whisper's
      rule); future points are hidden until their time.  ``from == until`` answers 400
      ("Invalid empty time range").  Without ``from`` the range is the last 24 h, which the
      10 s archive (6 h) does not cover: the 60 s archive answers (1440 points).  The step of
      the answer is that of the finest archive covering ``now - from``.
    * A brand-new metric is invisible until carbon created its whisper file (0.8–1.1 s here);
      once the file exists, points still in carbon's cache are merged in via CARBONLINK, so
      the next point of a known metric shows in ~5 ms.
    * In a query string ``+`` means space: encode ``+`` as ``%2B`` and ``%`` as ``%25``
      (``requests``' ``params=`` does).
    """

    name = "graphite-web"
    settings_module = "vista_graphite_settings"

    def __init__(self, dir: Path | str, carbon: CarbonServer) -> None:
        super().__init__(dir)
        self.carbon = carbon
        self.conf_dir = self.dir / "conf"
        self.storage_dir = self.dir / "storage"
        self._migrated = False
        self.migrate_seconds: float | None = None

    def _check_installed(self) -> None:
        _require_system_modules("graphite", "django", "whisper")

    def _env(self) -> Mapping[str, str]:
        return {
            "PYTHONPATH": str(self.conf_dir),
            "DJANGO_SETTINGS_MODULE": "graphite.settings",
            "GRAPHITE_SETTINGS_MODULE": self.settings_module,
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def _prepare(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.storage_dir / "log").mkdir(parents=True, exist_ok=True)
        whisper_dir = f"{self.carbon.whisper_dir}/"
        settings = {
            "SECRET_KEY": "vista-tests-only",
            "TIME_ZONE": "UTC",
            "STORAGE_DIR": str(self.storage_dir),
            "LOG_DIR": str(self.storage_dir / "log"),
            "INDEX_FILE": str(self.storage_dir / "index"),
            "CONF_DIR": str(self.conf_dir),
            "WHISPER_DIR": whisper_dir,
            "STANDARD_DIRS": [whisper_dir],
            "CARBONLINK_HOSTS": [f"{LOOPBACK}:{self.carbon.cache_query_port}"],
            "LOG_ROTATION": False,
            "DEFAULT_XFILES_FACTOR": 0,
            "DATABASES": {
                "default": {
                    "NAME": str(self.storage_dir / "graphite.db"),
                    "ENGINE": "django.db.backends.sqlite3",
                    "USER": "",
                    "PASSWORD": "",
                    "HOST": "",
                    "PORT": "",
                }
            },
            "CACHES": {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
            "SILENCED_SYSTEM_CHECKS": ["models.W042", "admin.W411"],
        }
        body = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
        (self.conf_dir / f"{self.settings_module}.py").write_text(body)
        if not self._migrated:
            began = time.monotonic()
            with open(self.log_path, "ab") as log:
                proc = subprocess.run(
                    [SYSTEM_PYTHON, "-m", "django", "migrate", "--run-syncdb", "--noinput"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env={**os.environ, **self._env()},
                    check=False,
                    timeout=120,
                )
            if proc.returncode != 0:
                raise ServerError(f"graphite-web migrate failed:\n{self.log_text()[-3000:]}")
            self.migrate_seconds = time.monotonic() - began
            self._migrated = True

    def _argv(self) -> list[str]:
        return [
            SYSTEM_PYTHON,
            "-m",
            "django",
            "runserver",
            "--noreload",
            f"{LOOPBACK}:{self.port}",
        ]

    def _is_ready(self) -> bool:
        try:
            resp = requests.get(
                f"{self.url}/render", params={"target": "x", "format": "json"}, timeout=2.0
            )
        except requests.RequestException:
            return False
        with resp:
            return resp.status_code == 200 and resp.text.strip() == "[]"

    def render(
        self,
        target: str | Sequence[str],
        from_ts: int | str | None = None,
        until_ts: int | str | None = None,
        **params: str,
    ) -> list[dict[str, Any]]:
        """``/render?format=json`` for one or more targets → parsed JSON; raises on non-200."""
        query: list[tuple[str, str]] = [("format", "json")]
        targets = [target] if isinstance(target, str) else list(target)
        query += [("target", t) for t in targets]
        if from_ts is not None:
            query.append(("from", str(from_ts)))
        if until_ts is not None:
            query.append(("until", str(until_ts)))
        query += list(params.items())
        with requests.get(f"{self.url}/render", params=query, timeout=30.0) as resp:
            if resp.status_code != 200:
                raise ServerError(f"/render answered {resp.status_code}: {resp.text[:300]}")
            body: list[dict[str, Any]] = resp.json()
            return body

    def wait_visible(self, target: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll ``/render`` until ``target`` matches at least one series."""

        def probe() -> list[dict[str, Any]] | None:
            return self.render(target, "-1d") or None

        return poll_until(probe, timeout, what=f"graphite-web to show {target!r}")
