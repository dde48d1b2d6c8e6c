"""Where Redis is: REDIS_URL or REDIS_SOCKET_PATH with REDIS_PASSWORD, or Redis Sentinel
(VISTA_REDIS_SENTINEL*)."""

from __future__ import annotations

from urllib.parse import urlsplit

from skyline.vista.config import table
from skyline.vista.config.reader import Reader
from skyline.vista.config.records import RedisConfig
from skyline.vista.config.table import Setting
from skyline.vista.secret import Secret


def redis_config(r: Reader) -> RedisConfig:
    url = r.read(table.REDIS_URL)
    socket_path = r.read(table.REDIS_SOCKET_PATH)
    password = _password(r, table.REDIS_PASSWORD)
    sentinels, service = _sentinels(r)
    if sentinels:
        return RedisConfig(
            url="",
            password=password,
            sentinels=sentinels,
            service=service,
            sentinel_password=_password(r, table.REDIS_SENTINEL_PASSWORD),
        )
    if url:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. 'redis://[::1' (the text may hold a password)
            r.problems.error("REDIS_URL", f"is not a valid URL: {exc}")
            return RedisConfig(url="unix:///tmp/redis.sock", password=password)
        if parts.password:
            r.problems.error("REDIS_URL", "carries a password; put it in REDIS_PASSWORD instead")
            url = url.replace(f":{parts.password}@", ":@")
        if parts.scheme not in ("redis", "rediss", "unix"):
            r.problems.bad("REDIS_URL", url, "a redis://, rediss:// or unix:// URL")
        return RedisConfig(url=url, password=password)
    if socket_path:
        return RedisConfig(url=f"unix://{socket_path}", password=password)
    r.problems.error("REDIS_SOCKET_PATH", "neither REDIS_SOCKET_PATH nor REDIS_URL is set")
    return RedisConfig(url="unix:///tmp/redis.sock", password=password)


def _password(r: Reader, setting: Setting[str | None]) -> Secret | None:
    value = r.read(setting)
    return Secret(value) if value else None


_SENTINELS_EXPECTED = (
    "a tuple of 'host:port' strings or (host, port) pairs, e.g. ('10.0.0.1:26379',)"
)


def _sentinel_address(raw: object) -> tuple[str, int] | None:
    """('host', port) from 'host:port', '[v6]:port' or a (host, port) pair; None if invalid."""
    if isinstance(raw, str):
        host, sep, port_text = raw.rpartition(":")
        if not sep or not port_text.isdigit():
            return None
        port: object = int(port_text)
        host = host.strip("[]")
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        host, port = raw[0], raw[1]
    else:
        return None
    if not isinstance(host, str) or not host or any(c.isspace() for c in host):
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return (host, port)


def _sentinels(r: Reader) -> tuple[tuple[tuple[str, int], ...], str]:
    """The sentinels' addresses and the service name (VISTA_REDIS_SENTINEL_*)."""
    raw = r.values.get("VISTA_REDIS_SENTINELS", ())
    if raw in (None, (), []):
        for name in ("VISTA_REDIS_SENTINEL_SERVICE", "VISTA_REDIS_SENTINEL_PASSWORD"):
            if r.values.get(name) not in (None, "", table.REDIS_SENTINEL_SERVICE.default):
                r.problems.warn(name, "ignored: VISTA_REDIS_SENTINELS is not set")
        return (), ""
    if not isinstance(raw, (tuple, list)):
        r.problems.bad("VISTA_REDIS_SENTINELS", raw, _SENTINELS_EXPECTED)
        return (), ""
    found = []
    for index, item in enumerate(raw):
        address = _sentinel_address(item)
        if address is None:
            r.problems.bad(f"VISTA_REDIS_SENTINELS[{index}]", item, "'host:port' or (host, port)")
        else:
            found.append(address)
    if len(set(found)) != len(found):
        r.problems.bad("VISTA_REDIS_SENTINELS", raw, "each sentinel once")
    service = r.values.get("VISTA_REDIS_SENTINEL_SERVICE", table.REDIS_SENTINEL_SERVICE.default)
    if not isinstance(service, str) or not service or any(c.isspace() for c in service):
        r.problems.bad(
            "VISTA_REDIS_SENTINEL_SERVICE",
            service,
            "the name the sentinels monitor, e.g. 'mymaster'",
        )
        service = table.REDIS_SENTINEL_SERVICE.default
    return tuple(found), service
