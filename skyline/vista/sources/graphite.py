"""Graphite render API: URL building, batching and response parsing. Pure functions.

Batched requests wrap each target as ``alias(<target>,"vista.<n>")``: the answer's series are
then mapped back by the name we chose, however graphite-web rewrites the target text (it
normalises whitespace and quoting, and a function's series is named by the expression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from skyline.vista.errors import SourceError

ALIAS_PREFIX = "vista."


@dataclass(frozen=True)
class RenderSeries:
    name: str  # the 'target' of the answer
    points: list[tuple[object, object]]  # (timestamp, value) as received: value may be null


def alias_name(n: int) -> str:
    return f"{ALIAS_PREFIX}{n}"


def wrap_target(target: str, n: int) -> str:
    return f'alias({target},"{alias_name(n)}")'


def render_url(
    base: str,
    path: str,
    params: Sequence[tuple[str, str]],
    targets: Sequence[str],
    *,
    from_: str,
    until: str | None,
) -> str:
    """base + path + ?params&from=..&until=..&format=json&target=..&target=..

    Every value is percent-encoded (``+``, ``/``, ``%``, spaces, quotes, brackets), so names
    and function expressions reach graphite-web exactly as written.
    """
    query: list[tuple[str, str]] = list(params)
    query.append(("from", from_))
    if until is not None:
        query.append(("until", until))
    query.append(("format", "json"))
    query += [("target", t) for t in targets]
    return f"{base}{path}?{urlencode(query, quote_via=quote, safe='')}"


def parse_render(body: object) -> list[RenderSeries]:
    """Validate the render JSON shape: [{"target": str, "datapoints": [[value, ts], ...]}]."""
    if not isinstance(body, list):
        raise SourceError("shape", f"expected a JSON list of series, got {type(body).__name__}")
    series: list[RenderSeries] = []
    for n, entry in enumerate(body):
        if not isinstance(entry, dict):
            raise SourceError("shape", f"series {n} is a {type(entry).__name__}, not an object")
        name = entry.get("target")
        datapoints = entry.get("datapoints")
        if not isinstance(name, str) or not isinstance(datapoints, list):
            raise SourceError("shape", f"series {n} lacks 'target' (str) or 'datapoints' (list)")
        points: list[tuple[object, object]] = []
        for pair in datapoints:
            if not isinstance(pair, list) or len(pair) != 2:
                raise SourceError(
                    "shape", f"series {name!r}: datapoint {pair!r} is not [value, ts]"
                )
            points.append((pair[1], pair[0]))
        series.append(RenderSeries(name, points))
    return series


def map_batch(
    series: Sequence[RenderSeries], count: int, *, aliased: bool
) -> dict[int, RenderSeries | SourceError]:
    """Map a render answer back to the request's targets 0..count-1.

    With ``aliased`` (batch of several targets) a series belongs to the target whose alias it
    carries. Without (a single target) the one series is the target's. A target with several
    series is an error naming how many; a target with none is absent from the result.
    """
    found: dict[int, list[RenderSeries]] = {}
    if aliased:
        for s in series:
            if s.name.startswith(ALIAS_PREFIX) and s.name[len(ALIAS_PREFIX) :].isdigit():
                n = int(s.name[len(ALIAS_PREFIX) :])
                if 0 <= n < count:
                    found.setdefault(n, []).append(s)
    elif series:
        found[0] = list(series)
    result: dict[int, RenderSeries | SourceError] = {}
    for n, matches in found.items():
        if len(matches) == 1:
            result[n] = matches[0]
        else:
            names = sorted({m.name for m in matches})
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            result[n] = SourceError(
                "too_many_series",
                f"the target returned {len(matches)} series ({shown}); it must return one "
                "(wrap it in sumSeries() or make the path exact)",
            )
    return result
