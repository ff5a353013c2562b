"""The node's application entity: presentation contexts, association policy, TLS.

Supports Verification, every Storage SOP class pynetdicom knows (with the common
transfer syntaxes, compressed data accepted and stored as received), and the
Patient Root and Study Root Query/Retrieve models (FIND, MOVE, GET).

Every accepted association is made event-driven (:func:`make_event_driven`):
pynetdicom 3 polls, its DUL thread sleeps 1 ms whenever the socket and its
queues were empty and the association thread checks for a decoded message every
1 ms. On a loaded machine such a sleep lasts several ms and it sits on the path
of every C-STORE request and response. The node replaces the two waits with
blocking ones (``select`` on the socket plus an eventfd, a blocking queue read)
per association, and serves C-STORE, C-ECHO and C-FIND requests on the thread that read
them (no hand-off to the association thread and back, which costs a scheduler
wake-up each way on a busy machine). pynetdicom's state machine and its own
associations (SCU, C-MOVE sub-associations) are untouched.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import select
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    QueryRetrievePresentationContexts,
    VerificationPresentationContexts,
    evt,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from node.config import DicomSettings, TlsSettings
from node.dimse.fast_store import FastStoreReader
from node.dimse.guard import AssociationPolicy, AssociationSlots, NodeAssociationServer, PduLimits, guard_association
from node.dimse.handlers import DimseHandlers
from node.dimse.scu import requestor_handlers

__all__ = [
    "DimseServer",
    "encode_store_success",
    "make_event_driven",
    "storage_sop_classes",
    "tls_context",
]

log = logging.getLogger(__name__)


def storage_sop_classes() -> list[str]:
    """Every Storage SOP Class UID the node accepts."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def tls_context(tls: TlsSettings, *, server: bool) -> ssl.SSLContext:
    """An SSL context from ``[dicom] tls`` / ``[http] tls``."""
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=str(tls.ca) if tls.ca else None)
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if server and tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# Longest a blocked reactor waits before it re-checks timers, release and abort (seconds).
_IDLE_WAIT_DUL = 0.05
_IDLE_WAIT_ASSOCIATION = 0.01


class _WakingQueue(queue.Queue):
    """A queue that wakes the DUL thread blocked in ``select`` when an item arrives."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _InlineRequestQueue(queue.Queue):
    """The DIMSE message queue of an accepted association that serves C-STORE, C-ECHO and
    C-FIND requests at once on the DUL thread that decoded them.

    pynetdicom does the same for N-EVENT-REPORT requests (``DIMSEServiceProvider.
    receive_primitive``). C-MOVE, C-GET and the responses to the requests the node sends
    during C-GET still go to the association thread: those handlers wait for messages
    that only the DUL thread can read. The price for C-FIND: the node's C-FIND handler
    reads all matches from the index before it answers, and a C-CANCEL that arrives
    meanwhile is read only after the last response was queued (the standard allows a
    C-CANCEL to arrive too late to stop anything).
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        assoc = self._assoc
        if (isinstance(message, C_STORE | C_ECHO | C_FIND) and message.is_valid_request
                and threading.current_thread() is assoc.dul and assoc.is_established):
            assoc._serve_request(message, context_id)
            return
        super().put(item, block, timeout)


def _command_element(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element of a DIMSE command set (group 0000)."""
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def _padded_uid(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def encode_store_success(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RSP with status Success (PS3.7 9.3.1.2), encoded directly.

    The same bytes pynetdicom's ``DIMSEMessage.encode_msg`` produces, without building
    and encoding a pydicom dataset twice (once for the group length) per instance.
    """
    body = b"".join((
        _command_element(0x0002, _padded_uid(sop_class_uid)),
        _command_element(0x0100, struct.pack("<H", 0x8001)),
        _command_element(0x0120, struct.pack("<H", message_id)),
        _command_element(0x0800, struct.pack("<H", 0x0101)),
        _command_element(0x0900, struct.pack("<H", 0x0000)),
        _command_element(0x1000, _padded_uid(sop_instance_uid)),
    ))
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def _is_plain_store_success(primitive: Any) -> bool:
    return (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == 0x0000 and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and not getattr(primitive, "ErrorComment", None)
            and not getattr(primitive, "OffendingElement", None))


def make_event_driven(assoc: Association, limits: PduLimits | None = None) -> None:
    """Replace pynetdicom's 1 ms polling by blocking waits for one accepted association,
    and take the per-message costs that log nothing off its path.

    Call before the association starts (``EVT_CONN_OPEN``). The DUL thread then blocks
    in ``select`` on the socket and an eventfd that is signalled whenever a primitive is
    queued for sending (a C-STORE response) or the DUL is told to stop; the association
    thread blocks on its DIMSE message queue. Both wake at least every few tens of ms
    to run pynetdicom's own checks (ARTIM and idle timers, release, abort). Written
    against pynetdicom 3.0's ``DULServiceProvider.run_reactor`` and
    ``Association._run_reactor``; does nothing where ``os.eventfd`` is missing.
    ``limits`` are the PDU limits the node's own C-STORE reader enforces (the defaults of
    ``[dicom]`` when not given).
    """
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        # pynetdicom's standard handlers format a log text for every PDU and DIMSE message,
        # under the AE-wide lock (shared by all associations), even when nothing is logged.
        for event, handler in (
            (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
            (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
            (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
            (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
        ):
            assoc.unbind(event, handler)
    if not hasattr(os, "eventfd"):
        return
    dul = assoc.dul
    wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    fd_lock = threading.Lock()
    fd_open = [True]

    def close_wake_fd() -> None:
        with fd_lock:
            if fd_open[0]:
                fd_open[0] = False
                os.close(wake_fd)

    # Closed when the DUL thread ends (below), at the latest when the DUL object is collected;
    # never written after that (the fd number may belong to someone else by then).
    weakref.finalize(dul, close_wake_fd)

    def wake() -> None:
        if threading.current_thread() is dul:
            return  # the DUL loop looks at its queues before it waits
        with fd_lock:
            if not fd_open[0]:
                return
            try:
                os.eventfd_write(wake_fd, 1)
            except OSError:
                pass

    run_dul = dul.run

    def run_then_close() -> None:
        try:
            run_dul()
        finally:
            close_wake_fd()

    dul.run = run_then_close  # type: ignore[method-assign]

    outgoing = _WakingQueue(wake)
    while True:
        try:
            outgoing.put(dul.to_provider_queue.get_nowait())
        except queue.Empty:
            break
    dul.to_provider_queue = outgoing
    dul._run_loop_delay = 0  # the wait happens in select below, not in a sleep
    check_transport = dul._is_transport_event

    def is_transport_event() -> bool:
        if check_transport():
            return True
        if dul._kill_thread or not dul.event_queue.empty() or not outgoing.empty():
            return False
        sock = dul.socket
        raw = getattr(sock, "socket", None)
        if raw is None or not getattr(sock, "_is_connected", False):
            time.sleep(0.001)
            return False
        try:
            select.select([raw, wake_fd], [], [], _IDLE_WAIT_DUL)
        except (OSError, ValueError):
            return False
        try:
            os.eventfd_read(wake_fd)
        except BlockingIOError:
            pass
        return False

    kill_dul = dul.kill_dul

    def kill_and_wake() -> None:
        kill_dul()
        wake()

    def stop_dul() -> bool:
        if dul.state_machine.current_state != "Sta1":
            return False
        dul._kill_thread = True
        wake()
        if threading.current_thread() is not dul and dul.is_alive():
            dul.join(5)
        return True

    limits = limits or PduLimits.of(DicomSettings())
    fast = FastStoreReader(assoc, encode_store_success, limits) if FastStoreReader.usable(assoc) else None

    def read_or_wait() -> bool:
        # Sta6 (established): the node reads the PDUs itself (node.dimse.fast_store), but only
        # while pynetdicom has nothing of this association left to process, so that messages
        # are served in the order they arrived.
        assert fast is not None
        if dul.state_machine.current_state != "Sta6":
            return is_transport_event()
        if dul._kill_thread or not dul.event_queue.empty() or not outgoing.empty():
            return False
        raw = getattr(dul.socket, "socket", None)
        if raw is None or not getattr(dul.socket, "_is_connected", False):
            return is_transport_event()
        # PDUs the node serves itself leave pynetdicom's event queue empty, and its reactor then
        # calls time.sleep(0) before it looks again: a GIL hand-off per PDU that a busy machine
        # makes cost ~0.1 ms. So PDUs are read here one after another for as long as pynetdicom
        # has nothing to do; back in its reactor when it has (an event, something to send, the
        # association ending) or when the socket stays quiet for _IDLE_WAIT_DUL.
        handled = False
        while True:
            try:
                readable, _, _ = select.select([raw, wake_fd], [], [], _IDLE_WAIT_DUL)
            except (OSError, ValueError):
                return handled or is_transport_event()
            if wake_fd in readable:
                try:
                    os.eventfd_read(wake_fd)
                except BlockingIOError:
                    pass
            if raw not in readable:
                return handled
            fast.read_pdu()
            handled = True
            dul._idle_timer.restart()
            if (dul._kill_thread or not dul.event_queue.empty() or not outgoing.empty()
                    or dul.state_machine.current_state != "Sta6"):
                return True

    dul._is_transport_event = read_or_wait if fast is not None else is_transport_event  # type: ignore[method-assign]
    dul.kill_dul = kill_and_wake  # type: ignore[method-assign]
    dul.stop_dul = stop_dul  # type: ignore[method-assign]

    dimse = assoc.dimse
    inline = _InlineRequestQueue(assoc)
    while True:
        try:
            queue.Queue.put(inline, dimse.msg_queue.get_nowait())
        except queue.Empty:
            break
    dimse.msg_queue = inline
    get_msg = dimse.get_msg

    def get_msg_waiting(block: bool = False) -> Any:
        if block:
            return get_msg(block=True)
        # The reactor's poll: wait briefly for a message instead of returning at once.
        try:
            return dimse.msg_queue.get(timeout=_IDLE_WAIT_ASSOCIATION)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg_waiting  # type: ignore[method-assign]
    send_msg = dimse.send_msg

    def send_msg_fast(primitive: Any, context_id: int) -> None:
        # C-STORE success responses, the one message sent per stored instance, are encoded
        # directly; everything else (and any association with EVT_DIMSE_SENT handlers)
        # goes through pynetdicom.
        if _is_plain_store_success(primitive) and not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pdata = P_DATA()
            command = encode_store_success(int(primitive.MessageIDBeingRespondedTo),
                                           str(primitive.AffectedSOPClassUID),
                                           str(primitive.AffectedSOPInstanceUID))
            # Message control header 0x03: command information, last fragment (PS3.8 E.2).
            # pynetdicom checks for a list [ID, PDV] at run time but annotates a tuple.
            pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
            dul.send_pdu(pdata)
            return
        send_msg(primitive, context_id)

    dimse.send_msg = send_msg_fast  # type: ignore[method-assign]


_polls = [0]


def _young_collection() -> None:
    """The acceptor server's ``service_actions``: every 60 polls, collect the young
    generations only (cheap), instead of pynetdicom's full collection."""
    _polls[0] += 1
    if _polls[0] % 60 == 0:
        gc.collect(1)


class _CheapCopyContext(PresentationContext):
    """A supported presentation context that pynetdicom can deep-copy cheaply.

    pynetdicom deep-copies the acceptor's supported contexts for every incoming connection;
    for the node's ~180 SOP classes × ~45 transfer syntaxes a plain ``deepcopy`` re-creates
    and re-validates (by regular expression) every UID: about half a second of CPU per
    association, paid before the association is accepted. UIDs are immutable, so the copy
    shares them and copies only the list that holds them.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> _CheapCopyContext:
        copy = cls.__new__(cls)
        copy.__dict__.update(context.__dict__)
        copy._transfer_syntax = list(context._transfer_syntax)
        return copy

    def __deepcopy__(self, memo: dict[int, Any]) -> _CheapCopyContext:
        return _CheapCopyContext.of(self)


class _NodeAE(AE):
    """The node's AE. The associations it requests itself (the sub-associations of C-MOVE,
    opened by pynetdicom) get :func:`node.dimse.scu.requestor_handlers`, so a C-STORE
    response of a sub-operation cannot be lost to pynetdicom's reactor race."""

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        kwargs["evt_handlers"] = [*(kwargs.get("evt_handlers") or []), *requestor_handlers()]
        return super().associate(*args, **kwargs)


def _transfer_syntaxes() -> list[str]:
    # Explicit VR little endian first: what the node prefers when a requestor proposes several
    # syntaxes for one context and leaves the choice to the acceptor.
    first = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    return first + [str(ts) for ts in ALL_TRANSFER_SYNTAXES if str(ts) not in first]


class DimseServer:
    """The node's DIMSE service, started in the background.

    Parameters
    ----------
    settings:
        ``[dicom]``.
    handlers:
        The node's handlers (ingest, index).
    sop_classes:
        Storage SOP classes to accept (default: all).
    """

    def __init__(self, settings: DicomSettings, handlers: DimseHandlers,
                 sop_classes: Iterable[str] | None = None) -> None:
        self.settings = settings
        self.handlers = handlers
        self.ae = _NodeAE(ae_title=settings.ae_title)
        # The node counts associations itself (node.dimse.guard.AssociationSlots): pynetdicom's
        # count of live acceptor threads races under a burst and includes idle connections.
        self.ae.maximum_associations = 1 << 20
        self.slots = AssociationSlots(settings.max_associations)
        self.policy = AssociationPolicy(settings)
        self.limits = PduLimits.of(settings)
        self.ae.acse_timeout = settings.acse_timeout
        self.ae.dimse_timeout = settings.dimse_timeout
        self.ae.network_timeout = settings.network_timeout
        self.ae.maximum_pdu_size = settings.maximum_pdu_size
        self.ae.require_called_aet = settings.require_called_ae_title
        if not settings.allow_any:  # the policy also checks each peer's host
            self.ae.require_calling_aet = [p.ae_title for p in settings.peers]
        syntaxes = _transfer_syntaxes()
        for cx in VerificationPresentationContexts:
            self.ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
        wanted = set(sop_classes) if sop_classes is not None else None
        for cx in AllStoragePresentationContexts:
            if wanted is None or str(cx.abstract_syntax) in wanted:
                # scp_role=True lets a C-GET requestor act as Storage SCP on this association.
                self.ae.add_supported_context(str(cx.abstract_syntax), syntaxes,
                                              scu_role=False, scp_role=True)
        for cx in QueryRetrievePresentationContexts:
            self.ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
        self._server: ThreadedAssociationServer | None = None

    def make_server(self, extra_handlers: Sequence[tuple[Any, Any]] = (),
                    server_class: type[NodeAssociationServer] = NodeAssociationServer,
                    **options: Any) -> NodeAssociationServer:
        """The association server of ``[dicom]`` (not yet serving): the node's contexts,
        handlers, TLS, timeouts and association guard.

        ``extra_handlers`` are further pynetdicom notification handlers (the audit trail's);
        ``server_class`` and ``options`` choose the server (a DIMSE receiver process serves
        connections its node accepted, :mod:`node.dimse.receiver`).
        """
        ssl_context = tls_context(self.settings.tls, server=True) if self.settings.tls else None
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # Otherwise pynetdicom decodes every C-FIND/C-MOVE/C-GET identifier a second time
            # and formats it, and every C-FIND match, line by line for a log that is off.
            pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
            pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        server = self.ae.make_server(
            (self.settings.host, self.settings.port),
            contexts=[_CheapCopyContext.of(cx) for cx in self.ae.supported_contexts],
            evt_handlers=[*self.handlers.bindings(), (evt.EVT_CONN_OPEN, self._on_connection_open),
                          *extra_handlers],
            ssl_context=ssl_context,
            server_class=server_class,
            network_timeout=self.settings.network_timeout,
            tls_handshake_timeout=self.settings.tls_handshake_timeout,
            **options,
        )
        assert isinstance(server, NodeAssociationServer)
        # pynetdicom's server runs a full gc.collect() every 60 polls (30 s), a pause of
        # hundreds of ms holding the GIL on a node with a large heap, whatever is being
        # received. The node's accepted associations release their resources when they end
        # (make_event_driven); what is left is ordinary garbage for Python's own collector.
        server.service_actions = _young_collection  # type: ignore[method-assign]
        self.ae._servers.append(server)
        self._server = server
        return server

    def start(self, extra_handlers: Sequence[tuple[Any, Any]] = ()) -> None:
        """Listen on ``[dicom] host:port`` in background threads.

        ``extra_handlers`` are further pynetdicom notification handlers (the audit trail's).
        """
        server = self.make_server(extra_handlers)
        # As pynetdicom's start_server(block=False): serve in a daemon thread, listed by the AE.
        threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        log.info("DIMSE listening as %s on %s:%d%s", self.settings.ae_title, self.settings.host,
                 self.settings.port, " (TLS)" if self.settings.tls else "")

    def _on_connection_open(self, event: Event) -> None:
        guard_association(event.assoc, self.policy, self.slots, self.limits)
        make_event_driven(event.assoc, self.limits)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
