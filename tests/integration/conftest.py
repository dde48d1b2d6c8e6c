"""Bundles of the fixtures of ``tests/conftest.py`` that most integration tests take together
(see ``tests/support/rig.py``); each is function-scoped and starts nothing of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from skyline.vista.testing.servers import LOOPBACK, CarbonServer, GraphiteWebServer, RedisServer
from tests.fakes.bigquery import FakeBigQuery
from tests.support.bigquery import BigQueryRig
from tests.support.carbon_proxy import PickleRecorder
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


@pytest.fixture(scope="module")
def daily_carbon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarbonServer]:
    """A carbon-cache for the module's BigQuery tests: one point a day (1d:400d)."""
    with CarbonServer(tmp_path_factory.mktemp("carbon-daily"), retentions="1d:400d") as server:
        yield server


@pytest.fixture
def bq(rig: Rig, daily_carbon: CarbonServer, metric_prefix: str) -> BigQueryRig:
    return BigQueryRig(rig.tmp_path, rig.redis_server, rig.redis, daily_carbon, metric_prefix)


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeBigQuery]:
    """The BigQuery double, answering in pages of the module's ``FAKE_PAGE_SIZE`` rows."""
    with FakeBigQuery(page_size=request.module.FAKE_PAGE_SIZE) as server:
        yield server


@pytest.fixture
def recorder(carbon_server: CarbonServer) -> Iterator[PickleRecorder]:
    """A :class:`PickleRecorder` in front of the session carbon's pickle port."""
    proxy = PickleRecorder((LOOPBACK, carbon_server.pickle_port))
    yield proxy
    proxy.close()
