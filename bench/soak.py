"""Soak: Vista under a long run of failures, then every point checked in whisper.

Real servers (skyline/vista/testing/servers.py): a redis-server, a Prometheus, a carbon-cache
(retention ``60s:2d``), with the recording proxy of tests/carbon_proxy.py in front of carbon's
pickle port, so a point sent twice is seen on the wire even though whisper keeps one value per
slot. One
``vista run`` daemon fetches ``--metrics`` series (default 1,000) at 60 s; each is
``vector(time() + i)``, so Prometheus holds every minute of every series for any past time and
the value of each (``ts + i``) is known: a missing minute can only be Vista's.

Phases (minutes, ``--scale`` multiplies them for a quick trial):

1. warm-up until every metric has been delivered up to the last closed minute;
2. ``--kill-minutes`` (5) of SIGKILL of a random worker every ``--kill-every`` (10) s;
3. the sink down ``--sink-down`` (10) minutes (the proxy refuses and drops connections; carbon
   itself keeps running, because its SIGTERM loses what is still in its cache);
4. the source down ``--source-down`` (10) minutes (Prometheus stopped, then started again);
5. recovery until every metric is caught up again; then ``vista`` gets SIGTERM.

Printed: the points expected, missing, wrong and stored twice (sent twice on the wire), the
queue's largest size (queued, in flight, metrics pending), dead letters, and the RSS of each
Vista process over time. Not a test: it prints figures.

    .venv/bin/python -m bench.soak                # ~30 minutes
    .venv/bin/python -m bench.soak --scale 0.1    # ~5 minutes, same shape
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import random
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from bench.common import loadavg, proc_usage, table
from skyline.vista import constants
from skyline.vista.testing.servers import (
    LOOPBACK,
    SYSTEM_PYTHON,
    CarbonServer,
    PrometheusServer,
    RedisServer,
    poll_until,
)
from tests.support.carbon_proxy import PickleRecorder
from tests.support.daemon import Proc, VistaHarness, children

STEP = 60
SAMPLE_EVERY = 5.0

_WHISPER_ALL = r"""
import json, sys, time, whisper
root, names, start, end = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}
for name in names:
    path = root + "/" + name.replace(".", "/") + ".wsp"
    try:
        (first, _last, step), values = whisper.fetch(path, start, end)
    except Exception as exc:
        out[name] = str(exc)
        continue
    out[name] = [[first + i * step, v] for i, v in enumerate(values) if v is not None]
print(json.dumps(out))
"""


@dataclass
class Sample:
    at: float
    phase: str
    queued: int
    inflight: int
    pending: int
    dead: int
    chained: int  # items waiting in the metrics' chains (the rest of long windows)
    rss: dict[str, float]  # role -> MB


@dataclass
class Soak:
    args: argparse.Namespace
    root: Path
    samples: list[Sample] = field(default_factory=list)
    phase: str = "warm-up"
    kills: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    agent: Proc | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)

    def say(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        print(f"[{stamp}Z] {text}", flush=True)

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.phases.append((phase, time.time()))
        self.say(f"phase: {phase}")

    # --- sampling -------------------------------------------------------------------------

    def sampler(self, redis_server: RedisServer, names: list[str]) -> None:
        client = redis_server.client()
        chains = [constants.CHAIN_KEY_PREFIX + name for name in names]
        try:
            while not self.stop.wait(SAMPLE_EVERY):
                try:
                    pipe = client.pipeline(transaction=False)
                    pipe.scard(constants.QUEUE_KEY)
                    pipe.hlen(constants.INFLIGHT_KEY)
                    pipe.hlen(constants.PENDING_KEY)
                    pipe.hlen(constants.DEAD_KEY)
                    for key in chains:
                        pipe.llen(key)
                    queued, inflight, pending, dead, *chained = pipe.execute()
                except Exception:  # noqa: BLE001 - a sample missed is not a failure
                    continue
                self.samples.append(
                    Sample(
                        time.time(),
                        self.phase,
                        queued,
                        inflight,
                        pending,
                        dead,
                        sum(chained),
                        self.rss(),
                    )
                )
        finally:
            client.close()

    def rss(self) -> dict[str, float]:
        found: dict[str, float] = {}
        if self.agent is None or not self.agent.alive():
            return found
        try:
            found["agent"] = proc_usage(self.agent.pid).rss_mb
        except OSError:
            return found
        workers = sorted((p for p in children(self.agent.pid) if p.is_worker), key=lambda p: p.pid)
        for n, proc in enumerate(workers):
            try:
                found[f"worker{n}"] = proc_usage(proc.pid).rss_mb
            except OSError:
                continue
        return found


def settings(args: argparse.Namespace, prom: PrometheusServer, redis_server: RedisServer,
             carbon: CarbonServer, proxy: PickleRecorder) -> dict[str, object]:  # fmt: skip
    entries = tuple(
        (
            prom.url,
            "prometheus",
            STEP,
            f"vector(time() + {i})",
            f"m{i:04d}",
            "default",
            "soak",
            None,
            None,
            None,
            None,
            None,
        )  # fmt: skip
        for i in range(args.metrics)
    )
    return {
        "VISTA_ENABLED": True,
        "REDIS_URL": f"redis://{LOOPBACK}:{redis_server.port}/0",
        "VISTA_SINK": "graphite",
        "CARBON_HOST": LOOPBACK,
        "CARBON_PORT": carbon.line_port,
        "CARBON_PICKLE_PORT": proxy.port,
        "VISTA_WORKER_PROCESSES": args.workers,
        # This carbon-cache creates without limit (MAX_CREATES_PER_MINUTE = inf): no pacing of
        # the 1,000 new whisper files, or the warm-up alone would last 20 minutes.
        "VISTA_CARBON_MAX_CREATES_PER_MINUTE": 1_000_000,
        "VISTA_FETCH_METRICS": entries,
    }


def last_closed(now: float) -> int:
    return int(now) // STEP * STEP - STEP


def caught_up(proxy: PickleRecorder, names: list[str], now: float) -> int | None:
    last = last_closed(now)
    sent = proxy.by_metric()
    ok = all(any(s.timestamp == last for s in sent.get(m, [])) for m in names)
    return last if ok else None


def whisper_points(
    carbon: CarbonServer, names: list[str], start: int, end: int
) -> dict[str, object]:
    proc = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            _WHISPER_ALL,
            str(carbon.whisper_dir),
            json.dumps(names),
            str(start),
            str(end),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    found: dict[str, object] = json.loads(proc.stdout)
    return found


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="vista-soak-"))
    soak = Soak(args, root)
    names = [f"soak.m{i:04d}" for i in range(args.metrics)]
    minutes = args.scale * 60
    soak.say(f"soak: {args.metrics} metrics at {STEP}s, {args.workers} worker(s), in {root}; "
             f"{loadavg()}")  # fmt: skip
    redis_server = RedisServer(root / "redis").start()
    prom = PrometheusServer(root / "prometheus").start()
    carbon = CarbonServer(root / "carbon", retentions="60s:2d").start()
    proxy = PickleRecorder((LOOPBACK, carbon.pickle_port))
    harness = VistaHarness(root / "vista", settings(args, prom, redis_server, carbon, proxy))
    log = root / "vista.stderr"
    sampler = threading.Thread(target=soak.sampler, args=(redis_server, names), daemon=True)
    rng = random.Random(args.seed)
    try:
        popen, agent = harness.run_foreground(log)
        soak.agent = agent
        sampler.start()
        soak.enter("warm-up")
        poll_until(lambda: caught_up(proxy, names, time.time()), 600, what="warm-up",
                   interval=2, max_interval=2)  # fmt: skip

        soak.enter("worker kills")
        until = time.time() + args.kill_minutes * minutes
        while time.time() < until:
            time.sleep(args.kill_every)
            workers = harness.workers(agent)
            if workers:
                rng.choice(workers).kill()
                soak.kills += 1
        soak.say(f"{soak.kills} workers SIGKILLed")

        soak.enter("sink down")
        proxy.set_down()
        time.sleep(args.sink_down * minutes)
        proxy.set_up()

        soak.enter("source down")
        prom.stop()
        time.sleep(args.source_down * minutes)
        prom.start()

        soak.enter("recovery")
        began = time.time()
        end = poll_until(
            lambda: caught_up(proxy, names, max(time.time(), began + STEP)),
            900,
            what="every metric caught up",
            interval=2,
            max_interval=2,
        )
        soak.say(f"caught up to {time.strftime('%H:%M', time.gmtime(end))}Z after "
                 f"{time.time() - began:.0f} s")  # fmt: skip
        soak.enter("stopped")
        popen.send_signal(signal.SIGTERM)
        code = popen.wait(60)
        soak.stop.set()
        sampler.join(10)
        poll_until(lambda: all(not carbon.cache_query(m) for m in names) or None, 120,
                   what="carbon to write its cache", interval=1, max_interval=2)  # fmt: skip
        report(soak, proxy, carbon, names, end, code, harness.log(log))
    finally:
        soak.stop.set()
        harness.cleanup()
        proxy.close()
        for server in (carbon, prom, redis_server):
            server.stop()
    return 0


def report(soak: Soak, proxy: PickleRecorder, carbon: CarbonServer, names: list[str], end: int,
           code: int, log: str) -> None:  # fmt: skip
    sent = proxy.by_metric()
    starts = {m: min((s.timestamp for s in sent.get(m, [])), default=end + STEP) for m in names}
    stored = whisper_points(carbon, names, min(starts.values()) - STEP, end)
    expected = missing = wrong = twice = extra = 0
    examples: list[str] = []
    for i, metric in enumerate(names):
        stamps = [s.timestamp for s in sent.get(metric, []) if s.timestamp <= end]
        twice += len(stamps) - len(set(stamps))
        want = {ts: float(ts + i) for ts in range(starts[metric], end + 1, STEP)}
        expected += len(want)
        rows = stored.get(metric)
        got = {int(ts): v for ts, v in rows} if isinstance(rows, list) else {}
        gone = [ts for ts in want if ts not in got]
        bad = [ts for ts in want if ts in got and got[ts] != want[ts]]
        missing += len(gone)
        wrong += len(bad)
        extra += len([ts for ts in got if ts not in want and ts >= starts[metric]])
        if (gone or bad) and len(examples) < 5:
            examples.append(f"{metric}: missing {gone[:5]} wrong {bad[:5]}")
    top = max(soak.samples, key=lambda s: s.queued + s.inflight + s.chained, default=None)
    print()
    print(f"vista exited with {code}; {log.count(' ERROR ')} ERROR lines, "
          f"{log.count('Traceback')} tracebacks; {soak.kills} workers SIGKILLed")  # fmt: skip
    print(table(
        ["figure", "value"],
        [
            ["metrics", str(len(names))],
            ["points expected (every minute from each metric's first)", str(expected)],
            ["points missing in whisper", str(missing)],
            ["points with a wrong value", str(wrong)],
            ["points stored twice (sent twice to carbon)", str(twice)],
            ["points after the checked end in whisper", str(extra)],
            ["queue's largest size (queued + in flight + chained)",
             f"{top.queued + top.inflight + top.chained} ({top.queued} queued, {top.inflight} "
             f"in flight, {top.chained} chained, {top.pending} metrics pending) in {top.phase}"
             if top else "-"],
            ["dead letters at the end", str(soak.samples[-1].dead if soak.samples else "-")],
        ],
    ))  # fmt: skip
    for line in examples:
        print("  " + line)
    print()
    print("RSS (MB) of each Vista process over time (workers are replaced after each SIGKILL):")
    lines: list[list[str]] = []
    t0 = soak.samples[0].at if soak.samples else 0.0
    last_minute = -1
    for sample in soak.samples:
        minute = int((sample.at - t0) // 60)
        if minute == last_minute:
            continue
        last_minute = minute
        shown = [f"{v:.0f}" for k, v in sorted(sample.rss.items()) if k != "agent"]
        lines.append([f"{minute:3d} min", sample.phase, f"{sample.rss.get('agent', 0):.0f}",
                      " ".join(shown), str(sample.queued), str(sample.inflight)])  # fmt: skip
    print(table(["time", "phase", "agent", "workers", "queued", "in flight"], lines))
    agent = [s.rss["agent"] for s in soak.samples if "agent" in s.rss]
    workers = [v for s in soak.samples for k, v in s.rss.items() if k != "agent"]
    if agent and workers:
        print(f"agent RSS: first {agent[0]:.0f} MB, last {agent[-1]:.0f} MB, max {max(agent):.0f} "
              f"MB; worker RSS: min {min(workers):.0f} MB, max {max(workers):.0f} MB "
              f"({len(soak.samples)} samples every {SAMPLE_EVERY:g} s)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-minutes", type=float, default=5)
    parser.add_argument("--kill-every", type=float, default=10)
    parser.add_argument("--sink-down", type=float, default=10)
    parser.add_argument("--source-down", type=float, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every phase")
    parser.add_argument("--seed", type=int, default=1)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
