"""Prometheus HTTP API: query_range URL building and result parsing. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlencode

from skyline.vista.errors import SourceError

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
        raise SourceError(
            "too_many_series",
            f"the query returned {len(result)} series; it must return one. Labels that differ: "
            f"{_label_differences(result)}. Aggregate it (e.g. sum by ()) or add label matchers, "
            "or give the entry a name template (e.g. graphite_target='x.{instance}')",
        )
    return _series_pairs(kind, result[0])


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
