"""A small tmpfs as the storage: refusal below the threshold and on a full disk, then recovery.

The node refuses instances with C-STORE 0xA700 (Out of Resources) and reports 503 on
``/readyz`` while free space is short, leaves nothing half-written, and takes the same
instances again, without a restart, once space is freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, node_process

pytestmark = [pytest.mark.peers, pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(mount: Path, leave: int) -> Path:
    """A file that leaves ``leave`` bytes free on the mount."""
    filler = mount / "filler.bin"
    size = shutil.disk_usage(mount).free - leave
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(size, 0))
    return filler


def _store(node: NodeProcess, files: list[Path]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def _metric(node: NodeProcess, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _stored(storage: Path) -> list[Path]:
    return sorted((storage / "store").rglob("*.dcm"))


def _partial(storage: Path) -> list[Path]:
    return [p for p in storage.rglob("*") if p.is_file() and p.name.endswith(".part")]


def test_below_threshold_refuses_then_recovers_when_space_is_freed(tmpfs: Path, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "series", SeriesSpec(slices=8, rows=64, columns=64, seed=1))
    storage = tmpfs / "var"
    env = {"PACSNODE_STORAGE__PATH": str(storage), "PACSNODE_STORAGE__MIN_FREE_GB": "0.001"}  # 1 MB
    with node_process(tmp_path / "node", env=env) as node:
        ready = f"http://127.0.0.1:{node.http_port}/readyz"
        filler = _fill(tmpfs, leave=600_000)  # 0.6 MB free: below the 1 MB threshold
        assert _store(node, files) == [0xA700] * 8
        assert httpx.get(ready, timeout=10).status_code == 503
        assert not _stored(storage) and not _partial(storage)
        assert _metric(node, "pacsnode_cstore_refusals_total", {"status": "0xA700", "calling_ae": "MODALITY"}) == 8
        filler.unlink()  # space freed: the same instances are taken, no restart
        assert httpx.get(ready, timeout=10).status_code == 200
        assert _store(node, files) == [0] * 8
        assert len(_stored(storage)) == 8
        assert _metric(node, "pacsnode_index_instances", {}) == 8
        assert _metric(node, "pacsnode_received_instances_total", {"calling_ae": "MODALITY"}) == 8


def test_full_disk_mid_series_refuses_without_partial_files_then_recovers(tmpfs: Path, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "series", SeriesSpec(slices=12, rows=128, columns=128, seed=2))
    size = files[0].stat().st_size
    storage = tmpfs / "var"
    env = {"PACSNODE_STORAGE__PATH": str(storage), "PACSNODE_STORAGE__MIN_FREE_GB": "0"}  # no threshold
    with node_process(tmp_path / "node", env=env) as node:
        # Room for a few instances, not twelve: each commit also appends its index pages (about
        # 80 KB of WAL per instance here), and every receiver process's start-up wrote some.
        filler = _fill(tmpfs, leave=8 * size)
        statuses = _store(node, files)
        acked = [f for f, s in zip(files, statuses, strict=True) if s == 0]
        assert 0 < len(acked) < len(files) and set(statuses) == {0, 0xA700}, statuses
        assert not _partial(storage), "a half-written file is visible"
        assert len(_stored(storage)) == len(acked) == _metric(node, "pacsnode_index_instances", {})
        filler.unlink()
        refused = [f for f, s in zip(files, statuses, strict=True) if s != 0]
        assert _store(node, refused) == [0] * len(refused)  # the sender's retry now succeeds
        assert len(_stored(storage)) == 12 and not _partial(storage)
        assert _metric(node, "pacsnode_index_instances", {}) == 12
        assert httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=10).status_code == 200
