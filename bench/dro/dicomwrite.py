"""Writing a digital reference object as classic MR Image Storage files.

One file per slice per time point (or per flip angle), as scanners of the classic
layout write dynamics: Image Plane module geometry (PS3.3 C.7.6.2), and for dynamics
AcquisitionTime, ContentTime, TemporalPositionIdentifier and NumberOfTemporalPositions
(PS3.3 C.8.3.1), ImagesInAcquisition so a receiver can tell when the series is complete.
Pixel values are unsigned 16-bit counts: the caller passes one ``counts_per_unit`` for
all series of a study, because a VFA fit compares signals across series and only a
common scale keeps them comparable.

This writer is independent of the product's phantom writer (``analyzers/phantoms``):
the reference objects check the product, so they share none of its code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

__all__ = ["Geometry", "StudyIdentity", "dro_uid", "write_mr_series"]


def dro_uid(*parts: object) -> str:
    """A deterministic ``2.25`` UID (PS3.5 B.2) from a name: same object, same UIDs."""
    name = "|".join(["pacsnode-dro", *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _tm(seconds_of_day: float) -> str:
    s = seconds_of_day % 86400.0
    hours, rest = divmod(s, 3600.0)
    minutes, seconds = divmod(rest, 60.0)
    return f"{int(hours):02d}{int(minutes):02d}{seconds:09.6f}"


@dataclass(frozen=True)
class Geometry:
    """Axial slices: voxel size and the patient position of the first voxel.

    Columns run along patient x (right to left), rows along patient y (anterior to
    posterior), slices along +z (feet to head), as an axial acquisition stores them.
    """

    pixel_mm: float
    slice_mm: float
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``k`` (its first voxel's centre)."""
        x, y, z = self.origin_mm
        return (x, y, z + k * self.slice_mm)


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes shared by the series of one reference object."""

    name: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    study_date: str = "20260101"
    study_time_s: float = 8 * 3600.0
    field_strength_t: float = 3.0
    manufacturer: str = "pacsnode reference object"
    extra: Mapping[str, Any] = field(default_factory=dict)


def _image(identity: StudyIdentity, geometry: Geometry, series_uid: str, series_number: int,
           description: str, pixels: NDArray[np.uint16], slice_index: int, n_slices: int,
           instance: int, acquisition: Mapping[str, Any]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = dro_uid(series_uid, instance)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = identity.study_date
    ds.StudyTime = _tm(identity.study_time_s)
    ds.SeriesTime = _tm(identity.study_time_s + series_number)
    ds.AccessionNumber = identity.patient_id[-8:]
    ds.Modality = "MR"
    ds.Manufacturer = identity.manufacturer
    ds.ManufacturerModelName = "digital reference object"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = identity.name
    ds.SeriesDescription = description
    ds.PatientName = f"DRO^{identity.name.replace(' ', '_')}"
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.SliceThickness = geometry.slice_mm
    ds.SpacingBetweenSlices = geometry.slice_mm
    ds.MagneticFieldStrength = identity.field_strength_t
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    position = geometry.slice_position(slice_index)
    ds.ImagePositionPatient = list(position)
    ds.SliceLocation = position[2]
    ds.ImagesInAcquisition = n_slices
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [geometry.pixel_mm, geometry.pixel_mm]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in {**identity.extra, **acquisition}.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(dro_uid("implementation"))
    ds.file_meta = meta
    return ds


def _counts(values: NDArray[np.floating], counts_per_unit: float) -> NDArray[np.uint16]:
    scaled = np.rint(np.asarray(values, dtype=np.float64) * counts_per_unit)
    if np.any(scaled > np.iinfo(np.uint16).max) or np.any(scaled < 0):
        raise ValueError("signal outside the 16-bit range at this counts_per_unit; lower it")
    return scaled.astype(np.uint16)


def write_mr_series(folder: Path, identity: StudyIdentity, geometry: Geometry, *,
                    series_number: int, description: str, signal: NDArray[np.floating],
                    counts_per_unit: float, repetition_time_ms: float, flip_angle_deg: float,
                    echo_time_ms: float = 2.0, times_s: Sequence[float] | None = None,
                    extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Write one series; returns the file paths.

    Parameters
    ----------
    folder:
        Created if missing; one ``.dcm`` file per image.
    identity, geometry:
        Study attributes and slice geometry.
    series_number, description:
        SeriesNumber and SeriesDescription (the node routes on the description).
    signal:
        (z, y, x) for a static series, (T, z, y, x) for a dynamic one (then ``times_s``).
    counts_per_unit:
        Stored value per unit of signal (one value for all series of a study).
    repetition_time_ms, flip_angle_deg, echo_time_ms:
        Acquisition attributes of the SPGR sequence.
    times_s:
        Frame times from the start of the dynamic (s); required for a 4D ``signal``.
    extra:
        More attributes for every image (e.g. ``ContrastBolusAgent``).
    """
    data = np.asarray(signal)
    dynamic = data.ndim == 4
    if dynamic and (times_s is None or len(times_s) != data.shape[0]):
        raise ValueError("a dynamic series needs one time per frame")
    if not dynamic and data.ndim != 3:
        raise ValueError(f"signal must be (z, y, x) or (T, z, y, x), got {data.shape}")
    frames = data if dynamic else data[np.newaxis]
    counts = _counts(frames, counts_per_unit)
    series_uid = dro_uid(identity.study_uid, "series", series_number)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    n_times, n_slices = counts.shape[:2]
    start = identity.study_time_s + 60.0 * series_number
    for t_index in range(n_times):
        for k in range(n_slices):
            instance = t_index * n_slices + k + 1
            acquisition: dict[str, Any] = {"RepetitionTime": repetition_time_ms,
                                           "EchoTime": echo_time_ms, "FlipAngle": flip_angle_deg,
                                           **(extra or {})}
            when = start + (float(times_s[t_index]) if times_s is not None else 0.0)
            acquisition["AcquisitionTime"] = _tm(when)
            acquisition["ContentTime"] = _tm(when)
            if dynamic:
                acquisition["TemporalPositionIdentifier"] = t_index + 1
                acquisition["NumberOfTemporalPositions"] = n_times
            ds = _image(identity, geometry, series_uid, series_number, description,
                        counts[t_index, k], k, n_slices, instance, acquisition)
            path = folder / f"{instance:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
