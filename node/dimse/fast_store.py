"""C-STORE requests read and answered by the node itself, without pynetdicom's per-PDU work.

For every PDU pynetdicom 3 reads 4 KiB at a time, copies the bytes several times,
decodes each PDV into objects, passes events through two queues and its state machine,
decodes the command set with pydicom, builds a ``C_STORE`` primitive (validating every UID
with a regular expression) and a response primitive, and encodes the response with
pydicom again. For a 128 KiB instance that is most of the node's CPU time per C-STORE.

:class:`FastStoreReader` takes over reading the socket of an established association
(pynetdicom state Sta6) on the association's DUL thread:

* P-DATA-TF PDUs are read with ``recv_into`` in whole and their PDV items parsed here.
* A message whose command set is a C-STORE request on an accepted storage context is
  served here: the dataset fragments are joined once, the node's C-STORE handler
  (:meth:`node.dimse.handlers.DimseHandlers.on_store`, the same one pynetdicom calls)
  runs with a :class:`pynetdicom.events.Event`, and a success response is encoded
  directly and written to the socket. Other statuses are answered through pynetdicom.
* Every other message (C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL, anything unusual) and
  every other PDU (release, abort) is handed to pynetdicom exactly as its own reader
  would have: the PDU bytes go through ``DULServiceProvider._decode_pdu`` into its event
  queue. A command split over several PDUs is kept until it is complete and then replayed
  to pynetdicom when it is not a C-STORE request.

Messages are served in arrival order: the reader only reads while pynetdicom has no
event of this association waiting. It is used only when nothing else listens to the raw
traffic (no ``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_DIMSE_RECV`` or ``EVT_DIMSE_SENT``
handler; the node unbinds pynetdicom's logging ones unless its log level is DEBUG/INFO
for pynetdicom) and not over TLS (where pynetdicom's reader handles buffered records).
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from node.dimse.fast_find import FIND_MODELS, FindEvent, FindRequest, SyntaxFlags, find_response_pdus, syntax_flags
from node.dimse.guard import PduLimits, PduTooLong, PduTooSlow, check_pdu_header, read_exactly, send_abort

__all__ = ["FastStoreReader", "StoreRequest", "parse_command"]

log = logging.getLogger(__name__)

_P_DATA_TF = 0x04
_C_STORE_RQ = 0x0001
_C_FIND_RQ = 0x0020
_NO_DATASET = 0x0101
# Events whose handlers need pynetdicom's own objects for every PDU or message.
_RAW_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)


class StoreRequest:
    """The C-STORE request as the node's handler sees it (``event.request``): the command's
    fields and the dataset as received (``DataSet``, a :class:`~io.BytesIO` sharing the bytes)."""

    __slots__ = ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "DataSet", "MessageID",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "Priority")

    def __init__(self, fields: dict[int, bytes], data: bytes) -> None:
        self.MessageID = _us(fields.get(0x0110))
        self.AffectedSOPClassUID = _text(fields.get(0x0002))
        self.AffectedSOPInstanceUID = _text(fields.get(0x1000))
        self.Priority = _us(fields.get(0x0700))
        self.MoveOriginatorApplicationEntityTitle = _text(fields.get(0x1030)) or None
        self.MoveOriginatorMessageID = _us(fields.get(0x1031))
        self.DataSet = BytesIO(data)

    msg_type = "C_STORE"
    is_valid_request = True


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value[:2])[0] if value is not None and len(value) >= 2 else None


def _text(value: bytes | None) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace") if value else ""


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes] | None:
    """The elements of a DIMSE command set (implicit VR little endian, group 0000) by element
    number, or None when it is not a well-formed command set."""
    fields: dict[int, bytes] = {}
    view = memoryview(data)
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", view, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            return None
        fields[element] = bytes(view[offset:offset + length])
        offset += length
    return fields


def store_success_response(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                           encode: Callable[[int, str, str], bytes], context_id: int) -> bytes:
    """A whole P-DATA-TF PDU carrying a C-STORE-RSP with status Success."""
    command = encode(message_id, sop_class_uid, sop_instance_uid)
    item = bytes((context_id, 0x03)) + command  # command information, last fragment (PS3.8 E.2)
    return struct.pack(">BBII", _P_DATA_TF, 0, len(item) + 4, len(item)) + item


class _PeerClosed(Exception):
    """The connection ended in the middle of a PDU."""


class FastStoreReader:
    """Reads the socket of one established association and serves its C-STORE requests.

    Parameters
    ----------
    assoc:
        The accepted association (after ``make_event_driven``).
    encode_success:
        Encodes the command set of a C-STORE success response (``encode_store_success``).
    limits:
        The longest PDU accepted and how long one may take to arrive.
    """

    def __init__(self, assoc: Association, encode_success: Callable[[int, str, str], bytes],
                 limits: PduLimits) -> None:
        self.assoc = assoc
        self.limits = limits
        self._peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        self.dul = assoc.dul
        self.encode_success = encode_success
        self._header = bytearray(6)
        self._command = bytearray()
        self._command_items: list[bytes] = []  # raw PDV items of a command not yet decided
        self._fields: dict[int, bytes] | None = None
        self._fragments: list[memoryview] = []
        self._context_id = 0
        self._mode = "idle"  # idle | command | store | pass
        self._contexts: dict[int, Any] = {}
        self._find_models: dict[int, str | None] = {}
        self._raw: bool | None = None
        self._syntaxes: dict[int, SyntaxFlags] = {}
        self._storage: dict[str, bool] = {}

    @staticmethod
    def usable(assoc: Association) -> bool:
        """Whether the fast reader can serve this association (plain TCP, nothing listening to
        the raw traffic, the node's C-STORE handler bound)."""
        sock = getattr(assoc.dul.socket, "socket", None)
        if type(sock) is not socket.socket:  # an SSLSocket buffers records select cannot see
            return False
        if any(assoc.get_handlers(event) for event in _RAW_EVENTS):
            return False
        handler = assoc.get_handlers(evt.EVT_C_STORE)
        return bool(handler and handler[0] is not None
                    and getattr(handler[0], "__name__", "") == "on_store"
                    and type(getattr(handler[0], "__self__", None)).__name__ == "DimseHandlers")

    # -- reading -------------------------------------------------------------------------------

    def read_pdu(self) -> bool:
        """Read one PDU (the socket is readable) and act on it; returns True as pynetdicom's
        reader does when an event was produced or data handled.

        The header's length is checked before the body is allocated, and the body must
        arrive within the limits (:mod:`node.dimse.guard`); otherwise the association ends."""
        dul = self.dul
        sock: Any = dul.socket.socket  # type: ignore[union-attr]
        try:
            if read_exactly(sock, memoryview(self._header), None) < 6:
                raise _PeerClosed
            pdu_type = self._header[0]
            length = check_pdu_header(self._header, self.limits)
            body = bytearray(length)
            deadline = time.monotonic() + self.limits.pdu_read_timeout
            if read_exactly(sock, memoryview(body), deadline) < length:
                raise _PeerClosed
        except (PduTooLong, PduTooSlow) as exc:
            log.warning("association with %s aborted: %s", self._peer, exc)
            if isinstance(exc, PduTooLong):
                send_abort(sock)
            dul.event_queue.put("Evt17")  # the connection is closed (pynetdicom's AA-4)
            return True
        except (OSError, _PeerClosed):
            dul.event_queue.put("Evt17")  # transport connection closed
            return True
        if pdu_type != _P_DATA_TF or self.assoc.dul.state_machine.current_state != "Sta6":
            self._to_pynetdicom(bytes(self._header) + body)
            return True
        self._p_data(memoryview(body))
        return True

    def _to_pynetdicom(self, pdu_bytes: bytes) -> None:
        """Hand a whole PDU to pynetdicom, as ``DULServiceProvider._read_pdu_data`` does."""
        dul = self.dul
        try:
            pdu, event = dul._decode_pdu(bytearray(pdu_bytes))
        except Exception:  # pynetdicom's own reader maps any decode failure to Evt19
            log.exception("unable to decode a received PDU")
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    def _forward_items(self, items: list[bytes]) -> None:
        body = b"".join(items)
        self._to_pynetdicom(struct.pack(">BBI", _P_DATA_TF, 0, len(body)) + body)

    # -- PDV items -------------------------------------------------------------------------------

    def _p_data(self, body: memoryview) -> None:
        forward: list[bytes] = []  # items for pynetdicom, in order
        offset, end = 0, len(body)
        while offset + 6 <= end:
            (item_length,) = struct.unpack_from(">I", body, offset)
            if item_length < 2 or offset + 4 + item_length > end:
                break  # malformed: pynetdicom judges the rest
            context_id, control = body[offset + 4], body[offset + 5]
            item = body[offset:offset + 4 + item_length]
            value = body[offset + 6:offset + 4 + item_length]
            offset += 4 + item_length
            is_command, is_last = bool(control & 0x01), bool(control & 0x02)
            if self._mode in ("store", "find") and (is_command or context_id != self._context_id):
                # A new command before the dataset ended: not something to serve here.
                self._reset()
                self._mode = "pass"
            if self._mode == "pass":
                forward.append(bytes(item))
                self._follow_passed(value, is_command, is_last)
            elif self._mode in ("store", "find"):
                self._fragments.append(value)
                if is_last:
                    if forward:  # keep the order: what came first goes to pynetdicom first
                        self._forward_items(forward)
                        forward = []
                    self._serve()
            elif not is_command:  # a dataset fragment without its command: pynetdicom reports it
                forward.append(bytes(item))
            else:
                self._mode = "command"
                self._context_id = context_id
                self._command += value
                self._command_items.append(bytes(item))
                if is_last:
                    forward.extend(self._decide(first_in_pdu=not forward))
        if offset < end:
            forward.append(bytes(body[offset:]))
        if forward:
            self._forward_items(forward)

    def _follow_passed(self, value: memoryview, is_command: bool, is_last: bool) -> None:
        """Track where a message handed to pynetdicom ends (its last dataset fragment, or its
        last command fragment when the command says there is no dataset)."""
        if is_command:
            self._command += value
            if is_last:
                fields = parse_command(self._command)
                self._command = bytearray()
                if fields is None or _us(fields.get(0x0800)) == _NO_DATASET:
                    self._mode = "idle"
        elif is_last:
            self._mode = "idle"

    def _decide(self, *, first_in_pdu: bool) -> list[bytes]:
        """The command is complete: serve it here (a C-STORE request) or hand it over.

        Returns the command's items when pynetdicom gets the message."""
        fields = parse_command(self._command)
        items, self._command_items = self._command_items, []
        self._command = bytearray()
        if fields is not None and first_in_pdu and self._servable(fields):
            self._fields = fields
            self._mode = "store"
            return []
        if fields is not None and first_in_pdu and self._find_servable(fields):
            self._fields = fields
            self._mode = "find"
            return []
        no_dataset = fields is None or _us(fields.get(0x0800)) == _NO_DATASET
        self._mode = "idle" if no_dataset else "pass"
        return items

    def _servable(self, fields: dict[int, bytes]) -> bool:
        assoc = self.assoc
        if (_us(fields.get(0x0100)) != _C_STORE_RQ or _us(fields.get(0x0800)) == _NO_DATASET
                or _us(fields.get(0x0110)) is None or _us(fields.get(0x0700)) is None
                or not fields.get(0x0002) or not fields.get(0x1000)):
            return False
        if not assoc.is_established or assoc._sent_release or self.dul.event_queue.qsize():
            return False
        context = assoc._accepted_cx.get(self._context_id)
        if context is None:
            return False
        sop_class = _text(fields.get(0x0002))
        storage = self._storage.get(sop_class)
        if storage is None:
            storage = self._storage[sop_class] = uid_to_service_class(sop_class) is StorageServiceClass
        if not storage or self._raw_traffic():
            return False
        if self._context_id not in self._contexts:
            self._contexts[self._context_id] = context.as_tuple
        return True

    def _raw_traffic(self) -> bool:
        """Whether something listens to the raw traffic (then pynetdicom serves everything).
        Decided once per association: the node binds its handlers before it starts."""
        if self._raw is None:
            self._raw = any(self.assoc.get_handlers(event) for event in _RAW_EVENTS)
        return self._raw

    def _find_model(self, context_id: int) -> str | None:
        """The FIND model of an accepted context when the node's C-FIND handler serves it here."""
        if context_id in self._find_models:
            return self._find_models[context_id]
        assoc = self.assoc
        context = assoc._accepted_cx.get(context_id)
        model = str(context.abstract_syntax) if context is not None else None
        handler = assoc.get_handlers(evt.EVT_C_FIND)
        if (model not in FIND_MODELS or not handler or getattr(handler[0], "__name__", "") != "on_find"
                or type(getattr(handler[0], "__self__", None)).__name__ != "DimseHandlers"):
            model = None
        if context is not None:
            self._find_models[context_id] = model
            if model is not None and context_id not in self._contexts:
                self._contexts[context_id] = context.as_tuple
        return model

    def _find_servable(self, fields: dict[int, bytes]) -> bool:
        """A C-FIND request of a supported model with its identifier, the node's handler bound."""
        assoc = self.assoc
        if (_us(fields.get(0x0100)) != _C_FIND_RQ or _us(fields.get(0x0800)) == _NO_DATASET
                or _us(fields.get(0x0110)) is None or not fields.get(0x0002)):
            return False
        if not assoc.is_established or assoc._sent_release or self.dul.event_queue.qsize():
            return False
        model = self._find_model(self._context_id)
        if model is None or _text(fields.get(0x0002)) != model:
            return False  # not ours to serve, or a mismatch pynetdicom reports
        return not self._raw_traffic()

    def _reset(self) -> None:
        self._fragments = []
        self._fields = None
        self._command = bytearray()
        self._command_items = []
        self._mode = "idle"

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        fields = self._fields
        fragments = self._fragments
        context_id = self._context_id
        find = self._mode == "find"
        self._reset()
        assert fields is not None
        data = fragments[0].tobytes() if len(fragments) == 1 else b"".join(fragments)
        if find:
            self._serve_find(fields, data, context_id)
            return
        request = StoreRequest(fields, data)
        event = Event(self.assoc, evt.EVT_C_STORE, {"request": request,
                                                  "context": self._contexts[context_id]})
        bound: Any = self.assoc.get_handlers(evt.EVT_C_STORE)
        handler, args = bound
        try:
            status = handler(event, *args) if args else handler(event)
        except Exception:  # pynetdicom answers 0xC211 for a failing handler too
            log.exception("exception in the C-STORE handler")
            status = _failure(0xC211, "Exception in handler bound to 'evt.EVT_C_STORE'")
        if not self.assoc.is_established:
            return
        message_id = int(request.MessageID or 0)
        if isinstance(status, int) and status == 0x0000:
            pdu = store_success_response(message_id, request.AffectedSOPClassUID,
                                         request.AffectedSOPInstanceUID, self.encode_success, context_id)
            self._send(pdu, message_id, request, context_id)
            return
        self._respond_through_pynetdicom(status, request, context_id)

    def _serve_find(self, fields: dict[int, bytes], data: bytes, context_id: int) -> None:
        assoc = self.assoc
        context = assoc._accepted_cx[context_id]
        request = FindRequest(_us(fields.get(0x0110)) or 0, _text(fields.get(0x0002)),
                              _us(fields.get(0x0700)) or 0, data)
        flags = self._syntaxes.get(context_id)
        if flags is None:
            flags = self._syntaxes[context_id] = syntax_flags(context.transfer_syntax[0])
        event = FindEvent(assoc, request, self._contexts[context_id], flags)
        bound: Any = assoc.get_handlers(evt.EVT_C_FIND)
        handler, args = bound
        try:
            results = handler(event, *args) if args else handler(event)
        except Exception:
            log.exception("exception in the C-FIND handler")
            results = iter([(0xC311, None)])
        pdus = find_response_pdus(event, iter(results), context_id,
                                  int(assoc.requestor.maximum_length or 0))
        try:
            self._send_find(pdus)
        finally:
            for action in event.after_response:
                try:
                    action()
                except sqlite3.Error:
                    log.exception("the audit record of a C-FIND from %s could not be written", self._peer)

    def _send_find(self, pdus: bytes) -> None:
        if not self.assoc.is_established:
            return
        if not self.dul.to_provider_queue.empty():
            # Something is already waiting to go out through pynetdicom: it goes first.
            self._forward_out(pdus)
            return
        try:
            self.dul.socket.socket.sendall(pdus)  # type: ignore[union-attr]
        except OSError:
            self.dul.event_queue.put("Evt17")

    def _forward_out(self, pdus: bytes) -> None:
        """Queue already encoded P-DATA-TF PDUs behind what pynetdicom has waiting to send."""
        offset = 0
        while offset < len(pdus):
            length = struct.unpack_from(">I", pdus, offset + 2)[0]
            pdata = P_DATA()
            body = pdus[offset + 6:offset + 6 + length]
            item_length = struct.unpack_from(">I", body, 0)[0]
            pdata.presentation_data_value_list = [[body[4], body[5:4 + item_length]]]  # type: ignore[list-item]
            self.dul.send_pdu(pdata)
            offset += 6 + length

    def _send(self, pdu: bytes, message_id: int, request: StoreRequest, context_id: int) -> None:
        dul = self.dul
        if not dul.to_provider_queue.empty():
            # Something is already waiting to go out: keep the order through pynetdicom.
            primitive = C_STORE()
            primitive.MessageIDBeingRespondedTo = message_id
            primitive.AffectedSOPClassUID = request.AffectedSOPClassUID
            primitive.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
            primitive.Status = 0x0000
            self.assoc.dimse.send_msg(primitive, context_id)
            return
        try:
            dul.socket.socket.sendall(pdu)  # type: ignore[union-attr]
        except OSError:
            dul.event_queue.put("Evt17")

    def _respond_through_pynetdicom(self, status: Any, request: StoreRequest, context_id: int) -> None:
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        response = StorageServiceClass(self.assoc).validate_status(status, response)
        self.assoc.dimse.send_msg(response, context_id)


def _failure(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status

