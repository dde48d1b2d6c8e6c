"""Moved to :mod:`tests.support.remotes`; this alias keeps branches written before the move
importing (to be removed)."""

from tests.support.remotes import *  # noqa: F403
