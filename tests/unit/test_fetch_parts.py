"""The fetch cycle's parts without I/O: its outbox (outbox.py) and its task set
(fetch_tasks.py)."""

from __future__ import annotations

import asyncio

from skyline.vista.entries import check_entry
from skyline.vista.fetch_results import Member, MetricResult
from skyline.vista.fetch_tasks import FetchTasks
from skyline.vista.holes import Hole
from skyline.vista.outbox import FULL, Outbox
from skyline.vista.problems import Problems


def result(name: str, items: list[str], holes: list[Hole] | None = None) -> MetricResult:
    raw = ("http://remote:9090", "prometheus", 60, "up", name, "default", "")
    entry = check_entry(0, (*raw, None, None, None, None, ()), Problems())
    assert entry is not None
    return MetricResult(entry, items=items, holes=holes)


def test_a_failed_push_is_put_back_before_what_finished_meanwhile() -> None:
    box = Outbox()
    hole = Hole(60, 120, 1, 0.0, 0.0, "timeout", "slow")
    box.add(result("a", ["a1"], holes=[hole]))
    batch = box.take()
    assert not box
    box.add(result("b", ["b1"]))
    box.put_back(batch)
    assert box.chains == [("a", ["a1"]), ("b", ["b1"])]
    assert box.holes == {"a": [hole]}
    assert list(box.take().metrics(box.owner)) == ["a", "b", "a"]


def test_a_push_is_due_at_once_when_the_outbox_is_full() -> None:
    box = Outbox()
    due = [box.add(result(f"m{i}", ["x"])) for i in range(FULL)]
    assert due == [False] * (FULL - 1) + [True]


async def test_a_task_that_raises_hands_its_windows_to_on_failure_and_others_run_on() -> None:
    failed: list[tuple[list[Member], str]] = []
    tasks = FetchTasks(lambda members, exc: failed.append((members, str(exc))))
    member = (result("bad", []), 0)
    done: list[str] = []

    async def boom() -> None:
        raise RuntimeError("a bug")

    async def fine() -> None:
        await asyncio.sleep(0)
        done.append("fine")

    tasks.spawn(boom(), [member])
    tasks.spawn(fine())
    await tasks.wait(5)
    assert failed == [([member], "a bug")] and done == ["fine"]


async def test_stop_ends_the_wait_and_cancel_ends_what_still_runs() -> None:
    tasks = FetchTasks(lambda members, exc: None)
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.spawn(slow())
    asyncio.get_running_loop().call_later(0.05, tasks.stop)
    await asyncio.wait_for(tasks.wait(30), 5)
    await tasks.cancel()
    assert cancelled.is_set()
