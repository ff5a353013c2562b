"""Person Name matching across character sets, over QIDO-RS and C-FIND (dcmtk ``findscu``).

pydicom's charset test files (Latin-1, Greek, Cyrillic, Arabic, Hebrew, Japanese and Korean ISO
2022, UTF-8, GB18030; single- and multi-component-group names) are stored in a node; every name
is found by its exact value, in another letter case, by a prefix wildcard and by its first
component group, with QIDO-RS and with C-FIND alike. An instance without PatientID is stored,
indexed under the empty ID and found by the empty-value query ``PatientID=""``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from node.storage.matching import fold
from tests.peers import NodeProcess, have

pytestmark = [pytest.mark.peers]


def _charset_files() -> list[tuple[Path, str, str]]:
    """(file, decoded PatientName, StudyInstanceUID) of each charset file that is a storable instance."""
    found = []
    for name in sorted(get_charset_files("*.dcm")):
        dataset = pydicom.dcmread(name)
        if "StudyInstanceUID" in dataset and "SOPClassUID" in dataset and dataset.get("PatientName"):
            found.append((Path(name), str(dataset.PatientName), str(dataset.StudyInstanceUID)))
    return found


def _queries(name: str) -> dict[str, str]:
    """The query values a name must be found by."""
    first_group = name.split("=")[0] or name.split("=")[1]
    queries = {"exact": name, "other case": name.swapcase() if name.swapcase() != name else name,
               "prefix wildcard": first_group[:2] + "*", "first component group": first_group}
    if "=" in name:
        queries["ideographic group"] = "=" + name.split("=")[1]
    return queries


def _qido(node: NodeProcess, value: str) -> set[str]:
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
                         params={"PatientName": value, "includefield": "00100010"}, timeout=30)
    assert response.status_code in (200, 204), response.text
    return {s["0020000D"]["Value"][0] for s in (response.json() if response.status_code == 200 else [])}


def _cfind(node: NodeProcess, folder: Path, queries: list[dict[str, str]]) -> list[pydicom.Dataset]:
    """The responses of dcmtk ``findscu`` to STUDY-level queries, all sent on one association
    (one query file each, UTF-8)."""
    folder.mkdir(parents=True)
    query_files = []
    for number, keys in enumerate(queries):
        query = Dataset()
        query.SpecificCharacterSet = "ISO_IR 192"
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientName = ""
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        query.file_meta = FileMetaDataset()
        query.file_meta.MediaStorageSOPClassUID = StudyRootQueryRetrieveInformationModelFind
        query.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        query.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"query{number:03d}.dcm"
        query.save_as(path, enforce_file_format=True)
        query_files.append(str(path))
    answers = folder / "answers"
    answers.mkdir()
    args = ["findscu", "-S", "-aec", node.ae_title, "-X", "--output-directory", str(answers),
            "127.0.0.1", str(node.port), *query_files]
    run = subprocess.run(args, capture_output=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return [pydicom.dcmread(f) for f in sorted(answers.glob("rsp*.dcm"))]


def test_names_in_every_character_set_are_found(node: NodeProcess, tmp_path: Path) -> None:
    if not have("findscu"):
        pytest.skip("dcmtk findscu is missing: run `make test`, which installs Debian's dcmtk")
    files = _charset_files()
    assert len(files) >= 14
    report = send_files([f for f, _, _ in files], ae_title=node.ae_title, host="127.0.0.1", port=node.port,
                        calling_ae="CHARSETS")
    assert report.sent == len(files), report
    missing: list[str] = []
    for how in ("exact", "other case", "prefix wildcard", "first component group", "ideographic group"):
        asked = [(path, name, study, _queries(name)[how]) for path, name, study in files if how in _queries(name)]
        for path, _, study, value in asked:
            if study not in _qido(node, value):
                missing.append(f"QIDO {path.name} {how} {value!r}")
        # C-FIND: each query also names its study, so each answer tells which query found it
        answers = _cfind(node, tmp_path / how.replace(" ", "-"),
                         [{"PatientName": value, "StudyInstanceUID": study} for _, _, study, value in asked])
        found = {str(a.StudyInstanceUID): a for a in answers}
        for path, name, study, value in asked:
            if study not in found:
                missing.append(f"C-FIND {path.name} {how} {value!r}")
            elif how == "exact":  # the response names the patient as stored
                assert fold(str(found[study].PatientName)) == fold(name), (path.name, str(found[study].PatientName))
    assert not missing, "\n".join(missing)
    # a name matches only itself (and the charset files that share it)
    greek = _qido(node, "Διονυσιος")
    assert greek == {s for _, n, s in files if n == "Διονυσιος"}
    assert _qido(node, "Xyz*") == set()


def test_instances_without_patient_id_are_stored_and_found(node: NodeProcess, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "noid", SeriesSpec(slices=2, rows=8, columns=8, seed=3))
    other = write_mr_series(tmp_path / "withid", SeriesSpec(slices=1, rows=8, columns=8, seed=4,
                                                            patient_id="HAS-ID"))
    for number, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        if number == 0:
            del dataset.PatientID  # Type 2 attribute absent
        else:
            dataset.PatientID = ""  # present and empty
        dataset.save_as(path)
    report = send_files([*files, *other], ae_title=node.ae_title, host="127.0.0.1", port=node.port,
                        calling_ae="NOID")
    assert report.sent == len(files) + 1, report
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    response = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", params={"PatientID": '""'},
                         timeout=30)
    assert {s["0020000D"]["Value"][0] for s in response.json()} == {study}
    if have("findscu"):
        answers = _cfind(node, tmp_path / "empty", [{"PatientID": '""'}])
        assert {str(a.StudyInstanceUID) for a in answers} == {study}
    everything = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", timeout=30).json()
    assert len(everything) == 2  # an empty key is universal matching, as ever
