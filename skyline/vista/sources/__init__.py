"""Remote sources: Graphite render API and Prometheus HTTP API (pure URL building and parsing),
and the polite HTTP edge they share."""

from __future__ import annotations

HOST_LEVEL_ERRORS = frozenset(
    {
        "connect",
        "timeout",
        "truncated",
        "client_error",
        "http_429",
        "http_502",
        "http_503",
        "http_504",
        "host_backoff",
    }
)
"""Failures that say something about the host, not about one target: the host backs off, and a
failed Graphite batch is not split into single requests."""
