"""The Vista daemon as a real subprocess: start/status/stop/reload exit codes, the pidfile,
worker supervision, signals (drain, second signal, SIGHUP, parent death), a Redis outage and the
log file.

Every test runs the real ``vista`` console script with a settings file in ``tmp_path`` and a
private redis-server on TCP; processes are found in ``/proc`` and killed by pid when a test
ends, whatever happened (``VistaHarness.cleanup``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from skyline.vista import constants
from skyline.vista.fetchqueue import FetchQueue
from skyline.vista.procutil import cmdline
from skyline.vista.testing.servers import CarbonServer, PrometheusServer, RedisServer, free_port
from tests.conftest import RedisFactory
from tests.fakes.flux import DEFAULT_KEY, FluxServer
from tests.support.daemon import (
    REPO,
    Proc,
    VistaHarness,
    push_items,
    sigterm_and_wait,
    wait_for,
    wait_gone,
)

HarnessFactory = Callable[..., VistaHarness]

HOST = socket.gethostname()
VISTA_D = REPO / "bin" / "vista.d"
WORKER_LINE = r"\[{pid}\] skyline\.vista\.worker: worker \S+ {what}"


def base_settings(server: RedisServer) -> dict[str, object]:
    """Graphite sink to ports where nothing listens (the sink is not under test here)."""
    return {
        "VISTA_ENABLED": True,
        "REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "VISTA_SINK": "graphite",
        "CARBON_HOST": "127.0.0.1",
        "CARBON_PORT": free_port(),
        "CARBON_PICKLE_PORT": free_port(),
        "VISTA_WORKER_PROCESSES": 2,
        "VISTA_FETCH_METRICS": (),
        # The sinks here create metrics without limit: no create-budget pacing (inf as a
        # number a settings file can spell).
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": 1e12,
    }


@pytest.fixture
def vista_factory(tmp_path: Path) -> Iterator[HarnessFactory]:
    """Makes harnesses; every process any of them saw is SIGKILLed at the end of the test."""
    made: list[VistaHarness] = []

    def make(server: RedisServer, **settings: object) -> VistaHarness:
        harness = VistaHarness(
            tmp_path / f"vista{len(made)}", {**base_settings(server), **settings}
        )
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.cleanup()


@pytest.fixture
def redis_tcp(tmp_redis: RedisFactory) -> RedisServer:
    return tmp_redis()


@pytest.fixture
def vista(vista_factory: HarnessFactory, redis_tcp: RedisServer) -> VistaHarness:
    return vista_factory(redis_tcp)


def worker_log(pid: int, what: str) -> re.Pattern[str]:
    return re.compile(WORKER_LINE.format(pid=pid, what=what))


def wait_dead_agent(agent: Proc) -> None:
    """After SIGKILL: the agent is gone (its flock on the pidfile is released with it)."""
    wait_gone([agent], 5.0)


def heartbeat_keys(client: redis.Redis, workers: list[Proc]) -> set[str] | None:
    """The heartbeat keys present, or None while one of them is missing."""
    names = {k.decode() if isinstance(k, bytes) else str(k) for k in client.keys("vista.*")}
    wanted = {constants.FETCHER_HEARTBEAT_KEY, constants.WORKER_HEARTBEAT_KEY}
    if not wanted <= names:
        return None
    for worker in workers:
        prefix = f"{constants.WORKER_HEARTBEAT_PREFIX}{HOST}:{worker.pid}:"
        if not any(n.startswith(prefix) for n in names):
            return None
    return names


def minute_points(count: int, age: int = 1800) -> tuple[tuple[int, float], ...]:
    start = (int(time.time()) // 60) * 60 - age
    return tuple((start + 60 * i, float(i)) for i in range(count))


class BlackHole:
    """A TCP port that completes connections (listen backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def stuck_flux_settings(hole: BlackHole) -> dict[str, object]:
    """Flux sink whose POSTs hang (30 s timeout); one item per claim, so both workers hang."""
    return {
        "VISTA_SINK": "flux",
        "FLUX_IP": "127.0.0.1",
        "FLUX_PORT": hole.port,
        "FLUX_SELF_API_KEY": DEFAULT_KEY,
        "VISTA_FLUX_TIMEOUT": 30,
        "VISTA_WORKER_BATCH_ITEMS": 1,
    }


def run_with_stuck_workers(
    vista: VistaHarness, queue: FetchQueue, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], list[Proc]]:
    """Four items queued, the agent run in the foreground, and both workers stuck in a Flux
    POST (see :func:`stuck_flux_settings`) with one item each; the agent and its processes."""
    push_items(queue.client, [f"test.stuck.m{i}" for i in range(4)], minute_points(3))
    popen, agent = vista.run_foreground(tmp_path / "run.log")
    vista.wait_workers(agent, 2)
    wait_for(lambda: True if queue.counts().inflight == 2 else None, 10.0, "2 items in flight")
    return popen, vista.tree(agent)


# --- 1. start / status / stop ----------------------------------------------------------------


def test_start_status_stop_exit_codes(vista: VistaHarness) -> None:
    agent = vista.start()
    workers = vista.wait_workers(agent, 2)
    tree = vista.tree(agent)
    assert vista.pidfile_pid() == agent.pid

    status = vista.cli("status")
    assert status.returncode == 0, str(status)
    assert f"vista is running (pid {agent.pid})" in status.stdout
    assert vista.status_worker_pids(status.stdout) == {w.pid for w in workers}

    stop = vista.cli("stop")
    assert stop.returncode == 0, str(stop)
    assert f"vista stopped (pid {agent.pid})" in stop.stdout
    assert len(tree) >= 3  # the agent and its two workers (and the resource tracker)
    assert [p.pid for p in tree if p.alive()] == []
    assert not vista.pidfile.exists()

    status = vista.cli("status")
    assert status.returncode == 3, str(status)
    assert "vista is not running" in status.stdout


# --- 2. stale pidfiles -----------------------------------------------------------------------


def test_sigkilled_agent_leaves_a_stale_pidfile_and_its_workers_exit(vista: VistaHarness) -> None:
    agent = vista.start()
    workers = vista.wait_workers(agent, 2)
    tree = vista.tree(agent)

    os.kill(agent.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_dead_agent(agent)
    status = vista.cli("status")
    assert status.returncode == 1, str(status)
    assert f"vista is dead but the pidfile exists ({vista.pidfile}, pid {agent.pid})" in (
        status.stdout
    )

    # The parent-death signal: every child goes by itself, and workers stop cleanly.
    wait_gone(tree, 5.0)
    took = time.monotonic() - killed_at
    assert took < 5.0
    log = vista.log()
    for worker in workers:
        assert worker_log(worker.pid, "stopped").search(log), vista.log_tail()

    restarted = vista.start()
    assert vista.last_start is not None
    assert f"removed a stale pidfile (pid {agent.pid} is gone)" in vista.last_start.stdout
    assert restarted.pid != agent.pid
    assert vista.pidfile_pid() == restarted.pid
    vista.wait_workers(restarted, 2)
    stop = vista.cli("stop")
    assert stop.returncode == 0, str(stop)
    status = vista.cli("status")
    assert status.returncode == 3, str(status)


@pytest.mark.parametrize("content", ["garbage\n", "", "OWN_PID"])
def test_pidfile_with_garbage_or_an_unrelated_live_pid_is_stale(
    vista: VistaHarness, content: str
) -> None:
    me = os.getpid()
    vista.pid_dir.mkdir(parents=True)
    vista.pidfile.write_text(f"{me}\n" if content == "OWN_PID" else content)

    status = vista.cli("status", "--brief")
    assert status.returncode == 1, str(status)
    assert "vista is dead but the pidfile exists" in status.stdout

    if content == "OWN_PID":
        # stop must not signal an unrelated process; it removes the stale file.
        stop = vista.cli("stop")
        assert stop.returncode == 0, str(stop)
        assert f"removed the stale pidfile (pid {me})" in stop.stdout
        assert not vista.pidfile.exists()
        vista.pidfile.write_text(f"{me}\n")

    agent = vista.start()
    assert agent.pid != me
    assert vista.pidfile_pid() == agent.pid
    vista.wait_workers(agent, 2)
    status = vista.cli("status", "--brief")
    assert status.returncode == 0, str(status)
    stop = vista.cli("stop")
    assert stop.returncode == 0, str(stop)
    status = vista.cli("status", "--brief")
    assert status.returncode == 3, str(status)


# --- 3. worker supervision -------------------------------------------------------------------


def test_sigkilled_worker_is_respawned(vista: VistaHarness, redis_tcp: RedisServer) -> None:
    agent = vista.start()
    workers = vista.wait_workers(agent, 2)
    victim, survivor = workers
    index_of = re.search(rf"worker (\d) started \(pid {victim.pid}\)", vista.log())
    assert index_of, vista.log_tail()
    index = int(index_of.group(1))

    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    most = 0

    def replaced() -> list[Proc] | None:
        nonlocal most
        now = vista.workers(agent)
        most = max(most, len(now))
        return now if len(now) == 2 and victim not in now else None

    after = wait_for(replaced, 10.0, "a new worker")
    took = time.monotonic() - killed_at
    assert survivor in after and survivor.alive()
    newcomer = next(p for p in after if p != survivor)
    assert most <= 2
    assert took < 5.0
    log = vista.wait_log(f"worker {index} started (pid {newcomer.pid})")
    assert re.search(
        rf"worker {index} \(pid {victim.pid}\) exited with code -9 after \d+s; "
        rf"0 item\(s\) requeued; restarting in [\d.]+s",
        log,
    ), vista.log_tail()
    vista.wait_workers(agent, 2)
    client = redis_tcp.client()
    key = f"{constants.WORKER_HEARTBEAT_PREFIX}{HOST}:{newcomer.pid}:{index}"
    wait_for(lambda: True if client.exists(key) else None, 10.0, f"heartbeat {key}")
    client.close()
    assert agent.alive()
    assert len(vista.workers(agent)) == 2

    stop = vista.cli("stop")
    assert stop.returncode == 0, str(stop)


# --- 4. SIGTERM drain and the second signal --------------------------------------------------


def test_sigterm_drains_idle_agent_quickly(vista: VistaHarness, tmp_path: Path) -> None:
    stderr = tmp_path / "run.log"
    popen, agent = vista.run_foreground(stderr)
    workers = vista.wait_workers(agent, 2)
    tree = vista.tree(agent)

    code, drained = sigterm_and_wait(popen, tree, 15.0)
    print(f"\nidle drain: every process gone {drained:.2f} s after SIGTERM")

    assert code == 0
    assert drained < 10.0
    log = vista.log()
    assert "skyline.vista.agent: stopping: draining within 10s" in log
    assert log.rstrip().endswith("skyline.vista.agent: stopped"), vista.log_tail()
    assert "had to be killed" not in log
    for worker in workers:
        assert worker_log(worker.pid, "stopped").search(log), vista.log_tail()
    assert not vista.pidfile.exists()


def test_sigterm_kills_stuck_workers_at_the_shutdown_timeout_and_requeues(
    vista_factory: HarnessFactory, redis_tcp: RedisServer, black_hole: BlackHole, tmp_path: Path
) -> None:
    vista = vista_factory(redis_tcp, VISTA_SHUTDOWN_TIMEOUT=2, **stuck_flux_settings(black_hole))
    client = redis_tcp.client()
    queue = FetchQueue(client)
    popen, tree = run_with_stuck_workers(vista, queue, tmp_path)

    code, drained = sigterm_and_wait(popen, tree, 5.0)
    print(f"\nstuck drain (VISTA_SHUTDOWN_TIMEOUT=2): every process gone after {drained:.2f} s")

    assert code == 0
    assert 2.0 <= drained < 4.0
    log = vista.log()
    assert "stopped; 2 worker(s) had to be killed (their items were requeued)" in log
    counts = queue.counts()
    assert (counts.queued, counts.inflight, counts.dead) == (4, 0, 0)
    client.close()


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_second_signal_exits_at_once(
    vista_factory: HarnessFactory,
    redis_tcp: RedisServer,
    black_hole: BlackHole,
    tmp_path: Path,
    second: str,
) -> None:
    """Workers stuck in a Flux POST would hold the drain for VISTA_SHUTDOWN_TIMEOUT (10 s)."""
    vista = vista_factory(redis_tcp, **stuck_flux_settings(black_hole))
    client = redis_tcp.client()
    queue = FetchQueue(client)
    popen, tree = run_with_stuck_workers(vista, queue, tmp_path)
    client.close()

    began = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    if second == "SIGTERM":
        # The same signal twice in a row may be merged by the kernel: send it once the first
        # one has been handled (the drain has begun).
        vista.wait_log("stopping: draining within 10s", timeout=5.0)
    second_at = time.monotonic()
    popen.send_signal(getattr(signal, second))
    code = popen.wait(15)
    wait_gone(tree, 5.0)
    now = time.monotonic()
    print(
        f"\nsecond signal ({second}): gone {now - second_at:.2f} s after it, "
        f"{now - began:.2f} s after the first SIGTERM"
    )

    assert code == constants.EXIT_FAILURE
    assert now - began < 2.0
    assert "had to be killed" not in vista.log()
    assert not vista.pidfile.exists()  # a forced stop is still a stop: status says 3, not 1


# --- 5. SIGHUP reload ------------------------------------------------------------------------


def test_reload_applies_valid_settings_and_keeps_running_on_invalid_ones(
    vista: VistaHarness,
) -> None:
    agent = vista.start()
    vista.wait_workers(agent, 2)

    vista.write_settings(VISTA_WORKER_PROCESSES=3)
    reload = vista.cli("reload")
    assert reload.returncode == 0, str(reload)
    assert f"vista (pid {agent.pid}) asked to reload" in reload.stdout
    vista.wait_log("reload: settings applied (0 metric(s), 3 worker(s))")
    three = vista.wait_workers(agent, 3)
    assert agent.alive() and vista.pidfile_pid() == agent.pid

    vista.write_settings(VISTA_WORKER_PROCESSES=0, VISTA_SINK="carrier-pigeon")
    reload = vista.cli("reload")
    assert reload.returncode == 0, str(reload)
    log = vista.wait_log("reload: the settings in")
    after = log[log.index("reload: the settings in") :]
    assert f"{vista.settings_path} are invalid; keeping the current settings" in after
    assert "VISTA_WORKER_PROCESSES" in after and "carrier-pigeon" in after
    assert agent.alive()
    assert sorted(vista.workers(agent), key=lambda p: p.pid) == sorted(three, key=lambda p: p.pid)

    status = vista.cli("status", "--brief")
    assert status.returncode == 0, str(status)
    assert vista.status_worker_pids(status.stdout) == {w.pid for w in three}
    stop = vista.cli("stop")  # works although the settings file is invalid now
    assert stop.returncode == 0, str(stop)
    assert not agent.alive()

    reload = vista.cli("reload")
    assert reload.returncode == 7, str(reload)
    assert "vista is not running" in reload.stderr


def test_hangup_of_the_process_group_reloads_and_workers_stop_cleanly(
    vista: VistaHarness, tmp_path: Path
) -> None:
    """A terminal hangup reaches every process of a foreground `vista run`: the agent reloads
    and rolls its workers; the workers themselves must not die of the SIGHUP."""
    popen, agent = vista.run_foreground(tmp_path / "run.log", new_session=True)
    before = vista.wait_workers(agent, 2)
    os.killpg(popen.pid, signal.SIGHUP)
    log = vista.wait_log("reload: settings applied (0 metric(s), 2 worker(s))")
    for worker in before:
        assert worker_log(worker.pid, "stopped").search(log), vista.log_tail()
    assert "exited with code" not in log
    after = vista.wait_workers(agent, 2)
    assert not set(after) & set(before)
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(15) == 0


# --- 6. Redis outage -------------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_survives_a_redis_outage(
    vista_factory: HarnessFactory,
    redis_tcp: RedisServer,
    prometheus_server: PrometheusServer,
    carbon_server: CarbonServer,
) -> None:
    entry = {
        "remote_host": prometheus_server.url,
        "remote_host_type": "prometheus",
        "frequency": 10,
        "remote_target": "up",
        "graphite_target": "vista_outage_up",
        "uri": "default",
        "namespace_prefix": "test.outage",
    }
    vista = vista_factory(
        redis_tcp,
        VISTA_FETCH_METRICS=(entry,),
        CARBON_PICKLE_PORT=carbon_server.pickle_port,
    )
    agent = vista.start()
    workers = vista.wait_workers(agent, 2)
    client = redis_tcp.client()
    wait_for(lambda: heartbeat_keys(client, workers), 15.0, "heartbeats")
    client.close()
    offset = len(vista.log())

    redis_tcp.stop()
    down_at = time.monotonic()
    vista.wait_log("fetcher: Redis unavailable", timeout=15.0)
    # one line per loop: the fetcher, each worker and the agent's job supervisor
    vista.wait_log("Redis unavailable", count=4, timeout=5.0)
    time.sleep(max(0.0, 20.0 - (time.monotonic() - down_at)))
    redis_tcp.start()
    up_at = time.monotonic()

    client = redis_tcp.client()
    keys = wait_for(lambda: heartbeat_keys(client, workers), 45.0, "heartbeats after the outage")
    back_after = time.monotonic() - up_at
    client.close()
    print(f"\nheartbeats back {back_after:.1f} s after Redis returned: {sorted(keys)}")

    assert agent.alive() and vista.pidfile_pid() == agent.pid
    assert all(w.alive() for w in workers)
    assert sorted(vista.workers(agent), key=lambda p: p.pid) == workers
    vista.wait_log("fetcher: Redis is back after", timeout=5.0)
    # The job supervisor retries Redis with backoff (0.5 s doubling, redisconn.RedisOutage): after
    # a 20 s outage its next try can come ~11 s after Redis returned.
    vista.wait_log(": Redis is back after", count=4, timeout=20.0)
    outage = vista.log()[offset:]
    assert "exited with code" not in outage
    assert "fetcher thread died" not in outage
    unavailable = [line for line in outage.splitlines() if "Redis unavailable" in line]
    assert sum("fetcher: Redis unavailable" in line for line in unavailable) == 1, outage
    for worker in workers:
        mine = [line for line in unavailable if f"worker {HOST}:{worker.pid}:" in line]
        assert len(mine) == 1, outage
    assert sum("job supervisor: Redis unavailable" in line for line in unavailable) == 1, outage
    assert len(unavailable) == 4, outage
    warnings = [line for line in outage.splitlines() if " WARNING " in line]
    assert warnings == unavailable, outage
    back = [line for line in outage.splitlines() if "Redis is back after" in line]
    assert sum("fetcher: Redis is back" in line for line in back) == 1, outage
    for worker in workers:
        assert sum(f"worker {HOST}:{worker.pid}:" in line for line in back) == 1, outage
    assert sum("job supervisor: Redis is back" in line for line in back) == 1, outage
    assert len(back) == 4, outage
    stop = vista.cli("stop")
    assert stop.returncode == 0, str(stop)


# --- 7. not configured -----------------------------------------------------------------------


def _settings_processes(vista: VistaHarness) -> list[int]:
    needle = str(vista.settings_path)
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and needle in cmdline(int(e))]


def test_start_refuses_when_disabled(vista: VistaHarness) -> None:
    vista.write_settings(VISTA_ENABLED=False)
    start = vista.cli("start")
    assert start.returncode == 6, str(start)
    assert "VISTA_ENABLED is False" in start.stderr
    assert start.stdout == ""
    assert _settings_processes(vista) == []
    assert not vista.pidfile.exists()
    assert not vista.logfile.exists()
    status = vista.cli("status", "--brief")
    assert status.returncode == 3, str(status)


def test_start_with_invalid_settings_lists_every_error_and_starts_nothing(
    vista: VistaHarness,
) -> None:
    bad_entry = {
        "remote_host": "http://127.0.0.1:9",
        "remote_host_type": "influx",
        "remote_target": "up",
        "graphite_target": "up",
    }
    vista.write_settings(
        VISTA_WORKER_PROCESSES=0,
        REDIS_URL="http://127.0.0.1:1/0",
        VISTA_SHUTDOWN_TIMEOUT="soon",
        VISTA_FETCH_METRICS=(bad_entry,),
    )
    start = vista.cli("start")
    assert start.returncode == 6, str(start)
    assert start.stdout == ""
    lines = start.stderr.splitlines()
    assert lines[0] == f"vista: 4 problem(s) in {vista.settings_path}; not starting:"
    assert len(lines) == 5, start.stderr
    for needle in (
        "VISTA_WORKER_PROCESSES: got 0",
        "REDIS_URL: got 'http://127.0.0.1:1/0'",
        "VISTA_SHUTDOWN_TIMEOUT: got 'soon'",
        "'influx'",
    ):
        assert sum(needle in line for line in lines[1:]) == 1, start.stderr
    assert _settings_processes(vista) == []
    assert not vista.pidfile.exists()
    assert not vista.log_dir.exists()
    assert not vista.pid_dir.exists()


# --- 8. the log file -------------------------------------------------------------------------


@pytest.mark.slow
def test_log_is_appended_shared_and_never_shows_secrets(
    vista_factory: HarnessFactory, tmp_redis: RedisFactory, prometheus_server: PrometheusServer
) -> None:
    redis_password = "RedisPassword-never-in-the-log-5150"
    flux_key = "FluxKeyNeverInTheLog0123456789ZZ"
    prom_password = "PromPassword-never-in-the-log-8086"
    token = "BearerToken-never-in-the-log-3306"
    assert len(flux_key) == 32 and flux_key.isalnum()
    server = tmp_redis(password=redis_password)
    refused = free_port()
    entries = (
        {
            "remote_host": prometheus_server.url,
            "remote_host_type": "prometheus",
            "remote_target": "up",
            "graphite_target": "up",
            "namespace_prefix": "test.secrets",
            "user": "vista",
            "password": prom_password,
        },
        {
            "remote_host": f"http://127.0.0.1:{refused}",
            "remote_host_type": "prometheus",
            "remote_target": "up",
            "graphite_target": "refused",
            "namespace_prefix": "test.secrets",
            "token": token,
        },
    )
    with FluxServer() as flux:  # knows DEFAULT_KEY only: our key is refused (401)
        vista = vista_factory(
            server,
            REDIS_PASSWORD=redis_password,
            VISTA_SINK="flux",
            FLUX_IP="127.0.0.1",
            FLUX_PORT=flux.port,
            FLUX_SELF_API_KEY=flux_key,
            VISTA_VERBOSE_LOGGING=True,
            VISTA_FETCH_METRICS=entries,
        )
        client = server.client()
        push_items(client, ["test.secrets.pushed"], minute_points(3))
        client.close()
        outputs = []

        first = vista.start()
        first_workers = vista.wait_workers(first, 2)
        vista.wait_log("Flux refused FLUX_SELF_API_KEY (HTTP 401")
        vista.wait_log(f"http://127.0.0.1:{refused} test.secrets.refused")
        reload = vista.cli("reload")
        vista.wait_log("reload: settings applied")
        vista.wait_workers(first, 2)
        outputs += [reload, vista.cli("status"), vista.cli("stop")]
        assert outputs[-1].returncode == 0, str(outputs[-1])
        after_first = vista.log()

        second = vista.start()
        second_workers = vista.wait_workers(second, 2)
        outputs.append(vista.cli("stop"))
        assert outputs[-1].returncode == 0, str(outputs[-1])
    assert flux.request_count >= 1

    log = vista.log()
    assert log.startswith(after_first)  # appended, never truncated
    assert log.index(f"MainProcess[{first.pid}]") < log.index(f"MainProcess[{second.pid}]")
    for agent, workers in ((first, first_workers), (second, second_workers)):
        assert f"MainProcess[{agent.pid}] skyline.vista.agent: vista " in log
        names = {re.search(rf"(vista-worker-\d)\[{w.pid}\]", log) for w in workers}
        assert {m.group(1) for m in names if m} == {"vista-worker-0", "vista-worker-1"}
    for secret in (redis_password, flux_key, prom_password, token):
        assert secret not in log
        for result in outputs:
            assert secret not in result.stdout + result.stderr


# --- 9. bin/vista.d --------------------------------------------------------------------------


def test_init_script_lsb_exit_codes(vista: VistaHarness) -> None:
    def vista_d(*args: str) -> int:
        result = vista.run_argv([str(VISTA_D), *args], ("vista.d", *args))
        return result.returncode

    settings = ("--settings", str(vista.settings_path))
    assert vista_d("start", *settings) == 0
    agent = Proc.of(vista.pidfile_pid() or 0)
    assert agent is not None
    vista.seen.add(agent)
    vista.wait_workers(agent, 2)
    assert vista_d("status", *settings) == 0
    os.kill(agent.pid, signal.SIGKILL)
    wait_dead_agent(agent)
    assert vista_d("status", *settings) == 1
    assert vista_d("start", *settings) == 0
    assert vista.pidfile_pid() not in (None, agent.pid)
    assert vista_d("stop", *settings) == 0
    assert vista_d("status", *settings) == 3

    usage = vista.run_argv([str(VISTA_D)], ("vista.d",))
    assert usage.returncode == 2
    assert "usage: vista.d {start|stop|restart|status|reload|run|check-config}" in usage.stderr
    assert vista.run_argv([str(VISTA_D), "frobnicate"]).returncode == 2


# --- 10. parent death ------------------------------------------------------------------------


def test_sigkilled_agent_takes_busy_workers_with_it(
    vista_factory: HarnessFactory, redis_tcp: RedisServer
) -> None:
    total = 3000
    with FluxServer(record=False) as flux:
        vista = vista_factory(
            redis_tcp,
            VISTA_SINK="flux",
            FLUX_IP="127.0.0.1",
            FLUX_PORT=flux.port,
            FLUX_SELF_API_KEY=DEFAULT_KEY,
            VISTA_WORKER_BATCH_ITEMS=5,
        )
        client = redis_tcp.client()
        push_items(client, [f"test.busy.m{i:05d}" for i in range(total)], minute_points(5))
        agent = vista.start()
        workers = vista.wait_workers(agent, 2)
        tree = vista.tree(agent)
        wait_for(
            lambda: True if client.scard(constants.VISTA_METRICS_KEY) >= 100 else None,
            20.0,
            "100 items delivered",
        )

        os.kill(agent.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_gone(tree, 5.0)
        gone = time.monotonic() - killed_at
        print(f"\nbusy workers gone {gone:.2f} s after the agent's SIGKILL")

    log = vista.log()
    for worker in workers:
        assert worker_log(worker.pid, "stopped").search(log), vista.log_tail()
    counts = FetchQueue(client).counts()
    delivered = int(client.scard(constants.VISTA_METRICS_KEY))
    assert counts.inflight == 0  # the workers handed back what they held
    assert 0 < delivered < total  # they were killed mid-work
    assert counts.queued + delivered == total
    assert counts.dead == 0
    # With the Flux sink Vista keeps its own watermark hash; flux.last.* belong to Flux.
    assert int(client.hlen(constants.VISTA_WATERMARK_HASH)) == delivered
    assert int(client.hlen(constants.WATERMARK_HASH)) == 0
    client.close()


@pytest.mark.parametrize("command", ["run", "start"])
def test_a_metrics_port_in_use_refuses_to_start_in_one_line(
    vista: VistaHarness, command: str
) -> None:
    # Before: vista run died with an OSError traceback after its fetcher and workers had
    # started (then tracebacks of the fetcher thread at interpreter shutdown).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        vista.write_settings(VISTA_METRICS_ADDRESS=f"127.0.0.1:{port}")
        result = vista.cli(command, timeout=30)
        output = result.stderr + (vista.logfile.read_text() if vista.logfile.exists() else "")
        assert result.returncode == constants.EXIT_FAILURE, str(result)
        assert (
            f"cannot start: VISTA_METRICS_ADDRESS: cannot serve /metrics on 127.0.0.1:{port}: "
            "Address already in use" in output
        ), output
        assert "Traceback" not in output, output
        assert "worker 0 started" not in output and "fetcher started" not in output, output
        assert _settings_processes(vista) == []
        assert not vista.pidfile.exists()
