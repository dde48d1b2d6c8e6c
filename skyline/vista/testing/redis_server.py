"""``redis-server`` on loopback for the tests."""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import redis

from skyline.vista.testing.base import Server
from skyline.vista.testing.common import LOOPBACK, free_port, require_binary
from skyline.vista.testing.errors import ServerError


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
        require_binary("redis-server")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        argv = [
            require_binary("redis-server"),
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
