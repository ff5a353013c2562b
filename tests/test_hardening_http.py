"""Attacks on a serving node's DICOMweb and status pages (and the DIMSE checks they share), made
with httpx and raw sockets against a real ``pacsnode serve`` on loopback (docs/security.md).

STOW-RS bodies that made the node answer 500 or drop the connection, truncated Pixel Data
that was acknowledged, YBR_FULL_422 that was refused, WADO-RS frame lists that amplified a
20 KB URL into 83 MB, QIDO-RS limits beyond 64 bits, digits that are not 0-9, a sign-in
cookie that outlived sign-out, and the storage path in answers to peers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.attacks import image_dataset, nested_sequences, part10, short_group_length_part10, uid
from tests.dicomweb.conftest import multipart_body
from tests.dimse_wire import raw_association
from tests.peers import NodeProcess, node_process, wait_for_port

pytestmark = [pytest.mark.peers]

_MULTIPART = 'multipart/related; type="application/dicom"; boundary=test-boundary'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("hardening-http")
    with node_process(folder / "node", env={"PACSNODE_HTTP__MAX_UPLOAD_MB": "1"}) as running:
        wait_for_port(running.http_port)
        yield running


def _base(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.http_port}/dicom-web"


def _stow(node: NodeProcess, parts: list[bytes]) -> httpx.Response:
    return httpx.post(f"{_base(node)}/studies", content=multipart_body(parts),
                      headers={"Content-Type": _MULTIPART}, timeout=60)


def _alive(node: NodeProcess) -> None:
    assert httpx.get(f"{_base(node)}/studies", timeout=10).status_code == 200


def _traceback_free(node: NodeProcess) -> None:
    log = node.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


def _failed(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def test_stow_answers_202_with_per_instance_failures(node: NodeProcess) -> None:
    good = part10(image_dataset(uid(20, 1)), uid(20, 1))
    bad = {
        "file meta group length of 3 bytes": short_group_length_part10(image_dataset(uid(20, 2))),
        "unknown VR on StudyInstanceUID": part10(image_dataset(uid(20, 3), study_vr=b"ZZ"), uid(20, 3)),
        "sequences 300 deep": part10(image_dataset(uid(20, 4), rows=None, columns=None) + nested_sequences(300),
                                     uid(20, 4)),
        "control character in the SOP Class UID": part10(
            image_dataset(uid(20, 5), sop_class=b"1.2.840.10008.5.1.4.1.1.4\x07\r\n"), uid(20, 5)),
    }
    response = _stow(node, [good, *bad.values()])
    assert response.status_code == 202, response.text
    assert len(response.json()["00081199"]["Value"]) == 1
    assert len(_failed(response)) == len(bad)
    warnings = response.headers.get_list("warning")
    assert len(warnings) == len(bad)
    assert all(w.isascii() and w.isprintable() for w in warnings), warnings
    for name, body in bad.items():  # each alone: 409 with its failure, never a 500
        alone = _stow(node, [body])
        assert alone.status_code == 409, (name, alone.status_code, alone.text)
        assert _failed(alone) == [0xC000] or _failed(alone) == [0x0122], (name, alone.text)
    _alive(node)
    _traceback_free(node)


def test_chunked_stow_over_the_limit_reports_what_was_stored(node: NodeProcess) -> None:
    stored = [part10(image_dataset(uid(21, n)), uid(21, n)) for n in range(3)]

    def body() -> Iterator[bytes]:
        for part in stored:
            yield b"--test-boundary\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        yield b"--test-boundary\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(24):  # 1.5 MB more: over max_upload_mb = 1
            yield b"\x00" * 65536

    response = httpx.post(f"{_base(node)}/studies", content=body(), headers={"Content-Type": _MULTIPART},
                          timeout=60)
    assert response.status_code == 202, response.text
    assert len(response.json()["00081199"]["Value"]) == 3
    assert _failed(response) == [0xA700]
    assert "max_upload_mb" in response.headers["warning"]

    def too_big() -> Iterator[bytes]:
        yield b"--test-boundary\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(24):
            yield b"\x00" * 65536

    nothing = httpx.post(f"{_base(node)}/studies", content=too_big(), headers={"Content-Type": _MULTIPART},
                         timeout=60)
    assert nothing.status_code == 413
    _alive(node)


def test_truncated_pixel_data_is_refused_over_stow_and_c_store(node: NodeProcess) -> None:
    claims = {
        "no Rows/Columns": image_dataset(uid(22, 1), rows=None, columns=None, pixels=b"\x00" * 64,
                                         pixel_length=0x80000000),
        "with Rows/Columns": image_dataset(uid(22, 2), pixels=b"\x00" * 64, pixel_length=0x80000000),
    }
    for name, dataset in claims.items():
        response = _stow(node, [part10(dataset, uid(22, 9))])
        assert response.status_code == 409, (name, response.text)
        assert "Pixel Data truncated: 2147483648 bytes declared, 64 arrived" in response.headers["warning"]
    with raw_association(node.port) as assoc:
        assert assoc.accepted
        for number, dataset in enumerate(claims.values()):
            status, comment = assoc.store(uid(22, 1 + number), dataset, message_id=number + 1)
            assert status == 0xC000, comment
        assoc.release()
    found = httpx.get(f"{_base(node)}/instances", params={"SOPInstanceUID": f"{uid(22, 1)},{uid(22, 2)}"},
                      timeout=10)
    assert found.status_code in (200, 204) and not (found.content and found.json())
    _alive(node)


def test_uncompressed_ybr_full_422_is_stored_and_served(node: NodeProcess) -> None:
    ybr = image_dataset(uid(23, 1), rows=100, columns=100, samples=3, photometric="YBR_FULL_422", bits=8,
                        pixels=bytes(range(200)) * 100)  # 20,000 bytes: 2 samples per pixel
    short = image_dataset(uid(23, 2), rows=100, columns=100, samples=3, photometric="YBR_FULL_422", bits=8,
                          pixels=b"\x80" * 19998)
    with raw_association(node.port) as assoc:
        assert assoc.store(uid(23, 1), ybr) == (0x0000, "")
        status, comment = assoc.store(uid(23, 2), short, message_id=2)
        assert status == 0xC000 and "needs 20000 bytes" in comment, comment
        assoc.release()
    response = httpx.get(f"{_base(node)}/studies/{uid(1)}/series/{uid(2)}/instances/{uid(23, 1)}",
                         headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert response.status_code == 200
    assert bytes(range(200)) * 100 in response.content


def test_wado_frame_lists_are_bounded(node: NodeProcess) -> None:
    sop = uid(24, 1)
    assert _stow(node, [part10(image_dataset(sop), sop)]).status_code == 200
    frames = f"{_base(node)}/studies/{uid(1)}/series/{uid(2)}/instances/{sop}/frames"
    assert httpx.get(f"{frames}/1", timeout=10).status_code == 200
    repeated = httpx.get(f"{frames}/{','.join(['1'] * 10000)}", timeout=30)  # a 20 KB URL
    assert repeated.status_code == 400 and len(repeated.content) < 2000
    twice = httpx.get(f"{frames}/1,1", timeout=10)
    assert twice.status_code == 400 and "names each frame once" in twice.json()["error"]
    many = httpx.get(f"{frames}/{','.join(str(n) for n in range(1, 2050))}", timeout=30)
    assert many.status_code == 400 and "max_frames_per_request" in many.json()["error"]
    for text in ("\u00b9", "\u0661", "1" * 5000, "0", "-1", "1,,2"):  # superscript one, Arabic-Indic one
        response = httpx.get(f"{frames}/{text}", timeout=10)
        assert response.status_code == 400, (text[:10], response.status_code, response.text[:200])
    rendered = httpx.get(f"{_base(node)}/studies/{uid(1)}/series/{uid(2)}/instances/{sop}/rendered",
                         params={"quality": "\u00b9"}, timeout=10)
    assert rendered.status_code == 400
    _alive(node)
    _traceback_free(node)


def test_qido_limit_offset_and_numbers_stay_within_64_bits(node: NodeProcess) -> None:
    studies = f"{_base(node)}/studies"
    for params in ({"limit": str(2**63)}, {"offset": str(2**63)}, {"limit": "9" * 5000},
                   {"limit": "\u0663"}, {"offset": "\u00b2"}, {"limit": "-1"}):
        response = httpx.get(studies, params=params, timeout=10)
        assert response.status_code == 400, (params, response.status_code)
    assert httpx.get(studies, params={"limit": str(2**63 - 1), "offset": "0"}, timeout=10).status_code in (200, 204)
    series = httpx.get(f"{_base(node)}/series", params={"SeriesNumber": str(2**70)}, timeout=10)
    assert series.status_code == 400
    _alive(node)
    _traceback_free(node)


def test_storage_path_is_not_shown_to_peers(tmp_path: Path) -> None:
    with node_process(tmp_path / "node", env={"PACSNODE_STORAGE__MIN_FREE_GB": "1e9"}) as full:
        wait_for_port(full.http_port)
        storage = str(full.storage)
        with raw_association(full.port) as assoc:
            status, comment = assoc.store(uid(25, 1), image_dataset(uid(25, 1)))
            assoc.release()
        assert status == 0xA700
        assert storage not in comment and "/" not in comment, comment
        response = _stow(full, [part10(image_dataset(uid(25, 2)), uid(25, 2))])
        assert response.status_code == 507
        assert storage not in response.text and storage not in response.headers.get("warning", "")
        assert "free space" in response.headers["warning"]
        assert storage in full.log.read_text(), "the operator's log names the storage path"


def test_sign_out_ends_the_session_cookie(tmp_path: Path) -> None:
    token = "a-read-write-token-of-enough-length"
    tokens = json.dumps([{"token": token, "scope": "read-write", "name": "admin"}])
    with node_process(tmp_path / "node", env={"PACSNODE_HTTP__TOKENS": tokens}) as ui_node:
        wait_for_port(ui_node.http_port)
        base = f"http://127.0.0.1:{ui_node.http_port}/ui"
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            signed = browser.post(f"{base}/login", data={"token": token, "next": "/ui/"})
            assert signed.status_code == 303
            cookie = signed.cookies["pacsnode_ui"]
            assert token not in cookie
            assert browser.get(f"{base}/").status_code == 200
            browser.post(f"{base}/logout")
        with httpx.Client(follow_redirects=False, timeout=10, cookies={"pacsnode_ui": cookie}) as replay:
            again = replay.get(f"{base}/")
            assert again.status_code == 303 and "/ui/login" in again.headers["location"], \
                "the cookie still signs in after sign-out"
