"""Prometheus HTTP API: query_range URL building and result parsing (pure functions), and the
:class:`PrometheusSource` that asks for each due window of a metric on its own."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from skyline.vista import expand
from skyline.vista.errors import SourceError
from skyline.vista.sources import Fetching, stream

if TYPE_CHECKING:
    from skyline.vista.entries import FetchEntry
    from skyline.vista.fetch_results import MetricResult, Outcome
    from skyline.vista.schedule import Window

logger = logging.getLogger(__name__)

_ERROR_TYPE = re.compile(r"[a-z_]{1,32}")


def query_range_url(base: str, query: str, start: int, end: int, step: int) -> str:
    params = [("query", query), ("start", str(start)), ("end", str(end)), ("step", f"{step}s")]
    return f"{base}/api/v1/query_range?{urlencode(params, quote_via=quote, safe='')}"


def _label_differences(series: Sequence[Mapping[str, object]]) -> str:
    labels: dict[str, set[str]] = {}
    for s in series:
        metric = s.get("metric")
        if isinstance(metric, Mapping):
            for k, v in metric.items():
                labels.setdefault(str(k), set()).add(str(v))
    names = set(labels)
    differing = []
    for name in sorted(names):
        values = labels[name]
        present_in_all = all(
            isinstance(s.get("metric"), Mapping) and name in s["metric"]  # type: ignore[operator]
            for s in series
        )
        if len(values) > 1 or not present_in_all:
            shown = sorted(values)[:4]
            more = ", ..." if len(values) > 4 else ""
            differing.append(f"{name}=[{', '.join(shown)}{more}]")
    return "; ".join(differing) if differing else "identical label sets"


def parse_result(body: object) -> list[tuple[object, object]]:
    """The (timestamp, value-string) pairs of a one-series answer (matrix, vector or scalar).

    Raises SourceError for ``status: error`` (with Prometheus' own error text), a wrong shape,
    or more than one series (naming how many and which labels differ).
    """
    kind, result = _data(body)
    if kind == "scalar":
        return [_pair(result)]
    assert isinstance(result, list)
    if not result:
        return []
    if len(result) > 1:
        raise too_many_series(len(result), result)
    return _series_pairs(kind, result[0])


def too_many_series(count: int, series: Sequence[Mapping[str, object]]) -> SourceError:
    return SourceError(
        "too_many_series",
        f"the query returned {count} series; it must return one. Labels that differ: "
        f"{_label_differences(series)}. Aggregate it (e.g. sum by ()) or add label matchers, "
        "or give the entry a name template (e.g. graphite_target='x.{instance}')",
    )


def parse_series(body: object) -> list[tuple[dict[str, str], list[tuple[object, object]]]]:
    """Every series of a matrix or vector answer as (labels, pairs), for name templates."""
    kind, result = _data(body)
    if kind == "scalar":
        return [({}, [_pair(result)])]
    assert isinstance(result, list)
    out = []
    for series in result:
        labels = series.get("metric")
        if not isinstance(labels, dict):
            labels = {}
        out.append(({str(k): str(v) for k, v in labels.items()}, _series_pairs(kind, series)))
    return out


def _series_pairs(kind: object, series: dict[str, object]) -> list[tuple[object, object]]:
    if kind == "matrix":
        values = series.get("values")
        if not isinstance(values, list):
            raise SourceError("shape", "matrix series without a 'values' list")
        return [_pair(v) for v in values]
    return [_pair(series.get("value"))]


def _data(body: object) -> tuple[object, object]:
    """(resultType, result) of a success answer; SourceError otherwise."""
    if not isinstance(body, dict):
        raise SourceError("shape", f"expected a JSON object, got {type(body).__name__}")
    status = body.get("status")
    if status == "error":
        kind = body.get("errorType", "error")
        # The kind is a counter label (/metrics, logs): one of Prometheus' own short words,
        # never a remote's free text (which could be long, or echo our headers).
        label = kind if isinstance(kind, str) and _ERROR_TYPE.fullmatch(kind) else "error"
        raise SourceError(f"prometheus_{label}", f"Prometheus error ({kind}): {body.get('error')}")
    if status != "success":
        raise SourceError("shape", f"'status' is {status!r}, expected 'success'")
    data = body.get("data")
    if not isinstance(data, dict):
        raise SourceError("shape", "'data' is missing or not an object")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        return kind, result
    if kind not in ("matrix", "vector") or not isinstance(result, list):
        raise SourceError("shape", f"unsupported resultType {kind!r} (expected matrix or vector)")
    if not all(isinstance(s, dict) for s in result):
        raise SourceError("shape", "a result entry is not an object")
    return kind, result


def _pair(raw: object) -> tuple[object, object]:
    if not isinstance(raw, list) or len(raw) != 2:
        raise SourceError("shape", f'sample {raw!r} is not [timestamp, "value"]')
    return (raw[0], raw[1])


def warnings_of(body: object) -> list[str]:
    if isinstance(body, dict) and isinstance(body.get("warnings"), list):
        return [str(w) for w in body["warnings"]]
    return []


# --- bounded parsing (sources/stream.py) ----------------------------------------------------


@dataclass
class Parsed:
    """One answer's points inside the asked window, how many were outside, its warnings."""

    points: list[tuple[object, object]]
    outside_window: int = 0
    warnings: list[str] = field(default_factory=list)


def parse(body: object, bounds: stream.Bounds) -> Parsed:
    """:func:`parse_result` of a decoded body, kept to ``bounds``."""
    points, outside = stream.keep_within(parse_result(body), bounds)
    return Parsed(points, outside, warnings_of(body))


_SCALARS = frozenset({"number", "string", "null", "boolean"})
_ITEM = 0  # the path entry of an array element (map keys are strings)
_LABELS_SHOWN = 50  # series whose labels are kept for the too_many_series message


def stream_parser(bounds: stream.Bounds, *, every: bool = False) -> stream.StreamParser:
    """The event parser (sources/stream.py) of :func:`parse` for a body not decoded whole:
    samples outside ``bounds`` are counted and dropped as they are read, and only the first
    series' samples are kept (more than one series is an error anyway). ``every``: every
    series is kept with its labels (a name template), as :func:`parse_every` does."""
    return lambda: _StreamReader(bounds, every=every)


@dataclass
class ParsedSeries:
    """Every series of one answer (labels, points inside the asked window), how many points
    were outside, its warnings: what a templated entry's answer gives."""

    series: list[tuple[dict[str, str], list[tuple[object, object]]]]
    outside_window: int = 0
    warnings: list[str] = field(default_factory=list)


def parse_every(body: object, bounds: stream.Bounds) -> ParsedSeries:
    """:func:`parse_series` of a decoded body, each series kept to ``bounds``."""
    found, outside = [], 0
    for labels, pairs in parse_series(body):
        points, dropped = stream.keep_within(pairs, bounds)
        found.append((labels, points))
        outside += dropped
    return ParsedSeries(found, outside, warnings_of(body))


class _StreamReader:
    """The state of :func:`stream_parser`: where in the document we are (``path``: map keys and
    ``_ITEM`` for array elements) and what was kept."""

    def __init__(self, bounds: stream.Bounds, *, every: bool = False) -> None:
        self.bounds = bounds
        self.every = every
        self.all: list[tuple[dict[str, object], stream.Within]] = []  # every: each series
        self.kept = stream.Within(bounds)
        self.path: list[str | int] = []
        self.top: dict[str, object] = {}  # status, errorType, error, resultType
        self.warnings: list[str] = []
        self.series: list[dict[str, object]] = []  # labels of the first _LABELS_SHOWN series
        self.labels: dict[str, object] = {}
        self.count = 0  # series seen
        self.sample: list[object] | None = None  # the [ts, "value"] being read
        self.result_is_list = False
        self.scalar_values: list[object] = []  # data.result's own values (a scalar answer)

    def feed(self, events: list[stream.Event]) -> None:
        path = self.path
        for event, value in events:
            sample = self.sample
            if sample is not None and event in _SCALARS:  # the hot path: a sample's value
                sample.append(value)
            elif event == "map_key":
                path[-1] = value
            elif event == "start_map" or event == "start_array":
                self.start(event == "start_array")
            elif event == "end_map" or event == "end_array":
                self.end()
            else:
                self.scalar(value)

    def _at_result(self) -> bool:
        path = self.path
        return len(path) >= 2 and path[0] == "data" and path[1] == "result"

    def _at_sample(self) -> bool:
        """data.result[i].values[j] (a matrix sample) or data.result[i].value (a vector's)."""
        path = self.path
        if len(path) == 5:
            return path[3] == "values" and self._at_result()
        return len(path) == 4 and path[3] == "value" and self._at_result()

    def start(self, array: bool) -> None:
        depth = len(self.path)
        stream.check_depth(depth + 1)
        if depth == 0 and array:
            raise SourceError("shape", "expected a JSON object, got list")
        if self.sample is not None:  # a container inside a sample
            self.sample.append([] if array else {})
        elif self._at_sample():
            if not array:
                raise SourceError("shape", 'sample {...} is not [timestamp, "value"]')
            self.sample = []
        elif depth == 2 and self._at_result():
            self.result_is_list = array
        elif depth == 3 and self._at_result():
            if array:
                raise SourceError("shape", "a result entry is not an object")
            self.count += 1
            self.labels = {}
            if self.every:
                self.kept = stream.Within(self.bounds)
                self.all.append((self.labels, self.kept))
            if self.count <= _LABELS_SHOWN:
                self.series.append({"metric": self.labels})
        self.path.append(_ITEM if array else "")

    def end(self) -> None:
        self.path.pop()
        if self.sample is None or not self._at_sample():
            return
        pair, self.sample = self.sample, None
        if len(pair) != 2:
            raise SourceError("shape", f'sample {pair!r} is not [timestamp, "value"]')
        if self.count > 1 and not self.every:
            return
        self.kept.add(pair[0], pair[1])

    def scalar(self, value: object) -> None:
        path, depth = self.path, len(self.path)
        if self.sample is not None:
            self.sample.append(value)
        elif depth == 0:
            raise SourceError("shape", f"expected a JSON object, got {type(value).__name__}")
        elif depth == 1 and path[0] in ("status", "errorType", "error"):
            self.top[str(path[0])] = value
        elif depth == 2 and path[0] == "data" and path[1] == "resultType":
            self.top["resultType"] = value
        elif depth == 2 and path[0] == "warnings":
            self.warnings.append(str(value))
        elif depth == 3 and self._at_result():
            self.scalar_values.append(value)
        elif depth == 5 and path[3] == "metric" and self._at_result():
            self.labels[str(path[4])] = value
        elif self._at_sample():
            raise SourceError("shape", f'sample {value!r} is not [timestamp, "value"]')

    def finish(self) -> Parsed | ParsedSeries:
        top = self.top
        status = top.get("status")
        if status == "error":
            error: dict[str, object] = {"status": "error"}
            error.update({k: top[k] for k in ("errorType", "error") if k in top})
            parse_result(error)  # raises Prometheus' own error
        if status != "success":
            raise SourceError("shape", f"'status' is {status!r}, expected 'success'")
        kind = top.get("resultType")
        if kind == "scalar":
            if self.every:
                return ParsedSeries([({}, [_pair(self.scalar_values)])], 0, self.warnings)
            return Parsed([_pair(self.scalar_values)], 0, self.warnings)
        if kind not in ("matrix", "vector") or not self.result_is_list:
            raise SourceError(
                "shape", f"unsupported resultType {kind!r} (expected matrix or vector)"
            )
        if self.scalar_values:
            raise SourceError("shape", "a result entry is not an object")
        if self.every:
            found = [
                ({str(k): str(v) for k, v in labels.items()}, w.points) for labels, w in self.all
            ]
            return ParsedSeries(found, sum(w.outside for _, w in self.all), self.warnings)
        if self.count > 1:
            raise too_many_series(self.count, self.series)
        return Parsed(self.kept.points, self.kept.outside, self.warnings)


class PrometheusSource:
    """One ``query_range`` request per window (the instant ``uri`` when the window is open)."""

    accepts_error_json = True

    def split_step(self, entry: FetchEntry) -> int:
        return entry.frequency  # a window's points sit on multiples of the step

    def start(self, cycle: Fetching, results: Sequence[MetricResult]) -> None:
        for result in results:
            for n, window in enumerate(result.windows):
                cycle.spawn(self._fetch(cycle, result, n, window), [(result, n)])

    async def _fetch(self, cycle: Fetching, result: MetricResult, n: int, window: Window) -> None:
        entry = result.entry
        if window.start is None:
            url = entry.remote_host + entry.request_uri
        else:
            assert window.end is not None
            url = query_range_url(
                entry.remote_host, entry.remote_target, window.start, window.end, entry.frequency
            )
        bounds = stream.Bounds.of_window(window.start, window.end, entry.frequency)
        outcome: Outcome
        try:
            if entry.name_template is not None:
                # Every series of the answer, named by the template.
                body = await cycle.get(result, entry, url, stream_parser(bounds, every=True))
                every = body if isinstance(body, ParsedSeries) else parse_every(body, bounds)
                result.outside_window += every.outside_window
                outcome = expand.expand_labelled(entry.name_template, every.series)
                parsed = Parsed([], 0, every.warnings)
            else:
                body = await cycle.get(result, entry, url, stream_parser(bounds))
                parsed = body if isinstance(body, Parsed) else parse(body, bounds)
                result.outside_window += parsed.outside_window
                outcome = parsed.points
            if parsed.warnings:
                redact = cycle.redactor(entry)
                for warning in parsed.warnings:
                    logger.warning(
                        "%s %s: Prometheus warning: %s", entry.host, entry.metric, redact(warning)
                    )
        except SourceError as exc:
            outcome = exc
        await cycle.settle(result, n, outcome)


SOURCE = PrometheusSource()
