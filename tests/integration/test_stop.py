"""`vista stop` and `bin/vista.d stop` return only when every process of the instance has exited
and is gone: the agent, its workers and the multiprocessing resource tracker (a zombie still
answers `kill -0` and shows in `ps`: it must have been reaped too). LSB: 0, and the pidfile is
gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyline.vista import proctree
from tests.conftest import RedisFactory
from tests.support.daemon import REPO, VistaHarness

VISTA_D = REPO / "bin" / "vista.d"


def harness(tmp_path: Path, tmp_redis: RedisFactory) -> VistaHarness:
    server = tmp_redis()
    return VistaHarness(
        tmp_path / "vista",
        {
            "VISTA_ENABLED": True,
            "REDIS_URL": server.url,
            "VISTA_SINK": "graphite",
            "CARBON_HOST": "127.0.0.1",
            "VISTA_WORKER_PROCESSES": 2,
        },
    )


@pytest.mark.parametrize("how", ["vista", "vista.d"])
def test_stop_returns_when_every_process_is_gone(
    tmp_path: Path, tmp_redis: RedisFactory, how: str
) -> None:
    vista = harness(tmp_path, tmp_redis)
    try:
        agent = vista.start()
        vista.wait_workers(agent, 2)
        instance = proctree.tree(agent.pid)
        kinds = [Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in instance]
        assert len(instance) == 4, kinds  # the agent, 2 workers, the resource tracker
        assert any(b"resource_tracker" in k for k in kinds), kinds
        if how == "vista":
            stop = vista.cli("stop")
        else:
            stop = vista.run_argv(
                [str(VISTA_D), "stop", "--settings", str(vista.settings_path)], ("vista.d",)
            )
        left = [(p.pid, s.state) for p in instance if (s := proctree.same(p)) is not None]
    finally:
        vista.cleanup()
    assert stop.returncode == 0, str(stop)
    assert f"vista stopped (pid {agent.pid})" in stop.stdout, str(stop)
    assert left == [], (left, str(stop))
    assert not vista.pidfile.exists()
