"""DIMSE over TLS, JPEG transfer syntaxes made by dcmtk, and the overwrite duplicate policy."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import (
    dimse_destination,
    free_port,
    node_process,
    query_index,
    start_node,
    wait_until,
    write_node_config,
)

pytestmark = pytest.mark.peers


@pytest.mark.parametrize(("option", "syntax"), [("+e1", "1.2.840.10008.1.2.4.70"),   # JPEG lossless SV1
                                                ("+eb", "1.2.840.10008.1.2.4.50")])  # JPEG baseline
def test_jpeg_from_dcmcjpeg_is_stored_byte_for_byte(tmp_path: Path, option: str, syntax: str) -> None:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmcjpeg (dcmtk) missing")
    source = write_mr_series(tmp_path / "src", SeriesSpec(slices=1, rows=64, columns=64, seed=9))[0]
    if option == "+eb":  # baseline JPEG is 8-bit
        ds = dcmread(source)
        eight_bit = (ds.pixel_array // 16).astype("uint8")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = eight_bit.tobytes()
        ds.save_as(source, enforce_file_format=True)
    compressed = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", option, str(source), str(compressed)], check=True, capture_output=True)
    sent = dcmread(compressed)
    assert sent.file_meta.TransferSyntaxUID == syntax
    with node_process(tmp_path / "node") as node:
        result = subprocess.run(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                                 "--propose-lossless" if option == "+e1" else "--propose-jpeg8",
                                 str(compressed)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "TCP_NODELAY": "1"})
        assert result.returncode == 0, result.stderr
        stored = dcmread(next((node.storage / "store").rglob("*.dcm")))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == sent.PixelData


def test_overwrite_policy_serves_the_newest_and_keeps_the_old(tmp_path: Path, mr_series: list[Path]) -> None:
    with node_process(tmp_path / "node", env={"PACSNODE_STORAGE__DUPLICATE_POLICY": "overwrite"}) as node:
        ae = AE(ae_title="SCU")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        first = dcmread(mr_series[0])
        assert assoc.send_c_store(first).Status == 0
        newer = dcmread(mr_series[0])
        newer.SeriesDescription = "corrected"
        assert assoc.send_c_store(newer).Status == 0
        assoc.release()
        stored = list((node.storage / "store").rglob("*.dcm"))
        assert [dcmread(p).SeriesDescription for p in stored] == ["corrected"]
        old = list((node.storage / "duplicates").glob("*.dcm"))
        assert [dcmread(p).SeriesDescription for p in old] == [first.SeriesDescription]


def _certificates(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "node.pem", folder / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_dimse_over_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = _certificates(tmp_path)
    extra = f'\n[dicom.tls]\ncert = "{cert}"\nkey = "{key}"\n'
    with node_process(tmp_path / "node", extra=extra) as node:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                             tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()

        plain = AE(ae_title="PLAIN")
        plain.add_requested_context(Verification)
        plain.acse_timeout = 5
        refused = plain.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert not refused.is_established


def test_results_are_delivered_over_tls(tmp_path: Path, mr_series: list[Path]) -> None:
    """A node delivers its qc SR to a peer that only speaks TLS (a second node); without the
    peer's CA the delivery fails and is dead-lettered, naming TLS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = _certificates(tmp_path)
    peer_tls = f'\n[dicom.tls]\ncert = "{cert}"\nkey = "{key}"\n'
    with node_process(tmp_path / "peer", extra=peer_tls) as peer:
        folder = tmp_path / "node"
        folder.mkdir()
        (folder / "routes.toml").write_text(
            '[[route]]\nname = "qc"\nanalyzer = "qc"\nmatch = { Modality = "^MR$" }\nsend_to = ["pacs", "untrusted"]\n',
            encoding="utf-8")
        port, http_port = free_port(), free_port()
        destinations = (
            dimse_destination("pacs", peer.ae_title, peer.port, backoff_seconds=0.3)
            + f'[destinations.tls]\nca = "{cert}"\n\n'
            + dimse_destination("untrusted", peer.ae_title, peer.port, max_attempts=1)
            + "[destinations.tls]\n"  # the system CAs: they do not sign the peer's certificate
        )
        config = write_node_config(folder, port=port, http_port=http_port,
                                   extra=f"stable_after = 1\n\n{destinations}")
        node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "node.log")
        try:
            assert send_files(mr_series, ae_title=node.ae_title, host="127.0.0.1", port=node.port).sent == len(
                mr_series)
            index = folder / "var" / "index.sqlite"
            wait_until(lambda: query_index(index, "SELECT destination, state FROM deliveries ORDER BY destination")
                       == [("pacs", "sent"), ("untrusted", "dead")], 90, "one delivery sent, one dead", node.log)
            [(error,)] = query_index(index, "SELECT error FROM deliveries WHERE destination = 'untrusted'")
            assert "TLS" in error, error
            srs = query_index(peer.storage / "index.sqlite", "SELECT COUNT(*) FROM instances i JOIN series s "
                              "ON s.series_uid = i.series_uid WHERE s.modality = 'SR'")
            assert srs == [(1,)]
        finally:
            node.stop()


def test_pacsnode_send_over_tls(tmp_path: Path, mr_series: list[Path]) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = _certificates(tmp_path)
    pacsnode = str(Path(sys.executable).parent / "pacsnode")
    with node_process(tmp_path / "node", extra=f'\n[dicom.tls]\ncert = "{cert}"\nkey = "{key}"\n') as node:
        target = ["--to", f"{node.ae_title}@127.0.0.1:{node.port}", "--quiet"]
        sent = subprocess.run([pacsnode, "send", str(mr_series[0]), *target, "--tls-ca", str(cert)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0 and "sent 1 of 1" in sent.stdout, sent.stderr
        untrusted = subprocess.run([pacsnode, "send", str(mr_series[1]), *target, "--tls"],
                                   capture_output=True, text=True, timeout=60)
        assert untrusted.returncode == 1 and "(TLS)" in untrusted.stderr, untrusted.stderr
        half = subprocess.run([pacsnode, "send", str(mr_series[1]), *target, "--tls-cert", str(cert)],
                              capture_output=True, text=True, timeout=60)
        assert half.returncode == 2 and "cert and key go together" in half.stderr, half.stderr
        assert len(list((node.storage / "store").rglob("*.dcm"))) == 1
        echo = subprocess.run([pacsnode, "echo", *target[:2], "--tls-ca", str(cert)], capture_output=True, text=True,
                              timeout=60)
        assert echo.returncode == 0 and "success" in echo.stdout, echo.stderr
