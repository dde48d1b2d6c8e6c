"""Moved to :mod:`tests.support.settings`; this alias keeps branches written before the move
importing (to be removed)."""

from tests.support.settings import FLUX_KEY, make_config  # noqa: F401
