"""The agent's supervisor: starts the Fetcher thread and the Worker processes and supervises
them (``skyline.vista.agent.serve`` wires the process and runs it).

* A worker that dies is restarted (with backoff when it keeps dying young) and the items it
  held are put back in the queue at once (:mod:`skyline.vista.agent.workers`).
* A fetcher thread that dies is restarted (:mod:`skyline.vista.agent.fetcher_thread`).
* Children stop by themselves when the agent dies, even by SIGKILL (parent-death signal).
* SIGTERM/SIGINT drain: the fetcher stops, workers finish or hand back what they hold, and
  everything is gone within VISTA_SHUTDOWN_TIMEOUT (10 s); a second signal exits at once
  (:mod:`skyline.vista.agent.signals`).
* SIGHUP re-reads the settings: applied when valid, kept as before (errors logged) when not
  (:mod:`skyline.vista.agent.reload`).
* Membership and the heartbeat record are :mod:`skyline.vista.agent.presence`'s; /metrics and
  the self-metrics :mod:`skyline.vista.agent.self_metrics`'; history and BigQuery jobs
  :class:`~skyline.vista.jobs.supervisor.JobSupervisor`'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from skyline.vista import constants, logs, redisconn
from skyline.vista.agent.fetcher_thread import FetcherThread
from skyline.vista.agent.presence import Presence
from skyline.vista.agent.reload import read_settings
from skyline.vista.agent.self_metrics import AgentMetrics
from skyline.vista.agent.signals import SignalHandlers
from skyline.vista.agent.workers import Workers
from skyline.vista.bq_fetcher import BqScheduler
from skyline.vista.config import VistaConfig
from skyline.vista.fetchqueue import FetchQueue, watermark_keys
from skyline.vista.jobs.supervisor import JobSupervisor
from skyline.vista.logs import LogSpec
from skyline.vista.pool import ProcessPool

logger = logging.getLogger("skyline.vista.agent")  # the name Vista has always logged as

SUPERVISE_EVERY = 0.2


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
        self.signals = SignalHandlers(self._force_exit)
        self.pool = ProcessPool()
        self.client = redisconn.connect(config.redis)
        self.queue = FetchQueue(self.client, watermark_keys(config.sink))
        self.fetcher = FetcherThread(self.pid, config)
        self.workers = Workers(self.pid, config, log_spec, self.pool, self.client, self.queue)
        self.jobs = JobSupervisor(config, self.client, self.pool, log_spec)
        self.bq_scheduler = BqScheduler(config, self.client) if config.bq_accounts else None
        self.presence = Presence(self.pid, config, self.client)
        self.metrics = AgentMetrics(config, self.client, self.queue)

    def _force_exit(self) -> None:
        """The second stop signal: workers get SIGKILL, the pidfile goes (a stop, not a crash)."""
        self.pool.kill_all()
        if self.on_force_exit is not None:
            self.on_force_exit()

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, then the fetcher thread (as the original does)."""
        self.metrics.serve()  # first: a port in use stops the start, no child runs
        self.workers.start(self.config.worker_processes)
        self.presence.member_heartbeat(False, force=True)  # join before the first cycle
        self.fetcher.start()

    def run(self, ready: Callable[[], None] | None = None) -> int:
        self.signals.install()
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
        while not self.signals.requests.stop:
            self.supervise_once()
            time.sleep(SUPERVISE_EVERY)
        return self.drain()

    def supervise_once(self) -> None:
        requests = self.signals.requests
        if requests.reload:
            requests.reload = False
            self.reload()
        self.pool.poll()
        self.jobs.tick(requests.stop)
        if self.bq_scheduler is not None and not requests.stop:
            self.bq_scheduler.tick(time.time())
        if not requests.stop:
            self.fetcher.check()
        self.presence.member_heartbeat(self.fetcher.alive())
        self.presence.heartbeat(self.fetcher.alive(), self.workers.records)
        self.metrics.tick()

    def drain(self) -> int:
        """Stop taking new work, let workers finish or hand back, all gone within the timeout."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        logger.info("stopping: draining within %gs", self.config.shutdown_timeout)
        self.fetcher.stop()
        self.presence.leave()
        exits = self.pool.stop_all(self.config.shutdown_timeout)
        forced = sum(1 for e in exits if e.killed)
        self.fetcher.join(max(0.1, deadline - time.monotonic()))
        self.presence.remove()
        if forced:
            logger.warning(
                "stopped; %d worker(s) had to be killed (their items were requeued)", forced
            )
        else:
            logger.info("stopped")
        return constants.EXIT_OK

    def reload(self) -> None:
        new = read_settings(self.config)
        if new is None:
            return
        if not new.enabled:
            self.signals.requests.stop = True
            return
        self.config = new
        self.log_spec = LogSpec(self.log_spec.log_file, new.verbose_logging, tuple(new.secrets()))
        logs.configure(self.log_spec)
        self.jobs.config, self.jobs.log_spec = new, self.log_spec  # for jobs started from now
        self.presence.config = new
        self.fetcher.update_config(new)
        if self.bq_scheduler is not None:
            self.bq_scheduler.update_config(new)
        elif new.bq_accounts:
            self.bq_scheduler = BqScheduler(new, self.client)
        self.workers.roll(new, self.log_spec)
        logger.info(
            "reload: settings applied (%d metric(s), %d worker(s))",
            len(new.fetch_metrics),
            new.worker_processes,
        )


def _version() -> str:
    from skyline.vista import __version__

    return __version__
