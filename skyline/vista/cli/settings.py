"""The settings a command runs with, and ``vista check-config``.

A command is a function of the parsed arguments that returns its exit code; the decorators
here load what it needs first and return the exit code of a failure (said on stderr) instead
of calling it.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from skyline.vista import config as config_module
from skyline.vista import constants, secret
from skyline.vista.config import VistaConfig, table
from skyline.vista.errors import ConfigError

Command = Callable[[argparse.Namespace], int]


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


def with_settings(command: Callable[[argparse.Namespace, VistaConfig], int]) -> Command:
    """The command runs with valid settings, enabled or not; invalid ones exit 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        config = load_config(args, require_enabled=False, failure=constants.EXIT_FAILURE)
        if isinstance(config, int):
            return config
        return command(args, config)

    return run


def runnable_config(args: argparse.Namespace) -> VistaConfig | int:
    """Valid, enabled settings whose LOG_PATH and PID_PATH exist (created if need be), or the
    exit code (6, not configured) after saying why."""
    config = load_config(args, require_enabled=True)
    if isinstance(config, int):
        return config
    for name, path in (("LOG_PATH", config.log_path), ("PID_PATH", config.pid_path)):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            eprint(f"vista: {name} {path!r} cannot be created: {exc.strerror}")
            return constants.EXIT_NOT_CONFIGURED
    return config


@dataclass(frozen=True)
class Pidfile:
    """The agent's pidfile, and its settings when they are valid."""

    path: str
    config: VistaConfig | None


def with_pidfile(command: Callable[[argparse.Namespace, Pidfile], int]) -> Command:
    """The command runs with the pidfile's path even when the settings have errors (stop and
    status must still work); settings that cannot be read at all exit 4."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        found = _pidfile(args)
        if isinstance(found, int):
            return found
        return command(args, found)

    return run


def _pidfile(args: argparse.Namespace) -> Pidfile | int:
    path = config_module.settings_path(args.settings)
    try:
        config = config_module.load(path)
        return Pidfile(config.pidfile, config)
    except ConfigError as exc:
        try:
            raw = config_module.read_module(path)
        except ConfigError:
            eprint(f"vista: cannot read {path}: {'; '.join(exc.problems)}")
            return constants.EXIT_SETTINGS_UNREADABLE
        pid_path = raw.get("PID_PATH", table.PID_PATH.default)
        if not isinstance(pid_path, str):
            eprint("vista: PID_PATH is not a string")
            return constants.EXIT_SETTINGS_UNREADABLE
        return Pidfile(os.path.join(pid_path, "vista.pid"), None)


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
