"""Validated settings for fetch tests: the given entries, the test Redis, the Flux sink (nothing
is delivered in these tests), and paths in the test's temp dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skyline.vista import config
from skyline.vista.config import VistaConfig
from tests.servers import RedisServer

FLUX_KEY = "f" * 32


def make_config(
    tmp_path: Path, redis_server: RedisServer, entries: Sequence[object], **extra: Any
) -> VistaConfig:
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": tuple(entries),
        "REDIS_URL": redis_server.url,
        "VISTA_SINK": "flux",
        "FLUX_SELF_API_KEY": FLUX_KEY,
        "LOG_PATH": str(tmp_path / "log"),
        "PID_PATH": str(tmp_path / "run"),
        **extra,
    }
    return config.validate(values, str(tmp_path / "settings.py"))
