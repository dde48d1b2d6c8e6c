"""The ``vista`` command line: its parser (commands, options, their help).

Nothing but parsing: the commands are :mod:`skyline.vista.cli`'s.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from skyline.vista import constants

Command = Callable[[str, str], argparse.ArgumentParser]
"""Adds the sub-command ``name`` with its one-line help; returns its parser."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vista",
        description="Fetch metrics from remote Graphite/Prometheus and deliver them exactly once "
        "to Graphite or Skyline Flux.",
    )
    settings_help = (
        f"settings.py to use (default: ${constants.SETTINGS_ENV}, else "
        f"{constants.DEFAULT_SETTINGS_PATH})"
    )
    parser.add_argument("--settings", metavar="PATH", help=settings_help)
    # --settings is accepted after the command too (`vista status --settings X`, and what
    # bin/vista.d passes); SUPPRESS keeps a global --settings when it is not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", metavar="PATH", default=argparse.SUPPRESS, help=settings_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    command("run", "run in the foreground, logging to stderr (systemd, containers)")
    command("start", "start as a daemon (python-daemon), logging to LOG_PATH/vista.log")
    command("stop", "stop the daemon: drain, then SIGKILL after a timeout")
    command("restart", "stop, then start")
    command("reload", "re-read the settings (SIGHUP); invalid settings are not applied")
    _add_status(command)
    command("check-config", "validate the settings; exit 0 if valid, 1 if not")
    _add_fetch(command)
    _add_queue(command)
    _add_jobs(command)
    from skyline.vista.bq.cli import add_parser as add_bq_parser

    add_bq_parser(sub, common)
    _add_backfill(command)
    return parser


def _add_status(command: Command) -> None:
    status = command("status", "LSB status: 0 running, 1 dead with pidfile, 3 stopped")
    status.add_argument(
        "--lag", type=int, default=10, metavar="N", help="show the N most lagging metrics"
    )
    status.add_argument("--brief", action="store_true", help="processes only, no Redis report")


def _add_fetch(command: Command) -> None:
    fetch = command("fetch", "run one fetch cycle in the foreground and print it")
    fetch.add_argument("--once", action="store_true", help="one cycle, every metric (required)")
    fetch.add_argument("--dry-run", action="store_true", help="write nothing to Redis")
    fetch.add_argument(
        "--metric", action="append", metavar="NAME", help="only this metric (repeatable)"
    )


def _add_queue(command: Command) -> None:
    queue = command("queue", "queue counts, dead letters, requeue")
    queue.add_argument(
        "action", nargs="?", default="counts", choices=("counts", "dead", "requeue-dead")
    )
    queue.add_argument("ids", nargs="*", help="dead-letter ids for requeue-dead (default: all)")


def _add_jobs(command: Command) -> None:
    jobs = command("jobs", "on-demand jobs (backfill, BigQuery) with progress; cancel, wait")
    jobs.add_argument("action", nargs="?", default="list", choices=("list", "cancel", "wait"))
    jobs.add_argument("job", nargs="?", help="the job id (cancel, wait)")
    jobs.add_argument("--kind", help="only jobs of this kind (list)")


def _add_backfill(command: Command) -> None:
    backfill = command(
        "backfill", "load history: add a backfill job (run by the agent); 'cancel JOB' cancels"
    )
    backfill.add_argument(
        "targets", nargs="*", metavar="METRIC", help="metrics to backfill (or: cancel JOB)"
    )
    backfill.add_argument("--all", action="store_true", help="every metric of the fetch list")
    backfill.add_argument(
        "--match",
        metavar="GLOB",
        help="the metrics (templates, or names a template made) matching GLOB",
    )
    backfill.add_argument(
        "--from", dest="start", metavar="T", help="start: -30d, -12h, an epoch or ISO 8601 (UTC)"
    )
    backfill.add_argument("--until", default="now", metavar="T", help="end (default: now)")
    backfill.add_argument(
        "--resolution", metavar="R", help="step, e.g. 60s or 5m (default: each metric's frequency)"
    )
    backfill.add_argument("--dry-run", action="store_true", help="show the plan; add no job")
    backfill.add_argument("--wait", action="store_true", help="follow the job until it ends")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--from -30d`` read as ``--from=-30d``: argparse takes any word
    that starts with '-' and is not a plain number for an option, so the README's relative
    times would be refused ("expected one argument")."""
    words = list(sys.argv[1:] if argv is None else argv)
    joined: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if (
            word in ("--from", "--until")
            and index + 1 < len(words)
            and re.fullmatch(r"-\d\S*", words[index + 1])
        ):
            joined.append(f"{word}={words[index + 1]}")
            index += 2
            continue
        joined.append(word)
        index += 1
    return build_parser().parse_args(joined)
