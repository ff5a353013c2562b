"""One flush per instance: start-up recovery promotes complete temporary files, drops torn ones.

A power loss can undo the rename that follows the fsync of an acknowledged instance
(node.storage.store). These tests leave the files such a loss leaves behind and check that
recovery restores every complete instance under its final name, and the index row with it.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from node.dimse.server import storage_sop_classes
from node.ingest import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    Ingestor,
    encode_file_meta,
    split_part10,
)
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore


def _as_lost_rename(target: Path) -> Path:
    """Move a stored file back to the temporary name its writer used (a rename undone)."""
    data = target.read_bytes()
    temp = target.with_name(f".{target.name}.{zlib.crc32(data):08x}-0badcafe.part")
    os.replace(target, temp)
    return temp


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "var", fsync=True)


def test_write_leaves_only_the_final_file(store: InstanceStore) -> None:
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert store.write(target, (b"abc", b"defg")) == 7
    assert target.read_bytes() == b"abcdefg"
    assert not list(store.root.rglob("*.part"))


def test_complete_temp_is_promoted_and_torn_ones_removed(store: InstanceStore) -> None:
    kept = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    store.write(kept, (b"x" * 5000,))
    temp = _as_lost_rename(kept)
    torn = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.6")
    store.write(torn, (b"y" * 5000,))
    torn_temp = _as_lost_rename(torn)
    torn_temp.write_bytes(b"y" * 4096)  # the flush never completed
    legacy = kept.with_name(".1.2.3.4.7.dcm.deadbeef.part")  # no checksum: cannot be proven
    legacy.write_bytes(b"z")

    result = store.recover_partial_files()

    assert result.promoted == [kept] and result.removed == 2
    assert kept.read_bytes() == b"x" * 5000
    assert not temp.exists() and not torn.exists() and not legacy.exists()


def test_conflicting_temp_is_kept_as_a_copy_or_replaces(store: InstanceStore) -> None:
    target = store.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    store.write(target, (b"new content",))
    _as_lost_rename(target)
    target.write_bytes(b"old content")

    result = store.recover_partial_files()
    assert target.read_bytes() == b"old content"
    (copy,) = result.promoted
    assert copy.parent == store.duplicates_dir and copy.read_bytes() == b"new content"

    store.write(target, (b"newer",))
    _as_lost_rename(target)
    target.write_bytes(b"old content")
    store.recover_partial_files(replace_existing=True)
    assert target.read_bytes() == b"newer"


def test_reconcile_indexes_an_instance_whose_rename_was_lost(tmp_path: Path) -> None:
    (source,) = write_mr_series(tmp_path / "in", SeriesSpec(slices=1, rows=16, columns=16, seed=3))
    store = InstanceStore(tmp_path / "var", fsync=False)
    index = Index(tmp_path / "var" / "index.sqlite")
    ingestor = Ingestor(store, index, allowed_sop_classes=storage_sop_classes())
    outcome = ingestor.ingest_part10(source.read_bytes(), calling_ae="SCANNER")
    index.close()
    (tmp_path / "var" / "index.sqlite").unlink()
    for leftover in (tmp_path / "var").glob("index.sqlite-*"):
        leftover.unlink()
    _as_lost_rename(outcome.path)

    index = Index(tmp_path / "var" / "index.sqlite")
    ingestor = Ingestor(store, index, allowed_sop_classes=storage_sop_classes())
    assert ingestor.reconcile() == 1
    assert outcome.path.exists()
    assert index.lookup_instance(outcome.sop_instance_uid) is not None
    index.close()


@pytest.mark.parametrize("source_ae", ["STORESCU", "ABC", ""])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
def test_encoded_file_meta_matches_pydicom(syntax: str, source_ae: str) -> None:
    sop_class, sop_instance = "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.8.498.12345"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    encoded = encode_file_meta(sop_class, sop_instance, syntax, source_ae)
    assert encoded == expected.getvalue()
    parsed, offset = split_part10(encoded)
    assert offset == len(encoded) and parsed.TransferSyntaxUID == syntax
