"""Showing jobs: the ``vista jobs`` table and the ``--wait`` progress display.

``--wait`` draws a tqdm progress bar (percent, units, points, points/s, ETA) when the output
is a terminal, and otherwise (logs, CI) one plain line whenever units finished since the last
look (fast units share a line), so that the output of a job run under systemd or cron stays
readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

from skyline.vista.durations import WHOLE, short
from skyline.vista.jobs.record import JobRecord, Status
from skyline.vista.jobs.store import JobStore

POLL_EVERY = 0.5


def describe(record: JobRecord) -> str:
    """A one-line summary of a job's parameters (never a secret: params hold none)."""
    keep = ("metric", "match", "all", "vista_bq_account_key")
    shown = [f"{k}={record.params[k]}" for k in keep if record.params.get(k) not in (None, "")]
    # The range as UTC times (history backfill: from/until; BigQuery: Skyline's names)
    for start, end in (("from", "until"), ("from_timestamp", "until_timestamp")):
        span = [_utc(record.params.get(k)) for k in (start, end)]
        if all(span):
            shown.append(f"{span[0]}..{span[1]}")
    if record.params.get("resolution") not in (None, ""):
        shown.append(f"resolution={record.params['resolution']}s")
    if record.params.get("dry_run") in (True, "true", "True"):
        shown.append("dry-run")
    return " ".join(shown)


def _utc(value: object) -> str:
    try:
        ts = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    text = time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))
    return text.removesuffix(" 00:00")


def table(records: Iterable[JobRecord], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    lines = [f"{'JOB':16}  {'KIND':12}  {'STATUS':9}  {'PROGRESS':>16}  {'POINTS':>12}  AGE  WHAT"]
    for r in records:
        p = r.progress
        done = f"{p.done}/{p.total} {p.percent:3.0f}%" if p.total else "-"
        what = describe(r)
        if r.error:
            what += f"  ({r.error})"
        lines.append(
            f"{r.id:16}  {r.kind:12}  {r.status.value:9}  {done:>16}  {p.points:>12,}  "
            f"{short(now - r.created, WHOLE):>4} {what}"
        )
    return lines


def plain_line(record: JobRecord, rate: float, eta: float | None) -> str:
    p = record.progress
    text = f"job {record.id}: {p.done}/{p.total} chunks ({p.percent:.1f}%), {p.points:,} points"
    if rate:
        text += f", {rate:,.0f} points/s"
    if eta is not None:
        text += f", ETA {short(eta, WHOLE)}"
    if p.errors:
        text += f", {p.errors} error(s)"
    if p.message:
        text += f" - {p.message}"
    return text


def wait(
    store: JobStore,
    job_id: str,
    out: TextIO = sys.stdout,
    *,
    tty: bool | None = None,
    poll: float = POLL_EVERY,
    clock: Callable[[], float] = time.monotonic,
    timeout: float | None = None,
) -> JobRecord | None:
    """Follow a job until it is finished; returns its last record (None if it vanished)."""
    tty = out.isatty() if tty is None else tty
    started = clock()
    first: tuple[int, int] | None = None  # (units, points) when first seen running
    bar = None
    last_done = -1
    record = store.get(job_id)
    try:
        while record is not None:
            p = record.progress
            if first is None and record.status is Status.RUNNING:
                first, started = (p.done, p.points), clock()
            elapsed = max(clock() - started, 1e-6)
            units = p.done - first[0] if first else 0
            rate = (p.points - first[1]) / elapsed if first else 0.0
            if tty:
                if bar is None and p.total:
                    from tqdm import tqdm

                    bar = tqdm(total=p.total, initial=p.done, unit="chunk", file=out)
                if bar is not None and p.done > bar.n:
                    bar.set_postfix_str(f"{p.points:,} points, {rate:,.0f} points/s", refresh=False)
                    bar.update(p.done - bar.n)
            elif p.done != last_done and p.total:
                eta = elapsed / units * (p.total - p.done) if units > 0 else None
                print(plain_line(record, rate, eta), file=out, flush=True)
            last_done = p.done
            if record.status.finished:
                break
            if timeout is not None and clock() - started > timeout:
                break
            time.sleep(poll)
            record = store.get(job_id)
    finally:
        if bar is not None:
            bar.close()
    if record is not None and record.status.finished:
        suffix = f": {record.error}" if record.error else ""
        print(f"job {record.id} {record.status.value}{suffix}", file=out, flush=True)
    return record
