"""What most integration tests start from, in one fixture argument instead of three to six.

``rig`` (:class:`Rig`): the test's temp dir and the session Redis, flushed for the test,
with the settings factory bound to both. ``graphite`` (:class:`GraphiteRig`): the same plus
the session carbon-cache and graphite-web and a metric prefix unique to the test. The fixtures
are in ``tests/integration/conftest.py``; they only bundle the fixtures of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from skyline.vista.config import VistaConfig
from skyline.vista.testing.servers import CarbonServer, GraphiteWebServer, RedisServer
from tests.support.settings import make_config


@dataclass(frozen=True)
class Rig:
    tmp_path: Path
    redis_server: RedisServer
    redis: redis.Redis
    """A client of ``redis_server`` (bytes replies), the server FLUSHALLed before the test."""

    def config(self, entries: Iterable[object] = (), **settings: Any) -> VistaConfig:
        """:func:`tests.support.settings.make_config` in this temp dir, on this Redis."""
        return make_config(self.tmp_path, self.redis_server, entries, **settings)


@dataclass(frozen=True)
class GraphiteRig(Rig):
    carbon: CarbonServer
    web: GraphiteWebServer
    prefix: str
    """A Graphite path prefix unique to this test in the session (``test.<name>``)."""
