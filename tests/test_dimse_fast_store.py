"""The node's own C-STORE reader (node.dimse.fast_store) against real SCUs.

Small PDUs split commands and datasets over many PDUs; one association mixes C-ECHO,
C-FIND and C-STORE (those it hands to pynetdicom must be answered in order); refusals go
out with their status and comment; stored files hold exactly the bytes that were sent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from node.dimse.fast_store import parse_command
from node.ingest import split_part10
from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, node_process

pytestmark = [pytest.mark.peers]

_MR = "1.2.840.10008.5.1.4.1.1.4"
_EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def small_pdu_node(tmp_path: Path) -> Iterator[NodeProcess]:
    with node_process(tmp_path / "node", env={"PACSNODE_DICOM__MAXIMUM_PDU_SIZE": "4096"}) as node:
        yield node


def _stored_dataset(node: NodeProcess, path: Path) -> bytes:
    ds = dcmread(path, stop_before_pixels=True)
    stored = node.storage / "store" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    raw = stored.read_bytes()
    return raw[split_part10(raw)[1]:]


def _sent_dataset(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[split_part10(raw)[1]:]


def test_parse_command_reads_pynetdicom_command_sets() -> None:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = _MR
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = BytesIO(b"\x00" * 8)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    fields = parse_command(_command_bytes(message))
    assert fields is not None
    assert int.from_bytes(fields[0x0100], "little") == 0x0001
    assert int.from_bytes(fields[0x0110], "little") == 7
    assert fields[0x0002].rstrip(b"\x00") == _MR.encode()
    assert fields[0x1000].rstrip(b"\x00") == b"1.2.3.4"
    assert fields[0x1030].strip() == b"MOVER"
    assert parse_command(b"\x00\x00\x00\x01\xff\xff\xff\x7f") is None  # length beyond the end
    assert parse_command(b"\x08\x00\x00\x01\x02\x00\x00\x00ab") is None  # not group 0000


def _command_bytes(message: C_STORE_RQ) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, message.command_set)
    return buffer.getvalue()


def test_small_pdus_and_mixed_messages_on_one_association(small_pdu_node: NodeProcess, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=4, rows=64, columns=64, seed=3, patient_id="FAST-1"))
    ae = AE(ae_title="FASTTEST")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(_MR, [_EXPLICIT])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", small_pdu_node.port, ae_title=small_pdu_node.ae_title)
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 4096
    try:
        statuses = []
        for n, path in enumerate(files):
            if n % 2:
                statuses.append(int(assoc.send_c_echo().Status))
            statuses.append(int(assoc.send_c_store(dcmread(path)).Status))
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "FAST-1"
        query.StudyInstanceUID = ""
        found = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        statuses.append(int(assoc.send_c_store(dcmread(files[0])).Status))  # identical duplicate
    finally:
        assoc.release()
    assert statuses == [0] * len(statuses)
    assert [int(s.Status) for s, _ in found] == [0xFF00, 0x0000]
    assert found[0][1].StudyInstanceUID == dcmread(files[0]).StudyInstanceUID


def test_storescu_bytes_are_stored_as_sent(small_pdu_node: NodeProcess, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=6, rows=128, columns=128, seed=4))
    subprocess.run(["storescu", "-aec", small_pdu_node.ae_title, "127.0.0.1", str(small_pdu_node.port),
                    *map(str, files)], check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
    for path in files:
        assert _stored_dataset(small_pdu_node, path) == _sent_dataset(path)


def test_refusal_keeps_its_status_and_comment(small_pdu_node: NodeProcess, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=1, rows=16, columns=16, seed=5))
    ds = dcmread(files[0])
    del ds.StudyInstanceUID  # required by the node: refused with 0xA9xx and a reason
    ae = AE(ae_title="FASTTEST")
    ae.add_requested_context(_MR, [_EXPLICIT])
    assoc = ae.associate("127.0.0.1", small_pdu_node.port, ae_title=small_pdu_node.ae_title)
    try:
        status = assoc.send_c_store(ds)
        again = assoc.send_c_store(dcmread(files[0]))  # the association still serves
    finally:
        assoc.release()
    assert int(status.Status) & 0xFF00 == 0xA900
    assert "StudyInstanceUID" in str(status.ErrorComment)
    assert int(again.Status) == 0
