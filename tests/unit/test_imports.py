"""Import order the agent relies on (skyline/vista/agent/__init__.py): the CLI and the agent's
wiring import no prometheus_client, so that PROMETHEUS_MULTIPROC_DIR can still be set; and the
agent never imports the CLI (the CLI calls the agent, not the other way round)."""

from __future__ import annotations

import subprocess
import sys


def modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_the_cli_and_the_agent_wiring_do_not_import_prometheus_client() -> None:
    loaded = modules_after("import skyline.vista.cli, skyline.vista.agent")
    assert "skyline.vista.agent" in loaded
    assert not {m for m in loaded if m.startswith("prometheus_client")}
    assert "skyline.vista.agent.supervisor" not in loaded


def test_the_agent_does_not_import_the_cli() -> None:
    loaded = modules_after("import skyline.vista.agent.supervisor")
    assert "skyline.vista.cli" not in loaded


def test_the_supervisor_is_still_reachable_as_agent_vista() -> None:
    from skyline.vista import agent
    from skyline.vista.agent.supervisor import Vista

    assert agent.Vista is Vista
