"""Bad input gets a clear HTTP answer and leaves the server serving: wrong content types,
broken multipart bodies, non-DICOM parts, bodies over the limit, unknown UIDs, malformed
query parameters, a full disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from node.config import Settings
from node.dicomweb import HttpServer, create_app
from node.samples import SeriesSpec, write_mr_series
from tests.dicomweb.conftest import RunningService, multipart_body, start_service
from tests.peers import free_port

_MULTIPART = 'multipart/related; type="application/dicom"; boundary=test-boundary'


@pytest.fixture(scope="module")
def extra_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mr_series(tmp_path_factory.mktemp("extra"),
                           SeriesSpec(slices=3, rows=32, columns=32, seed=9, patient_id="BAD-1"))


def _post(url: str, body: bytes, content_type: str = _MULTIPART) -> httpx.Response:
    return httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=30)


def _assert_alive(service: RunningService) -> None:
    assert httpx.get(f"{service.url}/studies", timeout=10).status_code == 200


@pytest.mark.parametrize("content_type", [
    "application/json", "multipart/form-data; boundary=x",
    'multipart/related; type="application/dicom+json"; boundary=x', ""])
def test_wrong_content_types_are_415(service: RunningService, content_type: str) -> None:
    response = _post(f"{service.url}/studies", b"{}", content_type)
    assert response.status_code == 415, response.text
    assert "application/dicom" in response.json()["error"]
    _assert_alive(service)


@pytest.mark.parametrize(("body", "content_type", "words"), [
    (b"--other\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--other--\r\n", _MULTIPART,
     "never occurs"),
    (b"--test-boundary\r\nContent-Type: application/dicom\r\n\r\nabc", _MULTIPART,
     "closing delimiter"),
    (b"--test-boundary garbage\r\n", _MULTIPART, "instead of a line break"),
    (b"--test-boundary\r\nno colon here\r\n\r\nabc\r\n--test-boundary--\r\n", _MULTIPART,
     "without a colon"),
    (b"--test-boundary--\r\n", _MULTIPART, "no part"),
    (b"", 'multipart/related; type="application/dicom"', "boundary"),
])
def test_broken_multipart_is_400_naming_the_problem(service: RunningService, body: bytes,
                                                    content_type: str, words: str) -> None:
    response = _post(f"{service.url}/studies", body, content_type)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    _assert_alive(service)


def test_non_dicom_part_fails_alone(service: RunningService, extra_files: list[Path]) -> None:
    good = extra_files[0].read_bytes()
    response = _post(f"{service.url}/studies", multipart_body([good, b"this is not DICOM"]))
    assert response.status_code == 202, response.text
    payload = response.json()
    assert len(payload["00081199"]["Value"]) == 1
    (failed,) = payload["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "part 2" in response.headers["warning"] and "not a readable DICOM" in \
        response.headers["warning"]
    only_bad = _post(f"{service.url}/studies", multipart_body([b"\x00" * 300]))
    assert only_bad.status_code == 409
    assert only_bad.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    wrong_type = _post(f"{service.url}/studies", multipart_body([good], content_type="text/plain"))
    assert wrong_type.status_code == 409
    assert "text/plain" in wrong_type.headers["warning"]
    _assert_alive(service)


def test_instance_of_another_study_is_refused(service: RunningService,
                                              extra_files: list[Path]) -> None:
    response = _post(f"{service.url}/studies/{service.study_uid}",
                     multipart_body([extra_files[1].read_bytes()]))
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert "differs from the study" in response.headers["warning"]


def test_unknown_uids_are_404(service: RunningService) -> None:
    base = f"{service.url}/studies/{service.study_uid}/series/{service.series_uid}"
    sop_uid = str(dcmread(service.files[0], stop_before_pixels=True).SOPInstanceUID)
    for path in ("/studies/1.2.3", "/studies/1.2.3/metadata",
                 f"/studies/{service.study_uid}/series/1.2.3",
                 f"{base[len(service.url):]}/instances/1.2.3",
                 f"{base[len(service.url):]}/instances/1.2.3/frames/1",
                 f"{base[len(service.url):]}/instances/{sop_uid}/bulkdata/00091234"):
        response = httpx.get(service.url + path, timeout=10)
        assert response.status_code == 404, path
        assert response.json()["error"]
    assert httpx.get(f"{service.url}/nothing-here", timeout=10).status_code == 404
    _assert_alive(service)


@pytest.mark.parametrize(("params", "words"), [
    ({"limit": "-1"}, "limit"), ({"offset": "ten"}, "offset"),
    ({"NoSuchKeyword": "x"}, "NoSuchKeyword"), ({"StudyDate": "yesterday"}, "StudyDate"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"), ({"StudyInstanceUID": "1.2.*"}, "wildcard"),
    ({"SOPInstanceUID": "1.2.3"}, "cannot be matched at the study level"), ({"00081111.00081150": "1.2"}, "sequence"),
    ({"includefield": "NotAKeyword"}, "NotAKeyword"),
])
def test_malformed_query_parameters_are_400(service: RunningService, params: dict[str, str],
                                            words: str) -> None:
    response = httpx.get(f"{service.url}/studies", params=params, timeout=10)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_malformed_frame_and_bulk_paths_are_400(service: RunningService) -> None:
    sop_uid = str(dcmread(service.files[0], stop_before_pixels=True).SOPInstanceUID)
    base = (f"{service.url}/studies/{service.study_uid}/series/{service.series_uid}/instances/"
            f"{sop_uid}")
    assert httpx.get(f"{base}/frames/0").status_code == 400
    assert httpx.get(f"{base}/frames/a,b").status_code == 400
    assert httpx.get(f"{base}/bulkdata/xyz").status_code == 400
    assert httpx.get(f"{base}/rendered", params={"window": "a,b"}).status_code == 400


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, _ = start_service(tmp_path_factory.mktemp("limit"), max_upload_mb=0.05)
    try:
        yield server.url
    finally:
        server.stop()


def test_too_large_body_is_413(small_limit: str, extra_files: list[Path]) -> None:
    body = multipart_body([p.read_bytes() for p in extra_files] * 10)
    assert len(body) > 0.05 * 1024 * 1024
    declared = _post(f"{small_limit}/studies", body)
    assert declared.status_code == 413
    assert "max_upload_mb" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    streamed = httpx.post(f"{small_limit}/studies", content=chunks(),
                          headers={"Content-Type": _MULTIPART}, timeout=30)
    # the parts that arrived before the limit are stored and listed; the rest is one failure
    assert streamed.status_code == 202, streamed.text
    assert streamed.json()["00081199"]["Value"]
    assert streamed.json()["00081198"]["Value"][-1]["00081197"]["Value"] == [0xA700]
    assert "max_upload_mb" in streamed.headers["warning"]
    too_big_first = multipart_body([b"\x00" * (len(body) + 1024)])

    def first_part_over() -> Iterator[bytes]:
        for start in range(0, len(too_big_first), 8192):
            yield too_big_first[start : start + 8192]

    nothing_stored = httpx.post(f"{small_limit}/studies", content=first_part_over(),
                                headers={"Content-Type": _MULTIPART}, timeout=30)
    assert nothing_stored.status_code == 413
    small = _post(f"{small_limit}/studies", multipart_body([extra_files[0].read_bytes()]))
    assert small.status_code == 200


def test_out_of_space_is_507(tmp_path: Path, extra_files: list[Path]) -> None:
    settings = Settings.model_validate({
        # more free space demanded than any disk has: every write is refused as out of space
        "storage": {"path": str(tmp_path / "var"), "fsync": False, "min_free_gb": 1e9},
        "http": {"port": free_port()}})
    server = HttpServer(create_app(settings), settings.http)
    server.start()
    try:
        response = _post(f"{server.url}/studies", multipart_body([extra_files[2].read_bytes()]))
        assert response.status_code == 507
        assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        assert "free space" in response.headers["warning"]
        assert httpx.get(f"{server.url}/studies").json() == []
    finally:
        server.stop()
