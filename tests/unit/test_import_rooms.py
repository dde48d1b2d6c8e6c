"""tools/import_rooms.py: which room a module is in, and the picture's skeleton (the arrows that
no path of other arrows implies)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parents[2] / "tools" / "import_rooms.py"


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_rooms", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_rooms", module)
    spec.loader.exec_module(module)
    return module


rooms = load_tool()


def test_a_module_is_in_the_room_of_its_longest_claimed_name() -> None:
    assert rooms.room_of("skyline.vista.bq.cli") == "cli"
    assert rooms.room_of("skyline.vista.bq.cron") == "settings"
    assert rooms.room_of("skyline.vista.bq.job") == "jobs"
    assert rooms.room_of("skyline.vista.jobs.supervisor") == "processes"
    assert rooms.room_of("skyline.vista.jobs.store") == "jobs"
    assert rooms.room_of("skyline.vista.agent.workers") == "agent"
    assert rooms.room_of("skyline.vista.cliff") is None  # a name, not a prefix of one


def test_the_skeleton_leaves_out_the_arrows_that_others_imply() -> None:
    found = {
        ("cli", "agent"): {"a"},
        ("agent", "core"): {"b"},
        ("cli", "core"): {"c"},  # implied by cli -> agent -> core
        ("agent", "queue"): {"d"},
    }
    assert rooms.reduced(found) == {
        ("cli", "agent"): {"a"},
        ("agent", "core"): {"b"},
        ("agent", "queue"): {"d"},
    }


def package_modules() -> list[str]:
    """skyline.vista's module names, from its files."""
    root = TOOL.parents[1] / "skyline" / "vista"
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("skyline", "vista", *parts)))
    return names


def test_the_layers_contract_is_the_rooms_of_the_tool() -> None:
    """pyproject.toml's layers contract (checked by lint-imports) and the rooms the tool draws
    in docs/architecture.md are one list: `tools/import_rooms.py --layers` prints it."""
    config = tomllib.loads((TOOL.parents[1] / "pyproject.toml").read_text())
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    expected = rooms.layers(package_modules())
    assert contract["layers"] == expected, (
        "pyproject.toml's layers differ from tools/import_rooms.py's ROOMS: put each module in "
        "its room there, then paste the list that `tools/import_rooms.py --layers` prints"
    )
