"""bin/vista-demo (make demo): Ctrl-C stops it cleanly, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skyline.vista.procutil import cmdline

ROOT = Path(__file__).resolve().parents[2]


def _processes_under(directory: Path) -> list[int]:
    needle = str(directory)
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and needle in cmdline(int(e))]


def demo_command(var: Path) -> list[str]:
    return [sys.executable, str(ROOT / "bin" / "vista-demo"), "--dir", str(var)]


def start_demo(var: Path) -> subprocess.Popen[str]:
    """bin/vista-demo in ``var``, its output (stdout and stderr) read as text."""
    return subprocess.Popen(
        demo_command(var), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_ctrl_c_while_the_servers_start_stops_them_without_a_traceback(tmp_path: Path) -> None:
    # Before: a KeyboardInterrupt traceback from inside subprocess/servers code.
    var = tmp_path / "demo"
    proc = start_demo(var)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("[demo] starting"), first
    time.sleep(0.3)  # Redis is up, Prometheus or carbon starting
    proc.send_signal(signal.SIGINT)
    output = first + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output, output
    assert "[demo] interrupted while starting; stopping the servers" in output, output
    deadline = time.monotonic() + 10
    while _processes_under(var) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_under(var) == []


@pytest.mark.slow
def test_a_second_demo_in_the_same_directory_is_refused_and_leaves_the_first_running(
    tmp_path: Path,
) -> None:
    # Before: the second demo wiped the first one's directory (its Redis, Prometheus and
    # carbon files) and failed on the fixed metrics port 9313.
    var = tmp_path / "demo"
    first = start_demo(var)
    assert first.stdout is not None
    lines: list[str] = []
    try:
        # Until Vista's own first log line: its signal handlers are installed by then (a
        # SIGTERM before that would end it with -15 instead of a drain).
        while not any(" skyline.vista.agent: vista " in line for line in lines):
            line = first.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        settings = var / "settings.py"
        assert settings.exists()
        second = subprocess.run(
            demo_command(var),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second
        assert f"another demo (pid {first.pid}) runs in {var}" in second.stderr, second.stderr
        assert settings.exists()  # the first demo's files are untouched
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        output = "".join(lines) + first.communicate(timeout=90)[0]
    assert first.returncode == 0, output
    assert "[demo] stopped; Vista exited with 0" in output, output
