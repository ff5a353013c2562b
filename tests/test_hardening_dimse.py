"""Attacks on a serving node's DIMSE port over loopback, the way a hostile or broken peer would
make them, and what the node must do (docs/security.md).

Each test reproduces one finding of an attack review against a real ``pacsnode serve``:
the AE allow-list (host, spaces, called title), an idle connection to the TLS port, a
partial or trickled PDU, a PDU header claiming gigabytes, a burst of association requests
against ``max_associations``, and sequences nested deeper than ``max_sequence_depth``.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import ConfigError, load_settings
from tests.attacks import element, image_dataset
from tests.dimse_wire import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    MR_STORAGE,
    STUDY_ROOT_FIND,
    VERIFICATION,
    associate_rq,
    c_find_command,
    minimal_dataset,
    nested_sequences,
    p_data,
    raw_association,
    read_pdu,
)
from tests.peers import NodeProcess, node_process, wait_for_port

pytestmark = [pytest.mark.peers]


def _rss_mb(node: NodeProcess) -> float:
    """Resident memory of the node's main process and its DIMSE receiver processes together."""
    from tests.test_receivers import receiver_pids

    total = 0.0
    for pid in [node.process.pid, *receiver_pids(node)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    assert total > 0, "no VmRSS"
    return total


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the node closed ``sock`` (reading, discarding an A-ABORT), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset by the node
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started
    return None


def _echo_ok(node: NodeProcess) -> bool:
    with raw_association(node.port) as assoc:
        ok = assoc.accepted and assoc.echo() == 0x0000
        assoc.release()
    return ok


def test_allow_list_checks_host_leading_spaces_and_called_title(tmp_path: Path) -> None:
    peers = ('\n[[dicom.peers]]\nae_title = "GOODPEER"\nhost = "127.0.0.1"\nport = 104\n'
             '\n[[dicom.peers]]\nae_title = "FARPEER"\nhost = "10.99.99.99"\nport = 104\n')
    with node_process(tmp_path / "node", extra=peers, env={"PACSNODE_DICOM__ALLOW_ANY": "false"}) as node:
        with raw_association(node.port, calling="FARPEER") as far:
            assert far.reject_reason == (1, 1, 3), "a listed title called from another host got in"
        with raw_association(node.port, calling=b" GOODPEER") as spaced:
            assert spaced.reject_reason == (1, 1, 3), "a title with a leading space got in"
        with raw_association(node.port, calling="GOODPEER", called="SOMEONE") as wrong_called:
            assert wrong_called.reject_reason == (1, 1, 7), "a wrong called AE title got in"
        with raw_association(node.port, calling="GOODPEER") as good:
            assert good.accepted
            assert good.echo() == 0x0000
            good.release()
        # pynetdicom as the peer: the same refusal for the listed title from the wrong host
        ae = AE(ae_title="FARPEER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_rejected
        log = node.log.read_text()
        assert "configured for host 10.99.99.99, but the request came from 127.0.0.1" in log
        assert "begins with spaces" in log


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_idle_connection_to_the_tls_port_blocks_nobody(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = _certificate(tmp_path)
    extra = (f'\n[dicom.tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{cert}"\n'
             "require_client_cert = true\n")
    env = {"PACSNODE_DICOM__TLS_HANDSHAKE_TIMEOUT": "3"}
    with node_process(tmp_path / "node", extra=extra, env=env) as node:
        idle = socket.create_connection(("127.0.0.1", node.port))  # connects and says nothing
        try:
            time.sleep(0.5)
            client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            client.load_cert_chain(str(cert), str(key))
            ae = AE(ae_title="TLSSCU")
            ae.add_requested_context(Verification)
            ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
            started = time.monotonic()
            assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title, tls_args=(client, "127.0.0.1"))
            assert assoc.is_established, "a valid TLS association waited behind an idle connection"
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            assert time.monotonic() - started < 5
            closed = _closed_within(idle, 8)
            assert closed is not None, "the idle connection outlived tls_handshake_timeout"
        finally:
            idle.close()
        assert "TLS handshake not complete after 3 s" in node.log.read_text()


def test_partial_and_trickled_pdus_end_their_associations(tmp_path: Path) -> None:
    env = {"PACSNODE_DICOM__NETWORK_TIMEOUT": "2", "PACSNODE_DICOM__PDU_READ_TIMEOUT": "4",
           "PACSNODE_DICOM__MAX_ASSOCIATIONS": "3"}
    with node_process(tmp_path / "node", env=env) as node:
        with raw_association(node.port) as header_only, raw_association(node.port) as part_body, \
                raw_association(node.port) as trickle:
            assert header_only.accepted and part_body.accepted and trickle.accepted
            header_only.send(struct.pack(">BBI", 0x04, 0, 1000))  # a 6-byte P-DATA header, then silence
            part_body.send(struct.pack(">BBI", 0x04, 0, 1000) + b"\x00\x00\x03\xe6")  # header + 4 of 1,000
            trickle.send(struct.pack(">BBI", 0x04, 0, 1000))
            with raw_association(node.port) as fourth:  # all three slots are taken meanwhile
                assert fourth.reject_reason == (2, 3, 2)
            stop = threading.Event()

            def drip() -> None:  # one byte a second: never silent for network_timeout
                while not stop.wait(1.0):
                    try:
                        trickle.sock.sendall(b"\x00")
                    except OSError:
                        return

            dripper = threading.Thread(target=drip)
            dripper.start()
            try:
                assert _closed_within(header_only.sock, 8) is not None, "a 6-byte header held its association"
                assert _closed_within(part_body.sock, 4) is not None, "a partial PDU held its association"
                assert _closed_within(trickle.sock, 8) is not None, "a trickled PDU held its association"
            finally:
                stop.set()
                dripper.join()
        assert _echo_ok(node), "the slots were not given back"
        log = node.log.read_text()
        assert "in the middle of a PDU ([dicom] network_timeout)" in log
        assert "([dicom] pdu_read_timeout)" in log


def test_a_pdu_header_claiming_gigabytes_allocates_nothing(tmp_path: Path) -> None:
    with node_process(tmp_path / "node") as node:
        assert _echo_ok(node)
        before = _rss_mb(node)
        for claim in (1 << 30, 0xFFFFFFFF):
            with raw_association(node.port) as assoc:
                assert assoc.accepted
                assoc.send(struct.pack(">BBI", 0x04, 0, claim))
                assoc.sock.settimeout(5)
                answer = read_pdu(assoc.sock)
                assert answer is not None and answer[0] == 0x07, "expected an A-ABORT"  # then closed
                assert _closed_within(assoc.sock, 5) is not None
        assert _rss_mb(node) - before < 50
        assert _echo_ok(node)
        assert "more than the 4194304 this node accepts" in node.log.read_text()
    with pytest.raises(ConfigError, match=r"maximum_pdu_size.*4 GiB"):
        load_settings(None, environ={"PACSNODE_DICOM__MAXIMUM_PDU_SIZE": "0"})


def test_max_associations_holds_under_a_burst(tmp_path: Path) -> None:
    """200 requests at once against max_associations = 16: exactly 16 accepted, the rest
    refused as a local limit, and the slots come back when those 16 end."""
    with node_process(tmp_path / "node") as node:
        count = 200
        sockets = [socket.create_connection(("127.0.0.1", node.port), timeout=60) for _ in range(count)]
        request = associate_rq("PACSNODE", "BURST")
        answers: list[tuple[int, bytes] | None] = [None] * count
        start = threading.Barrier(count)

        def ask(number: int) -> None:
            start.wait()
            sockets[number].sendall(request)
            answers[number] = read_pdu(sockets[number])

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(count)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            accepted = [n for n, a in enumerate(answers) if a is not None and a[0] == 0x02]
            busy = [n for n, a in enumerate(answers) if a is not None and a[0] == 0x03 and a[1][1:4] == b"\x02\x03\x02"]
            assert len(accepted) == 16, f"{len(accepted)} of {count} accepted with max_associations = 16"
            others = [answers[n] for n in range(count) if n not in accepted and n not in busy]
            assert len(busy) == count - 16, others[:5]
        finally:
            for sock in sockets:
                sock.close()
        deadline = time.monotonic() + 20
        while not _echo_ok(node):
            assert time.monotonic() < deadline, "closed associations did not give their slots back"
            time.sleep(0.5)


def test_deep_sequences_over_dimse_are_refused_with_0xc000(tmp_path: Path) -> None:
    env = {"PACSNODE_STORAGE__MAX_SEQUENCE_DEPTH": "32"}
    with node_process(tmp_path / "node", env=env) as node, raw_association(node.port) as assoc:
        assert assoc.accepted
        for number, (depth, defined) in enumerate(((200, False), (40, True), (33, False))):
            uid = f"1.2.826.0.1.3680043.9.9999.3.{number}"
            status, comment = assoc.store(uid, minimal_dataset(uid) + nested_sequences(depth, defined_length=defined),
                                          message_id=number + 1)
            assert status == 0xC000, f"{depth} levels: 0x{status:04X} {comment}"
            assert "nested" in comment
        uid = "1.2.826.0.1.3680043.9.9999.3.9"
        status, comment = assoc.store(uid, minimal_dataset(uid) + nested_sequences(32), message_id=9)
        assert status == 0x0000, comment
        assert assoc.echo(message_id=10) == 0x0000
        assoc.release()
        stored = list((node.storage / "store").rglob("*.dcm"))
        assert [p.stem for p in stored] == [uid]


def test_p_data_on_a_closed_context_keeps_the_node_serving(tmp_path: Path) -> None:
    """A P-DATA for a context that was never accepted is answered by ending that association;
    the node goes on serving others."""
    with node_process(tmp_path / "node") as node:
        with raw_association(node.port) as assoc:
            assert assoc.accepted
            assoc.send(p_data(99, b"\x00" * 16, command=True))
            assert _closed_within(assoc.sock, 10) is not None
        assert _echo_ok(node)


def test_what_the_fuzzer_found_is_answered(tmp_path: Path) -> None:
    """Inputs tests/fuzz found that escaped a handler or killed pynetdicom's reader thread: an
    A-ABORT with an undefined reason, a command set without CommandField, a sequence cut off
    in the middle (pydicom's OSError), and Pixel Data asked for as a C-FIND return key."""
    contexts = ((VERIFICATION, (IMPLICIT_LE,)), (MR_STORAGE, (EXPLICIT_LE,)), (STUDY_ROOT_FIND, (IMPLICIT_LE,)))
    with node_process(tmp_path / "node") as node:
        with raw_association(node.port) as assoc:
            assoc.send(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x03")  # provider abort, reason 3: undefined
            assert _closed_within(assoc.sock, 10) is not None
        with raw_association(node.port) as assoc:
            no_command_field = struct.pack("<HHI", 0x0000, 0x0110, 2) + b"\x01\x00"  # only MessageID
            assoc.send(p_data(1, no_command_field, command=True))
            assoc.sock.settimeout(10)
            answer = read_pdu(assoc.sock)
            assert answer is not None and answer[0] == 0x07, answer
        uid = "1.2.826.0.1.3680043.9.9999.5.1"
        cut = (minimal_dataset(uid) + nested_sequences(3))[:-20]  # the last item's delimiters cut off
        with raw_association(node.port, contexts=contexts) as assoc:
            status, comment = assoc.store(uid, cut)
            assert status == 0xC000, (hex(status), comment)
            pixel_key = (struct.pack("<HHI", 0x0008, 0x0052, 6) + b"STUDY "
                         + struct.pack("<HHI", 0x7FE0, 0x0010, 0))
            assoc.send(p_data(5, c_find_command(2), command=True))
            assoc.send(p_data(5, pixel_key, command=False))
            assert assoc.response_status()[0] == 0x0000
            assoc.release()
        assert _echo_ok(node)
        log = node.log.read_text()
        assert "Exception in thread" not in log and "Exception in handler" not in log, log[-3000:]


def test_undecodable_elements_are_refused_or_served(tmp_path: Path) -> None:
    """More of what the fuzzer found: Samples per Pixel written as FL (2 bytes where FL needs 4)
    made the pixel check raise in the handler (0xC211); a stored instance with such an element
    elsewhere (Referenced Frame Number) made WADO-RS metadata drop the connection."""
    with node_process(tmp_path / "node") as node, raw_association(node.port) as assoc:
        wait_for_port(node.http_port)
        bad_samples = image_dataset("1.2.826.0.1.3680043.9.9999.6.1").replace(
            element(0x00280002, b"US", struct.pack("<H", 1)), element(0x00280002, b"FL", struct.pack("<H", 1)))
        status, comment = assoc.store("1.2.826.0.1.3680043.9.9999.6.1", bad_samples)
        assert status == 0xC000 and "cannot be decoded" in comment, (hex(status), comment)
        sop = "1.2.826.0.1.3680043.9.9999.6.2"
        odd_frame = image_dataset(sop, extra=[element(0x00081160, b"FL", b"\x01\x00")])
        assert assoc.store(sop, odd_frame, message_id=2) == (0x0000, "")
        assoc.release()
        url = (f"http://127.0.0.1:{node.http_port}/dicom-web/studies/1.2.826.0.1.3680043.9.9999.1/series/"
               f"1.2.826.0.1.3680043.9.9999.2/instances/{sop}/metadata")
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, response.text[:300]
        assert response.json()[0]["00081160"] == {"vr": "FL"}  # the value is left out, the rest is served
