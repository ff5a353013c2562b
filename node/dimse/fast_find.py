"""C-FIND requests served by the node's own PDU reader (:mod:`node.dimse.fast_store`).

pynetdicom's Query/Retrieve service builds a C-FIND-RSP primitive per match, converts it
to a DIMSE message, encodes its command set as a pydicom dataset (twice: once for the
group length) and queues each PDU for its DUL thread. For a query with one or a few
matches that costs more than the query itself. Here the identifier is read directly
(:mod:`node.dimse.find_codec`; pynetdicom's own ``decode`` for what that does not read), the
node's C-FIND handler runs unchanged (matching, audit), each match is written directly by
``find_codec.encode_match`` (pynetdicom's ``encode`` for what that does not write), the
command sets are encoded directly (:func:`encode_find_response`, byte-identical to
pynetdicom's) and all responses leave in one ``sendall``.

Statuses follow pynetdicom's C-FIND SCP: pending (0xFF00/0xFF01) responses carry the
match, warning statuses are sent and matching goes on, cancel, failure and success end
the exchange, and a handler that raises is answered 0xC311.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.dimse.find_codec import IdentifierKey, dataset_keys, read_identifier

__all__ = ["FIND_MODELS", "FindEvent", "FindRequest", "SyntaxFlags", "encode_find_response", "find_response_pdus",
           "syntax_flags"]

log = logging.getLogger(__name__)

FIND_MODELS = frozenset((str(PatientRootQueryRetrieveInformationModelFind),
                         str(StudyRootQueryRetrieveInformationModelFind)))
"""The Query/Retrieve FIND models the node's C-FIND handler answers."""

_P_DATA_TF = 0x04
_C_FIND_RSP = 0x8020
_HAS_DATASET, _NO_DATASET = 0x0001, 0x0101
_HANDLER_FAILED = 0xC311
_ENCODING_FAILED = 0xC312


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def _uid(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def encode_find_response(message_id: int, sop_class_uid: str, status: int, has_identifier: bool) -> bytes:
    """The command set of a C-FIND-RSP (PS3.7 9.3.2.2), implicit VR little endian."""
    body = b"".join((
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, struct.pack("<H", _C_FIND_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", _HAS_DATASET if has_identifier else _NO_DATASET)),
        _element(0x0900, struct.pack("<H", status)),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _pdus(context_id: int, value: bytes, command: bool, max_pdu: int) -> bytes:
    """``value`` as P-DATA-TF PDUs of one PDV each, fragmented to the peer's maximum PDU length
    (PS3.8 9.3.5 and E.2; 0: no limit)."""
    room = max(max_pdu - 6, 1) if max_pdu else len(value) or 1
    out = []
    for start in range(0, max(len(value), 1), room):
        fragment = value[start:start + room]
        last = start + room >= len(value)
        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        item = bytes((context_id, control)) + fragment
        out.append(struct.pack(">BBII", _P_DATA_TF, 0, len(item) + 4, len(item)) + item)
    return b"".join(out)


class FindRequest:
    """The C-FIND request as the node's handler sees it (``event.request``)."""

    __slots__ = ("AffectedSOPClassUID", "Identifier", "MessageID", "Priority")

    msg_type = "C_FIND"
    is_valid_request = True

    def __init__(self, message_id: int, sop_class_uid: str, priority: int, identifier: bytes) -> None:
        self.MessageID = message_id
        self.AffectedSOPClassUID = sop_class_uid
        self.Priority = priority
        self.Identifier = BytesIO(identifier)


class FindEvent:
    """What the node's ``on_find`` handler reads from pynetdicom's ``Event``: the association,
    the request, the presentation context, the decoded identifier and the cancel flag (a
    C-CANCEL is read only after the responses were sent, so it is never set here).

    ``after_response``: what the handler leaves until the responses are sent (the audit
    record), run by the reader before it reads the next request."""

    is_cancelled = False

    def __init__(self, assoc: Any, request: FindRequest, context: Any, syntax: SyntaxFlags) -> None:
        self.assoc = assoc
        self.request = request
        self.context = context
        self.syntax = syntax
        self._identifier: Dataset | None = None
        self.after_response: list[Callable[[], None]] = []

    @property
    def identifier(self) -> Dataset:
        if self._identifier is None:
            self.request.Identifier.seek(0)
            self._identifier = decode(self.request.Identifier, *self.syntax)
        return self._identifier

    def identifier_keys(self) -> list[IdentifierKey]:
        """The identifier's elements, read directly when :func:`read_identifier` can, otherwise
        from pydicom's decoding."""
        keys = read_identifier(self.request.Identifier.getvalue(), *self.syntax)
        return keys if keys is not None else dataset_keys(self.identifier)


SyntaxFlags = tuple[bool, bool, bool]
"""A transfer syntax as ``(implicit VR, little endian, deflated)``."""


def syntax_flags(transfer_syntax: Any) -> SyntaxFlags:
    """:data:`SyntaxFlags` of a pydicom ``UID`` (its properties are computed on every access)."""
    return (bool(transfer_syntax.is_implicit_VR), bool(transfer_syntax.is_little_endian),
            bool(transfer_syntax.is_deflated))


def _status_of(value: Any) -> int:
    return int(getattr(value, "Status", value))


def find_response_pdus(event: FindEvent, results: Iterator[tuple[Any, Dataset | bytes | None]],
                       context_id: int, max_pdu: int) -> bytes:
    """Every response to the request, as PDUs ready to send, from the handler's results."""
    request = event.request
    message_id = int(request.MessageID)
    sop_class = str(request.AffectedSOPClassUID)
    out: list[bytes] = []

    def respond(status: int, identifier: bytes | None = None) -> None:
        command = encode_find_response(message_id, sop_class, status, identifier is not None)
        out.append(_pdus(context_id, command, True, max_pdu))
        if identifier is not None:
            out.append(_pdus(context_id, identifier, False, max_pdu))

    try:
        for status_value, dataset in results:
            status = _status_of(status_value)
            if status in (0xFF00, 0xFF01):
                if isinstance(dataset, bytes):
                    encoded: bytes | None = dataset
                else:
                    encoded = encode(dataset, *event.syntax) if dataset is not None else None
                if not encoded:
                    log.error("a C-FIND match could not be encoded; answering 0x%04X", _ENCODING_FAILED)
                    respond(_ENCODING_FAILED)
                    return b"".join(out)
                respond(status, encoded)
            elif status & 0xF000 == 0xB000:  # warning: sent, matching goes on
                respond(status)
            else:  # success, cancel or failure end the exchange
                respond(status)
                return b"".join(out)
    except Exception:  # pynetdicom answers 0xC311 for a failing handler too
        log.exception("exception in the C-FIND handler")
        respond(_HANDLER_FAILED)
        return b"".join(out)
    respond(0x0000)
    return b"".join(out)
