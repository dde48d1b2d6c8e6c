"""Record real answers of Prometheus and graphite-web into tests/data/ (committed as data).

Run from the repository root (needs the real servers of ``make install``; ~10 s)::

    .venv/bin/python -m tests.data.record

It starts a private Prometheus loaded with :func:`prometheus_history` (promtool, fixed
timestamps from :data:`PROM_T0`, so the Prometheus files come out the same every time), and a
private carbon-cache (retentions ``60s:1d``) with graphite-web, fed with the Graphite series
below at whole minutes starting one hour before the recording (``graphite.t0`` in
``recorded.json``). Every answer is written exactly as the server sent it (body bytes); its
URL, HTTP status and Content-Type go to ``tests/data/recorded.json``.

Tests read the constants of this module (the values that were fed) together with the
manifest, so the expected points stay exact when the files are recorded again.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from skyline.vista.sources import graphite
from skyline.vista.testing.servers import CarbonServer, GraphiteWebServer, PrometheusServer

DATA_DIR = Path(__file__).resolve().parent
MANIFEST = DATA_DIR / "recorded.json"

# --- Prometheus ---------------------------------------------------------------------------

PROM_T0 = 1_699_999_980
"""First sample of every Prometheus history series (a whole minute, UTC)."""

PROM_STEP = 60  # the "60s" of every query_range below
PROM_A = ["1", "2.5", "-3.25", "0", "42", "1234567.125", "7", "8"]
"""vista_rec{job="a",instance="h:1"} at PROM_T0 + 60*i."""
PROM_B = ["10", "20", "30"]
"""vista_rec{job="b",instance="h:2"} at PROM_T0 + 60*i (Prometheus repeats 30 for 5 min)."""
PROM_SPECIAL = ["1", "NaN", "2", "+Inf", "3", "-Inf", "4"]
"""vista_special{job="a"} at PROM_T0 + 60*i: OpenMetrics history can carry NaN and ±Inf."""

PROM_MATRIX_QUERY = 'vista_rec{job="a"}'
PROM_MULTI_QUERY = "vista_rec"
PROM_SPECIAL_QUERY = "vista_special"
PROM_EMPTY_QUERY = "vista_nothing_here"
PROM_BAD_QUERY = "sum(vista_rec"
PROM_VECTOR_TIME = PROM_T0 + 120
PROM_SCALAR_QUERY = 'scalar(vista_rec{job="a"}) * 2'


def prometheus_history() -> str:
    lines = ["# TYPE vista_rec gauge"]
    lines += [
        f'vista_rec{{job="a",instance="h:1"}} {v} {PROM_T0 + 60 * i}' for i, v in enumerate(PROM_A)
    ]
    lines += [
        f'vista_rec{{job="b",instance="h:2"}} {v} {PROM_T0 + 60 * i}' for i, v in enumerate(PROM_B)
    ]
    lines.append("# TYPE vista_special gauge")
    lines += [
        f'vista_special{{job="a"}} {v} {PROM_T0 + 60 * i}' for i, v in enumerate(PROM_SPECIAL)
    ]
    return "\n".join(lines) + "\n# EOF\n"


# --- Graphite -----------------------------------------------------------------------------

GRAPHITE_STEP = 60
GRAPHITE_SLOTS = 8
GRAPHITE_PLAIN = "vista.rec.a.plain"
GRAPHITE_PLAIN_VALUES: list[float | None] = [1.5, None, 3.0, None, None, 6.25, 7.0, -8.5]
"""Fed at t0 + 60*i (None: nothing sent, graphite-web answers null)."""
GRAPHITE_X = {
    "vista.rec.b.x": [1.0, 2, 3, 4, 5, 6, 7, 8],
    "vista.rec.c.x": [10.0, 20, 30, 40, 50, 60, 70, 80],
}
GRAPHITE_SUM = "sumSeries(vista.rec.*.x)"
GRAPHITE_GLOB = "vista.rec.*.x"
GRAPHITE_MISSING = "vista.rec.missing"
GRAPHITE_UNKNOWN = "noSuchFunction(vista.rec.a.plain)"
GRAPHITE_BATCH = [GRAPHITE_PLAIN, GRAPHITE_SUM, GRAPHITE_MISSING]
"""Targets of the alias() batch, wrapped as ``alias(<target>,"vista.<n>")``."""


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _save(manifest: dict[str, Any], name: str, resp: requests.Response) -> None:
    (DATA_DIR / name).write_bytes(resp.content)
    manifest["answers"][name] = {
        "url": _path_and_query(resp.url),  # the port differs on every run
        "status": resp.status_code,
        "content_type": resp.headers.get("Content-Type", ""),
    }
    print(f"{name}: HTTP {resp.status_code}, {len(resp.content)} bytes")


def record_prometheus(tmp: Path, manifest: dict[str, Any]) -> None:
    with PrometheusServer(tmp / "prometheus", history=prometheus_history()) as prom:
        end = PROM_T0 + PROM_STEP * (len(PROM_A) - 1)

        def query_range(name: str, query: str, last: int = end) -> None:
            params = {"query": query, "start": str(PROM_T0), "end": str(last), "step": "60s"}
            with requests.get(f"{prom.url}/api/v1/query_range", params=params, timeout=10) as r:
                _save(manifest, name, r)

        query_range("prometheus_query_range_matrix.json", PROM_MATRIX_QUERY)
        query_range("prometheus_query_range_multi_series.json", PROM_MULTI_QUERY)
        query_range(
            "prometheus_query_range_non_finite.json",
            PROM_SPECIAL_QUERY,
            PROM_T0 + PROM_STEP * (len(PROM_SPECIAL) - 1),
        )
        query_range("prometheus_query_range_empty.json", PROM_EMPTY_QUERY)
        query_range("prometheus_query_range_bad_data.json", PROM_BAD_QUERY)
        for name, query in (
            ("prometheus_query_vector.json", PROM_MATRIX_QUERY),
            ("prometheus_query_scalar.json", PROM_SCALAR_QUERY),
        ):
            params = {"query": query, "time": str(PROM_VECTOR_TIME)}
            with requests.get(f"{prom.url}/api/v1/query", params=params, timeout=10) as r:
                _save(manifest, name, r)
    manifest["prometheus"] = {"t0": PROM_T0, "step": PROM_STEP}


def record_graphite(tmp: Path, manifest: dict[str, Any]) -> None:
    now = int(time.time())
    t0 = now - now % GRAPHITE_STEP - 3600
    with (
        CarbonServer(tmp / "carbon", retentions="60s:1d") as carbon,
        GraphiteWebServer(tmp / "graphite-web", carbon) as web,
    ):
        lines = [
            f"{GRAPHITE_PLAIN} {v} {t0 + 60 * i}"
            for i, v in enumerate(GRAPHITE_PLAIN_VALUES)
            if v is not None
        ]
        for metric, values in GRAPHITE_X.items():
            lines += [f"{metric} {v} {t0 + 60 * i}" for i, v in enumerate(values)]
        carbon.send_plaintext(lines)
        carbon.wait_for_points(GRAPHITE_PLAIN, sum(v is not None for v in GRAPHITE_PLAIN_VALUES))
        for metric, values in GRAPHITE_X.items():
            carbon.wait_for_points(metric, len(values))
        web.wait_visible(GRAPHITE_GLOB)
        # `from` on a step boundary excludes its slot, `until` includes its own.
        from_, until = t0 - GRAPHITE_STEP, t0 + GRAPHITE_STEP * (GRAPHITE_SLOTS - 1)

        def render(name: str, targets: list[str]) -> None:
            url = graphite.render_url(
                web.url, "/render/", [], targets, from_=str(from_), until=str(until)
            )
            with requests.get(url, timeout=30) as r:
                _save(manifest, name, r)

        render("graphite_render_nulls.json", [GRAPHITE_PLAIN])
        render("graphite_render_sumseries.json", [GRAPHITE_SUM])
        render("graphite_render_glob.json", [GRAPHITE_GLOB])
        render(
            "graphite_render_alias_batch.json",
            [graphite.wrap_target(t, n) for n, t in enumerate(GRAPHITE_BATCH)],
        )
        render(
            "graphite_render_alias_glob_batch.json",
            [graphite.wrap_target(GRAPHITE_GLOB, 0), graphite.wrap_target(GRAPHITE_PLAIN, 1)],
        )
        render("graphite_render_unknown_function.html", [GRAPHITE_UNKNOWN])
    manifest["graphite"] = {"t0": t0, "step": GRAPHITE_STEP, "from": from_, "until": until}


def main() -> None:
    manifest: dict[str, Any] = {"answers": {}}
    with tempfile.TemporaryDirectory(prefix="vista-record-") as tmp:
        record_prometheus(Path(tmp), manifest)
        record_graphite(Path(tmp), manifest)
    manifest["answers"] = dict(sorted(manifest["answers"].items()))
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {MANIFEST}")


if __name__ == "__main__":
    main()
