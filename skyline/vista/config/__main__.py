"""``python -m skyline.vista.config``: print the settings table (README markdown);
``--readme README.md`` rewrites the table in that file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skyline.vista.config.table import markdown, with_table


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m skyline.vista.config")
    parser.add_argument("--readme", metavar="PATH", help="rewrite the settings table in PATH")
    args = parser.parse_args()
    if args.readme:
        path = Path(args.readme)
        path.write_text(with_table(path.read_text()))
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
