"""graphite-web (Django ``runserver``, /usr/bin/python3) reading a carbon-cache."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from skyline.vista.testing.base import HttpServer
from skyline.vista.testing.carbon import CarbonServer
from skyline.vista.testing.common import LOOPBACK, SYSTEM_PYTHON, poll_until, require_system_modules
from skyline.vista.testing.errors import ServerError


class GraphiteWebServer(HttpServer):
    """graphite-web (Django ``runserver``, /usr/bin/python3) reading a :class:`CarbonServer`.

    Own settings module in ``<dir>/conf``, sqlite and logs in ``<dir>/storage``, DummyCache,
    TIME_ZONE UTC, CARBONLINK to the carbon's cache-query port.  Facts (graphite-web 1.1.8):

    * ``/render?format=json`` → ``[{"target", "tags", "datapoints": [[value|null, ts], ...]}]``;
      a missing metric, a missing ``target=`` and a syntax error answer 200 ``[]``; an unknown
      function answers 400 (HTML).  A glob gives one object per metric; ``sumSeries(...)`` one
      object whose ``target`` is the expression text.
    * ``from`` exactly on a step boundary excludes that point, ``until`` includes it (whisper's
      rule); future points are hidden until their time.  ``from == until`` answers 400
      ("Invalid empty time range").  Without ``from`` the range is the last 24 h, which the
      10 s archive (6 h) does not cover: the 60 s archive answers (1440 points).  The step of
      the answer is that of the finest archive covering ``now - from``.
    * A brand-new metric is invisible until carbon created its whisper file (0.8–1.1 s here);
      once the file exists, points still in carbon's cache are merged in via CARBONLINK, so
      the next point of a known metric shows in ~5 ms.
    * In a query string ``+`` means space: encode ``+`` as ``%2B`` and ``%`` as ``%25``
      (``requests``' ``params=`` does).
    """

    name = "graphite-web"
    settings_module = "vista_graphite_settings"

    def __init__(self, dir: Path | str, carbon: CarbonServer) -> None:
        super().__init__(dir)
        self.carbon = carbon
        self.conf_dir = self.dir / "conf"
        self.storage_dir = self.dir / "storage"
        self._migrated = False
        self.migrate_seconds: float | None = None

    def _check_installed(self) -> None:
        require_system_modules("graphite", "django", "whisper")

    def _env(self) -> Mapping[str, str]:
        return {
            "PYTHONPATH": str(self.conf_dir),
            "DJANGO_SETTINGS_MODULE": "graphite.settings",
            "GRAPHITE_SETTINGS_MODULE": self.settings_module,
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def _prepare(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.storage_dir / "log").mkdir(parents=True, exist_ok=True)
        whisper_dir = f"{self.carbon.whisper_dir}/"
        settings = {
            "SECRET_KEY": "vista-tests-only",
            "TIME_ZONE": "UTC",
            "STORAGE_DIR": str(self.storage_dir),
            "LOG_DIR": str(self.storage_dir / "log"),
            "INDEX_FILE": str(self.storage_dir / "index"),
            "CONF_DIR": str(self.conf_dir),
            "WHISPER_DIR": whisper_dir,
            "STANDARD_DIRS": [whisper_dir],
            "CARBONLINK_HOSTS": [f"{LOOPBACK}:{self.carbon.cache_query_port}"],
            "LOG_ROTATION": False,
            "DEFAULT_XFILES_FACTOR": 0,
            "DATABASES": {
                "default": {
                    "NAME": str(self.storage_dir / "graphite.db"),
                    "ENGINE": "django.db.backends.sqlite3",
                    "USER": "",
                    "PASSWORD": "",
                    "HOST": "",
                    "PORT": "",
                }
            },
            "CACHES": {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}},
            "SILENCED_SYSTEM_CHECKS": ["models.W042", "admin.W411"],
        }
        body = "".join(f"{key} = {value!r}\n" for key, value in settings.items())
        (self.conf_dir / f"{self.settings_module}.py").write_text(body)
        if not self._migrated:
            began = time.monotonic()
            with open(self.log_path, "ab") as log:
                proc = subprocess.run(
                    [SYSTEM_PYTHON, "-m", "django", "migrate", "--run-syncdb", "--noinput"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env={**os.environ, **self._env()},
                    check=False,
                    timeout=120,
                )
            if proc.returncode != 0:
                raise ServerError(f"graphite-web migrate failed:\n{self.log_text()[-3000:]}")
            self.migrate_seconds = time.monotonic() - began
            self._migrated = True

    def _argv(self) -> list[str]:
        return [
            SYSTEM_PYTHON,
            "-m",
            "django",
            "runserver",
            "--noreload",
            f"{LOOPBACK}:{self.port}",
        ]

    def _is_ready(self) -> bool:
        try:
            resp = requests.get(
                f"{self.url}/render", params={"target": "x", "format": "json"}, timeout=2.0
            )
        except requests.RequestException:
            return False
        with resp:
            return resp.status_code == 200 and resp.text.strip() == "[]"

    def render(
        self,
        target: str | Sequence[str],
        from_ts: int | str | None = None,
        until_ts: int | str | None = None,
        **params: str,
    ) -> list[dict[str, Any]]:
        """``/render?format=json`` for one or more targets → parsed JSON; raises on non-200."""
        query: list[tuple[str, str]] = [("format", "json")]
        targets = [target] if isinstance(target, str) else list(target)
        query += [("target", t) for t in targets]
        if from_ts is not None:
            query.append(("from", str(from_ts)))
        if until_ts is not None:
            query.append(("until", str(until_ts)))
        query += list(params.items())
        with requests.get(f"{self.url}/render", params=query, timeout=30.0) as resp:
            if resp.status_code != 200:
                raise ServerError(f"/render answered {resp.status_code}: {resp.text[:300]}")
            body: list[dict[str, Any]] = resp.json()
            return body

    def wait_visible(self, target: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll ``/render`` until ``target`` matches at least one series."""

        def probe() -> list[dict[str, Any]] | None:
            return self.render(target, "-1d") or None

        return poll_until(probe, timeout, what=f"graphite-web to show {target!r}")
