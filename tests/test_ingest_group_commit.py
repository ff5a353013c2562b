"""Concurrent associations share index commits (node.ingest._GroupCommit) without losing rows."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from node.dimse.server import storage_sop_classes
from node.errors import OutOfResources
from node.ingest import Ingestor
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index, InstanceRecord
from node.storage.store import InstanceStore


def test_concurrent_ingest_indexes_every_instance(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=40, rows=16, columns=16, seed=5))
    index = Index(tmp_path / "var" / "index.sqlite")
    ingestor = Ingestor(InstanceStore(tmp_path / "var", fsync=False), index,
                        allowed_sop_classes=storage_sop_classes())
    batches: list[int] = []
    add_instances = index.add_instances

    def counting(records: list[InstanceRecord]) -> None:
        batches.append(len(records))
        add_instances(records)

    index.add_instances = counting  # type: ignore[method-assign]

    def send(chunk: list[Path]) -> None:
        for path in chunk:
            ingestor.ingest_part10(path.read_bytes(), calling_ae="SCANNER")

    threads = [threading.Thread(target=send, args=(files[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert index.instance_count() == 40
    assert sum(batches) == 40
    index.close()


@pytest.mark.parametrize(("message", "expected"), [
    ("database or disk is full", OutOfResources),   # answered 0xA700 / HTTP 507
    ("database is locked", sqlite3.OperationalError),
])
def test_a_failing_row_fails_only_its_own_instance(tmp_path: Path, message: str,
                                                   expected: type[Exception]) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=2, rows=16, columns=16, seed=6))
    index = Index(tmp_path / "var" / "index.sqlite")
    store = InstanceStore(tmp_path / "var", fsync=False)
    ingestor = Ingestor(store, index, allowed_sop_classes=storage_sop_classes())

    def refuse(records: list[InstanceRecord]) -> None:
        raise sqlite3.OperationalError(message)

    index.add_instances = refuse  # type: ignore[method-assign]
    with pytest.raises(expected):
        ingestor.ingest_part10(files[0].read_bytes())
    assert not list(store.iter_instance_files()), "an unacknowledged file stayed in the store"
    del index.add_instances
    ingestor.ingest_part10(files[1].read_bytes())
    assert index.instance_count() == 1
    assert len(list(store.iter_instance_files())) == 1
    index.close()


@pytest.mark.parametrize("message_id", [1, 7, 65535])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.826.0.1.3680043.10.1379.15206095004091034"])
def test_store_success_response_bytes_match_pynetdicom(message_id: int, sop_instance: str) -> None:
    from pydicom.uid import UID
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    from node.dimse.server import encode_store_success

    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")
    primitive.AffectedSOPInstanceUID = UID(sop_instance)
    primitive.Status = 0x0000
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(3, 16382))
    expected = [(pdv[0], pdv[1]) for pdv in pdata.presentation_data_value_list]
    command = encode_store_success(message_id, "1.2.840.10008.5.1.4.1.1.4", sop_instance)
    assert expected == [(3, b"\x03" + command)]
