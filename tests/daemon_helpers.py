"""Moved to :mod:`tests.support.daemon`; this alias keeps branches written before the move
importing (to be removed)."""

from tests.support.daemon import *  # noqa: F403
