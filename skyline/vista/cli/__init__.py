"""The ``vista`` command: run, start, stop, restart, status, reload, check-config, fetch, queue,
jobs, backfill, bq. :func:`main` is the entry point (the ``vista`` console script and
``python -m skyline.vista``).

Exit codes follow the LSB init-script conventions: ``status`` 0 running, 1 dead but the pidfile
exists, 3 not running, 4 unknown; ``start`` 0 started or already running, 1 failed, 6 not
configured (invalid settings, VISTA_ENABLED = False); ``reload`` 7 not running;
``check-config`` 0 valid, 1 not.

The parser is :mod:`~skyline.vista.cli.parser`'s; the commands are grouped by area: daemon
control in :mod:`~skyline.vista.cli.control`, ``fetch``/``queue`` in
:mod:`~skyline.vista.cli.fetch_queue`, ``jobs``/``backfill``/``bq`` in
:mod:`~skyline.vista.cli.jobs`, loading the settings and ``check-config`` in
:mod:`~skyline.vista.cli.settings`. The agent itself is wired by
:func:`skyline.vista.agent.serve`: the CLI only parses and calls it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from skyline.vista import constants
from skyline.vista.cli.control import (
    cmd_reload,
    cmd_restart,
    cmd_run,
    cmd_start,
    cmd_status,
    cmd_stop,
)
from skyline.vista.cli.fetch_queue import cmd_fetch, cmd_queue
from skyline.vista.cli.jobs import cmd_backfill, cmd_bq, cmd_jobs
from skyline.vista.cli.parser import build_parser, parse_args
from skyline.vista.cli.settings import Command, cmd_check_config
from skyline.vista.secret import RedactingStream

__all__ = ["COMMANDS", "build_parser", "main", "parse_args"]

COMMANDS: dict[str, Command] = {
    "run": cmd_run,
    "start": cmd_start,
    "stop": cmd_stop,
    "restart": cmd_restart,
    "reload": cmd_reload,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "fetch": cmd_fetch,
    "queue": cmd_queue,
    "jobs": cmd_jobs,
    "bq": cmd_bq,
    "backfill": cmd_backfill,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Whatever a command prints (a remote's error text in `fetch --once`, a dead letter's
    # reason, a library's message), no form of a secret of the settings reaches the terminal.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out), RedactingStream(err)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # Output piped into `head` and friends: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return constants.EXIT_OK
    finally:
        sys.stdout, sys.stderr = out, err
