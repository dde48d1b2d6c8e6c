"""Graphite render API: URL building, batching and response parsing (pure functions), and the
:class:`GraphiteSource` that batches a cycle's windows into render requests.

Batched requests wrap each target as ``alias(<target>,"vista.<n>")``: the answer's series are
then mapped back by the name we chose, however graphite-web rewrites the target text (it
normalises whitespace and quoting, and a function's series is named by the expression).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from skyline.vista import expand
from skyline.vista.errors import SourceError
from skyline.vista.schedule import Window
from skyline.vista.sources import HOST_LEVEL_ERRORS, Fetching, stream
from skyline.vista.sources.http import Credentials

if TYPE_CHECKING:
    from skyline.vista.entries import FetchEntry
    from skyline.vista.fetch_results import Member, MetricResult, Outcome

logger = logging.getLogger(__name__)

_SCALARS = frozenset({"number", "string", "null", "boolean"})

ALIAS_PREFIX = "vista."


@dataclass(frozen=True)
class RenderSeries:
    name: str  # the 'target' of the answer
    points: list[tuple[object, object]]  # (timestamp, value) as received: value may be null
    outside_window: int = 0  # points dropped because they were outside the asked window


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


# --- bounded parsing (sources/stream.py) ----------------------------------------------------


def parse_render_within(body: object, bounds: stream.Bounds) -> list[RenderSeries]:
    """:func:`parse_render` of a decoded body, each series kept to ``bounds``."""
    found = []
    for s in parse_render(body):
        points, outside = stream.keep_within(s.points, bounds)
        found.append(RenderSeries(s.name, points, outside))
    return found


@dataclass(frozen=True)
class Rendered:
    """What :func:`stream_parser` read from a body that was not decoded whole."""

    series: list[RenderSeries]


def stream_parser(bounds: stream.Bounds) -> stream.StreamParser:
    """The event parser (sources/stream.py) of :func:`parse_render_within` for a body not
    decoded whole: datapoints outside ``bounds`` are counted and dropped as they are read.
    It returns a :class:`Rendered`."""
    return lambda: _RenderReader(bounds)


class _RenderReader:
    """The state of :func:`stream_parser`: depth 1 the list, 2 a series object,
    3 its datapoints, 4 one [value, ts]."""

    def __init__(self, bounds: stream.Bounds) -> None:
        self.bounds = bounds
        self.series: list[RenderSeries] = []
        self.depth = 0
        self.skip = 0
        self.key = ""
        self.name: object = None
        self.has_points = False
        self.kept = stream.Within(bounds)
        self.pair: list[object] = []

    def feed(self, events: list[stream.Event]) -> None:
        for event, value in events:
            if self.depth == 4 and event in _SCALARS:  # the hot path: a datapoint's value
                self.pair.append(value)
            elif self.skip:  # inside a value we do not read (tags, ...)
                if event == "start_map" or event == "start_array":
                    self.skip += 1
                    stream.check_depth(self.skip)
                elif event == "end_map" or event == "end_array":
                    self.skip -= 1
            elif self.depth == 0:
                if event != "start_array":
                    kind = _kind(event) if event.startswith("start") else type(value).__name__
                    raise SourceError("shape", f"expected a JSON list of series, got {kind}")
                self.depth = 1
            elif self.depth == 1:
                self.in_list(event, value)
            elif self.depth == 2:
                self.in_series(event, value)
            elif self.depth == 3:
                self.in_datapoints(event, value)
            else:
                self.in_pair(event, value)

    def finish(self) -> Rendered:
        return Rendered(self.series)

    def in_list(self, event: str, value: object) -> None:
        if event == "end_array":
            self.depth = 0
        elif event == "start_map":
            self.depth, self.key, self.name, self.has_points = 2, "", None, False
            self.kept = stream.Within(self.bounds)
        else:
            kind = _kind(event) if event.startswith("start") else type(value).__name__
            raise SourceError("shape", f"series {len(self.series)} is a {kind}, not an object")

    def in_series(self, event: str, value: object) -> None:
        if event == "map_key":
            self.key = str(value)
        elif event == "end_map":
            self.depth = 1
            if not isinstance(self.name, str) or not self.has_points:
                raise SourceError(
                    "shape",
                    f"series {len(self.series)} lacks 'target' (str) or 'datapoints' (list)",
                )
            self.series.append(RenderSeries(self.name, self.kept.points, self.kept.outside))
        elif self.key == "datapoints" and event == "start_array":
            self.depth, self.has_points = 3, True
        elif event == "start_map" or event == "start_array":
            self.skip = 1
        elif self.key == "target":
            self.name = value

    def in_datapoints(self, event: str, value: object) -> None:
        if event == "end_array":
            self.depth = 2
        elif event == "start_array":
            self.depth, self.pair = 4, []
        else:
            raise SourceError(
                "shape", f"series {self.name!r}: datapoint {value!r} is not [value, ts]"
            )

    def in_pair(self, event: str, value: object) -> None:
        if event == "start_map" or event == "start_array":
            raise SourceError("shape", f"series {self.name!r}: datapoint is not [value, ts]")
        if event != "end_array":
            self.pair.append(value)
            return
        self.depth = 3
        pair = self.pair
        if len(pair) != 2:
            raise SourceError(
                "shape", f"series {self.name!r}: datapoint {pair!r} is not [value, ts]"
            )
        self.kept.add(pair[1], pair[0])


def _kind(event: str) -> str:
    return "dict" if event == "start_map" else "list"


@dataclass(frozen=True)
class RenderRequest:
    """What Graphite targets must share to go in one render request."""

    host: str
    url_base: str
    path: str
    params: tuple[tuple[str, str], ...]
    credentials: Credentials
    window: Window

    def url(self, targets: Sequence[str]) -> str:
        start = self.window.start
        from_ = str(start) if start is not None else dict(self.params).get("from", "-10minutes")
        until = str(self.window.end) if self.window.end is not None else None
        params = tuple((k, v) for k, v in self.params if k != "from")
        return render_url(self.url_base, self.path, params, targets, from_=from_, until=until)


class GraphiteSource:
    """Windows of the same host, credentials and window go up to VISTA_GRAPHITE_BATCH_SIZE a
    render request, each target wrapped in ``alias()``; a batch that fails for one target is
    asked again target by target. A templated entry goes alone (its series keep their names)."""

    accepts_error_json = False

    def split_step(self, entry: FetchEntry) -> int:
        return 0

    def start(self, cycle: Fetching, results: Sequence[MetricResult]) -> None:
        groups: dict[RenderRequest, list[Member]] = {}
        for result in results:
            entry = result.entry
            for n, window in enumerate(result.windows):
                key = RenderRequest(
                    entry.host,
                    entry.remote_host,
                    entry.uri_path,
                    entry.uri_params,
                    Credentials.of(entry),
                    window,
                )
                if entry.name_template is not None:  # alone: its series keep their names
                    cycle.spawn(self._fetch_expanded(cycle, key, result, n), [(result, n)])
                    continue
                groups.setdefault(key, []).append((result, n))
        size = cycle.config.graphite_batch_size
        for key, members in groups.items():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                cycle.spawn(self._fetch(cycle, key, chunk), chunk)

    async def _fetch(self, cycle: Fetching, key: RenderRequest, members: list[Member]) -> None:
        aliased = len(members) > 1
        targets = [
            wrap_target(r.entry.remote_target, i) if aliased else r.entry.remote_target
            for i, (r, _) in enumerate(members)
        ]
        url = key.url(targets)
        for result, _ in members:
            result.requests += 1
        window = key.window
        frequency = min(r.entry.frequency for r, _ in members)
        bounds = stream.Bounds.of_window(window.start, window.end, frequency)
        try:
            body = await cycle.get(None, members[0][0].entry, url, stream_parser(bounds))
            rendered = (
                body if isinstance(body, Rendered) else Rendered(parse_render_within(body, bounds))
            )
            mapped = map_batch(rendered.series, len(members), aliased=aliased)
        except SourceError as exc:
            if aliased and exc.kind not in HOST_LEVEL_ERRORS:
                # One bad target can fail a whole batch (an unknown function answers 400):
                # fetch each on its own so that the others are not held back by it.
                logger.debug(
                    "%s: batch of %d failed (%s); fetching singly", key.host, len(members), exc
                )
                for member in members:
                    cycle.spawn(self._fetch(cycle, key, [member]), [member])
                return
            for result, n in members:
                await cycle.settle(result, n, exc)
            return
        for i, (result, n) in enumerate(members):
            found = mapped.get(i)
            if found is None and aliased:
                # Absent from a batch answer: ask for it alone before concluding anything.
                cycle.spawn(self._fetch(cycle, key, [(result, n)]), [(result, n)])
            elif found is None:
                await cycle.settle(result, n, [])
            elif isinstance(found, SourceError):
                await cycle.settle(result, n, found)
            else:
                result.outside_window += found.outside_window
                await cycle.settle(result, n, found.points)

    async def _fetch_expanded(
        self, cycle: Fetching, key: RenderRequest, result: MetricResult, n: int
    ) -> None:
        """A templated Graphite entry: every series of the answer, by its name's nodes."""
        entry = result.entry
        assert entry.name_template is not None
        outcome: Outcome
        try:
            window = key.window
            bounds = stream.Bounds.of_window(window.start, window.end, entry.frequency)
            url = key.url([entry.remote_target])
            body = await cycle.get(result, entry, url, stream_parser(bounds))
            rendered = (
                body if isinstance(body, Rendered) else Rendered(parse_render_within(body, bounds))
            )
            result.outside_window += sum(s.outside_window for s in rendered.series)
            series = [(s.name, s.points) for s in rendered.series]
            outcome = expand.expand_named(entry.name_template, series)
        except SourceError as exc:
            outcome = exc
        await cycle.settle(result, n, outcome)


SOURCE = GraphiteSource()
