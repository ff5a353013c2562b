"""Geometry consistency of one image series, from its headers.

Follows the Image Plane Module (DICOM PS3.3 C.7.6.2.1.1): every frame has a position
``P``, row and column direction cosines ``r``, ``c`` and a PixelSpacing; its slice
coordinate is ``P · (r × c)``. For Enhanced MR (PS3.3 C.7.6.16) the same values come
from the Plane Position, Plane Orientation and Pixel Measures functional groups and the
time from the Frame Content Sequence.

The checks: orientation and pixel spacing agree between frames; slices are evenly
spaced (a gap of k median spacings means k - 1 missing slices); no two frames share a
position (and time point); every slice has every time point; time points of a dynamic
series follow each other in increasing time with even steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset

from analyzers._shared.dicom_layouts.mosaic import is_mosaic, mosaic_geometry

__all__ = ["FrameGeometry", "GeometryFindings", "assess_geometry", "frames_of"]

# Positions closer than this along the slice normal are the same slice (mm).
POSITION_TOLERANCE_MM = 1e-2
# Direction cosines that differ by more than this are a different orientation.
ORIENTATION_TOLERANCE = 1e-3
# A slice gap or time step this far (fraction) from the median is irregular.
RELATIVE_TOLERANCE = 0.1


@dataclass(frozen=True)
class FrameGeometry:
    """The geometry and timing of one 2D frame."""

    sop_instance_uid: str
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    temporal_position: int | None
    time_s: float | None


def _seconds(value: Any) -> float | None:
    """Seconds of a TM (``HHMMSS.ffffff``) or the time part of a DT value."""
    if value in (None, ""):
        return None
    text = str(value)
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS.ffffff
        day = int(text[6:8])
        text = text[8:]
    else:
        day = 0
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return day * 86400.0 + hours * 3600.0 + minutes * 60.0 + seconds


def _classic(ds: Dataset) -> list[FrameGeometry]:
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return []
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
    temporal = ds.get("TemporalPositionIdentifier")
    if "TriggerTime" in ds and ds.TriggerTime not in (None, ""):
        time_s: float | None = float(ds.TriggerTime) / 1000.0
    else:
        time_s = _seconds(ds.get("AcquisitionTime")) or _seconds(ds.get("ContentTime"))
    return [FrameGeometry(
        str(ds.SOPInstanceUID), np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float),
        orientation[:3], orientation[3:], (spacing[0], spacing[1]),
        int(temporal) if temporal not in (None, "") else None, time_s)]


def _item(ds: Dataset, frame: Dataset | None, sequence: str) -> Dataset | None:
    for group in (frame, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if group is not None and sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _enhanced(ds: Dataset) -> list[FrameGeometry]:
    frames = []
    for n, frame in enumerate(ds.get("PerFrameFunctionalGroupsSequence", [])):
        position = _item(ds, frame, "PlanePositionSequence")
        orientation = _item(ds, frame, "PlaneOrientationSequence")
        measures = _item(ds, frame, "PixelMeasuresSequence")
        content = _item(ds, frame, "FrameContentSequence")
        if position is None or orientation is None:
            continue
        cosines = np.asarray([float(v) for v in orientation.ImageOrientationPatient], dtype=float)
        spacing = [float(v) for v in measures.PixelSpacing] if measures is not None else [1.0, 1.0]
        temporal = content.get("TemporalPositionIndex") if content is not None else None
        time_s = _seconds(content.get("FrameAcquisitionDateTime")) if content is not None else None
        frames.append(FrameGeometry(
            f"{ds.SOPInstanceUID}#{n + 1}", np.asarray([float(v) for v in position.ImagePositionPatient]),
            cosines[:3], cosines[3:], (spacing[0], spacing[1]),
            int(temporal) if temporal not in (None, "") else None, time_s))
    return frames


def _mosaic(ds: Dataset) -> list[FrameGeometry]:
    """One frame per tile of a Siemens MOSAIC, where the shared reader puts its slice."""
    geometry = mosaic_geometry(ds, str(ds.get("SOPInstanceUID", "")))
    (frame,) = _classic(ds)
    return [FrameGeometry(f"{frame.sop_instance_uid}#tile{k + 1}", geometry.positions[k], geometry.row_cosine,
                          geometry.column_cosine, geometry.pixel_spacing, frame.temporal_position, frame.time_s)
            for k in range(geometry.count)]


def frames_of(headers: Sequence[Dataset]) -> list[FrameGeometry]:
    """Every frame of the given instance headers (classic, Siemens MOSAIC tiles, or enhanced).

    Raises
    ------
    ValueError
        A MOSAIC whose slice positions cannot be known (no CSA header).
    """
    frames: list[FrameGeometry] = []
    for ds in headers:
        if "PerFrameFunctionalGroupsSequence" in ds:
            frames.extend(_enhanced(ds))
        elif is_mosaic(ds):
            frames.extend(_mosaic(ds))
        else:
            frames.extend(_classic(ds))
    return frames


@dataclass(frozen=True)
class GeometryFindings:
    """What :func:`assess_geometry` found (all counts are of frames or slices)."""

    frames: int
    slices: int
    time_points: int
    orientation_max_deviation: float
    pixel_spacing_consistent: bool
    slice_spacing_mm: float | None
    slice_spacing_irregular_gaps: int
    missing_slices: int
    duplicate_positions: int
    missing_time_points: int
    temporal_resolution_s: float | None
    time_steps_not_increasing: int
    time_steps_irregular: int
    problems: tuple[str, ...]

    @property
    def acceptable(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-able findings, the verdict first."""
        out: dict[str, Any] = {"acceptable": self.acceptable}
        out.update({k: getattr(self, k) for k in self.__dataclass_fields__})
        out["problems"] = list(self.problems)
        return out


def _clusters(values: np.ndarray, tolerance: float) -> np.ndarray:
    """Label sorted-by-value clusters: values closer than ``tolerance`` share a label."""
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), dtype=np.int64)
    gaps = np.diff(values[order]) > tolerance
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


def assess_geometry(frames: Sequence[FrameGeometry]) -> GeometryFindings:
    """Check orientation, spacing, missing and duplicate slices and the time axis.

    Raises
    ------
    ValueError
        No frame carries position and orientation (not a cross-sectional image series).
    """
    if not frames:
        raise ValueError("no frame has ImagePositionPatient and ImageOrientationPatient")
    problems: list[str] = []
    rows = np.stack([f.row_cosine for f in frames])
    columns = np.stack([f.column_cosine for f in frames])
    deviation = float(max(np.abs(rows - rows[0]).max(), np.abs(columns - columns[0]).max()))
    if deviation > ORIENTATION_TOLERANCE:
        problems.append(f"orientation differs between frames (max cosine difference {deviation:.4f})")
    spacings = np.asarray([f.pixel_spacing for f in frames])
    spacing_ok = bool(np.allclose(spacings, spacings[0], rtol=1e-4, atol=1e-6))
    if not spacing_ok:
        problems.append("PixelSpacing differs between frames")

    normal = np.cross(rows[0], columns[0])
    distance = np.stack([f.position for f in frames]) @ normal
    slice_label = _clusters(distance, POSITION_TOLERANCE_MM)
    n_slices = int(slice_label.max()) + 1
    slice_position = np.array([distance[slice_label == k].mean() for k in range(n_slices)])

    temporal = [f.temporal_position for f in frames]
    times = [f.time_s for f in frames]
    if all(t is not None for t in temporal):
        time_label = np.asarray(temporal, dtype=np.int64)
    elif all(t is not None for t in times) and len(set(times)) > 1 and n_slices < len(frames):
        time_label = _clusters(np.asarray(times, dtype=float), 1e-3)
    else:
        time_label = np.zeros(len(frames), dtype=np.int64)
    distinct_times = np.unique(time_label)
    n_times = len(distinct_times)
    keys = slice_label * (int(time_label.max()) + 1) + time_label
    unique_keys = len(np.unique(keys))
    duplicates = len(frames) - unique_keys
    if duplicates:
        problems.append(f"{duplicates} frame(s) repeat the position (and time point) of another")
    missing_times = n_slices * n_times - unique_keys
    if missing_times:
        problems.append(f"{missing_times} slice/time-point combination(s) missing")

    spacing_mm: float | None = None
    irregular = missing = 0
    if n_slices > 1:
        gaps = np.diff(slice_position)
        spacing_mm = float(np.median(gaps))
        deviating = np.abs(gaps - spacing_mm) > RELATIVE_TOLERANCE * spacing_mm + 1e-3
        irregular = int(deviating.sum())
        missing = int(np.clip(np.rint(gaps / spacing_mm) - 1, 0, None).sum())
        if irregular:
            problems.append(f"{irregular} slice gap(s) differ from the median spacing {spacing_mm:.3f} mm"
                            + (f" ({missing} slice(s) missing)" if missing else ""))

    resolution: float | None = None
    not_increasing = irregular_steps = 0
    if n_times > 1 and all(t is not None for t in times):
        time_array = np.asarray(times, dtype=float)
        start = np.array([time_array[time_label == label].min() for label in distinct_times])
        steps = np.diff(start)
        not_increasing = int((steps <= 0).sum())
        if not_increasing:
            problems.append(f"time is not increasing at {not_increasing} step(s) of the time axis")
        positive = steps[steps > 0]
        if len(positive):
            resolution = float(np.median(positive))
            irregular_steps = int((np.abs(positive - resolution) > RELATIVE_TOLERANCE * resolution + 1e-3).sum())
            if irregular_steps:
                problems.append(f"{irregular_steps} time step(s) differ from the median {resolution:.3f} s")
    return GeometryFindings(
        frames=len(frames), slices=n_slices, time_points=n_times, orientation_max_deviation=deviation,
        pixel_spacing_consistent=spacing_ok, slice_spacing_mm=spacing_mm, slice_spacing_irregular_gaps=irregular,
        missing_slices=missing, duplicate_positions=duplicates, missing_time_points=missing_times,
        temporal_resolution_s=resolution, time_steps_not_increasing=not_increasing,
        time_steps_irregular=irregular_steps, problems=tuple(problems))
