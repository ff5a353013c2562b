"""Index loss: a node whose index is missing or unreadable while ``store/`` holds instances
rebuilds it from the stored files (``/readyz`` 503 meanwhile, audited), ``pacsnode index
rebuild`` does the same on a stopped node, and an index that cannot be rebuilt stops the node
with one line and exit code 2 (docs/security.md, docs/storage.md)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from node.dimse.scu import send_files
from node.ingest import Ingestor
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore
from tests.attacks import MR_STORAGE, image_dataset, part10, uid
from tests.peers import (
    VENV_BIN,
    free_port,
    node_process,
    query_index,
    start_node,
    wait_for_port,
    write_node_config,
)

pytestmark = [pytest.mark.peers]


def _instances(node_http: int) -> int:
    response = httpx.get(f"http://127.0.0.1:{node_http}/dicom-web/instances", params={"limit": "100000"},
                         timeout=60)
    assert response.status_code == 200, response.text
    return len(response.json())


def _drop_index(storage: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (storage / f"index.sqlite{suffix}").unlink(missing_ok=True)


def _pacsnode(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACSNODE_CONFIG"}
    return subprocess.run([str(VENV_BIN / "pacsnode"), *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(config.parent))


def test_missing_index_is_rebuilt_at_start(tmp_path: Path) -> None:
    """The review's case: 20 instances, a clean stop, index.sqlite deleted, a clean start."""
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=20, rows=16, columns=16))
    folder = tmp_path / "node"
    with node_process(folder) as node:
        assert send_files(files, ae_title=node.ae_title, host="127.0.0.1", port=node.port).sent == 20
    _drop_index(folder / "var")
    with node_process(folder) as node:
        wait_for_port(node.http_port)
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "not ready a minute after start"
            time.sleep(0.1)
        assert _instances(node.http_port) == 20
        events = query_index(folder / "var" / "index.sqlite",
                             "SELECT actor, detail FROM audit_log WHERE event = 'index-rebuilt'")
        assert len(events) == 1 and '"files": 20' in events[0][1] and "missing" in events[0][1]


def _store_in_process(storage: Path, count: int) -> None:
    """``count`` instances written by the node's own ingest (no network: the store is the setup)."""
    index = Index(storage / "index.sqlite")
    ingestor = Ingestor(InstanceStore(storage, fsync=False), index, allowed_sop_classes=[MR_STORAGE])
    for number in range(count):
        ingestor.ingest_part10(part10(image_dataset(uid(40, number)), uid(40, number)))
    index.close()


def test_unreadable_index_is_set_aside_and_rebuilt_while_not_ready(tmp_path: Path) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port)
    storage = folder / "var"
    _store_in_process(storage, 3000)
    _drop_index(storage)
    (storage / "index.sqlite").write_bytes(b"this is not an SQLite database" * 100)

    status = _pacsnode("status", config=config)  # other commands: one line, exit 2
    assert status.returncode == 2 and "Traceback" not in status.stderr
    assert len(status.stderr.strip().splitlines()) == 1 and "cannot be read" in status.stderr

    node = start_node(config, storage=storage, port=port, http_port=http_port, log=folder / "node.log")
    try:
        wait_for_port(http_port)
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 120
        while True:
            response = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=10)
            seen.append((response.status_code, response.text))
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, seen[-1]
            time.sleep(0.02)
        rebuilding = [text for code, text in seen if code == 503]
        assert rebuilding and "being rebuilt from the stored files" in rebuilding[0], seen[:3]
        assert _instances(http_port) == 3000
    finally:
        node.stop()
    assert len(list(storage.glob("index.sqlite.unreadable-*"))) == 1
    log = (folder / "node.log").read_text()
    assert "index rebuild: 3000 of 3000 stored files" in log


def test_index_rebuild_command(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=20, rows=16, columns=16, seed=4))
    folder = tmp_path / "node"
    with node_process(folder) as node:
        assert send_files(files, ae_title=node.ae_title, host="127.0.0.1", port=node.port).sent == 20
        refused = _pacsnode("index", "rebuild", "--quiet", config=node.config)
        assert refused.returncode == 2 and "stop it first" in refused.stderr
    config = folder / "node.toml"
    done = _pacsnode("index", "rebuild", config=config)
    assert done.returncode == 0, done.stderr
    assert "from 20 stored file(s)" in done.stdout and "index.sqlite.replaced-" in done.stdout
    audit = _pacsnode("audit", "--event", "index-rebuilt", config=config)
    assert audit.returncode == 0 and "index-rebuilt" in audit.stdout and "files=20" in audit.stdout
    with node_process(folder) as node:
        wait_for_port(node.http_port)
        assert _instances(node.http_port) == 20


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_an_index_that_cannot_be_rebuilt_stops_the_node_with_one_line(tmp_path: Path) -> None:
    mount = tmp_path / "volume"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        storage = mount / "var"
        _store_in_process(storage, 3)
        _drop_index(storage)
        (storage / "index.sqlite").write_bytes(b"garbage" * 100)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        folder = tmp_path / "node"
        folder.mkdir()
        config = write_node_config(folder, port=free_port(), http_port=free_port(), storage=storage)
        served = _pacsnode("serve", config=config)
        assert served.returncode == 2, served.stderr
        assert "Traceback" not in served.stderr
        lines = served.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot be rebuilt" in lines[0], served.stderr
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
