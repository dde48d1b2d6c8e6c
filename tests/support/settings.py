"""The one settings factory of the tests: validated settings (a :class:`VistaConfig`) with
the given fetch entries, a Redis, the Flux sink on a port nothing listens on (override
``FLUX_PORT``, or ``VISTA_SINK='graphite'`` and the carbon settings, to deliver), and paths in
the test's temp dir. Any setting can be given as a keyword."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from skyline.vista import config
from skyline.vista.config import VistaConfig
from skyline.vista.testing.servers import RedisServer
from tests.fakes.flux import DEFAULT_KEY

FLUX_KEY = DEFAULT_KEY
"""``FLUX_SELF_API_KEY`` of these settings: the key the Flux double accepts."""

UNUSED_REDIS = "redis://127.0.0.1:1/0"
"""For tests that hand the queue to the code directly: nothing listens there."""


def make_config(
    tmp_path: Path,
    redis: RedisServer | str = UNUSED_REDIS,
    entries: Iterable[object] = (),
    **settings: Any,
) -> VistaConfig:
    values: dict[str, Any] = {
        "VISTA_ENABLED": True,
        "VISTA_FETCH_METRICS": tuple(entries),
        "REDIS_URL": redis if isinstance(redis, str) else redis.url,
        "VISTA_SINK": "flux",
        "FLUX_IP": "127.0.0.1",
        "FLUX_PORT": 1,
        "FLUX_SELF_API_KEY": FLUX_KEY,
        "LOG_PATH": str(tmp_path / "log"),
        "PID_PATH": str(tmp_path / "run"),
        # The test carbon creates without limit (MAX_CREATES_PER_MINUTE = inf): no pacing.
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": float("inf"),
        **settings,
    }
    return config.validate(values, str(tmp_path / "settings.py"))
