"""The queue's Lua transitions of tests/integration/test_fetchqueue.py, run again on fakeredis
(whose Lua is lupa's) for the fast tier. The real redis-server run stays the proof: this one
finds a broken script in seconds without any Debian package."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis

from tests.integration.test_fetchqueue import *  # noqa: F403

# Concurrency between clients of one real server: not what fakeredis is for.
del test_concurrent_consumers_claim_every_item_exactly_once  # noqa: F821


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()
