"""On-demand jobs, run by the agent: ``vista jobs`` (list, cancel, wait), ``vista backfill``
(history) and ``vista bq`` (BigQuery, parsed and run by :mod:`skyline.vista.bq.cli`)."""

from __future__ import annotations

import argparse
import time

from skyline.vista import constants
from skyline.vista.cli.settings import eprint, with_settings
from skyline.vista.config import VistaConfig


@with_settings
def cmd_jobs(args: argparse.Namespace, config: VistaConfig) -> int:
    from skyline.vista.jobs.commands import jobs_command

    return jobs_command(config, args.action, args.job, args.kind)


@with_settings
def cmd_bq(args: argparse.Namespace, config: VistaConfig) -> int:
    from skyline.vista.bq.cli import run

    return run(config, args)


@with_settings
def cmd_backfill(args: argparse.Namespace, config: VistaConfig) -> int:
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
