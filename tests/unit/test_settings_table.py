"""The settings table (skyline/vista/config/table.py) is the one list of settings: README.md's
table is made from it, etc/vista/settings.py shows every one of them, the unknown-name warning
knows them all, and the loader reads no setting the table does not hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from skyline.vista import config
from skyline.vista.config import table
from skyline.vista.config.reader import Reader
from skyline.vista.problems import Problems

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "skyline" / "vista" / "config"


def test_the_readme_table_is_the_one_made_from_the_settings_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme == table.with_table(readme), (
        "README.md's settings table is stale: run `python -m skyline.vista.config --readme "
        "README.md`"
    )
    listed = re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M)
    assert set(listed) >= {s.name for s in table.SETTINGS}


def test_the_example_settings_file_shows_every_setting() -> None:
    example = (REPO / "etc" / "vista" / "settings.py").read_text()
    shown = set(re.findall(r"^(?:# )?([A-Z_]+) = ", example, re.M))
    missing = sorted({s.name for s in table.SETTINGS} - shown)
    assert not missing, f"etc/vista/settings.py does not show {missing}"
    unknown = sorted(shown - table.KNOWN_SETTINGS)
    assert not unknown, f"etc/vista/settings.py shows settings Vista does not know: {unknown}"


def test_the_loader_reads_only_settings_of_the_table() -> None:
    source = "".join(path.read_text() for path in CONFIG.glob("*.py") if path.name != "table.py")
    named = set(
        re.findall(r'"((?:VISTA|REDIS|FLUX|CARBON|SKYLINE|SERVER|LOG|PID)_[A-Z_]+)', source)
    )
    assert named, "the loader names no setting?"
    assert not sorted(named - table.KNOWN_SETTINGS)


def test_each_setting_is_written_once() -> None:
    names = [s.name for s in table.SETTINGS]
    assert len(names) == len(set(names))
    assert config.KNOWN_SETTINGS == frozenset(names)
    assert all(s.doc and not s.doc.endswith(".") for s in table.SETTINGS)


READ = [s for s in table.SETTINGS if s.kind != "other"]


@pytest.mark.parametrize("setting", READ, ids=[s.name for s in READ])
def test_a_setting_left_out_or_none_reads_as_its_table_default(
    setting: table.Setting[object],
) -> None:
    problems = Problems()
    assert Reader({}, problems).read(setting) == setting.default
    if setting.default is None or setting.kind in ("text", "path", "secret"):
        assert Reader({setting.name: None}, problems).read(setting) == setting.default
    assert not problems.errors


def test_a_bad_value_names_the_setting_and_what_was_expected() -> None:
    problems = Problems()
    assert (
        Reader({"VISTA_WORKER_PROCESSES": 0}, problems).read(table.WORKER_PROCESSES)
        == table.WORKER_PROCESSES.default
    )
    assert problems.errors == ["VISTA_WORKER_PROCESSES: got 0, expected an integer >= 1 and <= 64"]
