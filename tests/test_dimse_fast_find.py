"""C-FIND responses encoded by the node itself (node.dimse.fast_find): the same command sets as
pynetdicom's, fragmented to the peer's PDU size, and pynetdicom's status rules."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode

from node.dimse.fast_find import FindEvent, FindRequest, encode_find_response, find_response_pdus, syntax_flags

_STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _pynetdicom_command(status: int, with_identifier: bool) -> bytes:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = _STUDY_ROOT_FIND
    primitive.Status = status
    if with_identifier:
        primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, message.command_set)
    return buffer.getvalue()


@pytest.mark.parametrize(("status", "with_identifier"), [(0xFF00, True), (0x0000, False), (0xC000, False)])
def test_command_sets_match_pynetdicom(status: int, with_identifier: bool) -> None:
    assert encode_find_response(7, _STUDY_ROOT_FIND, status, with_identifier) == \
        _pynetdicom_command(status, with_identifier)


def _event(syntax: str = ExplicitVRLittleEndian) -> FindEvent:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "P1"
    ts = UID(syntax)
    data = encode(identifier, ts.is_implicit_VR, ts.is_little_endian)
    assert data is not None
    return FindEvent(SimpleNamespace(), FindRequest(7, _STUDY_ROOT_FIND, 2, data), None, syntax_flags(ts))


def _match(number: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"1.2.3.{number}"
    ds.StudyDescription = "x" * 60
    ds.PatientName = "Doe^Jane"
    return ds


def _messages(pdus: bytes) -> list[tuple[int, dict[int, bytes], bytes | None]]:
    """(status, command fields, identifier bytes) of each response in a PDU stream."""
    from node.dimse.fast_store import parse_command

    messages: list[tuple[int, dict[int, bytes], bytes | None]] = []
    offset, command, dataset = 0, b"", b""
    pending: dict[int, bytes] | None = None
    while offset < len(pdus):
        pdu_type, _, length = struct.unpack_from(">BBI", pdus, offset)
        assert pdu_type == 0x04
        item_length = struct.unpack_from(">I", pdus, offset + 6)[0]
        assert item_length + 4 == length  # one PDV per PDU
        control = pdus[offset + 11]
        value = pdus[offset + 12:offset + 6 + length]
        offset += 6 + length
        if control & 0x01:
            command += value
            if control & 0x02:
                fields = parse_command(command)
                assert fields is not None
                command = b""
                status = int.from_bytes(fields[0x0900], "little")
                if int.from_bytes(fields[0x0800], "little") == 0x0101:
                    messages.append((status, fields, None))
                else:
                    pending = fields
        else:
            dataset += value
            if control & 0x02:
                assert pending is not None
                messages.append((int.from_bytes(pending[0x0900], "little"), pending, dataset))
                pending, dataset = None, b""
    return messages


def test_matches_then_success_fragmented_to_the_peers_pdu_size() -> None:
    event = _event()
    results: Iterator[tuple[int, Dataset | None]] = iter([(0xFF00, _match(1)), (0xFF00, _match(2))])
    pdus = find_response_pdus(event, results, context_id=3, max_pdu=64)
    messages = _messages(pdus)
    assert [m[0] for m in messages] == [0xFF00, 0xFF00, 0x0000]
    for number, (_, fields, data) in enumerate(messages[:2], start=1):
        assert int.from_bytes(fields[0x0120], "little") == 7
        assert data is not None
        decoded = decode(BytesIO(data), False, True)
        assert decoded.StudyInstanceUID == f"1.2.3.{number}"
    offset = 0
    while offset < len(pdus):  # every PDU within the peer's limit, all on the request's context
        length = struct.unpack_from(">I", pdus, offset + 2)[0]
        assert length <= 64 and pdus[offset + 10] == 3
        offset += 6 + length


def test_identifier_decoded_in_the_contexts_syntax() -> None:
    event = _event(ImplicitVRLittleEndian)
    assert event.identifier.PatientID == "P1"
    assert event.is_cancelled is False


def test_handler_failure_after_matches_answers_c311() -> None:
    def results() -> Iterator[tuple[int, Any]]:
        yield 0xFF00, _match(1)
        raise ValueError("broken index")

    messages = _messages(find_response_pdus(_event(), results(), context_id=1, max_pdu=0))
    assert [m[0] for m in messages] == [0xFF00, 0xC311]


def test_failure_and_warning_statuses() -> None:
    failure = _messages(find_response_pdus(_event(), iter([(0xC000, None), (0xFF00, _match(1))]), 1, 0))
    assert [(m[0], m[2]) for m in failure] == [(0xC000, None)]
    warned = _messages(find_response_pdus(_event(), iter([(0xB001, None), (0xFF00, _match(1))]), 1, 0))
    assert [m[0] for m in warned] == [0xB001, 0xFF00, 0x0000]
    status = Dataset()
    status.Status = 0xA700
    assert [m[0] for m in _messages(find_response_pdus(_event(), iter([(status, None)]), 1, 0))] == [0xA700]
