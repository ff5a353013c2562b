"""Which DICOM attributes the index keeps, at which level, and how each is matched.

C-FIND (PS3.4 C.2.2.2) and QIDO-RS (PS3.18 8.3.4) both query these; an attribute
not listed here is not a matching key (it is answered empty when asked as a
return key at the levels where the index does not hold it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ATTRIBUTES", "DERIVED", "LEVELS", "Attribute", "Level", "by_keyword", "by_tag"]

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@dataclass(frozen=True)
class Attribute:
    """An indexed attribute: its keyword, tag, VR, level and the column that holds it."""

    keyword: str
    tag: int
    vr: str
    level: Level
    column: str
    table: str


def _a(keyword: str, tag: int, vr: str, level: Level, column: str) -> Attribute:
    table = {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}[
        level
    ]
    return Attribute(keyword, tag, vr, level, column, table)


ATTRIBUTES: tuple[Attribute, ...] = (
    _a("PatientID", 0x00100020, "LO", "PATIENT", "patient_id"),
    _a("PatientName", 0x00100010, "PN", "PATIENT", "patient_name"),
    _a("PatientBirthDate", 0x00100030, "DA", "PATIENT", "patient_birth_date"),
    _a("PatientSex", 0x00100040, "CS", "PATIENT", "patient_sex"),
    _a("IssuerOfPatientID", 0x00100021, "LO", "PATIENT", "issuer_of_patient_id"),
    _a("StudyInstanceUID", 0x0020000D, "UI", "STUDY", "study_uid"),
    _a("StudyDate", 0x00080020, "DA", "STUDY", "study_date"),
    _a("StudyTime", 0x00080030, "TM", "STUDY", "study_time"),
    _a("AccessionNumber", 0x00080050, "SH", "STUDY", "accession_number"),
    _a("StudyID", 0x00200010, "SH", "STUDY", "study_id"),
    _a("StudyDescription", 0x00081030, "LO", "STUDY", "study_description"),
    _a("ReferringPhysicianName", 0x00080090, "PN", "STUDY", "referring_physician_name"),
    _a("PatientAge", 0x00101010, "AS", "STUDY", "patient_age"),
    _a("SeriesInstanceUID", 0x0020000E, "UI", "SERIES", "series_uid"),
    _a("Modality", 0x00080060, "CS", "SERIES", "modality"),
    _a("SeriesNumber", 0x00200011, "IS", "SERIES", "series_number"),
    _a("SeriesDescription", 0x0008103E, "LO", "SERIES", "series_description"),
    _a("ProtocolName", 0x00181030, "LO", "SERIES", "protocol_name"),
    _a("BodyPartExamined", 0x00180015, "CS", "SERIES", "body_part_examined"),
    _a("SeriesDate", 0x00080021, "DA", "SERIES", "series_date"),
    _a("SeriesTime", 0x00080031, "TM", "SERIES", "series_time"),
    _a("Manufacturer", 0x00080070, "LO", "SERIES", "manufacturer"),
    _a("FrameOfReferenceUID", 0x00200052, "UI", "SERIES", "frame_of_reference_uid"),
    _a("SOPInstanceUID", 0x00080018, "UI", "IMAGE", "sop_uid"),
    _a("SOPClassUID", 0x00080016, "UI", "IMAGE", "sop_class_uid"),
    _a("InstanceNumber", 0x00200013, "IS", "IMAGE", "instance_number"),
    _a("Rows", 0x00280010, "US", "IMAGE", "rows"),
    _a("Columns", 0x00280011, "US", "IMAGE", "columns"),
    _a("NumberOfFrames", 0x00280008, "IS", "IMAGE", "number_of_frames"),
    _a("BitsAllocated", 0x00280100, "US", "IMAGE", "bits_allocated"),
    _a("ContentDate", 0x00080023, "DA", "IMAGE", "content_date"),
    _a("ContentTime", 0x00080033, "TM", "IMAGE", "content_time"),
    _a("AcquisitionNumber", 0x00200012, "IS", "IMAGE", "acquisition_number"),
    _a("TemporalPositionIdentifier", 0x00200100, "IS", "IMAGE", "temporal_position"),
)

# Attributes computed from the index rather than stored (PS3.4 C.3.4 "optional keys").
DERIVED: dict[str, tuple[int, str, Level]] = {
    "NumberOfPatientRelatedStudies": (0x00201200, "IS", "PATIENT"),
    "NumberOfPatientRelatedSeries": (0x00201202, "IS", "PATIENT"),
    "NumberOfPatientRelatedInstances": (0x00201204, "IS", "PATIENT"),
    "ModalitiesInStudy": (0x00080061, "CS", "STUDY"),
    "SOPClassesInStudy": (0x00080062, "UI", "STUDY"),
    "NumberOfStudyRelatedSeries": (0x00201206, "IS", "STUDY"),
    "NumberOfStudyRelatedInstances": (0x00201208, "IS", "STUDY"),
    "NumberOfSeriesRelatedInstances": (0x00201209, "IS", "SERIES"),
}

_BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}
_BY_TAG = {a.tag: a for a in ATTRIBUTES}


def by_keyword(keyword: str) -> Attribute | None:
    return _BY_KEYWORD.get(keyword)


def by_tag(tag: int) -> Attribute | None:
    return _BY_TAG.get(tag)
