"""Benchmark: BigQuery rows → points → carbon sink, and the real client's row rate.

(a) The job's pipeline for 1,000,000 rows × 3 metric dimensions (3,000,000 points): pages of
    10,000 rows (tuples typed as the client returns them: DATE, STRING, INTEGER, FLOAT,
    NUMERIC) go through :class:`~skyline.vista.bq.rows.RowConverter` and
    :class:`~skyline.vista.bq.job.Delivery` (create budget off) into the real
    :class:`~skyline.vista.sinks.carbon.CarbonSink` (pickle, 500 points a message) over TCP to
    a process that reads and discards (its CPU is not counted). Once without and once with the
    interval archive (gzip CSV) written on the way, as a real backfill does.
(b) Memory flat in the number of intervals: the same pipeline for 10 and for 100 intervals of
    10,000 rows, each run in a fresh process; peak RSS compared.
(c) The real ``google-cloud-bigquery`` client reading 100,000 rows in pages of 10,000 from the
    local BigQuery fake (in a process of its own): rows/s parsed by the client, the part the
    pipeline cannot make faster.

Aim: at least 200,000 points/s converted and handed to the carbon sink; peak memory the same for
10 and 100 intervals. Not a test: it prints figures and ratios.

    .venv/bin/python bench/bigquery.py
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datetime as dt
import multiprocessing
import multiprocessing.connection
import socket
import tempfile
import threading
import time
from decimal import Decimal
from typing import Any

from bench.common import self_cpu, self_peak_mb, table

PAGE = 10_000
COLUMNS = ("day", "country", "signups", "revenue", "margin")
DAY = 86400
FIRST = 1_700_006_400  # a UTC midnight


def page_rows(interval: int, page: int) -> list[tuple[object, ...]]:
    day = dt.date(1970, 1, 1) + dt.timedelta(days=(FIRST + interval * DAY) // DAY)
    base = page * PAGE
    return [
        (day, f"c{base + i}", base + i, (base + i) * 0.25, Decimal(i % 97)) for i in range(PAGE)
    ]


def discard_server(conn: multiprocessing.connection.Connection) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    conn.send(listener.getsockname()[1])

    def drain(sock: socket.socket) -> None:
        with sock:
            while sock.recv(1 << 20):
                pass

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=drain, args=(sock,), daemon=True).start()


def pipeline(port: int, intervals: int, rows_per_interval: int, archive: bool, result: Any) -> None:
    import redis

    from skyline.vista.bq.archive import ArchiveWriter
    from skyline.vista.bq.job import Delivery
    from skyline.vista.bq.rows import RowConverter, RowSpec
    from skyline.vista.config import CarbonConfig
    from skyline.vista.create_budget import CreateBudget
    from skyline.vista.sinks import SinkPoint
    from skyline.vista.sinks.carbon import CarbonSink

    spec = RowSpec("bench.shop", "day", "country", ("signups", "revenue", "margin"))
    sink = CarbonSink(CarbonConfig("127.0.0.1", pickle_port=port))
    budget = CreateBudget(redis.Redis(), float("inf"))
    delivery = Delivery(sink, budget, lambda: False)
    conv = RowConverter(spec, COLUMNS)
    pages = rows_per_interval // PAGE
    tmp = tempfile.mkdtemp(prefix="vista-bq-bench-")
    # rows are made outside the clock (time and, approximately, CPU): they stand for what the
    # client hands over
    gen = 0.0
    cpu0, t0 = self_cpu(), time.perf_counter()
    points = 0
    for interval in range(intervals):
        conv.begin_interval()
        writer = ArchiveWriter(f"{tmp}/a.{interval}.csv.gz", COLUMNS) if archive else None
        for p in range(pages):
            g = time.perf_counter()
            rows = page_rows(interval, p)
            gen += time.perf_counter() - g
            if writer is not None:
                writer.write(rows)
            out: list[SinkPoint] = []
            conv.convert(rows, out)
            delivery.send(out)
            points += len(out)
        if writer is not None:
            writer.commit()
    elapsed = time.perf_counter() - t0 - gen
    cpu = self_cpu() - cpu0
    sink.close()
    result.send((points, elapsed, cpu, gen, self_peak_mb()))


def run_pipeline(port: int, intervals: int, rows: int, archive: bool) -> tuple[Any, ...]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=pipeline, args=(port, intervals, rows, archive, child))
    proc.start()
    got = parent.recv()
    proc.join(30)
    return tuple(got)


def fake_server(conn: multiprocessing.connection.Connection, rows: int) -> None:
    from tests.fakes.bigquery import Column, FakeBigQuery

    fake = FakeBigQuery(page_size=PAGE)
    columns = [
        Column("day", "DATE"),
        Column("country", "STRING"),
        Column("signups", "INTEGER"),
        Column("revenue", "FLOAT"),
        Column("margin", "NUMERIC"),
    ]
    fake.set_table(columns, [r for p in range(rows // PAGE) for r in page_rows(0, p)], "day")
    fake.start()
    conn.send(fake.url)
    conn.recv()
    fake.stop()


def client_rate(rows: int) -> tuple[float, float, float]:
    from google.auth.credentials import AnonymousCredentials

    from skyline.vista.bq.client import BigQueryRunner
    from skyline.vista.bq.query import build_query

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=fake_server, args=(child, rows), daemon=True)
    proc.start()
    url = parent.recv()
    runner = BigQueryRunner(
        "bench",
        AnonymousCredentials(),  # type: ignore[no-untyped-call]
        endpoint=url,
        page_size=PAGE,
    )
    cpu0, t0 = self_cpu(), time.perf_counter()
    result = runner.run(build_query("SELECT * FROM t WHERE day = @date", FIRST, DAY))
    count = sum(len(page) for page in result.pages)
    elapsed, cpu = time.perf_counter() - t0, self_cpu() - cpu0
    parent.send("stop")
    proc.join(10)
    assert count == rows, count
    return count / elapsed, elapsed, cpu


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=discard_server, args=(child,), daemon=True)
    server.start()
    port = parent.recv()
    rows_out = []
    runs = [
        ("(a) 1,000,000 rows, 100 intervals", 100, 10_000, False),
        ("(a) same, archive written", 100, 10_000, True),
        ("(b) 100,000 rows, 10 intervals", 10, 10_000, False),
        ("(b) 1,000,000 rows, 10 intervals", 10, 100_000, False),
    ]
    figures = {}
    for label, intervals, per, archive in runs:
        points, elapsed, cpu, gen, peak = run_pipeline(port, intervals, per, archive)
        rows = intervals * per
        figures[label] = (points / elapsed, peak)
        rows_out.append(
            [
                label,
                f"{rows:,}",
                f"{points:,}",
                f"{elapsed:.2f} s",
                f"{rows / elapsed:,.0f}",
                f"{points / elapsed:,.0f}",
                f"{cpu - gen:.2f} s",
                f"{points / max(cpu - gen, 1e-9):,.0f}",
                f"{peak:.0f} MB",
            ]
        )
    print(
        table(
            [
                "run",
                "rows",
                "points",
                "time",
                "rows/s",
                "points/s",
                "CPU",
                "points/CPU-s",
                "peak RSS",
            ],
            rows_out,
        )
    )
    rate = figures["(a) 1,000,000 rows, 100 intervals"][0]
    print(f"\npoints/s converted and handed to the carbon sink: {rate:,.0f} (aim 200,000: "
          f"{rate / 200_000:.1f}x)")  # fmt: skip
    small = figures["(b) 100,000 rows, 10 intervals"][1]
    big = figures["(a) 1,000,000 rows, 100 intervals"][1]
    print(f"peak RSS, 10 vs 100 intervals of 10,000 rows: {small:.0f} MB vs {big:.0f} MB "
          f"(ratio {big / small:.2f})")  # fmt: skip
    per_sec, elapsed, cpu = client_rate(100_000)
    print(
        f"(c) google-cloud-bigquery reading 100,000 rows from the local fake: {per_sec:,.0f} "
        f"rows/s ({elapsed:.2f} s, client CPU {cpu:.2f} s)"
    )
    server.terminate()


if __name__ == "__main__":
    main()
