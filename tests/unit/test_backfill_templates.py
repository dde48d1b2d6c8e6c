"""A templated entry's split window, delivered part by part (skyline/vista/backfill_templates.py):
the answers scripted, what is handed to the sink recorded."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest

from skyline.vista import expand
from skyline.vista.backfill_fetch import ChunkFetcher, ChunkResult, Stopped
from skyline.vista.backfill_plan import BackfillMetric, Chunk
from skyline.vista.backfill_templates import TemplateFetcher
from skyline.vista.errors import SourceError
from skyline.vista.sinks import SinkPoint

STEP = 60
T0 = 6_000_000
METRIC = "n.{x}"


async def scripted(_session: object, _entry: object, window: Chunk, *_: object) -> expand.Expansion:
    """Answers of at most four steps, series n.a and n.b; n.b has two series from T0 + 4 steps."""
    if window.end - window.start >= 4 * STEP:
        raise SourceError("too_large", "the answer is too large")
    found = expand.Expansion()
    for name in ("n.a", "n.b"):
        found.series[name] = [(ts, float(ts)) for ts in range(window.start, window.end + 1, STEP)]
    if window.start >= T0 + 4 * STEP:
        found.about["n.b"] = "the name 'n.b' has two series"
        found.problems.append(found.about["n.b"])
    return found


def run(
    sent: list[list[SinkPoint]], stop_after: int | None = None
) -> tuple[ChunkResult, TemplateFetcher]:
    """Fetch the 8-step chunk T0..T0 + 7 steps; what is delivered goes to ``sent``."""

    async def deliver(_chunk: Chunk, points: list[SinkPoint]) -> int:
        sent.append(points)
        return 0

    requests = SimpleNamespace(
        entries={METRIC: None},
        config=SimpleNamespace(max_response_bytes=1024),
        should_stop=lambda: stop_after is not None and len(sent) >= stop_after,
    )
    fetcher = TemplateFetcher(cast(ChunkFetcher, requests), "job", deliver)
    fetcher._expand_answer = scripted  # type: ignore[method-assign,assignment]
    m = BackfillMetric(METRIC, "prometheus", "h", STEP, T0 + 7 * STEP)
    chunk = Chunk(0, T0, T0 + 7 * STEP, (m,))
    session = cast(aiohttp.ClientSession, None)
    result = asyncio.run(fetcher.fetch(session, chunk, m))
    return result, fetcher


def test_each_part_is_delivered_as_it_answers_and_a_later_problem_withholds_the_name() -> None:
    """The 8-step window is refused and fetched in two halves: each half is handed to the
    sink on its own (never the chunk merged); n.b, two series in the second half, is withheld
    from that half on, its first half (one series) stays delivered; the problem counts once."""
    sent: list[list[SinkPoint]] = []
    result, fetcher = run(sent)
    first = [
        SinkPoint(n, ts, float(ts)) for n in ("n.a", "n.b") for ts in range(T0, T0 + 4 * STEP, STEP)
    ]
    second = [SinkPoint("n.a", ts, float(ts)) for ts in range(T0 + 4 * STEP, T0 + 8 * STEP, STEP)]
    assert sent == [first, second]
    assert (result.entries, result.sent, result.rejected) == ([], 12, 0)
    assert result.errors == 1 and "n.b" in result.message
    assert fetcher.learned == {METRIC: 4}


def test_a_stop_between_parts_leaves_the_chunk_unfinished() -> None:
    """Told to stop after the first part, the fetch raises Stopped (the chunk is not
    checkpointed, so its first part is sent again on resume) and asks for nothing more."""
    sent: list[list[SinkPoint]] = []
    with pytest.raises(Stopped):
        run(sent, stop_after=1)
    assert [len(points) for points in sent] == [8]
