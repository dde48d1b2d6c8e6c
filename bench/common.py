"""Shared helpers of the Vista benchmarks (bench/fetch.py, bench/deliver.py).

* Process figures read from ``/proc`` (CPU seconds, current and peak RSS) and the load average.
* Plain-text tables.
* Two servers that run in a process of their own, so that their CPU is never counted as the
  measured process's: :class:`SourceServer` answers like Graphite's ``/render`` and
  Prometheus' ``/api/v1/query_range`` (with a configurable delay per request), and
  :class:`FluxProcess` runs the Flux double of ``tests/fakes/flux.py``.

Both are started with the ``spawn`` method and driven over a ``multiprocessing`` pipe.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

from skyline.vista.testing.servers import StartStop
from tests.support.web import LocalApp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024

# ------------------------------------------------------------------------------ process figures


@dataclass(frozen=True)
class ProcUsage:
    """One process as /proc sees it now."""

    cpu: float  # user + system seconds since the process started
    rss_mb: float  # resident set now
    peak_mb: float  # peak resident set (VmHWM)

    def minus(self, before: ProcUsage) -> float:
        """CPU seconds used between ``before`` and this reading."""
        return self.cpu - before.cpu


def proc_usage(pid: int) -> ProcUsage:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read().decode(errors="replace")
    rest = stat.rsplit(")", 1)[-1].split()  # rest[0] is field 3 (state)
    cpu = (int(rest[11]) + int(rest[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15
    rss = peak = 0.0
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return ProcUsage(cpu, rss, peak)


def self_cpu() -> float:
    """CPU seconds (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def self_peak_mb() -> float:
    """Peak RSS of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


def load1() -> float:
    return float(loadavg().split()[0])


def wait_for_low_load(limit: float, timeout: float) -> str:
    """Wait (at most ``timeout`` s) until the 1-minute load is below ``limit``; say what we saw."""
    began = time.monotonic()
    seen = loadavg()
    while load1() >= limit and time.monotonic() - began < timeout:
        time.sleep(2.0)
        seen = loadavg()
    waited = time.monotonic() - began
    return f"load average {seen}" + (f" (waited {waited:.0f} s for < {limit:g})" if waited else "")


# ------------------------------------------------------------------------------ printing


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned; the first left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


# ------------------------------------------------------------------------------ the source server

ALIAS = re.compile(r'^alias\((.*),"([^"]*)"\)$', re.S)
RELATIVE = re.compile(r"^-(\d+)(s|min|minutes?|h|hours?|d|days?)$")
UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400}


def _relative_seconds(text: str) -> int | None:
    match = RELATIVE.match(text)
    if match is None:
        return None
    unit = match.group(2)
    key = "min" if unit.startswith("min") else unit[0]
    return int(match.group(1)) * UNITS[key]


def series_value(name: str, ts: int) -> float:
    """A deterministic value with a fraction for one series at one time."""
    base = zlib.crc32(name.encode()) % 1000
    return base + (ts // 60 % 97) * 0.25 + 0.125


class _SourceState:
    def __init__(self) -> None:
        self.delay = 0.0
        self.requests = 0
        self.series = 0


def _render_stamps(query: Any, now: int) -> list[int]:
    """Graphite's slots: (from, until] on 60 s boundaries, never the still-open minute."""
    minute = now // 60 * 60
    frm = str(query.get("from", "-10minutes"))
    until = query.get("until")
    relative = _relative_seconds(frm)
    if relative is not None:
        # A relative window: the last complete minutes, as graphite-web shows them.
        start = minute - relative - 60
    else:
        start = int(frm)
    end = now if until is None or until == "now" else int(until)
    first = start // 60 * 60 + 60
    last = min(end // 60 * 60, minute - 60)
    return list(range(first, last + 1, 60))


def _make_app(state: _SourceState) -> web.Application:
    async def render(request: web.Request) -> web.Response:
        state.requests += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        query = request.query
        stamps = _render_stamps(query, int(time.time()))
        out = []
        for target in query.getall("target", []):
            match = ALIAS.match(target)
            name = match.group(2) if match else target
            inner = match.group(1) if match else target
            points = [[series_value(inner, ts), ts] for ts in stamps]
            out.append({"target": name, "tags": {"name": name}, "datapoints": points})
        state.series += len(out)
        return web.Response(body=json.dumps(out).encode(), content_type="application/json")

    async def query_range(request: web.Request) -> web.Response:
        state.requests += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        query = request.query
        expr = query.get("query", "")
        try:
            start = int(float(query["start"]))
            end = int(float(query["end"]))
            step_text = query.get("step", "60")
            step = int(float(step_text[:-1] if step_text.endswith("s") else step_text))
        except (KeyError, ValueError):
            error = {"status": "error", "errorType": "bad_data", "error": "bad parameters"}
            return web.json_response(error, status=400)
        values = [[ts, repr(series_value(expr, ts))] for ts in range(start, end + 1, step)]
        state.series += 1
        body = {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [{"metric": {"__name__": "bench", "query": expr}, "values": values}],
            },
        }
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    app = web.Application()
    for path in ("/render", "/render/"):
        app.router.add_get(path, render, allow_head=False)
    app.router.add_get("/api/v1/query_range", query_range, allow_head=False)
    return app


async def _serve_source(conn: multiprocessing.connection.Connection) -> None:
    state = _SourceState()
    local = await LocalApp(_make_app(state)).start(backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        command, arg = conn.recv()
        if command == "delay":
            state.delay = float(arg)
        elif command == "reset":
            state.requests = state.series = 0
        elif command == "stop":
            stop.set()
        conn.send((state.requests, state.series))

    loop.add_reader(conn.fileno(), on_command)
    conn.send(local.port)
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await local.stop()


def serve_source(conn: multiprocessing.connection.Connection) -> None:
    """Entry point of the source server's process."""
    asyncio.run(_serve_source(conn))


class _Child(StartStop):
    """A spawned helper process driven over a pipe."""

    target: Any = None
    name = "bench-child"

    def __init__(self, *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=type(self).target, args=(child, *args), name=self.name, daemon=True
        )
        self.port = 0
        self._child_end = child

    def start(self) -> Self:
        self._proc.start()
        self._child_end.close()
        if not self._conn.poll(60):
            raise RuntimeError(f"{self.name} did not start")
        self.port = int(self._conn.recv())
        return self

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def usage(self) -> ProcUsage:
        return proc_usage(self.pid)

    def call(self, command: str, arg: object = None) -> Any:
        self._conn.send((command, arg))
        if not self._conn.poll(60):
            raise RuntimeError(f"{self.name} does not answer")
        return self._conn.recv()

    def stop(self) -> None:
        if self._proc.is_alive():
            try:
                self.call("stop")
            except (OSError, EOFError, RuntimeError):
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._conn.close()


class SourceServer(_Child):
    """Graphite /render (format=json, several targets, alias() honoured) and Prometheus
    /api/v1/query_range (one matrix series) in a process of its own."""

    target = serve_source
    name = "bench-source"

    def set_delay(self, seconds: float) -> None:
        self.call("delay", seconds)

    def reset(self) -> None:
        self.call("reset")

    def counts(self) -> tuple[int, int]:
        """(requests, series) answered since the last reset."""
        requests, series = self.call("counts")
        return int(requests), int(series)


# ------------------------------------------------------------------------------ the Flux double


def serve_flux(
    conn: multiprocessing.connection.Connection, max_age: int, emulate_worker: bool = True
) -> None:
    """Entry point of the Flux double's process (tests/fakes/flux.py, record=False); with
    ``emulate_worker=False`` its listener only (no flux.last checks, nothing forwarded)."""
    from tests.fakes.flux import FluxServer

    server = FluxServer(record=False, max_age=max_age, emulate_worker=emulate_worker).start()
    conn.send(server.port)
    while True:
        command, _arg = conn.recv()
        if command == "stop":
            server.stop()
            conn.send((server.accepted_count, server.request_count))
            return
        conn.send((server.accepted_count, server.request_count))


class FluxProcess(_Child):
    target = serve_flux
    name = "bench-flux"

    def counts(self) -> tuple[int, int]:
        """(points accepted, requests answered) so far."""
        accepted, requests = self.call("counts")
        return int(accepted), int(requests)
