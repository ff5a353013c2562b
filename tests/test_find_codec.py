"""C-FIND identifiers read and matches written directly (node.dimse.find_codec), compared with
pydicom doing the same, and the node answering a real pynetdicom peer through that path."""

from __future__ import annotations

import sqlite3
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from node.config import Settings
from node.dimse.find_codec import dataset_keys, encode_match, read_identifier
from node.dimse.handlers import DimseHandlers
from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess

SYNTAXES = [(True, True, False), (False, True, False)]  # implicit, explicit VR little endian


def _identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


PLAIN = [
    _identifier(QueryRetrieveLevel="STUDY", PatientID="BENCH-1", StudyInstanceUID="", StudyDate="",
                PatientName="", AccessionNumber="", ModalitiesInStudy=""),
    _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3.4", SeriesInstanceUID="", Modality="MR",
                SeriesNumber="", SeriesDescription="t1*"),
    _identifier(QueryRetrieveLevel="SERIES", SeriesNumber="03", NumberOfSeriesRelatedInstances=""),
    _identifier(QueryRetrieveLevel="SERIES", SeriesNumber=" 12 "),
    _identifier(QueryRetrieveLevel="STUDY", StudyDate="20250101-20261231", StudyTime="-1200",
                PatientName="Doe^J*  ", RetrieveAETitle=" AE1 ", StudyDescription="brain  "),
    _identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3", InstanceNumber="", Rows=512, Columns=None),
    _identifier(QueryRetrieveLevel="PATIENT", PatientID='""', PatientComments="a long text\\with a backslash "),
    _identifier(QueryRetrieveLevel="STUDY", SpecificCharacterSet="", PatientName="A?C"),
]

OUTSIDE = [  # read by pydicom instead
    _identifier(QueryRetrieveLevel="STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="Müller"),
    _identifier(QueryRetrieveLevel="STUDY", ModalitiesInStudy="MR\\CT"),
    _identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3\\1.2.4"),
    _identifier(QueryRetrieveLevel="STUDY", ProcedureCodeSequence=Sequence([Dataset()])),
]


def _normal(keys: list[tuple[int, str, str, Any]]) -> list[tuple[int, str, str, str, bool]]:
    return [(tag, keyword, vr, str(value), value is None) for tag, keyword, vr, value in keys]


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_identifiers_are_read_as_pydicom_reads_them(syntax: tuple[bool, bool, bool]) -> None:
    for identifier in PLAIN:
        data = encode(identifier, *syntax)
        assert data is not None
        keys = read_identifier(data, *syntax)
        assert keys is not None, identifier
        assert _normal(keys) == _normal(dataset_keys(decode(BytesIO(data), *syntax)))
    private = _identifier(QueryRetrieveLevel="STUDY")
    private.add_new(0x00091001, "LO", "x")
    for identifier in [*OUTSIDE, private]:
        data = encode(identifier, *syntax)
        assert data is not None
        assert read_identifier(data, *syntax) is None, identifier
    assert read_identifier(encode(PLAIN[0], False, False) or b"", False, False, False) is None  # big endian
    assert read_identifier(b"\x08\x00\x52\x00\x06\x00\x00", *syntax) is None  # cut off


ROWS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("STUDY", ["PatientID", "StudyInstanceUID", "StudyDate", "PatientName", "AccessionNumber",
               "ModalitiesInStudy"],
     {"PatientID": "BENCH-1", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "StudyDate": "20260101",
      "PatientName": "Demo^Patient", "AccessionNumber": None, "ModalitiesInStudy": "MR\\SEG"}),
    ("SERIES", ["StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                "NumberOfSeriesRelatedInstances"],
     {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.45", "Modality": "MR", "SeriesNumber": 7,
      "SeriesDescription": "t1_mprage", "NumberOfSeriesRelatedInstances": 176}),
    ("SERIES", ["SeriesNumber", "SeriesDescription"], {"SeriesInstanceUID": "1.2.3.4", "SeriesNumber": "12",
                                                        "SeriesDescription": ""}),
    ("STUDY", ["PatientName", "StudyDescription", "ReferringPhysicianName"],
     {"StudyInstanceUID": "1.2", "PatientName": "Müller^Jörg=山田^太郎", "StudyDescription": "Kopf ÄÖÜ",
      "ReferringPhysicianName": "Doe^J"}),
    ("IMAGE", ["SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "PixelData", "ProcedureCodeSequence"],
     {"SOPInstanceUID": "1.2.3.4.5", "InstanceNumber": 3, "Rows": 512, "Columns": None}),
    ("PATIENT", ["PatientID", "PatientName", "NumberOfPatientRelatedStudies", "PatientBirthDate"],
     {"PatientID": "P-1", "PatientName": "", "NumberOfPatientRelatedStudies": 2, "PatientBirthDate": None}),
]


def _tags(keywords: list[str]) -> list[int]:
    probe = Dataset()
    for keyword in keywords:
        setattr(probe, keyword, None)
    return [int(element.tag) for element in probe]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(("level", "keywords", "row"), ROWS)
def test_matches_are_written_as_pydicom_writes_them(syntax: tuple[bool, bool, bool], level: str,
                                                    keywords: list[str], row: dict[str, Any]) -> None:
    handlers = DimseHandlers.__new__(DimseHandlers)
    handlers.settings = Settings()
    requested = _tags(keywords)
    expected = encode(handlers._response(requested, row, level), *syntax)
    written = encode_match(requested, row, level, handlers.settings.dicom.ae_title, *syntax)
    if "ProcedureCodeSequence" in keywords:
        assert written is None  # a sequence: pydicom writes it
        return
    assert written == expected


def test_values_it_does_not_write_are_left_to_pydicom() -> None:
    requested = _tags(["SeriesNumber", "Rows"])
    for row in ({"SeriesNumber": 1.5}, {"SeriesNumber": "²"}, {"Rows": -1}, {"Rows": True}):
        assert encode_match(requested, {"SeriesInstanceUID": "1.2", **row}, "SERIES", "PACSNODE",
                            False, True, False) is None
    assert encode_match(_tags(["Modality"]), {"SeriesInstanceUID": "1.2", "Modality": "MRé"}, "SERIES",
                        "PACSNODE", False, True, False) is None  # CS is written in pydicom's default charset


def _find(node: NodeProcess, identifier: Dataset, syntax: str) -> list[Dataset]:
    ae = AE(ae_title="CODECSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        matches = []
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            assert status is not None and status.Status in (0xFF00, 0x0000), status
            if status.Status == 0xFF00:
                matches.append(ds)
        return matches
    finally:
        assoc.release()


@pytest.mark.peers
def test_node_answers_through_the_direct_path(node: NodeProcess, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "a", SeriesSpec(slices=2, rows=8, columns=8, patient_id="CODEC-1",
                                                       patient_name="Müller^Jörg", seed=5))
    files += write_mr_series(tmp_path / "b", SeriesSpec(slices=1, rows=8, columns=8, patient_id="CODEC-2",
                                                        series_description="flair", seed=6))
    from node.dimse.scu import send_files

    report = send_files(files, ae_title=node.ae_title, host="127.0.0.1", port=node.port, calling_ae="CODEC")
    assert report.sent == 3, report
    first = dcmread(files[0])
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        studies = _find(node, _identifier(QueryRetrieveLevel="STUDY", PatientID="CODEC-*", StudyInstanceUID="",
                                          PatientName="", StudyDate="20260101", ModalitiesInStudy="",
                                          AccessionNumber=""), syntax)
        assert sorted(str(s.PatientID) for s in studies) == ["CODEC-1", "CODEC-2"]
        mueller = next(s for s in studies if s.PatientID == "CODEC-1")
        assert mueller.SpecificCharacterSet == "ISO_IR 192" and str(mueller.PatientName) == "Müller^Jörg"
        assert mueller.StudyInstanceUID == study_uid and mueller.ModalitiesInStudy == "MR"
        assert mueller.RetrieveAETitle == node.ae_title and mueller.QueryRetrieveLevel == "STUDY"
        assert mueller.AccessionNumber == first.AccessionNumber
        series = _find(node, _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid,
                                         SeriesInstanceUID="", Modality="", SeriesNumber="",
                                         SeriesDescription="t1*", NumberOfSeriesRelatedInstances=""), syntax)
        assert [(s.SeriesInstanceUID, s.Modality, int(s.NumberOfSeriesRelatedInstances)) for s in series] == \
            [(series_uid, "MR", 2)]
        assert series[0].SeriesNumber == first.SeriesNumber
        assert _find(node, _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid,
                                       SeriesDescription="flair"), syntax) == []
        # outside the direct reader's subset (a UID list): pydicom reads it, same answers
        listed = _find(node, _identifier(QueryRetrieveLevel="SERIES", SeriesInstanceUID=f"{series_uid}\\1.2.3",
                                         SeriesDescription=""), syntax)
        assert [(s.SeriesInstanceUID, s.SeriesDescription) for s in listed] == [(series_uid, "t1_mprage_sag_p2")]
    with sqlite3.connect(node.storage / "index.sqlite") as db:
        rows = db.execute("SELECT actor, detail FROM audit_log WHERE event = 'query'").fetchall()
    assert len(rows) == 8 and {actor for actor, _ in rows} == {"CODECSCU"}
    assert sum('"PatientID": "CODEC-*"' in detail for _, detail in rows) == 2

