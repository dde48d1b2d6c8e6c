"""The agent, the process of ``vista run`` and ``vista start``.

:func:`serve` wires it (pidfile, the /metrics directory, logging) and runs the supervisor of
:mod:`skyline.vista.agent.supervisor`: the Fetcher thread and the Worker processes. The CLI
only parses its arguments and calls :func:`serve`.

Nothing imported here at module level imports prometheus_client (see :func:`serve`);
tests/unit/test_imports.py checks it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from skyline.vista import constants, daemon, logs
from skyline.vista.config import VistaConfig
from skyline.vista.errors import ConfigError
from skyline.vista.logs import LogSpec

if TYPE_CHECKING:
    from skyline.vista.agent.supervisor import Vista

__all__ = ["Vista", "serve"]

logger = logging.getLogger("skyline.vista.agent")


def serve(
    config: VistaConfig,
    log_file: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> int:
    """Run the agent until it is stopped, and return its exit code.

    ``log_file`` None logs to stderr; ``notify`` (a daemonised ``vista start``) is told
    ``ok <pid>`` once the agent is up, or ``error <why>``.
    """
    metrics_dir = _metrics_dir(config)
    pidfile = daemon.PidFile(config.pidfile)
    try:
        try:
            pidfile.acquire()
        except daemon.AlreadyRunning as exc:
            if notify is not None:
                notify(f"error {exc}")
            print(f"vista: {exc}", file=sys.stderr)
            return constants.EXIT_FAILURE
        # Imported only now, once PROMETHEUS_MULTIPROC_DIR is set: prometheus_client chooses
        # between in-memory values and multi-process ones (files in that directory, which
        # /metrics adds up over the agent and its workers) once, when it is first imported, and
        # the supervisor's modules create their metrics as they are imported. Imported before,
        # the agent's own metrics would never reach /metrics.
        from skyline.vista.agent.supervisor import Vista

        spec = LogSpec(log_file, config.verbose_logging, tuple(config.secrets()))
        logs.configure(spec)
        agent = Vista(config, spec, on_force_exit=pidfile.release)
        ready = (lambda: notify(f"ok {os.getpid()}")) if notify is not None else None
        try:
            return agent.run(ready=ready)
        except ConfigError as exc:  # found only when starting (a port in use): one line each
            for problem in exc.problems:
                logger.error("cannot start: %s", problem)
            if notify is not None:
                notify(f"error {'; '.join(exc.problems)}")
            return constants.EXIT_FAILURE
    finally:
        pidfile.release()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir(config: VistaConfig) -> str | None:
    """With VISTA_METRICS_ADDRESS, a fresh directory for the processes' metric files, named in
    PROMETHEUS_MULTIPROC_DIR (inherited by the workers)."""
    if not config.metrics_address:
        return None
    path = tempfile.mkdtemp(prefix="vista-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def __getattr__(name: str) -> object:
    # ``from skyline.vista.agent import Vista`` keeps working, without importing the
    # supervisor (and prometheus_client) when this package is imported.
    if name == "Vista":
        from skyline.vista.agent.supervisor import Vista

        return Vista
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
