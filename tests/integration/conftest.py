"""Bundles of the fixtures of ``tests/conftest.py`` that most integration tests take together
(see ``tests/support/rig.py``); each is function-scoped and starts nothing of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from skyline.vista.testing.servers import CarbonServer, GraphiteWebServer, RedisServer
from tests.support.rig import GraphiteRig, Rig


@pytest.fixture
def rig(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis) -> Rig:
    return Rig(tmp_path, redis_server, redis_client)


@pytest.fixture
def graphite(
    rig: Rig,
    carbon_server: CarbonServer,
    graphite_web: GraphiteWebServer,
    metric_prefix: str,
) -> GraphiteRig:
    return GraphiteRig(
        rig.tmp_path, rig.redis_server, rig.redis, carbon_server, graphite_web, metric_prefix
    )
