"""``python -m skyline.vista`` runs the CLI."""

from __future__ import annotations

import sys

from skyline.vista.cli import main

sys.exit(main())
