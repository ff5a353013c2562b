"""What a hostile or broken peer must not be able to do to the node's DIMSE service.

* **Who may associate** (:class:`AssociationPolicy`): the called AE title must be the
  node's own (``require_called_ae_title``); a title with leading spaces or characters
  outside PS3.5's AE repertoire is refused; with ``allow_any = false`` the calling AE
  title must be a ``[[dicom.peers]]`` entry *and* the connection must come from that
  entry's host. pynetdicom checks the calling title only, after stripping its spaces.
* **How many** (:class:`AssociationSlots`): at most ``max_associations`` negotiated
  associations, counted atomically when an association is negotiated and given back when
  its thread ends. pynetdicom counts live acceptor threads instead, which races under a
  burst and also counts connections that never sent an association request.
* **How large and how slow a PDU** (:class:`PduLimits`, :class:`BoundedReceive`): a PDU
  whose header claims more than ``maximum_pdu_size`` (1 MiB for association control PDUs)
  aborts the association before anything is allocated; a socket silent for
  ``network_timeout`` seconds, also in the middle of a PDU, and a PDU still incomplete
  ``pdu_read_timeout`` seconds after its header end it.
* **Messages pynetdicom cannot decode** (:func:`guard_association`): a command set without
  the elements every command has, and an A-ABORT with a source or reason PS3.8 does not
  define, end the association with A-ABORT instead of killing pynetdicom's reader thread.
* **TLS** (:class:`NodeAssociationServer`): the handshake runs in the connection's own
  thread with a deadline (``tls_handshake_timeout``), so a client that connects and says
  nothing holds only its own connection, never the listener.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from node.config import DicomSettings
from node.dataset_checks import DECODE_ERRORS

__all__ = [
    "AssociationPolicy",
    "AssociationSlots",
    "BoundedReceive",
    "NodeAssociationServer",
    "PduLimits",
    "PduTooLong",
    "PduTooSlow",
    "check_pdu_header",
    "guard_association",
    "quick_ack",
    "read_exactly",
    "send_abort",
]

log = logging.getLogger(__name__)

_P_DATA_TF = 0x04
# A-ASSOCIATE-RQ and the other control PDUs: an RQ proposing all 128 presentation contexts with
# dozens of transfer syntaxes each stays far below this.
_CONTROL_PDU_LIMIT = 1 << 20
_READ_CHUNK = 1 << 20
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# A-ABORT, source: service provider (2), reason: invalid PDU parameter value (6) (PS3.8 9.3.8).
_ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"
_AE_REPERTOIRE = re.compile(rb"^[\x20-\x5b\x5d-\x7e]+$")  # PS3.5 AE: no backslash, no controls

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
_REJECT_CALLING = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
_REJECT_CALLED = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognised
_REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


class PduTooLong(OSError):
    """A PDU header claimed more bytes than the node accepts."""


class PduTooSlow(OSError):
    """A PDU did not arrive in time (silence mid-PDU, or a PDU trickled in too slowly)."""


@dataclass(frozen=True)
class PduLimits:
    """The PDU size and time limits of one association."""

    maximum_pdu_size: int
    network_timeout: float
    pdu_read_timeout: float

    @classmethod
    def of(cls, settings: DicomSettings) -> PduLimits:
        return cls(settings.maximum_pdu_size, settings.network_timeout, settings.pdu_read_timeout)

    def longest(self, pdu_type: int) -> int:
        """The longest PDU (its length field) accepted of this type."""
        return self.maximum_pdu_size if pdu_type == _P_DATA_TF else _CONTROL_PDU_LIMIT


def check_pdu_header(header: bytes | bytearray, limits: PduLimits) -> int:
    """The length a PDU header announces; raises :class:`PduTooLong` above the limit."""
    pdu_type, _, length = struct.unpack(">BBI", header)
    if length > limits.longest(pdu_type):
        raise PduTooLong(f"a PDU of type 0x{pdu_type:02X} claims {length} bytes, more than the "
                         f"{limits.longest(pdu_type)} this node accepts ([dicom] maximum_pdu_size)")
    return int(length)


def read_exactly(sock: Any, view: memoryview, deadline: float | None) -> int:
    """Fill ``view`` from ``sock`` (whose timeout bounds each wait); returns the bytes read,
    fewer when the peer closed. Raises :class:`PduTooSlow` once ``deadline`` passed with
    bytes still missing, and on a wait that timed out."""
    total, wanted = 0, len(view)
    while total < wanted:
        try:
            count = sock.recv_into(view[total:], min(wanted - total, _READ_CHUNK))
        except TimeoutError as exc:
            raise PduTooSlow(f"no data for {sock.gettimeout():g} s in the middle of a PDU "
                             "([dicom] network_timeout)") from exc
        if not count:
            return total
        total += count
        quick_ack(sock)
        if total < wanted and deadline is not None and time.monotonic() > deadline:
            raise PduTooSlow(f"a PDU still lacked {wanted - total} of {wanted} bytes when its time "
                             "ran out ([dicom] pdu_read_timeout)")
    return total


def quick_ack(sock: Any) -> None:
    """Acknowledge what was read at once (Linux ``TCP_QUICKACK``, which the kernel clears
    again after a while, so it is set after every read).

    A sender with Nagle's algorithm on (dcmtk's default, and most modalities') holds the
    last, short segment of each request until its earlier segments are acknowledged, and
    the receiver's delayed acknowledgement comes up to 40 ms later: every instance waited
    for that timer. Measured in docs/storage.md ("Senders with Nagle on")."""
    if _TCP_QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except (OSError, ValueError):
        pass  # not a TCP socket (a test's socket pair), or closed meanwhile


def send_abort(sock: Any) -> None:
    """Tell the peer why the node ends the association (A-ABORT), as far as it still listens."""
    try:
        sock.sendall(_ABORT_INVALID_PARAMETER)
    except OSError:
        pass


class BoundedReceive:
    """A replacement for pynetdicom's ``AssociationSocket.recv`` with the node's limits.

    pynetdicom's reader (association negotiation, release, TLS associations) asks for the
    6-byte PDU header, then for the PDU's length. This checks the length when the header
    arrives and reads the rest against the PDU's deadline. A refused PDU returns short,
    which pynetdicom treats as a closed connection (its event 17, the association ends).
    """

    def __init__(self, assoc_socket: Any, limits: PduLimits, peer: str) -> None:
        self._socket = assoc_socket
        self._limits = limits
        self._peer = peer
        self._body: int | None = None
        self._deadline: float | None = None

    def __call__(self, nr_bytes: int) -> bytearray:
        sock = self._socket.socket
        expecting_body = self._body is not None and nr_bytes == self._body
        deadline = self._deadline if expecting_body else None
        self._body = self._deadline = None
        if sock is None:
            return bytearray()
        if not expecting_body and nr_bytes > _CONTROL_PDU_LIMIT:  # not a length checked here
            log.warning("DIMSE connection from %s aborted: a read of %d bytes refused", self._peer, nr_bytes)
            send_abort(sock)
            return bytearray()
        buffer = bytearray(nr_bytes)
        try:
            count = read_exactly(sock, memoryview(buffer), deadline)
            if not expecting_body and nr_bytes == 6 and count == 6:
                self._body = check_pdu_header(buffer, self._limits)
                self._deadline = time.monotonic() + self._limits.pdu_read_timeout
        except PduTooLong as exc:
            log.warning("DIMSE connection from %s aborted: %s", self._peer, exc)
            send_abort(sock)
            return bytearray()
        except PduTooSlow as exc:
            log.warning("DIMSE connection from %s aborted: %s", self._peer, exc)
            return bytearray()
        except OSError:
            return bytearray()
        del buffer[count:]
        return buffer


class AssociationSlots:
    """At most ``limit`` negotiated associations at once, counted under a lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0

    def take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AssociationPolicy:
    """Decides whether an association request is accepted, from its raw AE title fields and
    the address it came from.

    Parameters
    ----------
    settings:
        ``[dicom]``: the node's AE title, ``require_called_ae_title``, ``allow_any`` and peers.
    resolve:
        Host name → addresses (``socket.getaddrinfo`` by default); peers' hosts are resolved
        when a request names them, so a changed DNS entry counts from the next association.
    """

    def __init__(self, settings: DicomSettings,
                 resolve: Callable[[str], Iterable[str]] | None = None) -> None:
        self.settings = settings
        self._resolve = resolve or _resolve

    def refusal(self, called: bytes, calling: bytes, address: str) -> tuple[tuple[int, int, int], str] | None:
        """Why the request is refused (A-ASSOCIATE-RJ result/source/diagnostic and a reason),
        or None when it is accepted. ``called`` and ``calling`` are the 16-byte fields as sent."""
        settings = self.settings
        called_text, problem = _title(called)
        if problem:
            return _REJECT_CALLED, f"called AE title {called.rstrip(b' ')!r} {problem}"
        if settings.require_called_ae_title and called_text != settings.ae_title:
            return _REJECT_CALLED, (f"called AE title {called_text!r} is not this node's "
                                    f"({settings.ae_title!r})")
        calling_text, problem = _title(calling)
        if problem:
            return _REJECT_CALLING, f"calling AE title {calling.rstrip(b' ')!r} {problem}"
        if settings.allow_any:
            return None
        peers = [p for p in settings.peers if p.ae_title == calling_text]
        if not peers:
            return _REJECT_CALLING, (f"calling AE title {calling_text!r} is not in [[dicom.peers]] "
                                     "(allow_any = false)")
        source = _address(address)
        for peer in peers:
            if source is not None and source in {_address(a) for a in self._resolve(peer.host)}:
                return None
        hosts = ", ".join(p.host for p in peers)
        return _REJECT_CALLING, (f"calling AE title {calling_text!r} is configured for host {hosts}, "
                                 f"but the request came from {address}")


def _title(field: bytes) -> tuple[str, str]:
    """The AE title of a 16-byte field (trailing padding removed) and what is wrong with it."""
    text = field.rstrip(b" ")
    if not text:
        return "", "is empty"
    if text != text.lstrip(b" "):
        return "", "begins with spaces"
    if not _AE_REPERTOIRE.match(text):
        return "", "holds characters outside the AE repertoire (control characters or backslash)"
    return text.decode("ascii"), ""


def _resolve(host: str) -> list[str]:
    try:
        return [str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)]
    except (OSError, UnicodeError):
        log.warning("the [[dicom.peers]] host %r does not resolve; its AE title is refused", host)
        return []


def _valid_abort(pdu: bytearray) -> bytearray:
    """An A-ABORT whose source or reason PS3.8 9.3.8 does not define, as "service provider,
    reason not specified": pynetdicom raises on such values in its state machine's thread and
    leaves the association half-dead."""
    source, reason = pdu[8], pdu[9]
    if source in (0, 1) or (source == 2 and reason in (0, 1, 2, 4, 5, 6)):
        return pdu
    fixed = bytearray(pdu)
    fixed[8], fixed[9] = 2, 0
    return fixed


def guard_association(assoc: Association, policy: AssociationPolicy, slots: AssociationSlots,
                      limits: PduLimits) -> None:
    """Install the policy, the association count and the PDU limits on an accepted connection.

    Call at ``EVT_CONN_OPEN``, before the association's thread starts.
    """
    dul = assoc.dul
    peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
    assoc_socket = dul.socket
    if assoc_socket is not None:
        assoc_socket.recv = BoundedReceive(assoc_socket, limits, peer)  # type: ignore[method-assign]
    raw_titles: list[bytes] = []
    decode_pdu = dul._decode_pdu

    def decode_checked(bytestream: bytearray) -> Any:
        if bytestream[:1] == b"\x01" and len(bytestream) >= 42:  # A-ASSOCIATE-RQ (PS3.8 9.3.2)
            raw_titles[:] = [bytes(bytestream[10:26]), bytes(bytestream[26:42])]
        elif bytestream[:1] == b"\x07" and len(bytestream) >= 10:
            bytestream = _valid_abort(bytestream)
        return decode_pdu(bytestream)

    dul._decode_pdu = decode_checked  # type: ignore[method-assign]
    dimse = assoc.dimse
    receive_primitive = dimse.receive_primitive

    def receive_checked(primitive: Any) -> None:
        # pynetdicom decodes a complete command set in its state machine's thread and does
        # not expect one without CommandField or CommandDataSetType: the thread would die
        # and leave the association half-dead. Such a message is an invalid PDU (event 19:
        # A-ABORT), as pynetdicom treats other undecodable messages.
        try:
            receive_primitive(primitive)
        except DECODE_ERRORS as exc:
            log.warning("association with %s aborted: a DIMSE message that cannot be decoded (%s: %s)",
                        peer, type(exc).__name__, exc)
            dimse.message = None
            dul.event_queue.put("Evt19")

    dimse.receive_primitive = receive_checked  # type: ignore[method-assign]
    acse = assoc.acse
    negotiate = acse._negotiate_as_acceptor
    holds_slot = [False]

    def refuse(reason: tuple[int, int, int], why: str) -> None:
        log.warning("association from %s refused: %s", peer, why)
        acse.send_reject(*reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def negotiate_guarded() -> None:
        if len(raw_titles) != 2:
            refuse(_REJECT_CALLING, "no association request was read")
            return
        refusal = policy.refusal(raw_titles[0], raw_titles[1], str(assoc.requestor.address))
        if refusal is not None:
            refuse(*refusal)
            return
        if not slots.take():
            refuse(_REJECT_BUSY, f"{slots.limit} associations are already open ([dicom] max_associations)")
            return
        holds_slot[0] = True
        negotiate()

    acse._negotiate_as_acceptor = negotiate_guarded  # type: ignore[method-assign]
    run = assoc.run

    def run_then_give_back() -> None:
        try:
            run()
        finally:
            if holds_slot[0]:
                holds_slot[0] = False
                slots.give_back()

    assoc.run = run_then_give_back  # type: ignore[method-assign]


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with timeouts on every accepted socket and the TLS
    handshake moved from the listener into the connection's thread.

    Parameters
    ----------
    *args, **kwargs:
        As :class:`pynetdicom.transport.ThreadedAssociationServer`.
    network_timeout:
        The longest wait of any read or write on an accepted socket.
    tls_handshake_timeout:
        The time a TLS client has to complete its handshake.
    """

    # socketserver's default backlog of 5 drops connections of a burst (several modalities
    # sending at once) before the node sees them.
    request_queue_size = 128

    def __init__(self, *args: Any, network_timeout: float, tls_handshake_timeout: float,
                 **kwargs: Any) -> None:
        self.network_timeout = network_timeout
        self.tls_handshake_timeout = tls_handshake_timeout
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.network_timeout)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            request = self._handshake(request, client_address)
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def _handshake(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """The server side of the TLS handshake, within ``tls_handshake_timeout``."""
        assert self.ssl_context is not None
        deadline = time.monotonic() + self.tls_handshake_timeout
        connection: socket.socket = sock
        try:
            sock.setblocking(False)
            tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            connection = tls
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    readable, writable = [tls], []
                except ssl.SSLWantWriteError:
                    readable, writable = [], [tls]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"TLS handshake not complete after {self.tls_handshake_timeout:g} s "
                                       "([dicom] tls_handshake_timeout)")
                select.select(readable, writable, [], remaining)
            tls.settimeout(self.network_timeout)
            return tls
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("TLS connection from %s closed: %s", client_address[0], exc)
            try:
                connection.close()
            except OSError:
                pass
            return None
