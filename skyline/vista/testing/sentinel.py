"""``redis-sentinel`` and a primary + replica + sentinels set, for failover tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import redis

from skyline.vista.testing.base import Server
from skyline.vista.testing.common import LOOPBACK, free_port, poll_until, require_binary
from skyline.vista.testing.redis_server import RedisServer


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
        require_binary("redis-sentinel")

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
        return [require_binary("redis-sentinel"), str(self.config_path)]

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
