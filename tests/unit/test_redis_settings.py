"""Redis Sentinel settings: VISTA_REDIS_SENTINELS, _SERVICE, _PASSWORD."""

from __future__ import annotations

import pytest

from skyline.vista import config
from tests.unit.test_config import problems_of, settings


def test_sentinels_win_over_the_url_and_keep_both_passwords_secret() -> None:
    loaded = config.validate(
        settings(
            VISTA_REDIS_SENTINELS=("10.0.0.1:26379", ("10.0.0.2", 26380), "[::1]:26381"),
            VISTA_REDIS_SENTINEL_SERVICE="vista",
            VISTA_REDIS_SENTINEL_PASSWORD="s3ntinel-pw",
            REDIS_PASSWORD="data-pw",
        )
    )
    redis = loaded.redis
    assert redis.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert redis.service == "vista"
    assert redis.describe() == (
        "sentinel service 'vista' via 10.0.0.1:26379, 10.0.0.2:26380, ::1:26381"
    )
    assert "s3ntinel-pw" in loaded.secrets() and "data-pw" in loaded.secrets()
    assert "pw" not in repr(redis)


def test_without_sentinels_nothing_changes() -> None:
    loaded = config.validate(settings())
    assert loaded.redis.sentinels == () and not loaded.redis.describe().startswith("sentinel")


def test_sentinel_service_without_sentinels_is_a_warning() -> None:
    loaded = config.validate(settings(VISTA_REDIS_SENTINEL_SERVICE="vista"))
    assert any(w.startswith("VISTA_REDIS_SENTINEL_SERVICE") for w in loaded.warnings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"VISTA_REDIS_SENTINELS": "10.0.0.1:26379"},
         "VISTA_REDIS_SENTINELS: got '10.0.0.1:26379', expected a tuple"),
        ({"VISTA_REDIS_SENTINELS": ("10.0.0.1",)},
         "VISTA_REDIS_SENTINELS[0]: got '10.0.0.1', expected 'host:port'"),
        ({"VISTA_REDIS_SENTINELS": (("h", 0),)},
         "VISTA_REDIS_SENTINELS[0]: got ('h', 0), expected 'host:port'"),
        ({"VISTA_REDIS_SENTINELS": ("h:1", "h:1")},
         "VISTA_REDIS_SENTINELS: got ('h:1', 'h:1'), expected each sentinel once"),
        ({"VISTA_REDIS_SENTINELS": ("h:1",), "VISTA_REDIS_SENTINEL_SERVICE": "my master"},
         "VISTA_REDIS_SENTINEL_SERVICE: got 'my master', expected the name"),
        ({"VISTA_REDIS_SENTINELS": ("h:1",), "VISTA_REDIS_SENTINEL_PASSWORD": 123},
         "VISTA_REDIS_SENTINEL_PASSWORD: got '<hidden>', expected a string or None"),
    ],
)  # fmt: skip
def test_bad_sentinel_settings_are_reported(values: dict[str, object], message: str) -> None:
    caught = problems_of(settings(**values))
    assert any(p.startswith(message) for p in caught.problems), caught.problems
