"""Bad input gets the right DIMSE status, is logged, and the node keeps serving."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config

from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, node_process

pytestmark = pytest.mark.peers


def _encode(ds: object) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)  # type: ignore[arg-type]
    return buffer.getvalue()


def _raw_store(node: NodeProcess, payload: bytes, sop_class: str = MRImageStorage,
               sop_uid: str = "1.2.3.4.5", tmp: Path | None = None) -> tuple[int, str]:
    """Send arbitrary dataset bytes with C-STORE: pynetdicom streams a Part 10 file's dataset
    as it is when STORE_SEND_CHUNKED_DATASET is on, so the node sees exactly these bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4"
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path = Path(tempfile.mkstemp(suffix=".dcm")[1])
    path.write_bytes(buffer.getvalue() + payload)
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        response = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
        path.unlink()
    assert response is not None and "Status" in response
    return int(response.Status), str(getattr(response, "ErrorComment", "") or "")


def _still_serving(node: NodeProcess) -> None:
    result = subprocess.run(["echoscu", "-aec", node.ae_title, "127.0.0.1", str(node.port)],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, "the node stopped answering C-ECHO"


def test_missing_uids_are_refused_with_reason(node: NodeProcess, mr_series: list[Path]) -> None:
    ds = dcmread(mr_series[0])
    del ds.SOPInstanceUID
    status, comment = _raw_store(node, _encode(ds))
    assert status == 0xA900 and "SOPInstanceUID" in comment
    ds = dcmread(mr_series[0])
    del ds.StudyInstanceUID
    status, comment = _raw_store(node, _encode(ds))
    assert status == 0xA900 and "StudyInstanceUID" in comment
    assert "refused (0xA900)" in node.log.read_text()
    _still_serving(node)


def test_corrupt_and_truncated_datasets(node: NodeProcess, mr_series: list[Path]) -> None:
    good = _encode(dcmread(mr_series[0]))
    status, comment = _raw_store(node, good[: len(good) // 2])
    assert 0xC000 <= status <= 0xCFFF and "truncated" in comment.lower()
    status, _ = _raw_store(node, b"\x08\x00\x16\x00UI\xff\x7f" + b"garbage" * 10)
    assert 0xC000 <= status <= 0xCFFF
    assert not list((node.storage / "store").rglob("*.dcm"))
    _still_serving(node)


def test_dataset_not_matching_context(node: NodeProcess, mr_series: list[Path]) -> None:
    ds = dcmread(mr_series[0])
    status, comment = _raw_store(node, _encode(ds), sop_class=CTImageStorage)
    assert status == 0xA900 and "differs" in comment


def test_sop_class_not_allowed(tmp_path: Path, mr_series: list[Path]) -> None:
    env = {"PACSNODE_DICOM__STORAGE_SOP_CLASSES": f'["{CTImageStorage}"]'}
    with node_process(tmp_path / "ct-only", env=env) as node:
        result = subprocess.run(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                                 str(mr_series[0])], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "no presentation context" in (result.stdout + result.stderr).lower()
        _still_serving(node)


def test_unknown_calling_ae_is_rejected(tmp_path: Path, mr_series: list[Path]) -> None:
    extra = '\n[[dicom.peers]]\nae_title = "TRUSTED"\nhost = "127.0.0.1"\nport = 104\n'
    env = {"PACSNODE_DICOM__ALLOW_ANY": "false"}
    with node_process(tmp_path / "closed", extra=extra, env=env) as node:
        denied = subprocess.run(["storescu", "-aet", "STRANGER", "-aec", node.ae_title, "127.0.0.1",
                                 str(node.port), str(mr_series[0])], capture_output=True, text=True,
                                timeout=60)
        assert denied.returncode != 0
        assert "rejected" in (denied.stdout + denied.stderr).lower()
        allowed = subprocess.run(["storescu", "-aet", "TRUSTED", "-aec", node.ae_title, "127.0.0.1",
                                  str(node.port), str(mr_series[0])], capture_output=True, text=True,
                                 timeout=60)
        assert allowed.returncode == 0, allowed.stderr


def test_peer_abort_mid_association(node: NodeProcess, mr_series: list[Path]) -> None:
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.send_c_store(mr_series[0]).Status == 0
    assoc.abort()
    _still_serving(node)
    ae2 = AE(ae_title="AFTER")
    ae2.add_requested_context(MRImageStorage)
    again = ae2.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert again.send_c_store(mr_series[1]).Status == 0
    again.release()


def test_duplicates_identical_and_different(node: NodeProcess, mr_series: list[Path], tmp_path: Path) -> None:
    ae = AE(ae_title="DUPSCU")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    first = dcmread(mr_series[0])
    assert assoc.send_c_store(first).Status == 0
    assert assoc.send_c_store(first).Status == 0  # identical: success, nothing new
    changed = dcmread(mr_series[0])
    changed.SeriesDescription = "edited elsewhere"
    assert assoc.send_c_store(changed).Status == 0  # keep_first: acknowledged, filed aside
    assoc.release()
    stored = list((node.storage / "store").rglob("*.dcm"))
    assert len(stored) == 1
    assert dcmread(stored[0]).SeriesDescription == first.SeriesDescription
    kept_aside = list((node.storage / "duplicates").glob("*.dcm"))
    assert len(kept_aside) == 1 and dcmread(kept_aside[0]).SeriesDescription == "edited elsewhere"
    from node.storage.index import Index

    rows = Index(node.storage / "index.sqlite").duplicates()
    assert [(r["identical"], r["policy"]) for r in rows] == [(1, "keep_first"), (0, "keep_first")]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_answers_out_of_resources(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        big = write_mr_series(tmp_path / "big", SeriesSpec(slices=60, rows=128, columns=128, seed=3))
        env = {"PACSNODE_STORAGE__PATH": str(mount / "var")}
        with node_process(tmp_path / "full", env=env) as node:
            node.storage = mount / "var"
            ae = AE(ae_title="FILLER")
            ae.add_requested_context(MRImageStorage)
            assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
            statuses = [int(assoc.send_c_store(p).Status) for p in big]
            assoc.release()
            assert 0 in statuses and 0xA700 in statuses
            acked = statuses.count(0)
            assert not list(node.storage.rglob("*.part")), "a half-written file is visible"
            assert len(list((node.storage / "store").rglob("*.dcm"))) == acked
            _still_serving(node)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_storage_refusing_a_write_answers_out_of_resources_with_the_cause(
    node: NodeProcess, mr_series: list[Path], tmp_path: Path
) -> None:
    """A file where the study's folder belongs (an operator's copy, a broken volume): 0xA700 naming it."""
    ds = dcmread(mr_series[0])
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1379.999.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1379.999.2"
    blocker = node.storage / "store" / ds.StudyInstanceUID
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a folder")
    try:
        status, comment = _raw_store(node, _encode(ds), sop_uid=ds.SOPInstanceUID)
        assert status == 0xA700, hex(status)
        assert comment.startswith("storage write failed (Not a directory)"), comment  # LO: 64 characters
        assert ds.StudyInstanceUID in node.log.read_text()  # the full message, with the path
        assert blocker.read_bytes() == b"not a folder"
        _still_serving(node)
    finally:
        blocker.unlink()
    status, _ = _raw_store(node, _encode(ds), sop_uid=ds.SOPInstanceUID)
    assert status == 0x0000, hex(status)
