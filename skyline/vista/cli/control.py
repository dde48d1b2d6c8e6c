"""Daemon control: ``vista run``, ``start``, ``stop``, ``restart``, ``reload`` and ``status``,
with the LSB init-script exit codes (see :mod:`skyline.vista.cli`)."""

from __future__ import annotations

import argparse
import os
import signal

from skyline.vista import agent, constants, daemon
from skyline.vista.cli.settings import (
    Pidfile,
    eprint,
    load_config,
    runnable_config,
    with_pidfile,
)


def cmd_run(args: argparse.Namespace) -> int:
    config = runnable_config(args)
    if isinstance(config, int):
        return config
    return agent.serve(config)


def cmd_start(args: argparse.Namespace) -> int:
    config = runnable_config(args)
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


@with_pidfile
def cmd_stop(args: argparse.Namespace, found: Pidfile) -> int:
    timeout = (found.config.shutdown_timeout if found.config else 10.0) + 5.0
    return daemon.stop(found.path, timeout)


def cmd_restart(args: argparse.Namespace) -> int:
    config = load_config(args, require_enabled=True)
    if isinstance(config, int):
        return config  # never stop a running Vista for settings it cannot start with
    code = cmd_stop(args)
    if code != constants.EXIT_OK:
        return code
    return cmd_start(args)


@with_pidfile
def cmd_reload(args: argparse.Namespace, found: Pidfile) -> int:
    current = daemon.status(found.path)
    if current.state is not daemon.State.RUNNING or current.pid is None:
        eprint("vista is not running")
        return constants.EXIT_STOP_NOT_RUNNING
    os.kill(current.pid, signal.SIGHUP)
    print(f"vista (pid {current.pid}) asked to reload its settings; see the log for the outcome")
    return constants.EXIT_OK


@with_pidfile
def cmd_status(args: argparse.Namespace, found: Pidfile) -> int:
    current = daemon.status(found.path)
    if current.state is daemon.State.NOT_RUNNING:
        print("vista is not running")
    elif current.state is daemon.State.DEAD:
        print(f"vista is dead but the pidfile exists ({found.path}, pid {current.pid})")
    else:
        from skyline.vista.report import process_lines

        print(f"vista is running (pid {current.pid})")
        for line in process_lines(current.pid or 0):
            print(f"  {line}")
    if found.config is not None and not args.brief:
        from skyline.vista.report import redis_report

        for line in redis_report(found.config, worst=args.lag):
            print(line)
    return current.state.value
