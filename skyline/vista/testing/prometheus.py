"""``prometheus`` on loopback, optionally pre-loaded with exact history."""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from skyline.vista.testing.base import HttpServer
from skyline.vista.testing.common import (
    LOOPBACK,
    poll_until,
    require_binary,
    run_output,
    system_python,
)
from skyline.vista.testing.errors import ServerError

SLICE_SECONDS = 86400
"""History is handed to promtool a day at a time (see PrometheusServer._load_history)."""


def _history_slices(text: str) -> list[str]:
    """OpenMetrics history split into one text per UTC day of its samples (each keeps every
    comment line in its place); a single day comes back whole."""
    lines: list[tuple[int | None, str]] = []  # (day of the sample, or None for a comment)
    for line in text.splitlines():
        if line == "# EOF":
            continue
        if not line.strip() or line.startswith("#"):
            lines.append((None, line))
        else:
            lines.append((int(float(line.rsplit(" ", 1)[1])) // SLICE_SECONDS, line))
    days: dict[int, list[str]] = {day: [] for day, _ in lines if day is not None}
    if len(days) <= 1:
        return [text]
    for day, line in lines:
        if day is None:
            for kept in days.values():
                kept.append(line)
        else:
            days[day].append(line)
    return ["\n".join(days[day]) + "\n# EOF\n" for day in sorted(days)]


def _bcrypt_hash(password: str) -> str:
    """bcrypt via Debian's python3-bcrypt (a dependency of graphite-carbon's twisted).

    Cost 4 (the minimum) keeps Prometheus' per-request check cheap; this is test-only.
    """
    code = (
        "import bcrypt, sys; "
        "print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(rounds=4)).decode())"
    )
    failing = "cannot hash with bcrypt (python3-bcrypt, pulled in by graphite-carbon)"
    return system_python(code, failing, password.encode()).strip()


class PrometheusServer(HttpServer):
    """``prometheus`` on a free port, optionally pre-loaded with exact history.

    ``history`` is OpenMetrics text (``name{l="v"} value ts_seconds`` lines; ``# EOF`` is
    appended if missing).  It is turned into TSDB blocks with ``promtool tsdb
    create-blocks-from openmetrics`` before the first start, so it is queryable at once.
    Retention is set to 100y, so history of any age loads (with Prometheus' default 15d, blocks
    older than 15 days *before the newest block* are deleted at startup); future timestamps load
    too.  Facts checked on Prometheus 2.42:

    * promtool silently drops a sample whose timestamp is not later than the previous sample of
      its series (out of order or duplicate); this class counts the samples and raises.
    * ``query_range`` evaluates at ``start + k*step`` exactly; the value is the latest sample at
      or before that instant within the 5 min lookback, so a series keeps its last value for
      5 min (inclusive) after its last sample, and an evaluation before the first sample is
      absent.  With ``start`` aligned to the samples and ``step`` equal to their interval the
      result is exactly the samples.  Values are strings (``"NaN"``, ``"+Inf"``); timestamps are
      numbers (ints when whole seconds).
    * ``/-/ready`` answers ~0.1 s after spawn; a self-scrape's first sample appears 5–7 s later.
    """

    name = "prometheus"

    def __init__(
        self,
        dir: Path | str,
        *,
        history: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        scrape_self: bool = False,
        scrape_interval: str = "2s",
    ) -> None:
        super().__init__(dir)
        self.history = history
        self.basic_auth = basic_auth
        self.scrape_self = scrape_self
        self.scrape_interval = scrape_interval
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "prometheus.yml"
        self.web_config_path = self.dir / "web.yml"
        self.history_path = self.dir / "history.om"
        self._history_loaded = False
        self.history_samples: int | None = None
        """Samples promtool wrote (equals the sample lines of ``history``)."""

    @property
    def auth(self) -> tuple[str, str] | None:
        """Credentials for ``requests`` (``auth=server.auth``), or None."""
        return self.basic_auth

    def _check_installed(self) -> None:
        require_binary("prometheus")
        if self.history is not None:
            require_binary("promtool")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
            "scrape_configs:",
        ]
        if self.scrape_self:
            lines += [
                "  - job_name: prometheus",
                "    static_configs:",
                f"      - targets: ['{LOOPBACK}:{self.port}']",
            ]
            if self.basic_auth is not None:
                user, password = self.basic_auth
                lines += [
                    "    basic_auth:",
                    f"      username: {json.dumps(user)}",
                    f"      password: {json.dumps(password)}",
                ]
        else:
            lines[-1] = "scrape_configs: []"
        self.config_path.write_text("\n".join(lines) + "\n")
        if self.basic_auth is not None and not self.web_config_path.exists():
            user, password = self.basic_auth
            hashed = _bcrypt_hash(password)
            self.web_config_path.write_text(
                f"basic_auth_users:\n  {json.dumps(user)}: {json.dumps(hashed)}\n"
            )
        if self.history is not None and not self._history_loaded:
            self._load_history(self.history)
            self._history_loaded = True

    def add_history(self, history: str) -> None:
        """Load more OpenMetrics history (series that 'appear later'): stop, write the blocks
        with promtool next to the existing ones (Prometheus merges overlapping blocks), start
        again on the same port."""
        self.stop()
        self._load_history(history)
        self.start()

    def _load_history(self, history: str) -> None:
        text = history if history.endswith("\n") else history + "\n"
        if text.rstrip().splitlines()[-1:] != ["# EOF"]:
            text += "# EOF\n"
        self.history_path.write_text(text)
        expected = sum(1 for line in text.splitlines() if line.strip() and not line.startswith("#"))
        # promtool reads the whole file once per 2-hour block it writes: 30 days at 60 s of 50
        # series in one file took over two minutes, one file per day (two promtools at once)
        # 25 s (one file per block: 33 s, the per-process cost then dominates).
        slices = _history_slices(text)
        paths = []
        for n, part in enumerate(slices):
            path = self.history_path.with_name(f"history.{n}.om") if len(slices) > 1 else None
            if path is not None:
                path.write_text(part)
            paths.append(path or self.history_path)
        written = 0
        with ThreadPoolExecutor(max_workers=2) as pool:
            for count in pool.map(self._promtool, paths):
                written += count
        if written != expected:
            raise ServerError(
                f"promtool wrote {written} of {expected} samples: within a series timestamps "
                "must strictly increase (it silently drops the others)"
            )
        self.history_samples = written

    def _promtool(self, path: Path) -> int:
        argv = ["tsdb", "create-blocks-from", "openmetrics", str(path), str(self.data_dir)]
        output = run_output([require_binary("promtool"), *argv], "promtool failed", timeout=120)
        rows = output.splitlines()
        if not rows or "NUM SAMPLES" not in rows[0]:
            return 0
        column = rows[0].split().index("NUM") - 3  # "BLOCK ULID", "MIN TIME", "MAX TIME"
        return sum(int(row.split()[column]) for row in rows[1:] if row.strip())

    def _argv(self) -> list[str]:
        argv = [
            require_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
        ]
        if self.basic_auth is not None:
            argv.append(f"--web.config.file={self.web_config_path}")
        return argv

    def _is_ready(self) -> bool:
        try:
            resp = requests.get(f"{self.url}/-/ready", auth=self.basic_auth, timeout=1.0)
        except requests.RequestException:
            return False
        with resp:
            if resp.status_code == 401:
                raise ServerError("prometheus rejected our own credentials")
            return resp.status_code == 200

    def api(self, path: str, params: Mapping[str, str | float]) -> dict[str, Any]:
        """GET ``/api/v1/<path>`` and return the parsed JSON (errors included, not raised)."""
        with requests.get(
            f"{self.url}/api/v1/{path}", params=params, auth=self.basic_auth, timeout=10.0
        ) as resp:
            if not resp.headers.get("Content-Type", "").startswith("application/json"):
                raise ServerError(f"prometheus answered {resp.status_code}: {resp.text[:200]}")
            body: dict[str, Any] = resp.json()
            return body

    def query_range(
        self, query: str, start: float, end: float, step: float | str
    ) -> dict[str, Any]:
        """``/api/v1/query_range`` → parsed JSON (``{"status": ..., "data": {...}}``)."""
        return self.api("query_range", {"query": query, "start": start, "end": end, "step": step})

    def query(self, query: str, time: float | None = None) -> dict[str, Any]:
        """``/api/v1/query`` (instant) → parsed JSON."""
        params: dict[str, str | float] = {"query": query}
        if time is not None:
            params["time"] = time
        return self.api("query", params)

    def wait_for_series(self, query: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result (e.g. self-scraped ``up``)."""

        def probe() -> list[dict[str, Any]] | None:
            result: list[dict[str, Any]] = self.query(query)["data"]["result"]
            return result or None

        return poll_until(probe, timeout, what=f"prometheus series {query!r}", max_interval=0.25)
