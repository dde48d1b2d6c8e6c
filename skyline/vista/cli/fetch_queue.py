"""``vista fetch --once`` (one cycle in the foreground) and ``vista queue`` (counts, dead
letters, requeue)."""

from __future__ import annotations

import argparse

from skyline.vista import constants
from skyline.vista.cli.settings import eprint, with_settings
from skyline.vista.config import VistaConfig


def cmd_fetch(args: argparse.Namespace) -> int:
    if not args.once:  # said before the settings are read
        eprint("vista fetch: only --once is supported (the daemon fetches continuously)")
        return constants.EXIT_USAGE
    return _fetch_once(args)


@with_settings
def _fetch_once(args: argparse.Namespace, config: VistaConfig) -> int:
    from skyline.vista.fetch_once import fetch_once

    return fetch_once(config, dry_run=args.dry_run, metrics=args.metric or ())


@with_settings
def cmd_queue(args: argparse.Namespace, config: VistaConfig) -> int:
    from skyline.vista.report import queue_command

    return queue_command(config, args.action, args.ids)
