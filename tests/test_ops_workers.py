"""The local executor's worker processes end with the node, even when the node is SIGKILLed.

A SIGKILL gives the node no chance to stop its pool. The forkserver that forked the
workers exits when the node's end of its pipe closes, and the workers, re-parented, would
wait for work forever; ``PR_SET_PDEATHSIG`` (and a watchdog thread) make them exit.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.peers import node_process

pytestmark = pytest.mark.peers


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _workers(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The pool workers: children of the forkserver (grandchildren of the node)."""
    found = []
    for process in processes:
        try:
            if "forkserver" in " ".join(process.parent().cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, AttributeError):
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_pool_workers_exit_when_the_node_is_sigkilled(tmp_path: Path) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(
        '[[route]]\nname = "qc"\nanalyzer = "qc"\nmatch = { Modality = "^MR$" }\n', encoding="utf-8")
    with node_process(folder, extra="[jobs]\nworkers = 2\n") as node:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = _workers(_descendants(node.process.pid))
            time.sleep(0.2)
        assert len(workers) == 2, [p.cmdline() for p in _descendants(node.process.pid)]
        everything = _descendants(node.process.pid)  # forkserver, resource tracker, workers
        killed_at = time.monotonic()
        node.kill()
        while time.monotonic() - killed_at < 10 and any(_alive(p) for p in everything):
            time.sleep(0.05)
        gone_after = time.monotonic() - killed_at
        survivors = [(p.pid, p.cmdline()) for p in everything if _alive(p)]
    assert not survivors, f"still running {gone_after:.1f} s after the SIGKILL: {survivors}"
    assert gone_after < 5
