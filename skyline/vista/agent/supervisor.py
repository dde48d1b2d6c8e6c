"""The agent's supervisor: starts the Fetcher thread and the Worker processes and supervises
them (``skyline.vista.agent.serve`` wires the process and runs it).

* A worker that dies is restarted (with backoff when it keeps dying young) and the items it
  held are put back in the queue at once.
* A fetcher thread that dies is restarted.
* Children stop by themselves when the agent dies, even by SIGKILL (parent-death signal).
* SIGTERM/SIGINT drain: the fetcher stops, workers finish or hand back what they hold, and
  everything is gone within VISTA_SHUTDOWN_TIMEOUT (10 s); a second signal exits at once.
* SIGHUP re-reads the settings: applied when valid, kept as before (errors logged) when not.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

from skyline.vista import config as config_module
from skyline.vista import constants, logs, membership, redisconn, telemetry
from skyline.vista.backoff import compute_backoff
from skyline.vista.bq_fetcher import BqScheduler
from skyline.vista.config import VistaConfig
from skyline.vista.create_budget import BudgetCollector
from skyline.vista.errors import ConfigError
from skyline.vista.fetcher import Fetcher
from skyline.vista.fetchqueue import FetchQueue, watermark_keys
from skyline.vista.jobs.supervisor import JobSupervisor
from skyline.vista.logs import LogSpec
from skyline.vista.pool import ChildExit, ProcessPool
from skyline.vista.worker import Worker, worker_id

logger = logging.getLogger("skyline.vista.agent")  # the name Vista has always logged as

SUPERVISE_EVERY = 0.2
HEARTBEAT_EVERY = 10.0
SELF_METRICS_EVERY = 60.0


@dataclass
class AgentState:
    stop_requested: bool = False
    signals: int = 0
    reload_requested: bool = False
    fetcher_failures: int = 0
    fetcher_restart_at: float = 0.0
    workers: int = 0


class Vista:
    """The Vista agent process (the original's ``skyline.vista.agent.Vista``)."""

    def __init__(
        self,
        config: VistaConfig,
        log_spec: LogSpec,
        on_force_exit: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.on_force_exit = on_force_exit
        self.log_spec = log_spec
        self.pid = os.getpid()
        self.state = AgentState()
        self.fetcher: Fetcher | None = None
        self.pool = ProcessPool()
        self.client = redisconn.connect(config.redis)
        self.jobs = JobSupervisor(config, self.client, self.pool, log_spec)
        self.bq_scheduler = BqScheduler(config, self.client) if config.bq_accounts else None
        self.queue = FetchQueue(self.client, watermark_keys(config.sink))
        self.hostname = config.hostname
        self.started = time.time()
        self._next_heartbeat = 0.0
        self._next_member_beat = 0.0
        self._next_self_metrics = time.monotonic() + SELF_METRICS_EVERY
        self.self_metrics = telemetry.SelfMetrics(
            config.self_metrics.host, config.self_metrics.port, config.self_metrics.prefix
        )

    # --- signals --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.state.signals += 1
        if self.state.signals > 1:
            # Second signal: leave now. Workers get SIGKILL; their held items are recovered by
            # the next agent or by any worker once their leases expire.
            self.pool.kill_all()
            if self.on_force_exit is not None:
                self.on_force_exit()  # e.g. remove the pidfile: this is a stop, not a crash
            os._exit(constants.EXIT_FAILURE)
        self.state.stop_requested = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.state.reload_requested = True

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, then the fetcher thread (as the original does)."""
        if self.config.metrics_address:  # first: a port in use stops the start, no child runs
            self._serve_metrics(self.config.metrics_address)
        self.state.workers = self.config.worker_processes
        for index in range(self.state.workers):
            self._start_worker(index)
        self._member_heartbeat(force=True)  # join before the first cycle, so others see us
        self._start_fetcher()

    def _serve_metrics(self, address: tuple[str, int]) -> None:
        try:
            telemetry.start_metrics_server(
                address,
                self._queue_snapshot,
                [BudgetCollector(self.client, self.config.carbon_max_creates_per_minute)],
            )
        except OSError as exc:
            raise ConfigError(
                [
                    f"VISTA_METRICS_ADDRESS: cannot serve /metrics on {address[0]}:{address[1]}: "
                    f"{exc.strerror or exc}"
                ],
                self.config.path,
            ) from None
        logger.info("serving /metrics on %s:%d", *address)

    def run(self, ready: Callable[[], None] | None = None) -> int:
        self.install_signal_handlers()
        logger.info(
            "vista %s starting: %d worker(s), sink %s, %d metric(s), settings %s",
            _version(),
            self.config.worker_processes,
            self.config.sink,
            len(self.config.fetch_metrics),
            self.config.path,
        )
        for warning in self.config.warnings:
            logger.warning("settings: %s", warning)
        self.start()
        if ready is not None:
            ready()
        while not self.state.stop_requested:
            self.supervise_once()
            time.sleep(SUPERVISE_EVERY)
        return self.drain()

    def supervise_once(self) -> None:
        if self.state.reload_requested:
            self.state.reload_requested = False
            self.reload()
        self.pool.poll()
        self.jobs.tick(self.state.stop_requested)
        if self.bq_scheduler is not None and not self.state.stop_requested:
            self.bq_scheduler.tick(time.time())
        self._check_fetcher()
        self._member_heartbeat()
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + HEARTBEAT_EVERY
        if now >= self._next_self_metrics:
            self._send_worker_self_metrics()
            self._next_self_metrics = now + SELF_METRICS_EVERY

    def drain(self) -> int:
        """Stop taking new work, let workers finish or hand back, all gone within the timeout."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        logger.info("stopping: draining within %gs", self.config.shutdown_timeout)
        if self.fetcher is not None:
            self.fetcher.stop()
        self._leave()
        exits = self.pool.stop_all(self.config.shutdown_timeout)
        forced = sum(1 for e in exits if e.killed)
        if self.fetcher is not None:
            self.fetcher.join(max(0.1, deadline - time.monotonic()))
        try:
            self.client.delete(f"{constants.AGENT_KEY_PREFIX}{self.hostname}")
        except redisconn.REDIS_ERRORS:
            pass
        if forced:
            logger.warning(
                "stopped; %d worker(s) had to be killed (their items were requeued)", forced
            )
        else:
            logger.info("stopped")
        return constants.EXIT_OK

    # --- workers --------------------------------------------------------------------------

    @staticmethod
    def _worker_name(index: int) -> str:
        return f"worker-{index}"

    def _start_worker(self, index: int) -> None:
        def factory() -> Worker:
            return Worker(self.pid, self.config, index, self.log_spec)

        def on_exit(exit_: ChildExit) -> None:
            self._worker_exited(index, exit_)

        def on_start(process: BaseProcess) -> None:
            logger.info("worker %d started (pid %s)", index, process.pid)

        self.pool.start(
            self._worker_name(index), factory, respawn=True, on_exit=on_exit, on_start=on_start
        )

    def _worker_exited(self, index: int, exit_: ChildExit) -> None:
        """The pool reaped a worker: give its items back at once, drop its heartbeat."""
        wid = worker_id(self.hostname, index, exit_.pid)
        _mark_dead(exit_.pid)
        recovered = self._recover(wid)
        try:
            self.client.delete(constants.WORKER_HEARTBEAT_PREFIX + wid)
        except redisconn.REDIS_ERRORS:
            pass  # it expires by itself
        if exit_.restart_in is None:
            return  # stopped on purpose (drain, reload, resize)
        telemetry.WORKER_RESTARTS.inc()
        logger.error(
            "worker %d (pid %s) exited with code %s after %.0fs; %d item(s) requeued; "
            "restarting in %.1fs",
            index,
            exit_.pid,
            exit_.exitcode,
            exit_.lived,
            recovered,
            exit_.restart_in,
        )

    def _recover(self, wid: str) -> int:
        try:
            return self.queue.recover(only_worker=wid)
        except redisconn.REDIS_ERRORS as exc:
            logger.warning(
                "could not requeue the items of %s now (%s); they are recovered when "
                "its lease expires",
                wid,
                exc,
            )
            return 0

    # --- fetcher --------------------------------------------------------------------------

    def _start_fetcher(self) -> None:
        previous = self.fetcher
        fetcher = Fetcher(self.pid, self.config)
        if previous is not None:
            fetcher.state = previous.state
        fetcher.start()
        self.fetcher = fetcher

    def _check_fetcher(self) -> None:
        if self.fetcher is None or self.fetcher.is_alive() or self.state.stop_requested:
            return
        now = time.monotonic()
        if self.state.fetcher_restart_at == 0.0:
            self.state.fetcher_failures += 1
            delay = compute_backoff(self.state.fetcher_failures, base=1.0, cap=60.0)
            self.state.fetcher_restart_at = now + delay
            logger.error("the fetcher thread died; restarting it in %.1fs", delay)
        if now >= self.state.fetcher_restart_at:
            self.state.fetcher_restart_at = 0.0
            self._start_fetcher()

    # --- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        try:
            new = config_module.load(self.config.path)
        except ConfigError as exc:
            logger.error(
                "reload: the settings in %s are invalid; keeping the current settings:\n  %s",
                exc.path,
                "\n  ".join(exc.problems),
            )
            return
        if not new.enabled:
            logger.warning("reload: VISTA_ENABLED is now False; stopping")
            self.state.stop_requested = True
            return
        for warning in new.warnings:
            logger.warning("settings: %s", warning)
        if new.redis != self.config.redis or new.metrics_address != self.config.metrics_address:
            logger.warning("reload: Redis and VISTA_METRICS_ADDRESS changes take effect at restart")
        self.config = new
        self.log_spec = LogSpec(self.log_spec.log_file, new.verbose_logging, tuple(new.secrets()))
        logs.configure(self.log_spec)
        self.jobs.config, self.jobs.log_spec = new, self.log_spec  # for jobs started from now
        if self.fetcher is not None:
            self.fetcher.update_config(new)
        if self.bq_scheduler is not None:
            self.bq_scheduler.update_config(new)
        elif new.bq_accounts:
            self.bq_scheduler = BqScheduler(new, self.client)
        self._resize_and_roll(new.worker_processes)
        logger.info(
            "reload: settings applied (%d metric(s), %d worker(s))",
            len(new.fetch_metrics),
            new.worker_processes,
        )

    def _resize_and_roll(self, count: int) -> None:
        """Workers pick up new settings by restarting: each drains and is replaced."""
        for index in range(max(count, self.state.workers)):
            self.pool.stop(self._worker_name(index), self.config.shutdown_timeout)
            if index < count:
                self._start_worker(index)
        self.state.workers = count

    # --- membership -----------------------------------------------------------------------

    def _member_heartbeat(self, *, force: bool = False) -> None:
        """Keep this host among the live Vista hosts while its fetcher runs (every third of
        VISTA_MEMBER_TTL): the others take its metrics over when the key expires."""
        if self.config.shards:
            return
        now = time.monotonic()
        if not force and now < self._next_member_beat:
            return
        if not force and not (self.fetcher is not None and self.fetcher.is_alive()):
            return  # the fetcher is down (restarting): let the others fetch meanwhile
        ttl = self.config.member_ttl
        self._next_member_beat = now + ttl / 3
        try:
            membership.heartbeat(self.client, self.hostname, ttl, str(self.pid))
        except redisconn.REDIS_ERRORS:
            self._next_member_beat = now + min(1.0, ttl / 3)
            logger.debug("member heartbeat not written (Redis unavailable)")

    def _leave(self) -> None:
        if self.config.shards:
            return
        try:
            membership.leave(self.client, self.hostname)
        except redisconn.REDIS_ERRORS:
            pass  # the member key expires by itself

    # --- reporting ------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        record = {
            "pid": self.pid,
            "started": int(self.started),
            "settings": self.config.path,
            "fetcher": bool(self.fetcher and self.fetcher.is_alive()),
            "workers": [
                {"index": i, "pid": pid, "wid": worker_id(self.hostname, i, pid)}
                for i in range(self.state.workers)
                for pid in [self.pool.pid(self._worker_name(i))]
            ],
        }
        try:
            self.client.set(
                f"{constants.AGENT_KEY_PREFIX}{self.hostname}",
                json.dumps(record),
                ex=constants.HEARTBEAT_TTL,
            )
            errors = logs.error_counter.take()
            if errors:
                pipe = self.client.pipeline(transaction=False)
                pipe.incrby(constants.LOG_ERRORS_KEY, errors)
                pipe.expire(constants.LOG_ERRORS_KEY, constants.LOG_ERRORS_TTL)
                pipe.execute()
        except redisconn.REDIS_ERRORS:
            logger.debug("agent heartbeat not written (Redis unavailable)")

    def _send_worker_self_metrics(self) -> None:
        key = f"{constants.HOST_STATS_KEY_PREFIX}{self.hostname}"
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(key)
            pipe.delete(key)
            pipe.scard(constants.QUEUE_KEY)
            stats, _, queued = pipe.execute()
        except redisconn.REDIS_ERRORS:
            return
        values = {k.decode(): float(v) for k, v in stats.items()}
        self.self_metrics.send(
            {
                "worker.metrics_sent_to_flux": values.get("metrics_sent", 0.0),
                "worker.points_sent": values.get("points_sent", 0.0),
                "worker.vista.fetcher.metrics.json": float(queued),
            }
        )

    def _queue_snapshot(self) -> telemetry.QueueSnapshot | None:
        try:
            counts = self.queue.counts()
            failing = self.queue.failing_windows()
        except redisconn.REDIS_ERRORS:
            return None
        return telemetry.QueueSnapshot(
            counts.queued,
            counts.inflight,
            counts.dead,
            counts.pending_metrics,
            failing_windows=sum(len(h) for h in failing.values()),
        )


def _mark_dead(pid: int | None) -> None:
    if pid and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _version() -> str:
    from skyline.vista import __version__

    return __version__
