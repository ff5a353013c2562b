"""Generated MR series for the demo, the protocol tests and the ingest benchmark.

These are plain, valid MR Image Storage instances with a smooth synthetic
image: enough to exercise storage, query and retrieval. The analyzers' phantoms
with ground truth live in ``analyzers.phantoms``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["SeriesSpec", "write_mr_series"]

_ROOT = "1.2.826.0.1.3680043.10.1379."


@dataclass(frozen=True)
class SeriesSpec:
    """What to generate: ``slices`` × ``time_points`` instances of ``rows`` × ``columns``."""

    patient_id: str = "DEMO-0001"
    patient_name: str = "Demo^Patient"
    series_description: str = "t1_mprage_sag_p2"
    slices: int = 20
    time_points: int = 1
    rows: int = 128
    columns: int = 128
    study_date: str = "20260101"
    seed: int = 0
    study_uid: str | None = None


def _image(rows: int, columns: int, z: int, t: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = rows / 2, columns / 2
    r = np.hypot((y - cy) / (rows * 0.4), (x - cx) / (columns * 0.33))
    head = (r < 1.0).astype(np.float32) * (600 + 200 * np.cos(3 * r + 0.2 * z))
    noise = rng.normal(0, 5, size=(rows, columns))
    return np.clip(head * (1 - 0.02 * t) + noise + 20, 0, 4095).astype(np.uint16)


def _instances(spec: SeriesSpec) -> Iterator[Dataset]:
    rng = np.random.default_rng(spec.seed)
    study_uid = spec.study_uid or generate_uid(_ROOT, [spec.patient_id, spec.study_date, str(spec.seed)])
    series_uid = generate_uid(_ROOT, [study_uid, spec.series_description, str(spec.seed)])
    frame_uid = generate_uid(_ROOT, [study_uid, "frame"])
    for t in range(spec.time_points):
        for z in range(spec.slices):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            # pydicom concatenates the sources: bare numbers would make (1, 11) and (11, 1) collide.
            sop_uid = generate_uid(_ROOT, [series_uid, f"t{t}", f"z{z}"])
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.PatientID = spec.patient_id
            ds.PatientName = spec.patient_name
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "O"
            ds.StudyDate = spec.study_date
            ds.StudyTime = "120000"
            ds.SeriesDate = spec.study_date
            ds.SeriesTime = "120500"
            ds.AccessionNumber = f"ACC{spec.seed:05d}"
            ds.StudyID = "1"
            ds.StudyDescription = "MR Head"
            ds.ReferringPhysicianName = ""
            ds.Modality = "MR"
            ds.Manufacturer = "pacsnode"
            ds.SeriesDescription = spec.series_description
            ds.ProtocolName = spec.series_description
            ds.SeriesNumber = 3
            ds.InstanceNumber = t * spec.slices + z + 1
            ds.ImagesInAcquisition = spec.slices * spec.time_points
            if spec.time_points > 1:
                ds.NumberOfTemporalPositions = spec.time_points
                ds.TemporalPositionIdentifier = t + 1
                ds.TriggerTime = t * 1500.0
            ds.ImagePositionPatient = [-120.0, -120.0, -40.0 + 4.0 * z]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [240.0 / spec.rows, 240.0 / spec.columns]
            ds.SliceThickness = 4.0
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 1500.0
            ds.EchoTime = 30.0
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 3.0
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = spec.rows
            ds.Columns = spec.columns
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.PixelData = _image(spec.rows, spec.columns, z, t, rng).tobytes()
            yield ds


def write_mr_series(out: Path, spec: SeriesSpec | None = None) -> list[Path]:
    """Write one generated series as Part 10 files under ``out``; returns their paths."""
    spec = spec or SeriesSpec()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in _instances(spec):
        path = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
