"""Writing phantom series as classic MR Image Storage files, one file per slice per time point.

Every UID is derived from the phantom name, seed and case (``2.25`` UIDs from
name-based UUIDs), so the
same seed writes byte-identical files. Geometry follows the Image Plane module
(PS3.3 C.7.6.2); dynamics carry AcquisitionTime, TriggerTime,
TemporalPositionIdentifier and NumberOfTemporalPositions as scanners do.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from analyzers.phantoms.model import Patient, PhantomCase, PhantomError, Scanner, SeriesData

__all__ = [
    "IMPLEMENTATION_UID",
    "dicom_time",
    "make_uid",
    "random_patient",
    "random_scanner",
    "write_case",
    "write_series",
]

_FIRST_NAMES = {
    "F": ["ANNA", "MARIA", "ELIF", "SARA", "JUDITH", "MEI", "LUCIA", "INGRID", "NORA", "AMARA"],
    "M": ["JONAS", "OMAR", "PETER", "KENJI", "LUCAS", "IVAN", "TOMAS", "RAVI", "ERIK", "DAVID"],
}
_VENDORS = [
    ("SIEMENS", ["Skyra", "Aera", "Prisma", "Vida"], "syngo MR E11"),
    ("GE MEDICAL SYSTEMS", ["SIGNA Premier", "DISCOVERY MR750", "SIGNA Artist"], "27\\LX\\MR Software release:RX27.0"),
    ("Philips", ["Ingenia", "Achieva dStream", "Ingenia Elition X"], "5.7.1"),
]


def make_uid(*parts: object) -> str:
    """A deterministic ``2.25.…`` UID (PS3.5 B.2: a name-based UUID as an integer) from the parts."""
    name = "|".join(["pacsnode-phantom", *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


#: ImplementationClassUID of the writer (a UUID-derived UID, no registered root needed).
IMPLEMENTATION_UID = make_uid("implementation", 1)


def dicom_time(seconds_of_day: float) -> str:
    """``HHMMSS.ffffff`` for seconds since midnight (wrapping at 24 h)."""
    s = seconds_of_day % 86400.0
    h, rem = divmod(s, 3600.0)
    m, sec = divmod(rem, 60.0)
    return f"{int(h):02d}{int(m):02d}{sec:09.6f}"


def random_patient(
    rng: np.random.Generator,
    patient_id: str,
    study_date: str,
    female_fraction: float = 0.5,
    age_range: tuple[int, int] = (35, 80),
) -> Patient:
    """A patient with a plausible name, sex, age and weight (birth date consistent with the age)."""
    sex = "F" if rng.random() < female_fraction else "M"
    age = int(rng.integers(age_range[0], age_range[1] + 1))
    when = dt.date.fromisoformat(f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}")
    birth = when - dt.timedelta(days=int(age * 365.25 + rng.integers(1, 360)))
    first = _FIRST_NAMES[sex][int(rng.integers(len(_FIRST_NAMES[sex])))]
    return Patient(
        patient_id=patient_id,
        name=f"PHANTOM^{first}^{patient_id[-4:]}",
        sex=sex,
        age_years=age,
        birth_date=birth.strftime("%Y%m%d"),
        weight_kg=float(round(rng.normal(72 if sex == "F" else 84, 10), 1)),
    )


def random_scanner(
    rng: np.random.Generator, field_strengths: tuple[float, ...] = (1.5, 3.0), vendor: str | None = None
) -> Scanner:
    """A scanner of a random (or the named: ``siemens``, ``ge``, ``philips``) vendor and model."""
    choice = int(rng.integers(len(_VENDORS)))
    if vendor is not None:
        keys = ["siemens", "ge", "philips"]
        if vendor not in keys:
            raise PhantomError(f"vendor must be one of {keys}, got {vendor!r}")
        choice = keys.index(vendor)
    maker, models, software = _VENDORS[choice]
    model = models[int(rng.integers(len(models)))]
    field = float(field_strengths[int(rng.integers(len(field_strengths)))])
    return Scanner(
        manufacturer=maker,
        model=model,
        field_strength_t=field,
        software_versions=software,
        station_name=f"MR{int(rng.integers(1, 9))}",
    )


def vendor_key(scanner: Scanner) -> str:
    """``siemens``, ``ge`` or ``philips``: selects series naming conventions."""
    m = scanner.manufacturer.lower()
    return "siemens" if "siemens" in m else "ge" if m.startswith("ge") else "philips"


#: MR Image Module (PS3.3 C.8.3.1) Type 2 attributes: written empty when a sequence does not set them.
_MR_IMAGE_TYPE2 = ("ScanOptions", "MRAcquisitionType", "EchoTime", "EchoTrainLength")


def _base_dataset(series: SeriesData, patient: Patient, scanner: Scanner) -> Dataset:
    study = series.study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.AcquisitionDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = dicom_time(study.time_s)
    ds.SeriesTime = dicom_time(series.start_time_s)
    ds.AccessionNumber = study.accession
    ds.Modality = "MR"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = scanner.institution
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.StationName = scanner.station_name
    ds.StudyDescription = study.description
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.PatientWeight = f"{patient.weight_kg:.1f}"
    ds.BodyPartExamined = "HEAD"
    ds.MagneticFieldStrength = scanner.field_strength_t
    ds.ImagedNucleus = "1H"
    ds.SoftwareVersions = scanner.software_versions
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    grid = series.grid
    ds.ImageOrientationPatient = [float(v) for v in (*grid.row_direction, *grid.column_direction)]
    ds.PixelSpacing = [float(grid.spacing[1]), float(grid.spacing[2])]
    ds.SliceThickness = float(series.attributes.get("SliceThickness", grid.spacing[0]))
    ds.SpacingBetweenSlices = float(grid.spacing[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Slices of one time point, as Siemens and Philips write it: the node completes the series by count.
    ds.ImagesInAcquisition = grid.shape[0]
    for keyword, value in series.attributes.items():
        setattr(ds, keyword, value)
    # MR Image Module Type 2 attributes a phantom's sequence does not set: present and empty.
    for keyword in _MR_IMAGE_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    if series.is_dynamic:
        ds.NumberOfTemporalPositions = series.pixels.shape[0]
        if series.pixels.shape[0] > 1:
            ds.TemporalResolution = float(np.median(np.diff(series.times_s)) * 1000.0)
    return ds


_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    """Explicit VR little endian encoding of one element (value already in its byte form)."""
    if len(value) % 2:
        value += b"\0" if vr in {"UI", "OB"} else b" "
    head = tag.to_bytes(4, "big")
    head = head[1::-1] + head[3:1:-1]  # group then element, each little endian
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + len(value).to_bytes(4, "little") + value
    return head + vr.encode() + len(value).to_bytes(2, "little") + value


def _encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _file_meta(sop_instance_uid: str) -> bytes:
    body = b"".join(
        [
            _element(0x00020001, "OB", b"\0\1"),
            _element(0x00020002, "UI", MRImageStorage.encode()),
            _element(0x00020003, "UI", sop_instance_uid.encode()),
            _element(0x00020010, "UI", ExplicitVRLittleEndian.encode()),
            _element(0x00020012, "UI", IMPLEMENTATION_UID.encode()),
            _element(0x00020013, "SH", b"PACSNODE_PH1"),
        ]
    )
    return b"\0" * 128 + b"DICM" + _element(0x00020000, "UL", len(body).to_bytes(4, "little")) + body


# Elements that change from file to file, in tag order, with their VR.
_VARYING = {
    0x00080018: "UI",  # SOPInstanceUID
    0x00080032: "TM",  # AcquisitionTime
    0x00080033: "TM",  # ContentTime
    0x00181060: "DS",  # TriggerTime
    0x00200012: "IS",  # AcquisitionNumber
    0x00200013: "IS",  # InstanceNumber
    0x00200032: "DS",  # ImagePositionPatient
    0x00200100: "IS",  # TemporalPositionIdentifier
    0x00201041: "DS",  # SliceLocation
    0x7FE00010: "OW",  # PixelData
}


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def write_series(folder: Path, series: SeriesData, patient: Patient, scanner: Scanner) -> list[Path]:
    """Write one file per slice and time point; returns the paths written.

    The attributes shared by all files are encoded once with pydicom; the few
    that change per file (UIDs, times, position, pixels) are encoded directly
    (explicit VR little endian), which makes writing thousands of slices fast.
    Pixel values are rounded and clipped to 0–65535; the window is set from the
    series' 99.5th percentile so viewers open it sensibly.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = _base_dataset(series, patient, scanner)
    rounded = np.rint(series.pixels)  # a copy: the caller's pixels stay as simulated
    stored = np.clip(rounded, 0, 65535, out=rounded).astype("<u2")
    top = float(np.percentile(stored[:, :, ::4, ::4], 99.5)) or 1.0
    ds.WindowCenter = f"{top / 2:.0f}"
    ds.WindowWidth = f"{top:.0f}"
    trigger = series.trigger_time and series.is_dynamic
    # Split the constant attributes into runs between the varying tags.
    constant = sorted(int(el.tag) for el in ds if int(el.tag) not in _VARYING)
    cuts = sorted(_VARYING)
    runs: list[bytes] = []
    prev = 0
    for cut in [*cuts, 0xFFFFFFFF]:
        part = Dataset()
        for tag in constant:
            if prev <= tag < cut:
                part.add(ds[tag])
        part.set_original_encoding(False, True)
        runs.append(_encode(part) if len(part) else b"")
        prev = cut
    grid = series.grid
    n_t, n_z = stored.shape[:2]
    normal = grid.normal
    positions = [grid.slice_position(k) for k in range(n_z)]
    paths = []
    for t in range(n_t):
        acq = dicom_time(series.start_time_s + float(series.times_s[t])).encode()
        for k in range(n_z):
            number = t * n_z + k + 1
            uid = make_uid(series.series_uid, number)
            values = {
                0x00080018: uid.encode(),
                0x00080032: acq,
                0x00080033: acq,
                0x00181060: _ds(round(float(series.times_s[t]) * 1000.0, 1)).encode() if trigger else None,
                0x00200012: str(t + 1).encode(),
                0x00200013: str(number).encode(),
                0x00200032: "\\".join(_ds(round(float(v), 4)) for v in positions[k]).encode(),
                0x00200100: str(t + 1).encode() if series.is_dynamic else None,
                0x00201041: _ds(round(float(positions[k] @ normal), 4)).encode(),
                0x7FE00010: stored[t, k].tobytes(),
            }
            chunks = [_file_meta(uid), runs[0]]
            for i, tag in enumerate(cuts):
                value = values[tag]
                if value is not None:
                    chunks.append(_element(tag, _VARYING[tag], value))
                chunks.append(runs[i + 1])
            path = folder / f"IM{number:05d}.dcm"
            # os-level calls: a dynamic series is thousands of small files, and
            # pathlib's buffered file object doubles the per-file cost here.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                remaining = memoryview(b"".join(chunks))
                while remaining:
                    remaining = remaining[os.write(fd, remaining) :]
            finally:
                os.close(fd)
            paths.append(path)
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """``numpy.savez_compressed`` at zlib level 1: the same archive format, read by ``numpy.load``, written
    several times faster than at the default level 6 (the truth maps are mostly smooth or zero)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def write_case(case: PhantomCase, case_folder: Path) -> Path:
    """Write every series of ``case`` and its ``truth/`` folder (maps.npz, truth.json)."""
    for series in case.series:
        write_series(case_folder / series.folder, series, case.patient, case.scanner)
    truth_dir = case_folder / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    _save_npz(truth_dir / "maps.npz", dict(case.truth_maps))
    info = {
        "phantom": case.phantom,
        "case": case.case_index,
        "seed": case.seed,
        "patient": {
            "PatientID": case.patient.patient_id,
            "PatientSex": case.patient.sex,
            "PatientAge": case.patient.age_years,
        },
        "scanner": {
            "Manufacturer": case.scanner.manufacturer,
            "ManufacturerModelName": case.scanner.model,
            "MagneticFieldStrength": case.scanner.field_strength_t,
        },
        "studies": [
            {"StudyInstanceUID": s.study_uid, "StudyDate": s.date, "StudyDescription": s.description}
            for s in case.studies
        ],
        "series": [
            {
                "folder": s.folder,
                "StudyInstanceUID": s.study.study_uid,
                "SeriesInstanceUID": s.series_uid,
                "SeriesDescription": s.attributes.get("SeriesDescription", ""),
                "affine_lps": s.grid.affine,
                "shape": list(s.grid.shape),
                "time_points": int(s.pixels.shape[0]),
                "times_s": s.times_s,
            }
            for s in case.series
        ],
        **case.truth,
    }
    (truth_dir / "truth.json").write_text(json.dumps(info, indent=1, default=_json_default))
    return case_folder
