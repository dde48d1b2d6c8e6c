"""tools/import_rooms.py: which room a module is in, and the picture's skeleton (the arrows that
no path of other arrows implies)."""

from __future__ import annotations

import importlib.util
import sys
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
