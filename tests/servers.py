"""Moved to :mod:`skyline.vista.testing.servers`; this alias keeps branches written before the
move importing (to be removed)."""

from skyline.vista.testing.servers import *  # noqa: F403
from skyline.vista.testing.servers import SYSTEM_PYTHON  # noqa: F401
