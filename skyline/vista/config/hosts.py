"""Transport options of the remote hosts: VISTA_REMOTE_HOSTS (per exact remote_host) over the
defaults (VISTA_REQUEST_TIMEOUT, VISTA_MAX_CONCURRENCY_PER_HOST, VISTA_API_KEY_HEADER)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from skyline.vista.config.reader import Reader, scheme
from skyline.vista.config.records import HostOptions
from skyline.vista.problems import Problems
from skyline.vista.secret import Secret


def _host_options(r: Reader, name: str, raw: object, default: HostOptions) -> HostOptions:
    if not isinstance(raw, Mapping):
        r.problems.bad(name, raw, "a dict of transport options")
        return default
    known = {
        "verify_ssl",
        "ca_bundle",
        "headers",
        "timeout",
        "max_concurrency",
        "api_key_header",
        "requests_per_second",
        "burst",
        "proxy",
        "proxy_user",
        "proxy_password",
    }
    for key in sorted(set(map(str, raw)) - known):
        r.problems.error(name, f"unknown option {key!r} (options: {', '.join(sorted(known))})")
    sub = Reader({k.upper(): v for k, v in raw.items()}, Problems())
    verify = sub.boolean("VERIFY_SSL", default.verify_ssl)
    ca_bundle = sub.text("CA_BUNDLE", default.ca_bundle)
    timeout = sub.number("TIMEOUT", default.timeout)
    concurrency = sub.integer("MAX_CONCURRENCY", default.max_concurrency, maximum=1000)
    header = sub.text("API_KEY_HEADER", default.api_key_header)
    rate = raw.get("requests_per_second")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
    ):
        r.problems.bad(f"{name} option 'requests_per_second'", rate, "a number > 0, or None")
        rate = None
    burst = raw.get("burst")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        r.problems.bad(f"{name} option 'burst'", burst, "an integer >= 1, or None")
        burst = None
    if burst is not None and rate is None:
        r.problems.error(f"{name} option 'burst'", "needs 'requests_per_second' as well")
    for problem in sub.problems.errors:
        option, _, rest = problem.partition(": ")
        r.problems.error(f"{name} option '{option.lower()}'", rest)
    headers = raw.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        r.problems.bad(f"{name} option 'headers'", "<hidden>", "a dict of str to str")
        headers = {}
    if ca_bundle and not os.path.isfile(ca_bundle):
        r.problems.bad(f"{name} option 'ca_bundle'", ca_bundle, "an existing CA bundle file")
    return HostOptions(
        verify_ssl=verify,
        ca_bundle=ca_bundle,
        headers=tuple(sorted(dict(default.headers, **headers).items())),
        timeout=timeout,
        max_concurrency=concurrency,
        api_key_header=header or default.api_key_header,
        requests_per_second=float(rate) if rate is not None else None,
        burst=burst,
        **_proxy(r, name, raw, default),
    )


def _proxy(r: Reader, name: str, raw: Mapping[str, Any], default: HostOptions) -> dict[str, Any]:
    """The 'proxy', 'proxy_user' and 'proxy_password' options of one host."""
    proxy = raw.get("proxy", default.proxy)
    user = raw.get("proxy_user", default.proxy_user)
    password = raw.get("proxy_password")
    secret = Secret(password) if isinstance(password, str) and password else None
    if proxy is not None:
        try:
            parts = urlsplit(proxy) if isinstance(proxy, str) else None
            with_credentials = parts is not None and (parts.username or parts.password)
        except ValueError:
            parts, with_credentials = None, False
        if with_credentials:
            r.problems.error(
                f"{name} option 'proxy'",
                "carries credentials; give them as 'proxy_user' and 'proxy_password'",
            )
            proxy = None
        elif parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            r.problems.bad(
                f"{name} option 'proxy'", proxy, "an http:// URL such as 'http://proxy:3128'"
            )
            proxy = None
    if user is not None and not isinstance(user, str):
        r.problems.bad(f"{name} option 'proxy_user'", user, "a string")
        user = None
    if password is not None and not isinstance(password, str):
        r.problems.bad(f"{name} option 'proxy_password'", "<hidden>", "a string")
    if (user is None) != (secret is None) and (user or secret):
        r.problems.error(f"{name} option 'proxy_user'", "needs 'proxy_password' too (and back)")
    if secret is not None and proxy is None and "proxy" not in raw:
        r.problems.error(f"{name} option 'proxy_password'", "needs 'proxy' as well")
    if secret is None and "proxy_password" not in raw:
        secret = default.proxy_password
    return {"proxy": proxy, "proxy_user": user, "proxy_password": secret}


def remote_hosts(r: Reader, default: HostOptions) -> dict[str, HostOptions]:
    raw = r.values.get("VISTA_REMOTE_HOSTS", {})
    if not isinstance(raw, Mapping):
        r.problems.bad("VISTA_REMOTE_HOSTS", raw, "a dict of remote_host URL -> options dict")
        return {}
    hosts: dict[str, HostOptions] = {}
    for host, options in raw.items():
        name = f"VISTA_REMOTE_HOSTS[{host!r}]"
        if not isinstance(host, str) or scheme(host) not in ("http", "https"):
            r.problems.bad("VISTA_REMOTE_HOSTS", host, "keys that are remote_host URLs")
            continue
        hosts[host.rstrip("/")] = _host_options(r, name, options, default)
    return hosts
