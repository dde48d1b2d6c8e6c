"""A bug inside one fetch task settles its metric with an 'internal' error; it does not leave
the metric pending (counted unfinished and carried forever) and does not touch the others."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from skyline.vista.fetch_cycle import FetchCycle
from skyline.vista.sources import prometheus
from tests.support.settings import UNUSED_REDIS, make_config
from tests.support.web import serving


@pytest.fixture
async def prom() -> AsyncIterator[str]:
    async def query_range(request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        values = [[ts, "1.5"] for ts in range(start, end + 1, 60)]
        body = {"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {}, "values": values}]}}  # fmt: skip
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/api/v1/query_range", query_range)
    async with serving(app) as local:
        yield local.url


async def test_an_unexpected_error_in_a_task_is_reported_on_its_metric(
    prom: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entries = tuple(
        (prom, "prometheus", 60, query, f"m.{name}", "default", "", None, None, None, None, ())
        for name, query in (("good", "up"), ("bad", "boom"))
    )
    cfg = make_config(
        tmp_path, UNUSED_REDIS, entries, VISTA_SINK="graphite", CARBON_HOST="127.0.0.1"
    )
    real = prometheus.parse_result
    calls: list[str] = []

    def flaky(body: object) -> list[tuple[object, object]]:
        calls.append("x")
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return real(body)

    monkeypatch.setattr(prometheus, "parse_result", flaky)
    now = time.time()
    async with aiohttp.ClientSession() as session:
        cycle = FetchCycle(cfg, session, {}, queue=None, clock=lambda: now)
        report = await cycle.run(cfg.fetch_metrics, {}, set())
    assert report.unfinished == 0
    by_kind = {r.metric: (r.error.kind if r.error else None) for r in report.results}
    assert sorted(by_kind.values(), key=str) == [None, "internal"]
    failed = next(r for r in report.results if r.error is not None)
    assert str(failed.error) == "internal error: RuntimeError: a bug"
    ok = next(r for r in report.results if r.error is None)
    assert ok.points and all(v == 1.5 for _, v in ok.points)
