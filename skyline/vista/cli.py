"""The ``vista`` command: run, start, stop, restart, status, reload, check-config, fetch, queue.

Exit codes follow the LSB init-script conventions: ``status`` 0 running, 1 dead but the pidfile
exists, 3 not running, 4 unknown; ``start`` 0 started or already running, 1 failed, 6 not
configured (invalid settings, VISTA_ENABLED = False); ``reload`` 7 not running;
``check-config`` 0 valid, 1 not.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

from skyline.vista import agent, constants, daemon, secret
from skyline.vista import config as config_module
from skyline.vista.config import VistaConfig
from skyline.vista.errors import ConfigError
from skyline.vista.secret import RedactingStream


def eprint(text: str) -> None:
    print(text, file=sys.stderr)


def load_config(
    args: argparse.Namespace,
    *,
    require_enabled: bool,
    failure: int = constants.EXIT_NOT_CONFIGURED,
) -> VistaConfig | int:
    """The validated settings, or (every problem printed on stderr) the exit code ``failure``."""
    path = config_module.settings_path(args.settings)
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        what = "; not starting" if failure == constants.EXIT_NOT_CONFIGURED else ""
        eprint(f"vista: {len(exc.problems)} problem(s) in {exc.path or path}{what}:")
        for problem in exc.problems:
            eprint(f"  {problem}")
        return failure
    if require_enabled and not config.enabled:
        eprint(
            f"vista: VISTA_ENABLED is False in {path}; not starting "
            "(set VISTA_ENABLED = True to run Vista)"
        )
        return constants.EXIT_NOT_CONFIGURED
    secret.use_secrets(config.secrets())
    return config


def _make_dirs(config: VistaConfig) -> str | None:
    for name, path in (("LOG_PATH", config.log_path), ("PID_PATH", config.pid_path)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            return f"{name} {path!r} cannot be created: {exc.strerror}"
    return None


# --- check-config --------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_module.settings_path(args.settings)
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        print(f"{exc.path or path}: {len(exc.problems)} problem(s):")
        for problem in exc.problems:
            print(f"  error: {problem}")
        for warning in exc.warnings:
            print(f"  warning: {warning}")
        return constants.EXIT_FAILURE
    from skyline.vista.report import config_summary

    print(config_summary(config))
    if config.bq_accounts:
        from skyline.vista.bq.cli import check_lines

        lines, errors = check_lines(config.bq_accounts)
        for line in lines:
            print(line)
        if errors:
            return constants.EXIT_FAILURE
    return constants.EXIT_OK


# --- run / start / stop / restart / reload / status ----------------------------------------


def _runnable_config(args: argparse.Namespace) -> VistaConfig | int:
    """Valid, enabled settings whose LOG_PATH and PID_PATH exist (created if need be), or the
    exit code (6, not configured) after saying why."""
    config = load_config(args, require_enabled=True)
    if isinstance(config, int):
        return config
    problem = _make_dirs(config)
    if problem:
        eprint(f"vista: {problem}")
        return constants.EXIT_NOT_CONFIGURED
    return config


def cmd_run(args: argparse.Namespace) -> int:
    config = _runnable_config(args)
    if isinstance(config, int):
        return config
    return agent.serve(config)


def cmd_start(args: argparse.Namespace) -> int:
    config = _runnable_config(args)
    if isinstance(config, int):
        return config
    current = daemon.status(config.pidfile)
    if current.state is daemon.State.RUNNING:
        print(f"vista is already running (pid {current.pid})")
        return constants.EXIT_OK
    if current.state is daemon.State.DEAD and daemon.remove_stale(config.pidfile):
        print(f"removed a stale pidfile (pid {current.pid} is gone)")
    code, message = daemon.daemonize(
        lambda notify: agent.serve(config, config.logfile, notify),
        preserve=[],
        stderr_path=config.logfile,
    )
    if code == constants.EXIT_OK:
        print(f"vista started (pid {message}); log: {config.logfile}")
    else:
        eprint(f"vista failed to start: {message} (see {config.logfile})")
    return code


def _pidfile_only(args: argparse.Namespace) -> tuple[str, VistaConfig | None] | int:
    """The pidfile path even when the settings have errors (stop/status must still work)."""
    path = config_module.settings_path(args.settings)
    try:
        config = config_module.load(path)
        return config.pidfile, config
    except ConfigError as exc:
        try:
            raw = config_module.read_module(path)
        except ConfigError:
            eprint(f"vista: cannot read {path}: {'; '.join(exc.problems)}")
            return constants.EXIT_SETTINGS_UNREADABLE
        pid_path = raw.get("PID_PATH", "/var/run/skyline")
        if not isinstance(pid_path, str):
            eprint("vista: PID_PATH is not a string")
            return constants.EXIT_SETTINGS_UNREADABLE
        return os.path.join(pid_path, "vista.pid"), None


def cmd_stop(args: argparse.Namespace) -> int:
    found = _pidfile_only(args)
    if isinstance(found, int):
        return found
    pidfile, config = found
    timeout = (config.shutdown_timeout if config else 10.0) + 5.0
    return daemon.stop(pidfile, timeout)


def cmd_restart(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=True)
    if isinstance(config, int):
        return config  # never stop a running Vista for settings it cannot start with
    code = cmd_stop(args)
    if code != constants.EXIT_OK:
        return code
    return cmd_start(args)


def cmd_reload(args: argparse.Namespace) -> int:
    found = _pidfile_only(args)
    if isinstance(found, int):
        return found
    pidfile, _ = found
    current = daemon.status(pidfile)
    if current.state is not daemon.State.RUNNING or current.pid is None:
        eprint("vista is not running")
        return constants.EXIT_STOP_NOT_RUNNING
    import signal

    os.kill(current.pid, signal.SIGHUP)
    print(f"vista (pid {current.pid}) asked to reload its settings; see the log for the outcome")
    return constants.EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    found = _pidfile_only(args)
    if isinstance(found, int):
        return found
    pidfile, config = found
    current = daemon.status(pidfile)
    if current.state is daemon.State.NOT_RUNNING:
        print("vista is not running")
    elif current.state is daemon.State.DEAD:
        print(f"vista is dead but the pidfile exists ({pidfile}, pid {current.pid})")
    else:
        from skyline.vista.report import process_lines

        print(f"vista is running (pid {current.pid})")
        for line in process_lines(current.pid or 0):
            print(f"  {line}")
    if config is not None and not args.brief:
        from skyline.vista.report import redis_report

        for line in redis_report(config, worst=args.lag):
            print(line)
    return current.state.value


# --- fetch / queue --------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    if not args.once:
        eprint("vista fetch: only --once is supported (the daemon fetches continuously)")
        return constants.EXIT_USAGE
    config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
    if isinstance(config, int):
        return config
    from skyline.vista.fetch_once import fetch_once

    return fetch_once(config, dry_run=args.dry_run, metrics=args.metric or ())


def cmd_queue(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
    if isinstance(config, int):
        return config
    from skyline.vista.report import queue_command

    return queue_command(config, args.action, args.ids)


def cmd_bq(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
    if isinstance(config, int):
        return config
    from skyline.vista.bq.cli import run

    return run(config, args)


def cmd_jobs(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
    if isinstance(config, int):
        return config
    from skyline.vista.jobs.commands import jobs_command

    return jobs_command(config, args.action, args.job, args.kind)


def cmd_backfill(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
    if isinstance(config, int):
        return config
    from skyline.vista import backfill_command
    from skyline.vista.backfill import BackfillRequest, parse_duration, parse_time

    if args.targets[:1] == ["cancel"]:
        if len(args.targets) != 2:
            eprint("vista backfill cancel: give one job id (vista jobs lists them)")
            return constants.EXIT_USAGE
        return backfill_command.cancel_command(config, args.targets[1])
    if not (args.targets or args.match or args.all):
        eprint("vista backfill: name metrics, or give --match GLOB or --all")
        return constants.EXIT_USAGE
    if args.start is None:
        eprint("vista backfill: --from is required (e.g. --from -30d)")
        return constants.EXIT_USAGE
    import time

    now = time.time()
    try:
        request = BackfillRequest(
            metrics=tuple(args.targets),
            match=args.match,
            all_=args.all,
            start=parse_time(args.start, now),
            until=parse_time(args.until, now),
            resolution=parse_duration(args.resolution) if args.resolution else None,
        )
    except ValueError as exc:
        eprint(f"vista backfill: {exc}")
        return constants.EXIT_USAGE
    return backfill_command.backfill_command(config, request, dry_run=args.dry_run, wait=args.wait)


# --- parser -----------------------------------------------------------------------------------


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
    status = command("status", "LSB status: 0 running, 1 dead with pidfile, 3 stopped")
    status.add_argument(
        "--lag", type=int, default=10, metavar="N", help="show the N most lagging metrics"
    )
    status.add_argument("--brief", action="store_true", help="processes only, no Redis report")
    command("check-config", "validate the settings; exit 0 if valid, 1 if not")
    fetch = command("fetch", "run one fetch cycle in the foreground and print it")
    fetch.add_argument("--once", action="store_true", help="one cycle, every metric (required)")
    fetch.add_argument("--dry-run", action="store_true", help="write nothing to Redis")
    fetch.add_argument(
        "--metric", action="append", metavar="NAME", help="only this metric (repeatable)"
    )
    queue = command("queue", "queue counts, dead letters, requeue")
    queue.add_argument(
        "action", nargs="?", default="counts", choices=("counts", "dead", "requeue-dead")
    )
    queue.add_argument("ids", nargs="*", help="dead-letter ids for requeue-dead (default: all)")
    jobs = command("jobs", "on-demand jobs (backfill, BigQuery) with progress; cancel, wait")
    jobs.add_argument("action", nargs="?", default="list", choices=("list", "cancel", "wait"))
    jobs.add_argument("job", nargs="?", help="the job id (cancel, wait)")
    jobs.add_argument("--kind", help="only jobs of this kind (list)")
    from skyline.vista.bq.cli import add_parser as add_bq_parser

    add_bq_parser(sub, common)
    backfill = command(
        "backfill", "load history: add a backfill job (run by the agent); 'cancel JOB' cancels"
    )
    backfill.add_argument(
        "targets", nargs="*", metavar="METRIC", help="metrics to backfill (or: cancel JOB)"
    )
    backfill.add_argument("--all", action="store_true", help="every metric of the fetch list")
    backfill.add_argument("--match", metavar="GLOB", help="the metrics whose name matches GLOB")
    backfill.add_argument(
        "--from", dest="start", metavar="T", help="start: -30d, -12h, an epoch or ISO 8601 (UTC)"
    )
    backfill.add_argument("--until", default="now", metavar="T", help="end (default: now)")
    backfill.add_argument(
        "--resolution", metavar="R", help="step, e.g. 60s or 5m (default: each metric's frequency)"
    )
    backfill.add_argument("--dry-run", action="store_true", help="show the plan; add no job")
    backfill.add_argument("--wait", action="store_true", help="follow the job until it ends")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
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
