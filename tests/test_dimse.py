"""DIMSE services against a real ``pacsnode serve``, driven by dcmtk tools and pynetdicom."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, OrthancProcess, free_port, node_process

pytestmark = pytest.mark.peers

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, env=DCMTK_ENV, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def storescu(node: NodeProcess, *files: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                 *[str(f) for f in files], check=check)


def find(node: NodeProcess, level: str, *keys: str, root: str = "-S") -> list[Dataset]:
    ae = AE(ae_title="FINDSCU")
    model = (StudyRootQueryRetrieveInformationModelFind if root == "-S"
             else PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for key in keys:
        name, _, value = key.partition("=")
        setattr(identifier, name, value)
    results = []
    try:
        for status, ds in assoc.send_c_find(identifier, model):
            assert status.Status in (0xFF00, 0xFF01, 0x0000), hex(status.Status)
            if ds is not None and status.Status in (0xFF00, 0xFF01):
                results.append(ds)
    finally:
        assoc.release()
    return results


def test_echo(node: NodeProcess) -> None:
    result = dcmtk("echoscu", "-aec", node.ae_title, "127.0.0.1", str(node.port))
    assert result.returncode == 0


def test_store_and_find_every_level(node: NodeProcess, mr_series: list[Path]) -> None:
    storescu(node, *mr_series)
    study_uid = str(dcmread(mr_series[0]).StudyInstanceUID)

    patients = find(node, "PATIENT", "PatientID=DEMO*", "PatientName", "NumberOfPatientRelatedInstances",
                    root="-P")
    assert [(str(p.PatientID), int(p.NumberOfPatientRelatedInstances)) for p in patients] == [("DEMO-0001", 20)]

    studies = find(node, "STUDY", "StudyInstanceUID", "PatientName=demo^patient", "ModalitiesInStudy",
                   "NumberOfStudyRelatedSeries", "StudyDate=20250101-20261231")
    assert len(studies) == 1
    assert studies[0].StudyInstanceUID == study_uid
    assert studies[0].ModalitiesInStudy == "MR"
    assert int(studies[0].NumberOfStudyRelatedSeries) == 1

    series = find(node, "SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID",
                  "SeriesDescription=*mprage*", "NumberOfSeriesRelatedInstances")
    assert len(series) == 1 and int(series[0].NumberOfSeriesRelatedInstances) == 20

    images = find(node, "IMAGE", f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID",
                  "InstanceNumber")
    assert sorted(int(i.InstanceNumber) for i in images) == list(range(1, 21))

    wanted = [str(dcmread(p).SOPInstanceUID) for p in mr_series[:3]]
    listed = find(node, "IMAGE", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                  "SOPInstanceUID=" + "\\".join(wanted))
    assert sorted(str(i.SOPInstanceUID) for i in listed) == sorted(wanted)

    assert find(node, "STUDY", "StudyDate=-20200101", "StudyInstanceUID") == []
    assert find(node, "STUDY", "PatientID=DEMO-000?", "StudyInstanceUID")  # single-character wildcard
    assert find(node, "STUDY", "PatientID=demo-0001", "StudyInstanceUID") == []  # LO is case-sensitive


def test_findscu_interoperates(node: NodeProcess, mr_series: list[Path]) -> None:
    storescu(node, *mr_series)
    result = dcmtk("findscu", "-S", "-aec", node.ae_title, "-k", "QueryRetrieveLevel=SERIES",
                   "-k", "SeriesDescription=t1*", "-k", "SeriesInstanceUID", "-k",
                   "NumberOfSeriesRelatedInstances", "127.0.0.1", str(node.port))
    output = result.stdout + result.stderr
    assert "Find Response: 1 (Pending)" in output
    assert re.search(r"NumberOfSeriesRelatedInstances", output)


def test_study_root_refuses_patient_level(node: NodeProcess) -> None:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = ""
    statuses = [s.Status for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses and statuses[-1] == 0xC000


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
)
def test_compressed_syntaxes_are_stored_as_received(node: NodeProcess, tmp_path: Path, syntax: str) -> None:
    source = write_mr_series(tmp_path / "src", SeriesSpec(slices=1, rows=32, columns=32, seed=7))[0]
    ds = dcmread(source)
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent, enforce_file_format=True)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage, [str(syntax)])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    status = assoc.send_c_store(sent)
    assoc.release()
    assert status.Status == 0x0000
    stored = next((node.storage / "store").rglob(f"{ds.SOPInstanceUID}.dcm"))
    back = dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == syntax
    if syntax in (RLELossless, JPEG2000Lossless):
        assert back.PixelData == ds.PixelData  # the compressed stream, untouched
        assert (back.pixel_array == dcmread(source).pixel_array).all()


def test_c_get_returns_the_series(node: NodeProcess, mr_series: list[Path], tmp_path: Path) -> None:
    storescu(node, *mr_series)
    series_uid = str(dcmread(mr_series[0]).SeriesInstanceUID)
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-S", "-aec", node.ae_title, "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"SeriesInstanceUID={series_uid}", "127.0.0.1", str(node.port))
    assert result.returncode == 0
    got = sorted(str(dcmread(p).SOPInstanceUID) for p in out.iterdir())
    assert got == sorted(str(dcmread(p).SOPInstanceUID) for p in mr_series)

    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage)
    from pynetdicom import build_role, evt

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                         ext_neg=[build_role(MRImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = series_uid
    identifier.SOPInstanceUID = got[0]
    final = None
    for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
        final = status
    assoc.release()
    assert final is not None and final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 1 and received == [got[0]]


def test_c_get_decompresses_for_a_requestor_that_accepts_little_endian_only(
        node: NodeProcess, mr_series: list[Path], tmp_path: Path) -> None:
    """A JPEG Lossless instance, stored as received, reaches a ``getscu`` that proposes only
    uncompressed syntaxes decompressed, pixel for pixel; the C-GET ends without failures and the
    association is released normally."""
    compressed = tmp_path / "jpeg-lossless.dcm"
    dcmtk("dcmcjpeg", str(mr_series[1]), str(compressed))
    assert str(dcmread(compressed).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.70"
    dcmtk("storescu", "-xs", "-aec", node.ae_title, "127.0.0.1", str(node.port), str(mr_series[0]), str(compressed))
    stored = next((node.storage / "store").rglob(f"{dcmread(compressed).SOPInstanceUID}.dcm"))
    assert dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"  # kept as received
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-v", "-aec", node.ae_title, "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
                   "-k", f"SeriesInstanceUID={dcmread(compressed).SeriesInstanceUID}", "127.0.0.1", str(node.port))
    log = result.stdout + result.stderr
    assert "Number of Failed Suboperations    : 0" in log and "Release Failed" not in log, log
    got = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, out.iterdir())}
    assert str(dcmread(compressed).SOPInstanceUID) in got, (sorted(got), log)
    received = got[str(dcmread(compressed).SOPInstanceUID)]
    assert not received.file_meta.TransferSyntaxUID.is_compressed
    assert (received.pixel_array == dcmread(compressed).pixel_array).all()


def test_c_get_with_a_failed_sub_operation_lists_it_and_releases(
        node: NodeProcess, mr_series: list[Path]) -> None:
    """A requestor that accepts MR only as JPEG 2000 cannot take the stored little endian instance:
    the final response (A702: no sub-operation succeeded) lists the instance in its Failed SOP
    Instance UID List, and the association releases normally (pynetdicom reads the list; dcmtk
    3.6.7 getscu does not, docs/storage.md)."""
    from pynetdicom import build_role

    storescu(node, mr_series[0])
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage, [JPEG2000Lossless])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                         ext_neg=[build_role(MRImageStorage, scp_role=True)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = str(dcmread(mr_series[0]).SeriesInstanceUID)
    identifier.SOPInstanceUID = str(dcmread(mr_series[0]).SOPInstanceUID)
    responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert assoc.is_released
    final_status, final_identifier = responses[-1]
    assert final_status.Status == 0xA702 and final_status.NumberOfFailedSuboperations == 1
    assert final_identifier.FailedSOPInstanceUIDList == identifier.SOPInstanceUID


def test_c_move_to_orthanc(tmp_path: Path, mr_series: list[Path], orthanc: OrthancProcess) -> None:
    extra = f"""
[[dicom.peers]]
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
"""
    with node_process(tmp_path / "mover", extra=extra) as node:
        storescu(node, *mr_series)
        study_uid = str(dcmread(mr_series[0]).StudyInstanceUID)
        result = dcmtk("movescu", "-S", "-aec", node.ae_title, "-aem", orthanc.ae_title,
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                       "127.0.0.1", str(node.port), "-v")
        assert "Received Final Move Response (Success)" in result.stdout + result.stderr
        assert len(orthanc.get("/instances")) == 20  # type: ignore[arg-type]

        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = str(dcmread(mr_series[0]).SeriesInstanceUID)
        responses = list(assoc.send_c_move(identifier, orthanc.ae_title,
                                           StudyRootQueryRetrieveInformationModelMove))
        pending = [s for s, _ in responses if s.Status == 0xFF00]
        final = responses[-1][0]
        assert final.Status == 0x0000
        assert final.NumberOfCompletedSuboperations == 20 and final.NumberOfFailedSuboperations == 0
        assert len(pending) == 20
        unknown = list(assoc.send_c_move(identifier, "NOBODY", StudyRootQueryRetrieveInformationModelMove))
        assoc.release()
        assert unknown[-1][0].Status == 0xA801


def test_c_move_decompresses_for_a_destination_that_accepts_little_endian_only(
        tmp_path: Path, mr_series: list[Path]) -> None:
    """dcmtk ``storescp`` accepts only uncompressed syntaxes by default: a JPEG Lossless instance,
    stored as received, reaches it decompressed, pixel for pixel, beside a little endian one; the
    sub-association is addressed to the destination's AE title."""
    compressed = tmp_path / "jpeg-lossless.dcm"
    dcmtk("dcmcjpeg", str(mr_series[1]), str(compressed))
    received_dir = tmp_path / "storescp"
    received_dir.mkdir()
    port = free_port()
    scp = subprocess.Popen(["storescp", "-d", "-aet", "LEONLY", "-od", str(received_dir), str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    extra = f"""
[[dicom.peers]]
ae_title = "LEONLY"
host = "127.0.0.1"
port = {port}
"""
    try:
        with node_process(tmp_path / "mover", extra=extra) as node:
            dcmtk("storescu", "-xs", "-aec", node.ae_title, "127.0.0.1", str(node.port), str(mr_series[0]),
                  str(compressed))
            result = dcmtk("movescu", "-S", "-aec", node.ae_title, "-aem", "LEONLY",
                           "-k", "QueryRetrieveLevel=SERIES",
                           "-k", f"StudyInstanceUID={dcmread(compressed).StudyInstanceUID}",
                           "-k", f"SeriesInstanceUID={dcmread(compressed).SeriesInstanceUID}",
                           "127.0.0.1", str(node.port), "-v")
            log = result.stdout + result.stderr
            assert "Received Final Move Response (Success)" in log, log
    finally:
        scp.terminate()
        scp_log = scp.communicate(timeout=30)[0]
    got = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, received_dir.iterdir())}
    assert sorted(got) == sorted(str(dcmread(p).SOPInstanceUID) for p in (mr_series[0], compressed))
    received = got[str(dcmread(compressed).SOPInstanceUID)]
    assert not received.file_meta.TransferSyntaxUID.is_compressed
    assert (received.pixel_array == dcmread(compressed).pixel_array).all()
    assert re.search(r"Called Application Name:\s+LEONLY", scp_log), scp_log[-3000:]


def test_pacsnode_send_and_status(node: NodeProcess, mr_series: list[Path], tmp_path: Path) -> None:
    import sys

    venv_bin = Path(sys.executable).parent
    result = subprocess.run([str(venv_bin / "pacsnode"), "send", str(mr_series[0].parent), "--to",
                             node.address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "sent 20 of 20" in result.stdout
    status = subprocess.run([str(venv_bin / "pacsnode"), "status", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60, cwd=node.config.parent)
    assert "instances 20" in status.stdout
    assert "t1_mprage" in status.stdout


def test_pynetdicom_store_with_context_list(node: NodeProcess, mr_series: list[Path]) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(build_context(MRImageStorage).abstract_syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    statuses = [assoc.send_c_store(dcmread(p)).Status for p in mr_series[:5]]
    assoc.release()
    assert statuses == [0] * 5
