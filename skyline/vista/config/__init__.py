"""Settings: one table of every setting (table.py: name, kind, default, limits, one-line doc),
the frozen records they are validated into (records.py), and the loader (loader.py).

``load(path)`` executes a ``settings.py``, reads its upper-case names and returns a
:class:`VistaConfig`, or raises :class:`~skyline.vista.errors.ConfigError` listing **every**
mistake (entry, field, bad value, what is expected). Warnings (accepted but suspicious values)
travel on the config.
"""

from skyline.vista.config.loader import load, read_module, settings_path, validate
from skyline.vista.config.records import (
    DEFAULT_MAX_RESPONSE_BYTES,
    PROXY_VARIABLES,
    CarbonConfig,
    FluxConfig,
    HostOptions,
    RedisConfig,
    SelfMetricsConfig,
    SinkType,
    VistaConfig,
    env_proxy_secrets,
    shard_of,
)
from skyline.vista.config.table import KNOWN_SETTINGS, SETTINGS, Setting

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "KNOWN_SETTINGS",
    "PROXY_VARIABLES",
    "SETTINGS",
    "CarbonConfig",
    "FluxConfig",
    "HostOptions",
    "RedisConfig",
    "SelfMetricsConfig",
    "Setting",
    "SinkType",
    "VistaConfig",
    "env_proxy_secrets",
    "load",
    "read_module",
    "settings_path",
    "shard_of",
    "validate",
]
