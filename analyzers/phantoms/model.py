"""Plain data objects a phantom case is made of (in memory, before any file is written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyzers.phantoms.anatomy import Grid

__all__ = ["Patient", "PhantomCase", "PhantomError", "Scanner", "SeriesData", "Study"]


class PhantomError(ValueError):
    """A phantom option is out of range or inconsistent."""


@dataclass(frozen=True)
class Patient:
    """Demographics written into every series of the patient."""

    patient_id: str
    name: str
    sex: str
    age_years: int
    birth_date: str
    weight_kg: float

    def __post_init__(self) -> None:
        if self.sex not in {"F", "M", "O"}:
            raise PhantomError(f"PatientSex must be F, M or O, got {self.sex!r}")
        if not 0 < self.age_years < 120:
            raise PhantomError(f"implausible age {self.age_years}")


@dataclass(frozen=True)
class Scanner:
    """Equipment attributes in the style of one vendor."""

    manufacturer: str
    model: str
    field_strength_t: float
    software_versions: str
    station_name: str
    institution: str = "PACSNODE PHANTOM HOSPITAL"


@dataclass(frozen=True)
class Study:
    """One imaging study (visit) of the patient."""

    study_uid: str
    date: str
    time_s: float
    accession: str
    description: str
    frame_of_reference_uid: str
    study_id: str = "1"


@dataclass
class SeriesData:
    """One image series: pixel values on a grid, with acquisition attributes.

    Attributes
    ----------
    folder:
        Folder name of the series inside the case folder.
    pixels:
        Stored values, shape ``(time points, slices, rows, columns)``; already
        scaled to the stored integer range (rounded and clipped on writing).
    times_s:
        Start time of every time point relative to the series start (seconds).
    attributes:
        DICOM keywords and values specific to the series (SeriesDescription,
        ProtocolName, RepetitionTime, EchoTime, FlipAngle, ScanningSequence, ...).
    trigger_time:
        Write TriggerTime (ms since the series start) on every frame of a
        dynamic, as GE scanners do; dciodvfy reports it as a Type 2C attribute
        present without cardiac triggering, so vendors in Siemens or Philips
        style leave it out and timing is read from AcquisitionTime.
    """

    folder: str
    study: Study
    series_uid: str
    series_number: int
    grid: Grid
    pixels: np.ndarray
    times_s: np.ndarray
    start_time_s: float
    attributes: dict[str, Any] = field(default_factory=dict)
    trigger_time: bool = False

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4:
            raise PhantomError(f"series pixels must be 4-D (t, z, y, x), got shape {self.pixels.shape}")
        if self.pixels.shape[1:] != self.grid.shape:
            raise PhantomError(f"pixels {self.pixels.shape[1:]} do not match grid {self.grid.shape}")
        if len(self.times_s) != self.pixels.shape[0]:
            raise PhantomError("one time per time point is required")

    @property
    def is_dynamic(self) -> bool:
        return self.pixels.shape[0] > 1


@dataclass
class PhantomCase:
    """A whole case: patient, studies, series, and its ground truth.

    ``truth_maps`` hold arrays (each with the grid named in ``truth['grids']``
    or 1-D curves); ``truth`` is JSON-able (labels, lesions with centres in
    patient coordinates, constants); ``label_rows`` become rows of the cohort's
    ``labels.csv``.
    """

    phantom: str
    case_index: int
    seed: int
    patient: Patient
    scanner: Scanner
    studies: list[Study]
    series: list[SeriesData]
    truth_maps: dict[str, np.ndarray]
    truth: dict[str, Any]
    label_rows: list[dict[str, Any]]
