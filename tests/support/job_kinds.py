"""Job kinds for the job-core tests: entry points a spawned job process can import."""

from __future__ import annotations

import os
import time

from skyline.vista.errors import VistaError
from skyline.vista.jobs.context import JobContext
from skyline.vista.jobs.record import JobKeys
from skyline.vista.jobs.registry import JobKind

UNITS_KEY = "test.job.units"
"""Hash unit -> times the unit was run (a unit is 'recorded, then checkpointed')."""
PIDS_KEY = "test.job.pids"
"""List of the pids of the processes that ran the job, in order."""


def count_job(ctx: JobContext) -> None:
    """``params``: units (how many), pause (seconds per unit), fail_at (raise at this unit)."""
    units = int(ctx.params["units"])
    pause = float(ctx.params.get("pause", 0.0))
    fail_at = ctx.params.get("fail_at")
    start = int(ctx.record.checkpoint.get("next", 0))
    ctx.client.rpush(PIDS_KEY, os.getpid())
    ctx.progress(total=units)
    for unit in range(start, units):
        if ctx.should_stop():
            return
        if fail_at is not None and unit == int(fail_at):
            if ctx.params.get("expected"):  # a failure the job reports on purpose
                raise VistaError(f"unit {unit} has too few rows")
            raise RuntimeError(f"unit {unit} is broken")
        time.sleep(pause)
        ctx.client.hincrby(UNITS_KEY, str(unit), 1)
        ctx.checkpoint({"next": unit + 1}, done=unit + 1, points=(unit + 1) * 10)


COUNT = JobKind(
    name="count",
    keys=JobKeys("test.count.work", "test.count.job_status", "test.count.running"),
    entry="tests.support.job_kinds:count_job",
)
