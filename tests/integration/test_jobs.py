"""The job core against a real redis-server: claim exactly once, a SIGKILLed job process resumed
from its checkpoint, cancel, SIGTERM between units, orphans, pruning, the CLI table."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from skyline.vista.config import VistaConfig
from skyline.vista.jobs import commands, display
from skyline.vista.jobs.record import JobRecord, Progress, Status, encode, new_job
from skyline.vista.jobs.store import KEEP_FINISHED, JobStore
from skyline.vista.testing.servers import RedisServer, poll_until
from tests.support.job_kinds import COUNT, PIDS_KEY, UNITS_KEY
from tests.support.settings import make_config
from tests.support.supervised import Supervised


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, COUNT.name, COUNT.keys)


@pytest.fixture
def cfg(tmp_path: Path, redis_server: RedisServer) -> VistaConfig:
    return make_config(tmp_path, redis_server, [])


@pytest.fixture
def supervised(cfg: VistaConfig, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Supervised]:
    with Supervised(cfg, redis_client, tmp_path, (COUNT,)) as s:
        yield s


def units_run(client: redis.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in client.hgetall(UNITS_KEY).items()}


def wait_status(store: JobStore, job_id: str, status: Status, timeout: float = 30) -> JobRecord:
    def probe() -> JobRecord | None:
        record = store.get(job_id)
        return record if record is not None and record.status is status else None

    return poll_until(probe, timeout, what=f"job {job_id} {status.value}")


# --- the store --------------------------------------------------------------------------------


def test_each_job_is_claimed_exactly_once_oldest_first(
    redis_server: RedisServer, redis_client: redis.Redis, store: JobStore
) -> None:
    ids = [store.submit(new_job("count", {"units": 1}, now=1000.0 + i)).id for i in range(60)]
    first = store.claim()
    assert first is not None and first[0].id == ids[0]  # the oldest
    claimed: list[str] = [first[0].id]
    lock = threading.Lock()

    def claimer() -> None:
        mine = JobStore(redis_server.client(), COUNT.name, COUNT.keys)
        while (got := mine.claim()) is not None:
            with lock:
                claimed.append(got[0].id)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(claimed) == sorted(ids)
    assert len(claimed) == len(set(claimed))
    assert redis_client.hlen(COUNT.keys.work) == 0
    record = store.get(ids[5])
    assert record is not None and record.status is Status.RUNNING and record.attempts == 1
    assert store.held(ids[5])


def test_a_write_by_a_process_that_lost_its_job_is_refused(store: JobStore) -> None:
    job = store.submit(new_job("count", {"units": 1}))
    claimed = store.claim()
    assert claimed is not None
    record, token = claimed
    assert store.update(record.with_(progress=Progress(done=1)), token)
    assert not store.update(record.with_(progress=Progress(done=2)), "someone-else")
    got = store.get(job.id)
    assert got is not None and got.progress.done == 1


def test_an_orphaned_job_is_put_back_with_its_checkpoint(
    redis_client: redis.Redis, store: JobStore
) -> None:
    job = store.submit(new_job("count", {"units": 5}))
    claimed = store.claim()
    assert claimed is not None
    record, token = claimed
    store.update(record.with_(checkpoint={"next": 3}), token)
    assert store.recover_orphans() == []  # still held
    redis_client.delete(COUNT.keys.marker(job.id))  # the agent was SIGKILLed: the TTL ran out
    assert store.recover_orphans() == [job.id]
    again = store.claim()
    assert again is not None
    assert again[0].checkpoint == {"next": 3} and again[0].attempts == 2


def test_pruning_keeps_the_newest_finished_records_and_every_unfinished_one(
    redis_client: redis.Redis, store: JobStore
) -> None:
    now = time.time()
    pipe = redis_client.pipeline()
    for i in range(KEEP_FINISHED + 150):
        record = new_job("count", {}, now=now - 1000 + i).with_(
            status=Status.DONE, finished=now - 1000 + i
        )
        pipe.hset(COUNT.keys.status, record.id, encode(record))
    old = new_job("count", {}, now=now - 40 * 86400).with_(
        status=Status.FAILED, finished=now - 40 * 86400
    )
    pipe.hset(COUNT.keys.status, old.id, encode(old))
    pipe.execute()
    pending = store.submit(new_job("count", {}, now=now - 50 * 86400))
    assert store.prune(now=now) == 151
    left = store.all()
    assert len(left) == KEEP_FINISHED + 1
    assert pending.id in {r.id for r in left}
    assert old.id not in {r.id for r in left}
    oldest_kept = min(r.finished or 0 for r in left if r.status.finished)
    assert oldest_kept == now - 1000 + 150
    assert store.prune(now=now) == 0


def test_a_skyline_webapp_record_is_read(redis_client: redis.Redis, store: JobStore) -> None:
    literal = str({"job_id": "abc123", "status": "pending", "from_timestamp": 1, "dry_run": True})
    redis_client.hset(COUNT.keys.work, "abc123", literal)
    claimed = store.claim()
    assert claimed is not None
    record, _ = claimed
    assert record.id == "abc123" and record.kind == "count"
    assert record.params["dry_run"] is True and record.status is Status.RUNNING


# --- supervised processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_runs_to_done_in_its_own_process(
    redis_client: redis.Redis, store: JobStore, supervised: Supervised
) -> None:
    job = store.submit(new_job("count", {"units": 5}))
    record = wait_status(store, job.id, Status.DONE)
    assert units_run(redis_client) == {u: 1 for u in range(5)}
    assert record.progress == Progress(done=5, total=5, points=50)
    assert not store.held(job.id)
    (pid,) = [int(p) for p in redis_client.lrange(PIDS_KEY, 0, -1)]
    assert pid != os.getpid()


@pytest.mark.slow
def test_a_sigkilled_job_process_is_resumed_from_its_checkpoint(
    redis_client: redis.Redis, store: JobStore, supervised: Supervised
) -> None:
    job = store.submit(new_job("count", {"units": 40, "pause": 0.05}))
    pid = supervised.job_pid(job.id)
    poll_until(lambda: True if len(units_run(redis_client)) >= 10 else None, 30, what="10 units")
    os.kill(pid, signal.SIGKILL)
    record = wait_status(store, job.id, Status.DONE)
    pids = [int(p) for p in redis_client.lrange(PIDS_KEY, 0, -1)]
    assert len(pids) == 2 and pids[0] == pid
    runs = units_run(redis_client)
    assert sorted(runs) == list(range(40))  # nothing missing
    # Only the unit in flight at the kill may run twice (recorded, not yet checkpointed).
    assert sum(runs.values()) - 40 <= 1
    assert record.attempts == 2 and record.progress.done == 40


@pytest.mark.slow
def test_a_job_that_raises_is_failed_with_its_error(
    store: JobStore, supervised: Supervised, tmp_path: Path
) -> None:
    job = store.submit(new_job("count", {"units": 5, "fail_at": 2}))
    record = wait_status(store, job.id, Status.FAILED)
    assert record.error == "RuntimeError: unit 2 is broken"
    assert record.progress.done == 2 and record.finished is not None
    # A job failing on purpose (a VistaError: a BigQuery interval with too few rows) says so
    # in one ERROR line; before, its end logged a traceback as a bug does.
    expected = store.submit(new_job("count", {"units": 5, "fail_at": 1, "expected": True}))
    record = wait_status(store, expected.id, Status.FAILED)
    assert record.error == "VistaError: unit 1 has too few rows"
    log = (tmp_path / "vista.log").read_text()
    assert f"job {expected.id} (count) failed: VistaError: unit 1 has too few rows\n" in log
    assert log.count("Traceback") == 1, log  # the RuntimeError's, a bug's


@pytest.mark.slow
def test_cancel_a_pending_then_a_running_job(
    redis_client: redis.Redis, store: JobStore, supervised: Supervised, tmp_path: Path
) -> None:
    supervised.pause()  # nothing is claimed: the first job stays pending
    waiting = store.submit(new_job("count", {"units": 5}))
    out = io.StringIO()
    assert commands.cancel(redis_client, waiting.id, out, kinds=(COUNT,)) == 0
    assert "cancelled (it had not started)" in out.getvalue()
    assert (got := store.get(waiting.id)) is not None and got.status is Status.CANCELLED
    assert redis_client.hlen(COUNT.keys.work) == 0

    with Supervised(supervised.supervisor.config, redis_client, tmp_path, (COUNT,)) as again:
        job = store.submit(new_job("count", {"units": 200, "pause": 0.02}))
        again.job_pid(job.id)
        poll_until(lambda: True if units_run(redis_client) else None, 20, what="a unit")
        assert commands.cancel(redis_client, job.id, out, kinds=(COUNT,)) == 0
        record = wait_status(store, job.id, Status.CANCELLED)
    assert "cancel requested" in out.getvalue()
    runs = units_run(redis_client)
    assert 0 < record.progress.done < 200
    assert record.progress.done == len(runs)  # progress kept up to the last unit
    assert not store.held(job.id)
    assert commands.cancel(redis_client, job.id, out, kinds=(COUNT,)) == 0
    assert "already finished" in out.getvalue()


@pytest.mark.slow
def test_sigterm_stops_between_units_keeps_progress_and_the_job_resumes(
    cfg: VistaConfig, redis_client: redis.Redis, store: JobStore, tmp_path: Path
) -> None:
    with Supervised(cfg, redis_client, tmp_path, (COUNT,)) as first:
        job = store.submit(new_job("count", {"units": 100, "pause": 0.03}))
        first.job_pid(job.id)
        poll_until(lambda: True if len(units_run(redis_client)) >= 5 else None, 20, what="5")
        first.pause()
        exits = first.pool.stop_all(10)  # SIGTERM, as the agent's drain does
    assert [e.killed for e in exits] == [False]
    paused = store.get(job.id)
    assert paused is not None and paused.status is Status.PENDING
    assert 5 <= paused.progress.done < 100
    assert paused.checkpoint == {"next": paused.progress.done}
    assert len(units_run(redis_client)) == paused.progress.done
    with Supervised(cfg, redis_client, tmp_path, (COUNT,)):
        record = wait_status(store, job.id, Status.DONE)
    runs = units_run(redis_client)
    assert runs == {u: 1 for u in range(100)}  # resumed where it stopped: nothing run twice
    assert record.progress.done == 100


@pytest.mark.slow
def test_jobs_listing_and_plain_wait_output(
    redis_client: redis.Redis, store: JobStore, supervised: Supervised
) -> None:
    job = store.submit(new_job("count", {"units": 4, "pause": 0.2}))
    out = io.StringIO()
    record = display.wait(store, job.id, out, tty=False, poll=0.05)
    assert record is not None and record.status is Status.DONE
    lines = out.getvalue().splitlines()
    assert lines[-1] == f"job {job.id} done"
    assert any(line.startswith(f"job {job.id}: 4/4 chunks (100.0%), 40 points") for line in lines)
    listing = io.StringIO()
    commands.list_jobs(redis_client, listing, kinds=(COUNT,))
    table = listing.getvalue().splitlines()
    assert table[0].startswith("JOB")
    assert job.id in table[1] and "done" in table[1] and "4/4 100%" in table[1]


@pytest.mark.slow
def test_the_parent_death_signal_then_sigterm_is_one_stop_not_a_forced_exit(
    redis_client: redis.Redis, store: JobStore, supervised: Supervised
) -> None:
    """Linux sends the parent-death signal once per agent thread that exits; it must not count
    as the first of the two SIGTERMs that make a job process leave at once."""
    job = store.submit(new_job("count", {"units": 200, "pause": 0.05}))
    pid = supervised.job_pid(job.id)
    poll_until(lambda: True if len(units_run(redis_client)) >= 3 else None, 20, what="3 units")
    os.kill(pid, signal.SIGUSR1)
    os.kill(pid, signal.SIGTERM)
    record = wait_status(store, job.id, Status.PENDING)
    assert record.error == "paused (stopping)"  # its own clean stop, not a give-back
    assert record.checkpoint == {"next": record.progress.done}
    assert len(units_run(redis_client)) == record.progress.done
