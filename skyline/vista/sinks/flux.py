"""Skyline Flux sink: POST /metric_data_post in batches of at most 450 metrics.

Flux answers (skyline/flux/listen.py):

* 204 (or 200): every point accepted.
* 207: accepted except the metrics it lists as rejected (namespace quotas): those points are
  rejected with Flux's reason, the rest delivered.
* 400: one bad point. Flux takes the items before it (it queues them one by one) and refuses
  the rest of the request; its message quotes the bad item, so that point is rejected with
  Flux's reason, the ones before it count as delivered and the ones after are sent again.
  When the message names no item, the batch is split in halves until the bad point is alone.
* 401/403: our key is wrong: a configuration error (:class:`SinkAuthError`), nothing rejected.
* 5xx, timeouts, refused connections: transient (:class:`SinkError`), retried later.

The key travels in the JSON body, never in a URL. Points older than Flux's max age carry
``"fill": "true"`` so that Flux accepts them as backfill.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import requests
import requests.adapters

from skyline.vista.config import FluxConfig
from skyline.vista.errors import SinkAuthError, SinkError
from skyline.vista.sinks import Progress, SinkPoint, SinkResult
from skyline.vista.validate import format_value

logger = logging.getLogger(__name__)

PATH = "/metric_data_post"
FILL_MARGIN = 60
"""Points this much younger than Flux's max age already get fill, so a slow request cannot
push them over the limit while in flight."""


def point_json(point: SinkPoint, fill: bool, quoted_metric: str | None = None) -> str:
    """One item of the POST; ``quoted_metric`` is ``json.dumps(point.metric)`` if known."""
    metric = json.dumps(point.metric) if quoted_metric is None else quoted_metric
    fill_part = ',"fill":"true"' if fill else ""
    return (
        f'{{"metric":{metric},"timestamp":{point.timestamp},'
        f'"value":{format_value(point.value)}{fill_part}}}'
    )


def request_body(key: str, points: Sequence[SinkPoint], now: float, max_age: int) -> bytes:
    """The JSON body of one POST: the same text as point_json() per item, built inline because
    this runs for every point delivered."""
    oldest_plain = now - max_age + FILL_MARGIN
    quoted: dict[str, str] = {}  # each metric's name as JSON, encoded once per request
    parts: list[str] = []
    append = parts.append
    for metric, timestamp, value in points:
        name = quoted.get(metric)
        if name is None:
            name = quoted[metric] = json.dumps(metric)
        text = repr(value)
        if "e" in text:
            text = format_value(value)  # never 1e+22 on the wire
        if timestamp < oldest_plain:
            append(f'{{"metric":{name},"timestamp":{timestamp},"value":{text},"fill":"true"}}')
        else:
            append(f'{{"metric":{name},"timestamp":{timestamp},"value":{text}}}')
    return f'{{"key":{json.dumps(key)},"metrics":[{",".join(parts)}]}}'.encode()


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
        # Look the environment (proxies, netrc, REQUESTS_CA_BUNDLE) up once, not per request:
        # requests does it on every call otherwise, ~0.1 ms a POST.
        self.session.proxies.update(requests.utils.get_environ_proxies(config.url))
        self.session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        self.session.mount(config.url, adapter)
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": "vista"})
        if config.protocol == "https":
            self.session.verify = config.ca_bundle or config.verify_ssl
        self.requests = 0
        self._progress: Progress | None = None

    def close(self) -> None:
        self.session.close()

    def submit(
        self, points: Sequence[SinkPoint], now: float, progress: Progress | None = None
    ) -> SinkResult:
        """POST points in requests of at most batch_size. After each answer that took points,
        ``progress`` (if given) is told how far it got, and may stop what follows."""
        result = SinkResult()
        size = self.config.batch_size
        self._progress = progress
        try:
            for start in range(0, len(points), size):
                self._post(points, start, min(len(points), start + size), now, result)
        except SinkAuthError:
            raise
        except SinkError as exc:
            result.error = exc
        except _Stopped:
            result.stopped = True
        finally:
            self._progress = None
        return result

    def _answered(self, result: SinkResult) -> None:
        """One request was answered and result.handled moved: report it (see submit)."""
        if self._progress is not None and not self._progress(result):
            raise _Stopped

    def _send(self, points: Sequence[SinkPoint], now: float) -> requests.Response:
        assert self.config.key is not None
        body = request_body(self.config.key.reveal(), points, now, self.config.max_age)
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
        self, points: Sequence[SinkPoint], lo: int, hi: int, now: float, result: SinkResult
    ) -> None:
        """Deliver points[lo:hi]; on return, result.handled == hi. Raises SinkError when a
        transient failure stops it (result.handled then says how far it got)."""
        response = self._send(points[lo:hi], now)
        status = response.status_code
        if status in (200, 204):
            result.handled = hi
            self._answered(result)
            return
        if status == 207:
            _reject_named(points, lo, hi, rejected_names(_json(response)), response, result)
            self._answered(result)
            return
        if status == 400:
            body = _json(response)
            if isinstance(body, dict) and "rejected metrics" in body:
                # A namespace-quota rejection of a one-item request comes as 400, not 207.
                _reject_named(points, lo, hi, rejected_names(body), response, result)
                self._answered(result)
                return
            bad = offending_index(_message(response), points, lo, hi)
            if bad is not None:
                # Flux queues items in order until the bad one: those before it are taken.
                result.rejected[bad] = f"Flux 400: {_message(response)}"
                result.handled = bad + 1
                self._answered(result)
                if bad + 1 < hi:
                    self._post(points, bad + 1, hi, now, result)
                return
        if status in (400, 413) and hi - lo > 1:
            # The answer does not say which point: split until it is alone.
            mid = (lo + hi) // 2
            self._post(points, lo, mid, now, result)
            self._post(points, mid, hi, now, result)
            return
        if status == 400:
            result.rejected[lo] = f"Flux 400: {_message(response)}"
            result.handled = hi
            self._answered(result)
            return
        if status in (401, 403):
            raise SinkAuthError(
                f"Flux refused FLUX_SELF_API_KEY (HTTP {status}: "
                f"{_message(response)}); check the key in the settings"
            )
        raise SinkError(f"Flux answered HTTP {status}: {_message(response)}")


class _Stopped(Exception):
    """progress() asked the sink to stop before its next request."""


def _reject_named(
    points: Sequence[SinkPoint],
    lo: int,
    hi: int,
    names: set[str],
    response: requests.Response,
    result: SinkResult,
) -> None:
    reason = f"Flux {response.status_code}: {_message(response)}"
    for i in range(lo, hi):
        if points[i].metric in names:
            result.rejected[i] = reason
    result.handled = hi


_ITEM_METRIC = re.compile(r"""'metric': '([^']*)'""")
_ITEM_TIMESTAMP = re.compile(r"""'timestamp': '?(-?\d+)""")


def offending_index(message: str, points: Sequence[SinkPoint], lo: int, hi: int) -> int | None:
    """The point a Flux 400 message names (Flux quotes the item as a Python dict:
    "invalid timestamp - 1 - timestamp is too old ... - {'metric': 'a', 'timestamp': 1, ...}")."""
    metric = _ITEM_METRIC.search(message)
    timestamp = _ITEM_TIMESTAMP.search(message)
    if metric is None or timestamp is None:
        return None
    name, ts = metric.group(1), int(timestamp.group(1))
    for i in range(lo, hi):
        if points[i].metric == name and points[i].timestamp == ts:
            return i
    return None


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
