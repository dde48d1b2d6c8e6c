"""A real forward proxy for tests (Debian's tinyproxy, in the Makefile's APT_PACKAGES) and a
self-signed certificate for a local TLS remote (made with the openssl command).

    proxy = TinyProxy(tmp_path / "proxy", user="vista", password="pw").start()
    ... proxy.url ... proxy.log() ...
    proxy.stop()
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from skyline.vista.testing.servers import free_port


@dataclass
class TinyProxy:
    """tinyproxy in the foreground on a free loopback port; BasicAuth when ``user`` is set."""

    dir: Path
    user: str | None = None
    password: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "tinyproxy.log"

    def start(self, timeout: float = 10.0) -> TinyProxy:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not Path(binary).exists():
            raise FileNotFoundError("tinyproxy is not installed: run `make install`")
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f'LogFile "{self.log_file}"',
            "LogLevel Connect",
            "MaxClients 50",
            "Allow 127.0.0.1",
        ]
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        config = self.dir / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        with (self.dir / "stderr.txt").open("wb") as stderr:
            self.process = subprocess.Popen(
                [binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited: {(self.dir / 'stderr.txt').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"tinyproxy did not listen on {self.port} within {timeout}s")

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed(directory: Path, host: str = "localhost") -> Certificate:
    """A certificate for ``host`` (and 127.0.0.1), valid for a day, made by openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=DNS:{host},IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)
