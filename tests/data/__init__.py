"""Real answers of Prometheus and graphite-web, recorded by ``tests/data/record.py``.

``body(name)`` is the answer exactly as the server sent it, ``answer(name)`` its parsed JSON,
``meta(name)`` the URL (path and query), HTTP status and Content-Type it came with, and
``graphite_t0()`` / ``prometheus_t0()`` the first timestamp of the series that were fed.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent


@cache
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA_DIR / "recorded.json").read_text())
    return loaded


def body(name: str) -> bytes:
    return (DATA_DIR / name).read_bytes()


def answer(name: str) -> Any:
    return json.loads(body(name))


def meta(name: str) -> dict[str, Any]:
    found: dict[str, Any] = manifest()["answers"][name]
    return found


def graphite_t0() -> int:
    return int(manifest()["graphite"]["t0"])


def prometheus_t0() -> int:
    return int(manifest()["prometheus"]["t0"])
