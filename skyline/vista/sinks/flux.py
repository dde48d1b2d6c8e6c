"""Skyline Flux sink: POST /metric_data_post in batches of at most 450 metrics.

Flux answers (skyline/flux/listen.py):

* 204 (or 200): every point accepted.
* 207: accepted except the metrics it lists as rejected (namespace quotas): those points are
  rejected with Flux's reason, the rest delivered.
* 400: the whole request refused because of one bad point. The batch is split in halves until
  the offending point is alone; it is rejected with Flux's message, the rest delivered.
* 401/403: our key is wrong: a configuration error (:class:`SinkAuthError`), nothing rejected.
* 5xx, timeouts, refused connections: transient (:class:`SinkError`), retried later.

The key travels in the JSON body, never in a URL. Points older than Flux's max age carry
``"fill": "true"`` so that Flux accepts them as backfill.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import requests
import requests.adapters

from skyline.vista.config import FluxConfig
from skyline.vista.errors import SinkAuthError, SinkError
from skyline.vista.sinks import Entry, SinkResult
from skyline.vista.validate import format_value

logger = logging.getLogger(__name__)

PATH = "/metric_data_post"
FILL_MARGIN = 60
"""Points this much younger than Flux's max age already get fill, so a slow request cannot
push them over the limit while in flight."""


def entry_json(entry: Entry, fill: bool) -> str:
    fill_part = ',"fill":"true"' if fill else ""
    return (
        f'{{"metric":{json.dumps(entry.metric)},"timestamp":{entry.timestamp},'
        f'"value":{format_value(entry.value)}{fill_part}}}'
    )


def request_body(key: str, entries: Sequence[Entry], now: float, max_age: int) -> bytes:
    oldest_plain = now - max_age + FILL_MARGIN
    metrics = ",".join(entry_json(e, e.timestamp < oldest_plain) for e in entries)
    return f'{{"key":{json.dumps(key)},"metrics":[{metrics}]}}'.encode()


def rejected_names(body: Any) -> set[str]:
    """Metric names a 207 answer lists as rejected ('rejected metrics' or data[].status)."""
    names: set[str] = set()
    if not isinstance(body, dict):
        return names
    listed = body.get("rejected metrics")
    if isinstance(listed, list):
        for item in listed:
            if isinstance(item, str):
                names.add(item)
            elif isinstance(item, dict) and isinstance(item.get("metric"), str):
                names.add(item["metric"])
    data = body.get("data")
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("metric"), str):
                status = item.get("status")
                if isinstance(status, str) and status.lower() not in (
                    "processed",
                    "ok",
                    "accepted",
                ):
                    names.add(item["metric"])
    return names


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text[:200].split())
        return text or response.reason or ""
    if isinstance(body, dict):
        for key in ("message", "error", "description", "title"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return json.dumps(body)[:200]


class FluxSink:
    name = "flux"

    def __init__(self, config: FluxConfig, session: requests.Session | None = None) -> None:
        if config.key is None:
            raise SinkAuthError("FLUX_SELF_API_KEY is not set")
        self.config = config
        self.url = config.url + PATH
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        self.session.mount(config.url, adapter)
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": "vista"})
        if config.protocol == "https":
            self.session.verify = config.ca_bundle or config.verify_ssl
        self.requests = 0

    def close(self) -> None:
        self.session.close()

    def submit(self, entries: Sequence[Entry], now: float) -> SinkResult:
        result = SinkResult()
        size = self.config.batch_size
        try:
            for start in range(0, len(entries), size):
                self._post(entries, start, min(len(entries), start + size), now, result)
        except SinkAuthError:
            raise
        except SinkError as exc:
            result.error = exc
        return result

    def _send(self, entries: Sequence[Entry], now: float) -> requests.Response:
        assert self.config.key is not None
        body = request_body(self.config.key.reveal(), entries, now, self.config.max_age)
        self.requests += 1
        try:
            return self.session.post(self.url, data=body, timeout=self.config.timeout)
        except requests.Timeout as exc:
            raise SinkError(
                f"Flux at {self.config.url} did not answer within {self.config.timeout:g}s"
            ) from exc
        except requests.ConnectionError as exc:
            raise SinkError(
                f"cannot reach Flux at {self.config.url}: {type(exc).__name__}"
            ) from exc
        except requests.RequestException as exc:
            raise SinkError(f"request to Flux failed: {type(exc).__name__}") from exc

    def _post(
        self, entries: Sequence[Entry], lo: int, hi: int, now: float, result: SinkResult
    ) -> None:
        """Deliver entries[lo:hi]; on return, result.handled == hi. Raises SinkError when a
        transient failure stops it (result.handled then says how far it got)."""
        response = self._send(entries[lo:hi], now)
        status = response.status_code
        if status in (200, 204):
            result.handled = hi
            return
        if status == 207:
            names = rejected_names(_json(response))
            reason = f"Flux 207: {_message(response)}"
            for i in range(lo, hi):
                if entries[i].metric in names:
                    result.rejected[i] = reason
            result.handled = hi
            return
        if status in (400, 413) and hi - lo > 1:
            mid = (lo + hi) // 2
            self._post(entries, lo, mid, now, result)
            self._post(entries, mid, hi, now, result)
            return
        if status == 400:
            result.rejected[lo] = f"Flux 400: {_message(response)}"
            result.handled = hi
            return
        if status in (401, 403):
            raise SinkAuthError(
                f"Flux refused FLUX_SELF_API_KEY (HTTP {status}: "
                f"{_message(response)}); check the key in the settings"
            )
        raise SinkError(f"Flux answered HTTP {status}: {_message(response)}")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
