"""Where the real scanner series live (``reference-data/scanner-dicom``) and how tests find them.

The folder is part of the shared reference data, not of the repository: tests that use it
skip with a reason where it is absent (as in CI on a clean checkout).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

__all__ = [
    "SCANNER_DICOM",
    "gamma_variate_dip",
    "requires_scanner_dicom",
    "series_files",
    "write_mosaic_dsc",
    "write_philips_dsc",
    "write_repositioned",
    "write_xa_dsc",
]

SCANNER_DICOM = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data" / "scanner-dicom"

requires_scanner_dicom = pytest.mark.skipif(
    not SCANNER_DICOM.is_dir(),
    reason=f"real scanner series not present at {SCANNER_DICOM} (shared reference data, absent in CI)",
)


def series_files(relative: str) -> list[Path]:
    """The DICOM files of one series folder (or one multi-frame file) under scanner-dicom."""
    path = SCANNER_DICOM / relative
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in {".nii", ".json", ".txt"})


def gamma_variate_dip(time_points: int, *, depth: float = 0.35, arrival: int = 12, seed: int = 0) -> np.ndarray:
    """Relative signal S(t)/S0 of a first-pass bolus: a gamma-variate dip (depth at the minimum)."""
    t = np.arange(time_points, dtype=np.float64) - arrival
    shape = np.where(t > 0, np.power(np.clip(t, 0, None), 3.0) * np.exp(-np.clip(t, 0, None) / 1.5), 0.0)
    shape = shape / shape.max()
    noise = np.random.default_rng(seed).normal(0.0, 0.002, time_points)
    return 1.0 - depth * shape + noise


def write_mosaic_dsc(folder: Path, *, source: str = "siemens-vd13-mosaic/ax/axasc35", time_points: int = 60,
                     repetition_s: float = 1.5, description: str = "ep2d_perf_p2 64 meas",
                     noise: float = 0.01, seed: int = 0) -> list[Path]:
    """A MOSAIC DSC series built from a real Siemens MOSAIC EPI: its last (steady-state) volume
    repeated over ``time_points`` with a first-pass signal dip and ``noise`` (relative Gaussian)
    per time point; the real CSA headers, tile grid and geometry are kept; UIDs, instance
    numbers, acquisition times and the description are new.
    """
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted((pydicom.dcmread(p) for p in series_files(source)), key=lambda ds: int(ds.InstanceNumber))
    template = sources[-1]
    stored = template.pixel_array.astype(np.float64)
    top = 2 ** int(template.BitsStored) - 1
    dip = gamma_variate_dip(time_points, seed=seed)
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    start = 12 * 3600.0
    paths = []
    for t in range(time_points):
        ds = copy.deepcopy(template)
        values = stored * dip[t] * (1.0 + noise * rng.standard_normal(stored.shape))
        ds.PixelData = np.clip(np.rint(values), 0, top).astype(np.uint16).tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.InstanceNumber = t + 1
        ds.AcquisitionNumber = t + 1
        seconds = start + t * repetition_s
        ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
        ds.ContentTime = ds.AcquisitionTime
        path = folder / f"MR{t + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _datetime(seconds: float, date: str) -> str:
    whole, micro = int(seconds), round((seconds % 1) * 1e6) % 1000000
    return f"{date}{whole // 3600:02d}{whole % 3600 // 60:02d}{whole % 60:02d}.{micro:06d}"


def write_xa_dsc(folder: Path, *, source: str = "siemens-xa30-enhanced/10_DWI_dir80_PA", time_points: int = 30,
                 repetition_s: float = 1.5, description: str = "ep2d_perf XA", noise: float = 0.01,
                 seed: int = 0) -> list[Path]:
    """A DSC series in the Siemens XA layout (one Enhanced MR instance per volume) built from a real
    XA30 instance: its first volume repeated over ``time_points`` instances with a first-pass dip;
    each instance's frames get its TemporalPositionIndex, dimension index and acquisition times,
    NumberOfTemporalPositions says how many instances make the series.
    """
    import pydicom
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(series_files(source)[0])
    stored = template.pixel_array.astype(np.float64)
    top = 2 ** int(template.BitsStored) - 1
    date = str(template.ContentDate)
    dip = gamma_variate_dip(time_points, seed=seed)
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    start = 12 * 3600.0
    paths = []
    for t in range(time_points):
        ds = copy.deepcopy(template)
        values = stored * dip[t] * (1.0 + noise * rng.standard_normal(stored.shape))
        ds.PixelData = np.clip(np.rint(values), 0, top).astype(np.uint16).tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = ds.ProtocolName = description
        ds.InstanceNumber = ds.AcquisitionNumber = t + 1
        ds.NumberOfTemporalPositions = time_points
        moment = start + t * repetition_s
        ds.AcquisitionDateTime = _datetime(moment, date)
        ds.ContentTime = _datetime(moment, date)[8:]
        for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            content = frame.FrameContentSequence[0]
            content.TemporalPositionIndex = t + 1
            content.FrameAcquisitionNumber = t + 1
            content.DimensionIndexValues = [1, index + 1, t + 1]
            slice_time = moment + index * repetition_s / len(ds.PerFrameFunctionalGroupsSequence)
            content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = _datetime(slice_time, date)
        path = folder / f"XA{t + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_repositioned(files: list[Path], folder: Path, position: str) -> list[Path]:
    """A real classic series as the scanner writes it for a patient in ``position`` (new UIDs).

    The scanner's axes turn in the patient frame (:data:`analyzers.phantoms.positions.SCANNER_AXES`):
    each image's rows and columns are re-indexed (flips, transposition) and its
    ImageOrientationPatient / ImagePositionPatient rewritten, so every pixel keeps its patient
    position and value. Only positions that keep the slice plane are possible (a decubitus
    turns a sagittal plane coronal): :class:`ValueError` otherwise.
    """
    import pydicom
    from pydicom.uid import generate_uid

    from analyzers.phantoms.positions import SCANNER_AXES

    rotation = np.array(SCANNER_AXES[position], dtype=np.float64).T
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    written = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row, column = iop[:3], iop[3:]
        new_row, new_column = rotation @ row, rotation @ column
        pixels = ds.pixel_array
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        rows, columns = pixels.shape
        position_0 = np.array([float(v) for v in ds.ImagePositionPatient])
        if abs(abs(new_row @ row) - 1) < 1e-6 and abs(abs(new_column @ column) - 1) < 1e-6:
            flip_columns, flip_rows = new_row @ row < 0, new_column @ column < 0
            out = pixels[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
            spacing = (row_spacing, column_spacing)
        elif abs(abs(new_row @ column) - 1) < 1e-6 and abs(abs(new_column @ row) - 1) < 1e-6:
            flip_columns, flip_rows = new_row @ column < 0, new_column @ row < 0  # in the old axes
            out = pixels.T[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
            spacing = (column_spacing, row_spacing)
        else:
            raise ValueError(f"{position} turns the plane of {path.name}: not a re-indexing")
        corner_row = (rows - 1) if (new_column @ column < 0 or new_row @ column < 0) else 0
        corner_column = (columns - 1) if (new_row @ row < 0 or new_column @ row < 0) else 0
        origin = position_0 + corner_column * column_spacing * row + corner_row * row_spacing * column
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*new_row, *new_column)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin]
        ds.PixelSpacing = [f"{spacing[0]:.10g}", f"{spacing[1]:.10g}"]
        ds.Rows, ds.Columns = out.shape
        ds.PixelData = np.ascontiguousarray(out).tobytes()
        ds.PatientPosition = position
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / f"{index:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def write_philips_dsc(path: Path, *, source: str = "philips-enhanced/1903_WIP_SOURCE_-_3DpCASL.dcm",
                      time_points: int = 40, repetition_s: float = 1.5, description: str = "DSC_PERF",
                      echo_ms: float = 30.0, noise: float = 0.01, seed: int = 0) -> Path:
    """A DSC series in the Philips layout (the whole series in one Enhanced MR instance) built from
    the real Philips pCASL object: the 40 slices of its first label frame set repeated over
    ``time_points`` with a first-pass dip, as frames of one instance (TemporalPositionIndex,
    dimension indices and acquisition times per frame; NumberOfTemporalPositions). The source is
    an ASL acquisition with TE 9 ms, so the echo time is set to ``echo_ms`` (a T2*-weighted DSC).
    """
    import pydicom
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(series_files(source)[0])
    stored = ds.pixel_array.astype(np.float64)
    groups = ds.PerFrameFunctionalGroupsSequence
    first = [i for i, item in enumerate(groups)
             if int(item.FrameContentSequence[0].TemporalPositionIndex) == 1
             and int(item.FrameContentSequence[0].DimensionIndexValues[3]) == 0]
    first.sort(key=lambda i: int(groups[i].FrameContentSequence[0].InStackPositionNumber))
    top = 2 ** int(ds.BitsStored) - 1
    dip = gamma_variate_dip(time_points, seed=seed)
    rng = np.random.default_rng(seed)
    date = str(ds.ContentDate)
    start = 12 * 3600.0
    frames, items = [], []
    for t in range(time_points):
        for index in first:
            item = copy.deepcopy(groups[index])
            content = item.FrameContentSequence[0]
            content.TemporalPositionIndex = t + 1
            content.DimensionIndexValues = [1, int(content.InStackPositionNumber), t + 1]
            moment = start + t * repetition_s
            content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = _datetime(moment, date)
            item.MREchoSequence[0].EffectiveEchoTime = echo_ms
            items.append(item)
            values = stored[index] * dip[t] * (1.0 + noise * rng.standard_normal(stored[index].shape))
            frames.append(np.clip(np.rint(values), 0, top))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    ds.DimensionIndexSequence = DicomSequence(list(ds.DimensionIndexSequence)[:3])
    ds.NumberOfFrames = len(items)
    ds.NumberOfTemporalPositions = time_points
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = ds.ProtocolName = description
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
