"""The command line as the README writes it."""

from __future__ import annotations

from skyline.vista.cli import parse_args


def test_backfill_takes_relative_times_written_as_the_readme_does() -> None:
    # README "History backfill": vista backfill prom.node.load1 --from -30d
    args = parse_args(["backfill", "prom.node.load1", "--from", "-30d", "--until", "-12h"])
    assert args.targets == ["prom.node.load1"]
    assert (args.start, args.until) == ("-30d", "-12h")


def test_other_words_are_left_alone() -> None:
    args = parse_args(["backfill", "--all", "--from", "2026-01-01", "--dry-run"])
    assert (args.all, args.start, args.until, args.dry_run) == (True, "2026-01-01", "now", True)
    args = parse_args(["bq", "backfill", "shop", "--from", "2026-11-25", "--until", "1764000000"])
    assert args.until_ts == 1764000000
