"""``vista bq backfill|update|jobs|cancel`` and the BigQuery part of ``vista check-config``.

Jobs are added to Redis under Skyline's keys and run by the agent (``vista run``/``start``);
``--wait`` follows one with the job core's progress display (a bar on a terminal, one line per
interval otherwise).
"""

from __future__ import annotations

import argparse
import calendar
import sys
import time
from collections.abc import Mapping
from typing import Any

from skyline.vista import constants, redisconn
from skyline.vista.config import VistaConfig

DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S")


def parse_when(text: str) -> int:
    """A UTC date (``2024-01-31``), date and time (``2024-01-31T06:00``) or epoch seconds."""
    if text.isdigit():
        return int(text)
    for fmt in DATE_FORMATS:
        try:
            return calendar.timegm(time.strptime(text, fmt))
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{text!r} is not a UTC date (YYYY-MM-DD[THH:MM]) or epoch")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    bq = sub.add_parser(
        "bq", help="BigQuery jobs: backfill, update, jobs, cancel", parents=[common]
    )
    actions = bq.add_subparsers(dest="bq_action", required=True, metavar="ACTION")
    backfill = actions.add_parser(
        "backfill", help="load an account's history, interval by interval", parents=[common]
    )
    backfill.add_argument("account")
    backfill.add_argument("--from", dest="from_ts", type=parse_when, required=True)
    backfill.add_argument("--until", dest="until_ts", type=parse_when, required=True)
    backfill.add_argument("--dry-run", action="store_true", help="read and convert, send nothing")
    backfill.add_argument("--flux-test", action="store_true", help="send with Flux's test flag")
    backfill.add_argument("--zero-fill", action="store_true", help="send NULL/NaN cells as 0")
    backfill.add_argument(
        "--use-archive", action="store_true", help="read an interval's archive instead of querying"
    )
    backfill.add_argument("--wait", action="store_true", help="follow the job until it ends")
    update = actions.add_parser(
        "update", help="re-query recent intervals and rewrite changed values", parents=[common]
    )
    update.add_argument("account")
    update.add_argument("--from", dest="from_ts", type=parse_when)
    update.add_argument("--until", dest="until_ts", type=parse_when)
    update.add_argument("--dry-run", action="store_true", help="compare, send nothing")
    update.add_argument("--wait", action="store_true", help="follow the job until it ends")
    actions.add_parser("jobs", help="BigQuery jobs: pending, running, recent", parents=[common])
    cancel = actions.add_parser("cancel", help="cancel a BigQuery job", parents=[common])
    cancel.add_argument("job")


def _bq_kinds() -> tuple[Any, ...]:
    from skyline.vista.jobs.registry import KINDS

    return tuple(k for k in KINDS if k.name.startswith("bq_"))


def run(config: VistaConfig, args: argparse.Namespace) -> int:
    from skyline.vista.jobs import commands

    client = redisconn.connect(config.redis)
    try:
        if args.bq_action == "jobs":
            return commands.list_jobs(client, kinds=_bq_kinds())
        if args.bq_action == "cancel":
            return commands.cancel(client, args.job, kinds=_bq_kinds())
        return _add(config, client, args)
    except redisconn.REDIS_ERRORS as exc:
        print(f"vista: Redis at {config.redis.describe()} is unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    finally:
        client.close()


def _add(config: VistaConfig, client: Any, args: argparse.Namespace) -> int:
    from skyline.vista.backfill_plan import range_too_long
    from skyline.vista.bq import submit
    from skyline.vista.bq.job import JobParams, JobParamsError
    from skyline.vista.bq.query import interval_label
    from skyline.vista.jobs import commands, display

    kind = submit.BACKFILL if args.bq_action == "backfill" else submit.UPDATE
    options: dict[str, Any] = {"dry_run": args.dry_run or None}
    if kind == submit.BACKFILL:
        options.update(
            flux_test=args.flux_test or None,
            zero_fill=args.zero_fill or None,
            use_archive_data=args.use_archive or None,
        )
    probe = {
        "vista_bq_account_key": args.account,
        "from_timestamp": args.from_ts,
        "until_timestamp": args.until_ts,
    }
    try:
        params = JobParams.parse(probe, config, update=kind == submit.UPDATE)
    except JobParamsError as exc:
        print(f"vista bq {args.bq_action}: {exc}", file=sys.stderr)
        return constants.EXIT_USAGE
    too_long = range_too_long(params.start, params.until, config.backfill_max_range)
    if too_long:
        print(f"vista bq {args.bq_action}: {too_long}", file=sys.stderr)
        return constants.EXIT_USAGE
    record, created = submit.submit(
        client,
        kind,
        args.account,
        args.from_ts if kind == submit.BACKFILL else params.start,
        args.until_ts if kind == submit.BACKFILL else params.until,
        **options,
    )
    starts = params.starts()
    span = f"{interval_label(starts[0])}..{interval_label(starts[-1])}, {len(starts)} interval(s)"
    verb = "added" if created else "already pending or running:"
    print(f"{kind} job {record.id} {verb} (account {args.account}, {span})")
    if not args.wait:
        print(f"follow it with: vista jobs wait {record.id}; list: vista bq jobs")
        return constants.EXIT_OK
    store = submit.store(client, kind)
    final = display.wait(store, record.id)
    if final is not None and final.progress.message:
        print(final.progress.message)
    return commands.wait_exit_code(final)


# --- check-config ------------------------------------------------------------------------------


def check_lines(accounts: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], int]:
    """(report lines, errors) for check-config: each account's credentials load and its query
    holds what the account says (a replace string or an @date-style parameter)."""
    from skyline.vista.bq.credentials import CredentialsError, credential_source, load_credentials
    from skyline.vista.bq.cron import ScheduleError, cron_expression
    from skyline.vista.bq.query import QuerySettings

    lines: list[str] = []
    errors = 0
    for name, account in sorted(accounts.items()):
        problems: list[str] = []
        for settings in (QuerySettings.for_backfill(account), QuerySettings.for_update(account)):
            problems += [p for p in settings.problems() if p not in problems]
        schedules = []
        for key in ("schedule", "update_data_schedule"):
            try:
                expr = cron_expression(account.get(key))
            except ScheduleError as exc:
                problems.append(f"{key}: {exc}")
                continue
            schedules.append(f"{key} {expr!r} UTC" if expr else f"{key} off")
        source = credential_source(account)
        try:
            load_credentials(name, account)
        except CredentialsError as exc:
            problems.append(str(exc))
        except ImportError:
            problems.append("the 'bigquery' extra is not installed (pip install vista[bigquery])")
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        lines.append(
            f"  bigquery account {name}: {status}; credentials {source}; {', '.join(schedules)}"
        )
        lines += [f"    error: {p}" for p in problems]
        errors += len(problems)
    return lines, errors
