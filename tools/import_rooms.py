"""The import picture of skyline/vista: its modules grouped into rooms, and the arrows between
rooms, from the real import graph (grimp, which import-linter reads too).

    .venv/bin/python tools/import_rooms.py          # the mermaid diagram of docs/architecture.md
    .venv/bin/python tools/import_rooms.py --all    # with the arrows that others imply too
    .venv/bin/python tools/import_rooms.py --edges  # each arrow with the imports behind it
    .venv/bin/python tools/import_rooms.py --layers # the layers contract's list (pyproject.toml)

A module that no room claims is named on stderr and the exit code is 1, so a new module is
given its room; an arrow that goes both ways between two rooms is named the same way.
`lint-imports` (the contracts in pyproject.toml) is what `make lint` checks.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp

PACKAGE = "skyline.vista"

# Room -> the modules in it (a package stands for all its modules), top of the house first.
ROOMS: dict[str, tuple[str, ...]] = {
    "cli": ("__main__", "cli", "report", "backfill_command", "fetch_once", "bq.cli"),
    "agent": ("agent",),
    "processes": (
        "fetcher",
        "fetch_share",
        "fetch_upkeep",
        "running_cycles",
        "worker",
        "jobs.supervisor",
        "jobs.process",
        "bq_fetcher",
        "pool",
    ),
    "fetch cycle": ("cycle_setup", "fetch_cycle", "fetch_log", "fetch_tasks", "outbox", "prune"),
    "jobs": (
        "jobs",
        "backfill",
        "backfill_templates",
        "backfill_fetch",
        "backfill_plan",
        "history",
        "bq",
        "bq_backfill",
        "bq_update",
    ),
    "delivery": ("batch_delivery", "acknowledge", "admission", "sink_health", "poison", "delivery"),
    "sources": ("sources", "fetch_results", "request_budget"),
    "queue": ("fetchqueue", "queue_scripts"),
    "sinks": ("sinks",),
    "membership": ("membership",),
    "io": (
        "redisconn",
        "token_bucket",
        "telemetry",
        "plaintext",
        "create_budget",
        "lag",
        "logs",
        "procutil",
        "loop_waker",
        "proctree",
        "daemon",
    ),
    "settings": (
        "config",
        "entries",
        "expand",
        "schedule",
        "problems",
        "bigquery_settings",
        "bq.credentials",
        "bq.cron",
        "bq.query",
        "jobs.registry",
        "jobs.record",
    ),
    "core": (
        "model",
        "codec",
        "validate",
        "holes",
        "durations",
        "constants",
        "errors",
        "backoff",
        "secret",
    ),
    "testing": ("testing",),
}


def room_of(module: str) -> str | None:
    """The room of a module: the longest name of ROOMS that is it or a package above it."""
    name = module.removeprefix(PACKAGE + ".")
    best: tuple[int, str] | None = None
    for room, names in ROOMS.items():
        for claimed in names:
            if name == claimed or name.startswith(claimed + "."):
                if best is None or len(claimed) > best[0]:
                    best = (len(claimed), room)
    return best[1] if best else None


def layers(modules: list[str]) -> list[str]:
    """The rooms as the layers of import-linter's layers contract (pyproject.toml), top first:
    a room's modules joined by ' : ' (they may import each other). A package that rooms share
    (bq, jobs) is named by its modules; ``modules`` are the package's module names."""
    found = []
    for room, names in ROOMS.items():
        if room == "testing":
            continue  # nothing imports it, and it imports nothing of ours: its own contract
        members: list[str] = []
        for name in names:
            shared = any(
                other.startswith(name + ".") for r, n in ROOMS.items() if r != room for other in n
            )
            if not shared:
                members.append(name)
                continue
            members += [
                m.removeprefix(PACKAGE + ".")
                for m in modules
                if m.startswith(f"{PACKAGE}.{name}.") and room_of(m) == room
            ]
        found.append(" : ".join(members))
    return found


def arrows(graph: grimp.ImportGraph) -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    """(from room, to room) -> the module imports behind the arrow; and the unclaimed modules."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    unclaimed = []
    for module in sorted(graph.modules):
        if not module.startswith(PACKAGE + ".") or module.endswith(".__init__"):
            continue
        source = room_of(module)
        if source is None:
            unclaimed.append(module)
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = room_of(imported) if imported.startswith(PACKAGE + ".") else None
            if target is not None and target != source:
                found[(source, target)].add(f"{module} -> {imported}")
    return found, unclaimed


def reduced(found: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    """The arrows that no longer path of arrows implies (the transitive reduction): the
    picture's skeleton. An arrow left out still exists; ``--edges`` lists them all."""
    reach: dict[str, set[str]] = defaultdict(set)
    for source, target in found:
        reach[source].add(target)

    def via_others(source: str, target: str) -> bool:
        seen, todo = set(), [t for t in reach[source] if t != target]
        while todo:
            room = todo.pop()
            if room == target:
                return True
            if room not in seen:
                seen.add(room)
                todo.extend(reach[room])
        return False

    return {edge: imports for edge, imports in found.items() if not via_others(*edge)}


def mermaid(found: dict[tuple[str, str], set[str]]) -> str:
    ids = {room: room.replace(" ", "_") for room in ROOMS}
    lines = ["flowchart TD"]
    lines += [f'    {ids[room]}["{room}"]' for room in ROOMS]
    for (source, target), imports in sorted(found.items(), key=lambda i: _order(i[0])):
        lines.append(f"    {ids[source]} -->|{len(imports)}| {ids[target]}")
    return "\n".join(lines)


def _order(edge: tuple[str, str]) -> tuple[int, int]:
    rooms = list(ROOMS)
    return rooms.index(edge[0]), rooms.index(edge[1])


def main(argv: list[str]) -> int:
    graph = grimp.build_graph(
        "skyline", include_external_packages=False, exclude_type_checking_imports=True
    )
    found, unclaimed = arrows(graph)
    if "--layers" in argv:
        for layer in layers(sorted(graph.modules)):
            print(f'    "{layer}",')
    elif "--edges" in argv:
        for (source, target), imports in sorted(found.items(), key=lambda i: _order(i[0])):
            print(f"{source} -> {target}")
            for line in sorted(imports):
                print(f"    {line.replace(PACKAGE + '.', '')}")
    else:
        print(mermaid(found if "--all" in argv else reduced(found)))
    both_ways = sorted(
        f"{a} <-> {b}"
        for (a, b) in found
        if (b, a) in found and list(ROOMS).index(a) < list(ROOMS).index(b)
    )
    for module in unclaimed:
        print(f"no room for {module}: add it to ROOMS in tools/import_rooms.py", file=sys.stderr)
    for pair in both_ways:
        print(f"arrows both ways: {pair}", file=sys.stderr)
    upward = sorted(
        f"{a} -> {b}" for (a, b) in found if list(ROOMS).index(a) > list(ROOMS).index(b)
    )
    for arrow in upward:
        print(f"arrow upwards: {arrow}", file=sys.stderr)
    return 1 if unclaimed or both_ways or upward else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
