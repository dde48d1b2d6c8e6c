"""SIGHUP: read the settings again. Invalid settings are logged and not applied; the caller
applies valid ones (and stops when VISTA_ENABLED has become False)."""

from __future__ import annotations

import logging

from skyline.vista import config as config_module
from skyline.vista.config import VistaConfig
from skyline.vista.errors import ConfigError

logger = logging.getLogger("skyline.vista.agent")


def read_settings(current: VistaConfig) -> VistaConfig | None:
    """The settings of ``current.path`` as they are now, or None (errors logged) when invalid."""
    try:
        new = config_module.load(current.path)
    except ConfigError as exc:
        logger.error(
            "reload: the settings in %s are invalid; keeping the current settings:\n  %s",
            exc.path,
            "\n  ".join(exc.problems),
        )
        return None
    if not new.enabled:
        logger.warning("reload: VISTA_ENABLED is now False; stopping")
        return new
    for warning in new.warnings:
        logger.warning("settings: %s", warning)
    if new.redis != current.redis or new.metrics_address != current.metrics_address:
        logger.warning("reload: Redis and VISTA_METRICS_ADDRESS changes take effect at restart")
    return new
