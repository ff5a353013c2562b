"""Interoperability with a real PACS: Orthanc (Debian, DICOMweb plugin) configured with
pacsnode as a remote DICOMweb server queries and retrieves a study from it, and pacsnode
STOWs a study into Orthanc."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from node.dicomweb.client import StowClient
from node.samples import SeriesSpec, write_mr_series
from tests.dicomweb.conftest import RunningService
from tests.peers import OrthancProcess, have, orthanc_process

pytestmark = pytest.mark.skipif(
    not have("Orthanc") or not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists(),
    reason="Debian's orthanc and orthanc-dicomweb are needed (run `make test`)")


@pytest.fixture(scope="module")
def orthanc_with_pacsnode(service: RunningService, tmp_path_factory: pytest.TempPathFactory
                          ) -> Iterator[OrthancProcess]:
    with orthanc_process(tmp_path_factory.mktemp("orthanc"),
                         # Orthanc reads a server as [url] or {"Url": ...}, not a bare string
                         dicomweb_servers={"pacsnode": [service.url + "/"]},  # type: ignore[dict-item]
                         ) as orthanc:
        yield orthanc


def test_orthanc_queries_and_retrieves_from_pacsnode(service: RunningService,
                                                     orthanc_with_pacsnode: OrthancProcess) -> None:
    orthanc = orthanc_with_pacsnode.url
    with httpx.Client(timeout=60) as http:
        assert "pacsnode" in http.get(f"{orthanc}/dicom-web/servers").json()
        found = http.post(f"{orthanc}/dicom-web/servers/pacsnode/get",
                          json={"Uri": "/studies", "Arguments": {"PatientID": "DEMO-0001"}})
        assert found.status_code == 200, found.text
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [service.study_uid]
        series = http.post(f"{orthanc}/dicom-web/servers/pacsnode/get",
                           json={"Uri": f"/studies/{service.study_uid}/series"}).json()
        assert series[0]["0020000E"]["Value"] == [service.series_uid]
        retrieved = http.post(f"{orthanc}/dicom-web/servers/pacsnode/retrieve",
                              json={"Resources": [{"Study": service.study_uid}]})
        assert retrieved.status_code == 200, retrieved.text
        assert int(retrieved.json()["ReceivedInstancesCount"]) == len(service.files)
        originals = {str(d.SOPInstanceUID): d for d in map(dcmread, service.files)}
        instance_ids = http.get(f"{orthanc}/instances").json()
        assert len(instance_ids) == len(service.files)
        for instance_id in instance_ids:
            copy = dcmread(io.BytesIO(http.get(f"{orthanc}/instances/{instance_id}/file").content))
            original = originals[str(copy.SOPInstanceUID)]
            assert copy.PixelData == original.PixelData
            assert copy.PatientName == original.PatientName


def test_pacsnode_stows_a_study_into_orthanc(orthanc_with_pacsnode: OrthancProcess,
                                             tmp_path: Path) -> None:
    files = write_mr_series(tmp_path, SeriesSpec(slices=4, rows=32, columns=32, seed=21,
                                                 patient_id="TO-ORTHANC"))
    with StowClient(orthanc_with_pacsnode.url + "/dicom-web") as client:
        report = client.store_files(files, batch_size=3)
    assert report.ok and report.statuses == [200, 200]
    assert len(report.stored) == 4
    with httpx.Client(timeout=30) as http:
        studies = http.get(f"{orthanc_with_pacsnode.url}/dicom-web/studies",
                           params={"PatientID": "TO-ORTHANC"}).json()
        assert len(studies) == 1
        assert studies[0]["00201208"]["Value"] == [4]
