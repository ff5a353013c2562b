"""DIMSE on the wire, for attacking a node the way a hostile or broken peer would.

pynetdicom's own PDU and message classes encode what is well-formed (association
request, command sets); these helpers then send bytes as they are, patched or cut short,
over a plain socket, and read what comes back.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from node.dimse.fast_store import parse_command

__all__ = [
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "MR_STORAGE",
    "STUDY_ROOT_FIND",
    "VERIFICATION",
    "RawAssociation",
    "associate_rq",
    "c_echo_command",
    "c_find_command",
    "c_store_command",
    "minimal_dataset",
    "nested_sequences",
    "p_data",
    "raw_association",
    "read_pdu",
]

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _title_field(title: str | bytes) -> bytes:
    raw = title.encode("ascii") if isinstance(title, str) else title
    return raw[:16].ljust(16, b" ")


def associate_rq(called: str | bytes, calling: str | bytes,
                 contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_LE,)),),
                 max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU; ``called``/``calling`` go into their 16-byte fields exactly as
    given (bytes are not stripped or validated, so a title can begin with spaces)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = _APPLICATION_CONTEXT
    primitive.calling_ae_title = "PLACEHOLDER"
    primitive.called_ae_title = "PLACEHOLDER"
    presentation = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, list(syntaxes))
        context.context_id = 2 * number + 1
        presentation.append(context)
    primitive.presentation_context_definition_list = presentation
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.9999"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    encoded = bytearray(pdu.encode())
    encoded[10:26] = _title_field(called)
    encoded[26:42] = _title_field(calling)
    return bytes(encoded)


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """One PDU (type, body) from the socket; None when the peer closed the connection."""
    header = _read(sock, 6)
    if len(header) < 6:
        return None
    pdu_type, _, length = struct.unpack(">BBI", header)
    body = _read(sock, length)
    return (pdu_type, body) if len(body) == length else None


def _read(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def p_data(context_id: int, value: bytes, *, command: bool, last: bool = True) -> bytes:
    """A P-DATA-TF PDU with one PDV item."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    item = struct.pack(">IBB", len(value) + 2, context_id, control) + value
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def _command_bytes(message: C_STORE_RQ | C_ECHO_RQ | C_FIND_RQ) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, message.command_set)
    return buffer.getvalue()


def c_store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """The command set of a C-STORE-RQ (implicit VR little endian)."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = 2
    primitive.DataSet = BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _command_bytes(message)


def c_find_command(message_id: int = 1, sop_class: str = STUDY_ROOT_FIND) -> bytes:
    """The command set of a C-FIND-RQ (an identifier follows)."""
    primitive = C_FIND()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.Priority = 2
    primitive.Identifier = BytesIO(b"\x00")
    message = C_FIND_RQ()
    message.primitive_to_message(primitive)
    return _command_bytes(message)


def c_echo_command(message_id: int = 1) -> bytes:
    """The command set of a C-ECHO-RQ."""
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _command_bytes(message)


@dataclass
class RawAssociation:
    """An association opened over a plain socket; ``accepted`` tells how the node answered."""

    sock: socket.socket
    response_type: int | None
    response: bytes

    @property
    def accepted(self) -> bool:
        return self.response_type == 0x02

    @property
    def rejected(self) -> bool:
        return self.response_type == 0x03

    @property
    def reject_reason(self) -> tuple[int, int, int] | None:
        """(result, source, diagnostic) of an A-ASSOCIATE-RJ."""
        if not self.rejected or len(self.response) < 4:
            return None
        return self.response[1], self.response[2], self.response[3]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self, timeout: float = 30.0) -> tuple[dict[int, bytes], bytes] | int | None:
        """The next DIMSE message: (command elements, dataset bytes); the PDU type when another
        PDU came instead (0x07 A-ABORT, 0x05/0x06 release), None when the connection closed."""
        self.sock.settimeout(timeout)
        command, dataset = bytearray(), bytearray()
        fields: dict[int, bytes] | None = None
        while True:
            pdu = read_pdu(self.sock)
            if pdu is None:
                return None
            pdu_type, body = pdu
            if pdu_type != 0x04:
                return pdu_type
            offset = 0
            while offset + 6 <= len(body):
                (length,) = struct.unpack_from(">I", body, offset)
                control = body[offset + 5]
                value = body[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x01:
                    command += value
                    if control & 0x02:
                        fields = parse_command(command)
                        assert fields is not None, "the node sent a malformed command set"
                        if fields.get(0x0800, b"\x01\x01")[:2] == b"\x01\x01":
                            return fields, b""
                else:
                    dataset += value
                    if control & 0x02 and fields is not None:
                        return fields, bytes(dataset)

    def response_status(self, timeout: float = 30.0) -> tuple[int, str]:
        """Status and error comment of the next DIMSE response."""
        message = self.read_message(timeout)
        assert message is not None, "the node closed the connection instead of answering"
        assert isinstance(message, tuple), f"expected a DIMSE response, got PDU type 0x{message:02X}"
        fields = message[0]
        status = int.from_bytes(fields[0x0900][:2], "little")
        comment = fields.get(0x0902, b"").rstrip(b"\x00 ").decode("ascii", "replace")
        return status, comment

    def store(self, sop_instance: str, dataset: bytes, *, context_id: int = 3,
              sop_class: str = MR_STORAGE, message_id: int = 1) -> tuple[int, str]:
        """C-STORE ``dataset`` (encoded in the context's transfer syntax) and return the status."""
        self.send(p_data(context_id, c_store_command(sop_class, sop_instance, message_id), command=True))
        self.send(p_data(context_id, dataset, command=False))
        return self.response_status()

    def echo(self, message_id: int = 1) -> int:
        self.send(p_data(1, c_echo_command(message_id), command=True))
        return self.response_status()[0]

    def release(self) -> None:
        try:
            self.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
            self.sock.settimeout(10)
            read_pdu(self.sock)
        except OSError:
            pass
        self.sock.close()


@contextmanager
def raw_association(port: int, *, called: str | bytes = "PACSNODE", calling: str | bytes = "ATTACKER",
                    contexts: Sequence[tuple[str, Sequence[str]]] = (
                        (VERIFICATION, (IMPLICIT_LE,)), (MR_STORAGE, (EXPLICIT_LE,))),
                    timeout: float = 30.0) -> Iterator[RawAssociation]:
    """Connect to 127.0.0.1:``port``, request an association and yield it (accepted or not)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(associate_rq(called, calling, contexts))
        answer = read_pdu(sock)
        yield RawAssociation(sock, answer[0] if answer else None, answer[1] if answer else b"")
    finally:
        sock.close()


def minimal_dataset(sop_instance: str, *, little: bool = True, implicit: bool = False,
                    patient_id: str = "ATTACK") -> bytes:
    """A small MR dataset the node accepts (no pixel data), encoded without file meta."""
    from pydicom import Dataset

    ds = Dataset()
    ds.SOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.9999.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.9999.2"
    ds.PatientID = patient_id
    ds.Modality = "MR"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def nested_sequences(depth: int, *, defined_length: bool = False) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` levels deep, explicit VR little endian,
    built without recursion (pydicom's writer recurses and cannot encode a deep nest)."""
    inner = b""
    for _ in range(depth):
        if defined_length:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            inner = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item
                     + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return inner
