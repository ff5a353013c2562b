"""Round trips with dicomweb-client's DICOMwebClient: search, retrieve (study, series,
instance, metadata, frames, bulk data, rendered) and store, against a live server."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from node.dicomweb.multipart import MultipartReader, parse_media_type
from node.ingest import split_part10
from node.samples import SeriesSpec, write_mr_series
from tests.dicomweb.conftest import RunningService


def _uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    media = parse_media_type(response.headers["content-type"])
    assert media.type == "multipart/related"
    reader = MultipartReader(media.params["boundary"])
    parts = reader.feed(response.content)
    reader.close()
    return [(p.headers.get("content-type", ""), p.body) for p in parts]


def test_search_at_every_level(service: RunningService) -> None:
    client = DICOMwebClient(service.url)
    studies = client.search_for_studies(search_filters={"PatientName": "doe^jane"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [service.study_uid]
    assert studies[0]["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert studies[0]["00201208"]["Value"] == [len(service.files)]
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    assert len(client.search_for_studies(search_filters={"PatientID": "DEMO-*"})) == 1
    assert len(client.search_for_studies(search_filters={"PatientID": "DEMO-000?"})) == 1
    fuzzy = client.search_for_studies(search_filters={"PatientName": "doe"}, fuzzymatching=True)
    assert len(fuzzy) == 1
    assert client.search_for_studies(search_filters={"PatientName": "doe"}) == []
    dated = client.search_for_studies(search_filters={"StudyDate": "20251201-20260131"})
    assert len(dated) == 1
    assert client.search_for_studies(search_filters={"StudyDate": "20270101-"}) == []
    series = client.search_for_series(service.study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == [service.series_uid]
    assert series[0]["00201209"]["Value"] == [len(service.files)]
    everywhere = client.search_for_series(search_filters={"Modality": "MR"})
    assert everywhere[0]["00100020"]["Value"] == ["DEMO-0001"]  # study attributes included
    instances = client.search_for_instances(service.study_uid, service.series_uid)
    assert len(instances) == len(service.files)
    assert [i["00200013"]["Value"][0] for i in instances] == list(range(1, len(service.files) + 1))
    page = client.search_for_instances(service.study_uid, limit=2, offset=3)
    assert [i["00200013"]["Value"][0] for i in page] == [4, 5]
    assert page[0]["00081190"]["Value"][0].startswith(service.url + "/studies/")


def test_includefield_all_and_tag_keys(service: RunningService) -> None:
    response = httpx.get(f"{service.url}/studies", params={"00100020": "DEMO-0001",
                                                            "includefield": "all"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    study = response.json()[0]
    assert study["00081030"]["Value"] == ["MR Head"]  # StudyDescription
    assert study["00100030"]["Value"] == ["19700101"]  # PatientBirthDate
    uid_list = httpx.get(f"{service.url}/studies",
                         params={"StudyInstanceUID": f"1.2.3,{service.study_uid}"}).json()
    assert len(uid_list) == 1


def test_retrieve_is_byte_identical(service: RunningService) -> None:
    stored_dir = service.settings.storage.path / "store" / service.study_uid / service.series_uid
    response = httpx.get(f"{service.url}/studies/{service.study_uid}",
                         headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    parts = _parts(response)
    assert len(parts) == len(service.files)
    sent = {}
    for path in service.files:
        raw = path.read_bytes()
        sent[_uids(path)[2]] = raw[split_part10(raw)[1]:]
    for content_type, body in parts:
        assert "transfer-syntax=1.2.840.10008.1.2.1" in content_type
        sop_uid = str(dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID)
        # the stored file comes back as it is on disk, and its dataset as it was sent
        assert body == (stored_dir / f"{sop_uid}.dcm").read_bytes()
        assert body[split_part10(body)[1]:] == sent[sop_uid]


def test_dicomweb_client_retrieves_study_series_instance(service: RunningService) -> None:
    client = DICOMwebClient(service.url)
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in service.files}
    study = client.retrieve_study(service.study_uid)
    series = client.retrieve_series(service.study_uid, service.series_uid)
    assert len(study) == len(series) == len(originals)
    for ds in study:
        original = originals[str(ds.SOPInstanceUID)]
        assert ds.PixelData == original.PixelData
        assert ds == original
    study_uid, series_uid, sop_uid = _uids(service.files[2])
    one = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert one == originals[sop_uid]


def test_metadata_at_three_levels_and_bulkdata(service: RunningService) -> None:
    client = DICOMwebClient(service.url)
    study_uid, series_uid, sop_uid = _uids(service.files[0])
    assert len(client.retrieve_study_metadata(study_uid)) == len(service.files)
    assert len(client.retrieve_series_metadata(study_uid, series_uid)) == len(service.files)
    metadata = client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert metadata["00280010"] == {"vr": "US", "Value": [64]}
    pixel = metadata["7FE00010"]
    assert set(pixel) == {"vr", "BulkDataURI"}
    original = dcmread(service.files[0])
    assert client.retrieve_bulkdata(pixel["BulkDataURI"]) == [original.PixelData]
    rebuilt = Dataset.from_json(metadata, bulk_data_uri_handler=lambda uri: original.PixelData)
    for element in original:
        assert rebuilt[element.tag] == element


def test_frames_uncompressed(service: RunningService) -> None:
    client = DICOMwebClient(service.url)
    study_uid, series_uid, sop_uid = _uids(service.files[1])
    frames = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=[1])
    assert frames == [dcmread(service.files[1]).PixelData]
    missing = httpx.get(f"{service.url}/studies/{study_uid}/series/{series_uid}/instances/"
                        f"{sop_uid}/frames/2")
    assert missing.status_code == 404


def test_rendered_png_and_jpeg(service: RunningService) -> None:
    client = DICOMwebClient(service.url)
    study_uid, series_uid, sop_uid = _uids(service.files[0])
    png = client.retrieve_instance_rendered(study_uid, series_uid, sop_uid,
                                            media_types=("image/png",))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255  # full-range window when none is stored
    jpeg = httpx.get(f"{service.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
                     "/rendered", params={"window": "400,200"}, headers={"Accept": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"


def test_store_and_transcode_compressed(service: RunningService, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path, SeriesSpec(slices=2, rows=32, columns=32, seed=5,
                                                 patient_id="RLE-1"))
    datasets = []
    for path in files:
        ds = dcmread(path)
        ds.compress(RLELossless)
        datasets.append(ds)
    client = DICOMwebClient(service.url)
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in response
    study_uid, series_uid, sop_uid = (str(datasets[0].StudyInstanceUID),
                                      str(datasets[0].SeriesInstanceUID),
                                      str(datasets[0].SOPInstanceUID))
    as_stored = client.retrieve_instance(study_uid, series_uid, sop_uid)
    assert as_stored.file_meta.TransferSyntaxUID == RLELossless
    explicit = client.retrieve_instance(
        study_uid, series_uid, sop_uid,
        media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert explicit.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(explicit.pixel_array, dcmread(files[0]).pixel_array)
    frames = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, frame_numbers=[1])
    assert frames[0] == dcmread(files[0]).PixelData  # decoded to native for octet-stream


@pytest.mark.parametrize("accept", ['multipart/related; type="application/dicom"; '
                                    "transfer-syntax=1.2.840.10008.1.2.4.50", "text/html"])
def test_unavailable_media_types_are_406(service: RunningService, accept: str) -> None:
    response = httpx.get(f"{service.url}/studies/{service.study_uid}", headers={"Accept": accept})
    assert response.status_code == 406
    assert "error" in response.json()


def test_stored_metadata_serves_the_same_json_for_any_host(service: RunningService) -> None:
    url = f"{service.url}/studies/{service.study_uid}/series/{service.series_uid}/metadata"
    first = httpx.get(url).json()
    rows = sqlite3.connect(service.settings.storage.path / "cache" / "metadata.sqlite").execute(
        "SELECT COUNT(*) FROM instance_metadata WHERE series_uid = ?", (service.series_uid,)).fetchone()[0]
    assert rows == len(service.files)
    assert httpx.get(url).json() == first
    port = service.server.port
    other = httpx.get(url, headers={"Host": f"localhost:{port}"}).json()
    uri = other[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"http://localhost:{port}/dicom-web/studies/{service.study_uid}/")
    assert uri.replace("localhost", "127.0.0.1") == first[0]["7FE00010"]["BulkDataURI"]


def test_metadata_is_made_when_instances_arrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first metadata request of a series is answered from stored metadata, made in the
    background once ingest went quiet: no file is read for it."""
    from node.dicomweb import metadata as metadata_module
    from node.dicomweb.client import StowClient
    from tests.dicomweb.conftest import start_service

    files = write_mr_series(tmp_path / "in", SeriesSpec(slices=5, rows=32, columns=32, seed=11))
    server, _settings = start_service(tmp_path)
    try:
        store = server.app.state.dicomweb.metadata  # type: ignore[attr-defined]
        store.quiet_s = 0.2
        with StowClient(server.url) as client:
            assert client.store_files(files).ok
        study_uid, series_uid, _ = _uids(files[0])
        deadline = time.monotonic() + 30
        while len(store.cache.lookup(_stored_pairs(server, study_uid))) < len(files):
            assert time.monotonic() < deadline, "the metadata was not made in the background"
            time.sleep(0.05)

        def no_file_reads(path: Path) -> str:
            raise AssertionError(f"{path} was read to answer a metadata request")

        monkeypatch.setattr(metadata_module, "_metadata_text", no_file_reads)
        answer = httpx.get(f"{server.url}/studies/{study_uid}/series/{series_uid}/metadata")
        assert answer.status_code == 200
        assert sorted(i["00200013"]["Value"][0] for i in answer.json()) == [1, 2, 3, 4, 5]
    finally:
        server.stop()


def _stored_pairs(server: object, study_uid: str) -> list[tuple[str, str]]:
    index = server.app.state.dicomweb.index  # type: ignore[attr-defined]
    return [(r["sop_uid"], r["digest"]) for r in index.stored_instances(study_uid=study_uid)]


def test_retrieval_reads_a_bounded_distance_ahead(service: RunningService,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A long series streams: files are read at most a few batches ahead of what is sent."""
    import asyncio

    from node.dicomweb import wado

    app_service = service.server.app.state.dicomweb  # type: ignore[attr-defined]
    rows = app_service.index.stored_instances(study_uid=service.study_uid)
    monkeypatch.setattr(wado, "_CHUNK_BYTES", 1)  # one file per batch
    reads: list[int] = []
    original = wado._read_parts

    def counting(*args: object) -> object:
        reads.append(1)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(wado, "_read_parts", counting)

    async def consume() -> list[int]:
        ahead = []
        sent = 0
        async for _ in wado._stream_instances(app_service, "b", [(r, False) for r in rows]):
            sent += 1
            await asyncio.sleep(0.01)  # a slow client
            ahead.append(len(reads) - sent)
        return ahead

    ahead = asyncio.run(consume())
    assert len(reads) == len(rows)
    assert max(ahead) <= wado._READ_AHEAD


def test_streamed_batches_are_bounded_and_exact(service: RunningService,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each streamed piece holds about one batch of files (never the series), and the pieces
    read into one buffer give exactly the bytes of the part-by-part assembly."""
    import asyncio

    from node.dicomweb import wado

    app_service = service.server.app.state.dicomweb  # type: ignore[attr-defined]
    rows = app_service.index.stored_instances(study_uid=service.study_uid)
    assert len(rows) > 2
    sizes = [int(r["size"]) for r in rows]
    limit = sum(sizes) // 3
    monkeypatch.setattr(wado, "_CHUNK_BYTES", limit)

    async def collect() -> list[bytes]:
        return [bytes(chunk) async for chunk in
                wado._stream_instances(app_service, "b", [(r, False) for r in rows])]

    chunks = asyncio.run(collect())
    assert len(chunks) >= 3
    assert max(len(c) for c in chunks) <= limit + max(sizes) + 256 * 2
    expected = wado._read_parts_joined(app_service, "b", [(r, False) for r in rows], True)
    assert b"".join(chunks) == expected + wado.closing_delimiter("b")


def test_buffers_still_being_sent_are_not_overwritten(service: RunningService,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that keeps the streamed slices without copying them (as uvloop keeps a
    slice it could not write at once) still sees the right bytes once the stream is over:
    batch buffers are reused only when nothing views them any more."""
    import asyncio

    from node.dicomweb import wado

    app_service = service.server.app.state.dicomweb  # type: ignore[attr-defined]
    rows = app_service.index.stored_instances(study_uid=service.study_uid)
    monkeypatch.setattr(wado, "_CHUNK_BYTES", 1)  # one file per batch: every batch reuses a buffer

    async def keep_views() -> list[object]:
        return [chunk async for chunk in wado._stream_instances(app_service, "b", [(r, False) for r in rows])]

    views = asyncio.run(keep_views())
    expected = wado._read_parts_joined(app_service, "b", [(r, False) for r in rows], True)
    assert b"".join(bytes(v) for v in views) == expected + wado.closing_delimiter("b")  # type: ignore[call-overload]
    views.clear()

    async def copy_out() -> list[bytes]:
        return [bytes(chunk) async for chunk in
                wado._stream_instances(app_service, "b", [(r, False) for r in rows])]

    assert b"".join(asyncio.run(copy_out())) == expected + wado.closing_delimiter("b")
    assert app_service.buffers.idle >= 1  # handed back once no view was left
