"""One query → many metrics: name templates.

An entry whose ``graphite_target`` holds ``{...}`` fields is a *template*: every series its
query returns becomes a metric of its own, named by filling the fields from the series:

* Prometheus: ``{label}`` is the value of that label (``{__name__}`` the metric name), e.g.
  ``graphite_target='node.{instance}.{job}'``;
* Graphite: ``{node[N]}`` is the N-th dot-separated node of the series name (from 0; negative
  counts from the end), e.g. a target ``servers.*.cpu.load`` with ``'{node[1]}.load'``.

**Sanitising rule** (the only one): in a filled-in value every character other than an ASCII
letter, a digit, ``-`` or ``_`` becomes ``_`` (``10.0.0.1:9100`` → ``10_0_0_1_9100``), so a
value is always exactly one path element. A series that lacks a label, or whose value is
empty, or that has too few nodes, is reported and skipped; the others go on.

Two series that map to one name are an error for that name (reported, neither is delivered),
never a merge. An entry without a template that gets several series stays an error.

The names an entry has produced are kept in Redis (``vista.expanded.<entry metric>``: name ->
the last time a fetch returned it), so that a series that appears later becomes a new metric
(pre-populated over ``populate_at_resolutions`` when the entry asks for it) and ``vista status``
can list them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import redis
import redis.asyncio

from skyline.vista import constants
from skyline.vista.entries import metric_name_problem

KEY_PREFIX = constants.EXPANDED_KEY_PREFIX
STALE_AFTER = 3600
"""A name that no answer returned for this long no longer holds its entry's window back."""

_FIELD = re.compile(r"\{([^{}]*)\}")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NODE = re.compile(r"^node\[(-?\d+)\]$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

Pairs = list[tuple[object, object]]


def sanitise(value: str) -> str:
    """The documented rule: anything but ASCII letters, digits, '-' and '_' becomes '_'."""
    return _UNSAFE.sub("_", value)


@dataclass(frozen=True)
class Field:
    label: str | None = None  # Prometheus label
    node: int | None = None  # Graphite node index


@dataclass(frozen=True)
class NameTemplate:
    text: str
    parts: tuple[str | Field, ...]

    def render(self, label: Mapping[str, str] | None, nodes: Sequence[str] | None) -> str:
        """The name for one series; ValueError saying what the series lacks."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if part.label is not None:
                value = (label or {}).get(part.label)
                if value is None:
                    raise ValueError(f"has no label {part.label!r}")
            else:
                assert part.node is not None
                found = list(nodes or [])
                if not -len(found) <= part.node < len(found):
                    raise ValueError(f"has {len(found)} node(s), no node[{part.node}]")
                value = found[part.node]
            if value == "":
                raise ValueError(f"has an empty value for {_show(part)}")
            out.append(sanitise(value))
        return "".join(out)


def _show(part: Field) -> str:
    return f"{{{part.label}}}" if part.label is not None else f"{{node[{part.node}]}}"


def parse_template(text: str, kind: Literal["graphite", "prometheus"]) -> NameTemplate:
    """Parse a metric-name template; ValueError naming the bad field."""
    parts: list[str | Field] = []
    pos = 0
    for match in _FIELD.finditer(text):
        parts.append(text[pos : match.start()])
        inner = match.group(1).strip()
        node = _NODE.match(inner)
        if kind == "graphite":
            if not node:
                raise ValueError(
                    f"field {{{inner}}}: a Graphite template takes {{node[N]}} fields "
                    "(the N-th node of the series name, from 0)"
                )
            parts.append(Field(node=int(node.group(1))))
        else:
            if not _LABEL.match(inner):
                raise ValueError(
                    f"field {{{inner}}}: a Prometheus template takes {{label}} fields, "
                    "e.g. {instance} or {job}"
                )
            parts.append(Field(label=inner))
        pos = match.end()
    parts.append(text[pos:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{" in literal or "}" in literal:
        raise ValueError("unbalanced '{' or '}'")
    if not any(isinstance(p, Field) for p in parts):
        raise ValueError("no {field} in it")
    sample = "".join(p if isinstance(p, str) else "x" for p in parts)
    problem = metric_name_problem(sample)
    if problem:
        raise ValueError(f"a name made from it {problem}")
    return NameTemplate(text, tuple(p for p in parts if p != ""))


@dataclass
class Expansion:
    """One answer split into metrics: name -> the series' raw (timestamp, value) pairs."""

    series: dict[str, Pairs] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    about: dict[str, str] = field(default_factory=dict)
    """The problems that concern one name (two series on it, a bad name): name -> problem.
    The others (a series the template cannot name) concern the whole entry."""

    def problems_for(self, wanted: Callable[[str], bool]) -> list[str]:
        """The problems of a caller that only wants some names (a backfill of some names)."""
        named = set(self.about.values())
        return [p for p in self.problems if p not in named] + [
            p for name, p in self.about.items() if wanted(name)
        ]


def _collect(named: list[tuple[str, str, Pairs]], problems: list[str]) -> Expansion:
    """(name, description, pairs) → an Expansion; colliding names are problems, not merges."""
    by_name: dict[str, list[tuple[str, Pairs]]] = {}
    for name, what, pairs in named:
        by_name.setdefault(name, []).append((what, pairs))
    out = Expansion(problems=problems)
    for name, found in by_name.items():
        if len(found) > 1:
            shown = "; ".join(what for what, _ in found[:3])
            out.about[name] = (
                f"{len(found)} series map to the name {name!r} ({shown}); put a label or node "
                "that tells them apart in the template"
            )
            out.problems.append(out.about[name])
            continue
        problem = metric_name_problem(name)
        if problem:
            out.about[name] = f"the name {name!r} {problem}"
            out.problems.append(out.about[name])
            continue
        out.series[name] = found[0][1]
    return out


def expand_labelled(
    template: NameTemplate, series: Sequence[tuple[Mapping[str, str], Pairs]]
) -> Expansion:
    """Prometheus series (labels, pairs) → metrics."""
    named: list[tuple[str, str, Pairs]] = []
    problems: list[str] = []
    for labels, pairs in series:
        what = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        try:
            named.append((template.render(labels, None), what, pairs))
        except ValueError as exc:
            problems.append(f"series {what} {exc}; skipped")
    return _collect(named, problems)


def expand_named(template: NameTemplate, series: Sequence[tuple[str, Pairs]]) -> Expansion:
    """Graphite series (name, pairs) → metrics."""
    named: list[tuple[str, str, Pairs]] = []
    problems: list[str] = []
    for name, pairs in series:
        try:
            named.append((template.render(None, name.split(".")), repr(name), pairs))
        except ValueError as exc:
            problems.append(f"series {name!r} {exc}; skipped")
    return _collect(named, problems)


# --- the names each entry has produced (Redis) ----------------------------------------------


def key(entry_metric: str) -> str:
    return KEY_PREFIX + entry_metric


async def known(
    client: redis.asyncio.Redis, entry_metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """entry metric -> {name: last seen} for each templated entry."""
    if not entry_metrics:
        return {}
    pipe = client.pipeline(transaction=False)
    for metric in entry_metrics:
        pipe.hgetall(key(metric))
    found = await pipe.execute()
    return {m: _decode(raw) for m, raw in zip(entry_metrics, found, strict=True)}


def known_sync(client: redis.Redis, entry_metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    if not entry_metrics:
        return {}
    pipe = client.pipeline(transaction=False)
    for metric in entry_metrics:
        pipe.hgetall(key(metric))
    return {m: _decode(raw) for m, raw in zip(entry_metrics, pipe.execute(), strict=True)}


async def remember(
    client: redis.asyncio.Redis, seen: Mapping[str, Sequence[str]], now: float
) -> None:
    """Record the names each templated entry's answer returned this cycle."""
    pipe = client.pipeline(transaction=False)
    for entry_metric, names in seen.items():
        if names:
            pipe.hset(key(entry_metric), mapping={n: repr(float(now)) for n in names})
    await pipe.execute()


def _decode(raw: Mapping[object, object]) -> dict[str, float]:
    out = {}
    for name, value in raw.items():
        text = name.decode() if isinstance(name, bytes) else str(name)
        seen = value.decode() if isinstance(value, bytes) else str(value)
        out[text] = float(seen)
    return out


def recent(names: Mapping[str, float], now: float) -> list[str]:
    return sorted(n for n, seen in names.items() if now - seen <= STALE_AFTER)


def entry_watermark(names: Sequence[str], watermarks: Mapping[str, int]) -> tuple[int | None, bool]:
    """The window start of a templated entry: the oldest watermark among its recent names.
    (None, True) when one of them was never delivered (a new series: fetch it over the
    entry's populate/default window); (None, False) when there are no names yet."""
    if not names:
        return None, False
    marks = [watermarks.get(n) for n in names]
    if any(m is None for m in marks):
        return None, True
    return min(m for m in marks if m is not None), False
