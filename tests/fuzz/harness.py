"""What every fuzzed input must get from a serving node, checked over loopback.

* DIMSE datasets (C-STORE) and identifiers (C-FIND): a DIMSE response with a status that is
  not pynetdicom's "exception in the handler" (0xC211, 0xC311, 0xC411, 0xC511), and the same
  association still answers C-ECHO.
* Association requests and PDU streams: an answer (A-ASSOCIATE-AC/RJ, a response, A-ABORT)
  or a closed connection once the fuzzer has finished sending, never silence.
* STOW-RS, QIDO-RS and WADO-RS: an HTTP answer below 500 (507 only for a full disk), never a
  dropped connection.
* An input the node stored (C-STORE success, STOW-RS 200/202) is served back: WADO-RS of
  the instance indexed last, and its metadata, answer below 500.
* After each input the node answers C-ECHO on a new association, and its log shows no
  unhandled exception in a handler (:data:`CRASH_MARKERS`).

Each check returns a short label of what happened, which ``bench.fuzz`` counts.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.attacks import image_dataset, part10, uid
from tests.dicomweb.conftest import multipart_body
from tests.dimse_wire import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    MR_STORAGE,
    STUDY_ROOT_FIND,
    VERIFICATION,
    c_find_command,
    c_store_command,
    p_data,
    raw_association,
    read_pdu,
)
from tests.peers import query_index

__all__ = [
    "CRASH_MARKERS",
    "FUZZ_NODE_ENV",
    "STORED",
    "FuzzTarget",
    "check_association_request",
    "check_c_find",
    "check_c_store",
    "check_pdu_stream",
    "check_qido",
    "check_stow",
    "check_wado",
    "store_reference_instance",
]

#: Lines a node logs when an exception escaped a handler or reader (pynetdicom, the node's
#: C-STORE reader, uvicorn, Python's thread hook).
CRASH_MARKERS = ("Exception in handler bound to", "Exception in the handler bound to", "Exception in DUL.run()",
                 "exception in the C-STORE handler", "Exception in ASGI application", "Exception in thread")
_HANDLER_EXCEPTION = {0xC211, 0xC311, 0xC411, 0xC511}
_CONTEXTS = ((VERIFICATION, (IMPLICIT_LE,)), (MR_STORAGE, (EXPLICIT_LE,)), (MR_STORAGE, (IMPLICIT_LE,)),
             (STUDY_ROOT_FIND, (IMPLICIT_LE,)))
_EXPLICIT_CONTEXT, _IMPLICIT_CONTEXT, _FIND_CONTEXT = 3, 5, 7


@dataclass
class FuzzTarget:
    """A serving node: its DIMSE port, DICOMweb base URL and log."""

    port: int
    http_port: int
    log: Path
    ae_title: str = "PACSNODE"
    answer_timeout: float = 20.0
    index: Path | None = None  # the node's index.sqlite: what was stored last is served back

    def assert_latest_served(self) -> None:
        """The instance the node indexed last is served by WADO-RS (instance and metadata)
        without a 5xx: a stored instance with a malformed element must not break retrieval."""
        if self.index is None:
            return
        rows = query_index(self.index, "SELECT study_uid, series_uid, sop_uid FROM instances "
                                       "ORDER BY received_at DESC LIMIT 1")
        if not rows:
            return
        study, series, sop = rows[0]
        url = f"{self.base}/studies/{quote(study)}/series/{quote(series)}/instances/{quote(sop)}"
        for suffix, accept in (("", 'multipart/related; type="application/dicom"'),
                               ("/metadata", "application/dicom+json")):
            try:
                response = httpx.get(url + suffix, headers={"Accept": accept}, timeout=self.answer_timeout)
            except httpx.RemoteProtocolError as exc:
                raise AssertionError(f"GET {url}{suffix}: the node dropped the connection") from exc
            assert response.status_code < 500, f"GET {url}{suffix}: {response.status_code} {response.text[:300]}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def log_position(self) -> int:
        return self.log.stat().st_size

    def assert_healthy(self, since: int = 0) -> None:
        """C-ECHO on a new association answers 0x0000; no crash marker in the log after ``since``."""
        with raw_association(self.port, called=self.ae_title, contexts=_CONTEXTS,
                             timeout=self.answer_timeout) as assoc:
            assert assoc.accepted, f"the node refused C-ECHO's association: {assoc.response_type}"
            assert assoc.echo() == 0x0000
            assoc.release()
        with open(self.log, "rb") as handle:
            handle.seek(since)
            tail = handle.read().decode("utf-8", "replace")
        for marker in CRASH_MARKERS:
            assert marker not in tail, tail[max(0, tail.index(marker) - 300):][:4000]


def _until_closed(sock: socket.socket, timeout: float) -> list[int]:
    """PDU types the node sends until it closes the connection (after the fuzzer's half-close)."""
    sock.settimeout(timeout)
    seen = []
    try:
        while (pdu := read_pdu(sock)) is not None:
            seen.append(pdu[0])
    except ConnectionResetError:
        seen.append(-1)
    except TimeoutError as exc:
        raise AssertionError(f"the node neither answered nor closed within {timeout:g} s "
                             f"(PDUs seen: {seen})") from exc
    return seen


def check_association_request(target: FuzzTarget, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", target.port), timeout=target.answer_timeout) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed-while-sending"
        seen = _until_closed(sock, target.answer_timeout)
    return "+".join(f"{t:02X}" if t >= 0 else "reset" for t in seen[:3]) or "closed"


def check_pdu_stream(target: FuzzTarget, stream: bytes) -> str:
    with raw_association(target.port, called=target.ae_title, contexts=_CONTEXTS,
                         timeout=target.answer_timeout) as assoc:
        assert assoc.accepted
        try:
            assoc.sock.sendall(stream)
            assoc.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed-while-sending"
        seen = _until_closed(assoc.sock, target.answer_timeout)
    return "+".join(f"{t:02X}" if t >= 0 else "reset" for t in seen[:3]) or "closed"


def _status(assoc_message: object) -> int:
    assert isinstance(assoc_message, tuple), f"expected a DIMSE response, got {assoc_message!r}"
    fields = assoc_message[0]
    return int(struct.unpack("<H", fields[0x0900][:2])[0])


def check_c_store(target: FuzzTarget, dataset: bytes, implicit: bool) -> str:
    with raw_association(target.port, called=target.ae_title, contexts=_CONTEXTS,
                         timeout=target.answer_timeout) as assoc:
        assert assoc.accepted
        context = _IMPLICIT_CONTEXT if implicit else _EXPLICIT_CONTEXT
        assoc.send(p_data(context, c_store_command(MR_STORAGE, "1.2.826.0.1.3680043.9.9999.94.1"), command=True))
        assoc.send(p_data(context, dataset, command=False))
        status = _status(assoc.read_message(target.answer_timeout))
        assert status not in _HANDLER_EXCEPTION, f"C-STORE answered 0x{status:04X}: an exception in the handler"
        assert assoc.echo(message_id=2) == 0x0000, "the association stopped answering after the C-STORE"
        assoc.release()
    if status in (0x0000, 0xB000, 0xB007, 0xB006):
        target.assert_latest_served()
    return f"C-STORE 0x{status:04X}"


def check_c_find(target: FuzzTarget, identifier: bytes) -> str:
    with raw_association(target.port, called=target.ae_title, contexts=_CONTEXTS,
                         timeout=target.answer_timeout) as assoc:
        assert assoc.accepted
        assoc.send(p_data(_FIND_CONTEXT, c_find_command(1), command=True))
        assoc.send(p_data(_FIND_CONTEXT, identifier, command=False))
        while True:
            status = _status(assoc.read_message(target.answer_timeout))
            if status not in (0xFF00, 0xFF01):
                break
        assert status not in _HANDLER_EXCEPTION, f"C-FIND answered 0x{status:04X}: an exception in the handler"
        assert status != 0xC312, "C-FIND answered 0xC312: the node made a match it could not encode"
        assert assoc.echo(message_id=2) == 0x0000
        assoc.release()
    return f"C-FIND 0x{status:04X}"


def _http(client: httpx.Client, method: str, url: str, **kwargs: object) -> int:
    try:
        response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.RemoteProtocolError as exc:
        raise AssertionError(f"{method} {url[:200]}: the node dropped the connection ({exc})") from exc
    except (httpx.LocalProtocolError, UnicodeEncodeError, httpx.InvalidURL):
        return -1  # the client refused to send it (not something the node saw)
    assert response.status_code < 500 or response.status_code == 507, (
        f"{method} {url[:200]}: {response.status_code} {response.text[:500]}")
    return response.status_code


def check_stow(target: FuzzTarget, client: httpx.Client, body: bytes, content_type: str) -> str:
    headers = {"Content-Type": content_type} if content_type else {}
    status = _http(client, 'POST', f'{target.base}/studies', content=body, headers=headers)
    if status in (200, 202):
        target.assert_latest_served()
    return f"STOW {status}"


def check_qido(target: FuzzTarget, client: httpx.Client, resource: str, params: list[tuple[str, str]]) -> str:
    return f"QIDO {_http(client, 'GET', f'{target.base}/{resource}', params=params)}"


def check_wado(target: FuzzTarget, client: httpx.Client, path: str, headers: dict[str, str]) -> str:
    # Percent-encode what a client may not put in a URL as it is (spaces, other scripts), so
    # that the node, not the client, sees it.
    url = f"{target.base}/{quote(path, safe='/?&=,%;:+*')}"
    return f"WADO {_http(client, 'GET', url, headers=headers)}"


#: Settings of the node under fuzzing (also used by bench.fuzz).
FUZZ_NODE_ENV = {
    "PACSNODE_DICOM__NETWORK_TIMEOUT": "3",
    "PACSNODE_DICOM__PDU_READ_TIMEOUT": "5",
    "PACSNODE_DICOM__ACSE_TIMEOUT": "5",
    "PACSNODE_STORAGE__FSYNC": "false",
    "PACSNODE_HTTP__MAX_UPLOAD_MB": "4",
    # each stored input replaces the one before under the same SOP Instance UID, so the
    # instance served back is the one just sent
    "PACSNODE_STORAGE__DUPLICATE_POLICY": "overwrite",
}
STORED = (uid(1), uid(2), uid(95, 1))


def store_reference_instance(target: FuzzTarget) -> None:
    """One instance WADO-RS fuzzing can aim at (study uid(1), series uid(2))."""
    body = multipart_body([part10(image_dataset(STORED[2]), STORED[2])])
    response = httpx.post(f"{target.base}/studies", content=body, timeout=30, headers={
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=test-boundary'})
    assert response.status_code == 200, response.text
