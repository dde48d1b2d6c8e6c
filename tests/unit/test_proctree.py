"""proctree: a process tree from /proc, and process identity by pid and start time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from skyline.vista import proctree


def test_tree_finds_grandchildren_and_a_reaped_process_is_gone() -> None:
    # A child that starts a grandchild and waits for it.
    code = (
        "import subprocess, sys; "
        "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:

        def grandchildren() -> list[proctree.ProcInfo]:
            return [p for p in proctree.tree(child.pid) if p.pid != child.pid]

        for _ in range(100):
            if grandchildren():
                break
            time.sleep(0.05)
        (grandchild,) = grandchildren()
        me = proctree.tree(os.getpid())
        assert {child.pid, grandchild.pid} <= {p.pid for p in me}
        assert grandchild.ppid == child.pid
        info = proctree.read(child.pid)
        assert info is not None and proctree.same(info) == proctree.read(child.pid)
        assert not proctree.exited(info)

        proctree.kill(grandchild)
        proctree.kill(info)
        for _ in range(100):
            if proctree.exited(info):
                break
            time.sleep(0.02)
        assert proctree.exited(info) and not proctree.gone(info)  # a zombie until reaped
        child.wait(5)
        assert proctree.gone(info)
        proctree.kill(info)  # no such process any more: nothing happens
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_a_reused_pid_is_not_the_same_process() -> None:
    info = proctree.read(os.getpid())
    assert info is not None
    other = proctree.ProcInfo(info.pid, info.ppid, info.state, info.started + 1)
    assert proctree.same(other) is None
    assert proctree.gone(other) and proctree.exited(other)
    proctree.kill(other)  # never signals a process that is not the one described
