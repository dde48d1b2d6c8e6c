"""The job kinds the agent runs: one :class:`JobKind` per kind in :data:`KINDS`.

To add a kind, add a ``JobKind`` to ``KINDS`` (a kind of this package, by its name only:
module ``skyline.vista.<name>``, function ``run_job``, keys ``vista.<name>.*``):

* ``name``: the kind's name (``vista jobs`` shows it; ``VISTA_JOB_PROCESSES`` is keyed by it);
* ``keys``: its Redis keys (see :mod:`skyline.vista.jobs.store`);
* ``entry``: ``"module:function"``, imported in the job's own process and called with a
  :class:`~skyline.vista.jobs.context.JobContext`. The function does the job in units (chunks,
  intervals), records ``ctx.progress(...)`` and ``ctx.checkpoint(...)`` after each unit, reads
  its resume point from ``ctx.record.checkpoint`` and returns as soon as ``ctx.should_stop()``
  is true (SIGTERM, parent death or a cancel request: the job is then paused or cancelled with
  its progress kept). Returning otherwise marks the job done; raising marks it failed.
* ``max_running``: how many jobs of the kind one agent runs at once, unless
  ``VISTA_JOB_PROCESSES`` says otherwise.

The table is static (not filled at run time) so that a spawned job process, which imports this
module afresh, sees the same kinds as the agent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skyline.vista.jobs.record import JobKeys

if TYPE_CHECKING:
    from skyline.vista.jobs.context import JobContext


@dataclass(frozen=True)
class JobKind:
    name: str
    keys: JobKeys
    entry: str
    max_running: int = 1

    def load_entry(self) -> Callable[[JobContext], None]:
        module, _, function = self.entry.partition(":")
        target = getattr(importlib.import_module(module), function)
        if not callable(target):
            raise TypeError(f"job kind {self.name}: {self.entry} is not callable")
        return target  # type: ignore[no-any-return]


def _vista_kind(name: str) -> JobKind:
    """A kind of this package: its entry is ``skyline.vista.<name>:run_job``, its keys
    ``vista.<name>.*``."""
    return JobKind(name, JobKeys.of_kind(name), f"skyline.vista.{name}:run_job")


KINDS: tuple[JobKind, ...] = tuple(map(_vista_kind, ("bq_backfill", "bq_update", "backfill")))


def kind(name: str) -> JobKind:
    for candidate in KINDS:
        if candidate.name == name:
            return candidate
    raise KeyError(f"unknown job kind {name!r}; known: {', '.join(k.name for k in KINDS)}")


def names() -> tuple[str, ...]:
    return tuple(k.name for k in KINDS)
