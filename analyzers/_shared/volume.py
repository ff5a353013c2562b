"""DICOM series → voxel array, patient geometry and time axis.

:func:`load_series` turns the files of one MR series (classic, one file per
slice per time point in any order, or Enhanced MR multi-frame) into a
:class:`Volume`: a float32 array of shape ``(z, y, x)`` or ``(t, z, y, x)``
with the affine that maps voxel indices to patient coordinates, the time of
every time point and the UIDs of the source instances.

Geometry follows DICOM PS3.3 C.7.6.2.1.1 (Image Plane Module): the patient
coordinate system is LPS in millimetres and a pixel at column ``i`` and row
``j`` of a slice with position ``P``, row direction cosine ``r``, column
direction cosine ``c`` and PixelSpacing ``(Δrow, Δcol)`` lies at
``P + i·Δcol·r + j·Δrow·c``. Slices are ordered along ``n = r × c``.

:func:`load_segmentation` reads a DICOM SEG (highdicom) and resamples each
segment onto the grid of a :class:`Volume` through patient coordinates, so a
SEG drawn on another series of the same frame of reference can be used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

__all__ = [
    "SegmentationError",
    "SeriesGeometryError",
    "Volume",
    "load_segmentation",
    "load_series",
    "resample_nearest",
]

# Positions closer than this along the slice normal belong to the same slice (mm).
_POSITION_TOLERANCE_MM = 1e-2
# Direction cosines of two slices agree when they differ by less than this.
_ORIENTATION_TOLERANCE = 1e-4
# A gap between neighbouring slices may differ from the median gap by this fraction.
_SPACING_RELATIVE_TOLERANCE = 0.1


class SeriesGeometryError(ValueError):
    """The files do not form one regular volume (the message names the problem)."""


class SegmentationError(ValueError):
    """A DICOM SEG cannot be read or mapped onto the requested grid."""


@dataclass(frozen=True)
class _Frame:
    """One 2D image (a classic instance or one frame of an enhanced one)."""

    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    pixels: np.ndarray
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    instance_number: int
    temporal_position: int | None
    trigger_time_s: float | None
    acquisition_time_s: float | None
    content_time_s: float | None
    echo_time_ms: float | None
    flip_angle: float | None
    header: Dataset


@dataclass(frozen=True)
class Volume:
    """A series as voxels with patient geometry and (for a dynamic) a time axis.

    Attributes
    ----------
    data:
        float32 array, ``(z, y, x)`` for a static or ``(t, z, y, x)`` for a
        dynamic series; rescale slope/intercept applied.
    affine:
        4x4 matrix mapping ``(i, j, k, 1)`` with ``i`` = column, ``j`` = row,
        ``k`` = slice index to patient LPS coordinates in mm.
    spacing:
        ``(dz, dy, dx)`` in mm (``dz`` is the distance between slice centres).
    times:
        Seconds of every time point from the first one, ``None`` for a static
        series or when the headers carry no timing.
    sop_instance_uids:
        Source SOP Instance UIDs, shape ``(t, z)`` or ``(z,)``.
    headers:
        One pydicom dataset (pixel data removed) per slice of the first time
        point, in slice order.
    sop_class_uids:
        SOP Class UIDs matching ``sop_instance_uids``.
    time_point_headers:
        For a 4D volume, the header of the first slice of every time point
        (FlipAngle of a variable flip angle series, EchoTime of a multi-echo
        series, AcquisitionTime, ...); empty for a 3D volume.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    times: np.ndarray | None
    sop_instance_uids: np.ndarray
    headers: tuple[Dataset, ...]
    sop_class_uids: np.ndarray
    time_point_headers: tuple[Dataset, ...] = ()

    def __post_init__(self) -> None:
        if self.data.ndim not in (3, 4):
            raise SeriesGeometryError(f"data must be 3D or 4D, got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise SeriesGeometryError(f"affine must be 4x4, got {self.affine.shape}")
        if self.sop_instance_uids.shape != self.data.shape[: self.data.ndim - 2]:
            raise SeriesGeometryError(
                f"sop_instance_uids shape {self.sop_instance_uids.shape} does not match "
                f"data shape {self.data.shape}"
            )
        if self.times is not None and (
            self.data.ndim != 4 or len(self.times) != self.data.shape[0]
        ):
            raise SeriesGeometryError("times must have one entry per time point of a 4D volume")

    # ------------------------------------------------------------------ properties
    @property
    def is_dynamic(self) -> bool:
        """Whether the volume has a time axis."""
        return self.data.ndim == 4

    @property
    def shape3d(self) -> tuple[int, int, int]:
        """Spatial shape ``(z, y, x)``."""
        return tuple(int(n) for n in self.data.shape[-3:])  # type: ignore[return-value]

    @property
    def frame_of_reference_uid(self) -> str:
        """FrameOfReferenceUID of the series."""
        return str(self.headers[0].FrameOfReferenceUID)

    @property
    def study_instance_uid(self) -> str:
        """StudyInstanceUID of the series."""
        return str(self.headers[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        """SeriesInstanceUID of the series."""
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit vectors of the i, j, k axes."""
        axes = self.affine[:3, :3]
        return axes / np.linalg.norm(axes, axis=0, keepdims=True)

    # ------------------------------------------------------------------ geometry
    def index_to_patient(self, ijk: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` given as (column, row, slice) to LPS mm."""
        ijk_arr = np.asarray(ijk, dtype=np.float64)
        return ijk_arr @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, xyz: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map LPS mm ``(..., 3)`` to (fractional) voxel indices (column, row, slice)."""
        xyz_arr = np.asarray(xyz, dtype=np.float64)
        inverse = np.linalg.inv(self.affine)
        return xyz_arr @ inverse[:3, :3].T + inverse[:3, 3]

    def frame(self, t: int | None = None) -> np.ndarray:
        """The 3D array of time point ``t`` (or the static array)."""
        if self.is_dynamic:
            if t is None:
                raise ValueError("a dynamic volume needs a time point index")
            return self.data[t]
        if t not in (None, 0):
            raise ValueError("a static volume has only time point 0")
        return self.data

    def to_sitk(self, t: int | None = None, array: np.ndarray | None = None) -> Any:
        """SimpleITK image of the volume (or of time point ``t``) with its geometry.

        Parameters
        ----------
        t:
            Time point of a dynamic volume.
        array:
            Optional ``(z, y, x)`` array on this grid (e.g. a map or a mask) to
            wrap instead of the volume's own data.
        """
        import SimpleITK as sitk

        values = self.frame(t) if array is None else np.asarray(array)
        if values.shape != self.shape3d:
            raise SeriesGeometryError(f"array shape {values.shape} is not {self.shape3d}")
        image = sitk.GetImageFromArray(values)
        dz, dy, dx = self.spacing
        image.SetSpacing((float(dx), float(dy), float(dz)))
        image.SetOrigin(tuple(float(v) for v in self.affine[:3, 3]))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def array_from_sitk(self, image: Any) -> np.ndarray:
        """Array ``(z, y, x)`` of a SimpleITK image resampled onto this grid (nearest).

        Use it to bring a mask or map computed on another grid (e.g. after
        resampling to 1 mm) back onto the series' voxels.
        """
        import SimpleITK as sitk

        spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * spacing[np.newaxis, :]
        affine[:3, 3] = image.GetOrigin()
        return resample_nearest(sitk.GetArrayFromImage(image), affine, self.affine, self.shape3d)

    def resample_from(self, array: np.ndarray, source: Volume | np.ndarray) -> np.ndarray:
        """Resample ``array`` ``(z, y, x)`` from ``source``'s grid onto this one (nearest).

        ``source`` is another :class:`Volume` of the same frame of reference or
        its affine (same convention as :attr:`affine`).
        """
        source_affine = source.affine if isinstance(source, Volume) else np.asarray(source)
        return resample_nearest(array, source_affine, self.affine, self.shape3d)


def resample_nearest(
    array: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    fill: Any = 0,
) -> np.ndarray:
    """Nearest-neighbour resampling of a ``(z, y, x)`` array through patient coordinates.

    Both affines map (column, row, slice) indices to LPS mm. Target voxels whose
    centre falls outside the source grid get ``fill``.
    """
    source = np.asarray(array)
    if source.ndim != 3:
        raise SeriesGeometryError(f"expected a (z, y, x) array, got shape {source.shape}")
    # Target index → source index is affine; compute it slice by slice to bound memory.
    mapping = np.linalg.inv(source_affine) @ target_affine
    nz, ny, nx = target_shape
    out = np.full(target_shape, fill, dtype=source.dtype)
    jj, ii = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64),
                         indexing="ij")
    sz, sy, sx = source.shape
    for k in range(nz):
        src = (
            mapping[:3, 0, None, None] * ii
            + mapping[:3, 1, None, None] * jj
            + mapping[:3, 2, None, None] * k
            + mapping[:3, 3, None, None]
        )
        # Half-voxel rounding; a tiny epsilon keeps exact half-way points stable.
        idx = np.floor(src + 0.5 + 1e-9).astype(np.int64)
        inside = (
            (idx[0] >= 0) & (idx[0] < sx) & (idx[1] >= 0) & (idx[1] < sy)
            & (idx[2] >= 0) & (idx[2] < sz)
        )
        if inside.any():
            out[k][inside] = source[idx[2][inside], idx[1][inside], idx[0][inside]]
    return out


# ---------------------------------------------------------------------- reading
def _seconds_of_tm(value: Any) -> float | None:
    """Seconds since midnight of a DICOM TM value (None when absent/unparseable)."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().replace(":", "")
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _seconds_of_dt(value: Any) -> float | None:
    """Seconds since midnight of the time part of a DICOM DT value."""
    if value is None or len(str(value).strip()) < 8:
        return None
    text = str(value).strip()
    # Drop a UTC offset suffix; timing differences within a series do not need it.
    for sign in ("+", "-"):
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return _seconds_of_tm(text[8:]) if len(text) > 8 else 0.0


def _float_or_none(value: Any) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    return float(value)


def _header_without_pixels(ds: Dataset, owned: bool) -> Dataset:
    """``ds`` without pixel data (and per-frame groups); in place when ``owned``.

    Files read here are owned and stripped in place, which avoids converting
    every element of every file; datasets passed in by a caller are copied.
    """
    dropped = ("PixelData", "FloatPixelData", "DoubleFloatPixelData",
               "PerFrameFunctionalGroupsSequence")
    if owned:
        for keyword in dropped:
            if keyword in ds:
                delattr(ds, keyword)
        return ds
    header = Dataset()
    for element in ds:
        if element.keyword not in dropped:
            header.add(element)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        header.file_meta = meta
    return header


def _vector(value: Any, length: int, what: str, source: str) -> np.ndarray:
    if value is None:
        raise SeriesGeometryError(f"{source}: {what} is missing")
    vector = np.asarray([float(v) for v in value], dtype=np.float64)
    if vector.shape != (length,):
        raise SeriesGeometryError(f"{source}: {what} has {vector.size} values, expected {length}")
    return vector


def _classic_frames(ds: Dataset, source: str, owned: bool) -> list[_Frame]:
    orientation = _vector(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", source)
    position = _vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", source)
    spacing = _vector(ds.get("PixelSpacing"), 2, "PixelSpacing", source)
    pixels = ds.pixel_array.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:
        pixels = pixels * np.float32(slope) + np.float32(intercept)
    temporal = ds.get("TemporalPositionIdentifier")
    return [
        _Frame(
            position=position,
            row_cosine=orientation[:3],
            column_cosine=orientation[3:],
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            pixels=pixels,
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            instance_number=int(ds.get("InstanceNumber", 0) or 0),
            temporal_position=None if temporal in (None, "") else int(temporal),
            trigger_time_s=(
                None if (tt := _float_or_none(ds.get("TriggerTime"))) is None else tt / 1000.0
            ),
            acquisition_time_s=(
                _seconds_of_tm(ds.get("AcquisitionTime"))
                if ds.get("AcquisitionTime")
                else _seconds_of_dt(ds.get("AcquisitionDateTime"))
            ),
            content_time_s=_seconds_of_tm(ds.get("ContentTime")),
            echo_time_ms=_float_or_none(ds.get("EchoTime")),
            flip_angle=_float_or_none(ds.get("FlipAngle")),
            header=_header_without_pixels(ds, owned),
        )
    ]


def _group_item(
    per_frame: Dataset, shared: Dataset | None, keyword: str
) -> Dataset | None:
    """The first item of functional group ``keyword``, per-frame first, then shared."""
    for groups in (per_frame, shared):
        if groups is not None and keyword in groups and len(groups[keyword].value) > 0:
            return groups[keyword].value[0]
    return None


def _echo_time(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> float | None:
    echo = _group_item(per_frame, shared, "MREchoSequence")
    if echo is not None:
        return _float_or_none(echo.get("EffectiveEchoTime"))
    return _float_or_none(ds.get("EchoTime"))


def _flip_angle(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> float | None:
    timing = _group_item(per_frame, shared, "MRTimingAndRelatedParametersSequence")
    if timing is not None and timing.get("FlipAngle") not in (None, ""):
        return float(timing.FlipAngle)
    return _float_or_none(ds.get("FlipAngle"))


def _enhanced_frames(ds: Dataset, source: str, owned: bool) -> list[_Frame]:
    """Frames of an Enhanced MR (multi-frame) instance (PS3.3 C.7.6.16)."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame_seq:
        raise SeriesGeometryError(f"{source}: multi-frame image without per-frame groups")
    all_pixels = ds.pixel_array.astype(np.float32)
    if all_pixels.ndim == 2:
        all_pixels = all_pixels[np.newaxis]
    header = _header_without_pixels(ds, owned)
    frames = []
    for index, groups in enumerate(per_frame_seq):
        where = f"{source} frame {index + 1}"
        plane_position = _group_item(groups, shared, "PlanePositionSequence")
        plane_orientation = _group_item(groups, shared, "PlaneOrientationSequence")
        measures = _group_item(groups, shared, "PixelMeasuresSequence")
        if plane_position is None or plane_orientation is None or measures is None:
            raise SeriesGeometryError(f"{where}: plane position/orientation/pixel measures missing")
        orientation = _vector(
            plane_orientation.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where
        )
        position = _vector(
            plane_position.get("ImagePositionPatient"), 3, "ImagePositionPatient", where
        )
        spacing = _vector(measures.get("PixelSpacing"), 2, "PixelSpacing", where)
        pixels = all_pixels[index]
        transform = _group_item(groups, shared, "PixelValueTransformationSequence")
        if transform is not None:
            slope = float(transform.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(transform.get("RescaleIntercept", 0.0) or 0.0)
            pixels = pixels * np.float32(slope) + np.float32(intercept)
        content = _group_item(groups, None, "FrameContentSequence")
        temporal = None if content is None else content.get("TemporalPositionIndex")
        acquired = None if content is None else _seconds_of_dt(
            content.get("FrameAcquisitionDateTime")
        )
        referenced = None if content is None else _seconds_of_dt(
            content.get("FrameReferenceDateTime")
        )
        cardiac = _group_item(groups, None, "CardiacSynchronizationSequence")
        trigger = None
        if cardiac is not None:
            delay = _float_or_none(cardiac.get("NominalCardiacTriggerDelayTime"))
            trigger = None if delay is None else delay / 1000.0
        frames.append(
            _Frame(
                position=position,
                row_cosine=orientation[:3],
                column_cosine=orientation[3:],
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                pixels=pixels,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                instance_number=index + 1,
                temporal_position=None if temporal in (None, "") else int(temporal),
                trigger_time_s=trigger,
                acquisition_time_s=acquired,
                content_time_s=referenced,
                echo_time_ms=_echo_time(groups, shared, ds),
                flip_angle=_flip_angle(groups, shared, ds),
                header=header,
            )
        )
    return frames


def _read_frames(files: Iterable[str | PathLike[str] | Dataset]) -> list[_Frame]:
    frames: list[_Frame] = []
    seen: set[str] = set()
    for item in files:
        owned = not isinstance(item, Dataset)
        if isinstance(item, Dataset):
            ds, source = item, str(item.get("SOPInstanceUID", "dataset"))
        else:
            source = str(item)
            try:
                ds = pydicom.dcmread(item)
            except (pydicom.errors.InvalidDicomError, OSError) as exc:
                raise SeriesGeometryError(f"{source}: not a readable DICOM file ({exc})") from exc
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise SeriesGeometryError(f"{source}: no pixel data (not an image)")
        # A re-sent instance (same SOP Instance UID) is the same image: keep the first.
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid and uid in seen:
            continue
        seen.add(uid)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            frames.extend(_enhanced_frames(ds, source, owned))
        else:
            frames.extend(_classic_frames(ds, source, owned))
    if not frames:
        raise SeriesGeometryError("no files given")
    return frames


def _check_consistency(frames: list[_Frame], single_series: bool) -> None:
    first = frames[0]
    series = {f.series_instance_uid for f in frames}
    if single_series and len(series) > 1:
        raise SeriesGeometryError(f"files belong to {len(series)} series: {sorted(series)}")
    for frame in frames:
        if frame.pixels.shape != first.pixels.shape:
            raise SeriesGeometryError(
                f"mixed image sizes: {frame.sop_instance_uid} is {frame.pixels.shape}, "
                f"{first.sop_instance_uid} is {first.pixels.shape}"
            )
        if (
            np.abs(frame.row_cosine - first.row_cosine).max() > _ORIENTATION_TOLERANCE
            or np.abs(frame.column_cosine - first.column_cosine).max() > _ORIENTATION_TOLERANCE
        ):
            raise SeriesGeometryError(
                f"inconsistent ImageOrientationPatient: {frame.sop_instance_uid} differs from "
                f"{first.sop_instance_uid}"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise SeriesGeometryError(
                f"inconsistent PixelSpacing: {frame.pixel_spacing} vs {first.pixel_spacing}"
            )


def _time_source(frames: list[_Frame]) -> str | None:
    """The first timing attribute that all frames carry and that varies."""
    for attribute in ("trigger_time_s", "acquisition_time_s", "content_time_s"):
        values = [getattr(f, attribute) for f in frames]
        if all(v is not None for v in values) and len(set(values)) > 1:
            return attribute
    return None


def _frame_time(frame: _Frame, source: str | None, reference: float) -> float:
    if source is None:
        return 0.0
    value = float(getattr(frame, source))
    if source != "trigger_time_s" and value < reference - 12 * 3600:
        # A time of day earlier than the series start by half a day crossed midnight.
        value += 24 * 3600.0
    return value


def load_series(
    files: Iterable[str | PathLike[str] | Dataset], *, single_series: bool = True
) -> Volume:
    """Read one MR series into a :class:`Volume`.

    Parameters
    ----------
    files:
        Paths (or already read datasets) of the series' instances in any order:
        classic images (one per slice per time point) or Enhanced MR
        multi-frame instances.
    single_series:
        Refuse files of several series (the default). ``False`` combines
        series of identical geometry, e.g. a variable flip angle acquisition
        written as one series per flip angle.

    Returns
    -------
    Volume
        3D for a static, 4D for a dynamic series.

    Raises
    ------
    SeriesGeometryError
        Files of several series, inconsistent orientation, pixel spacing or
        image size, irregular slice spacing (a missing slice), or a different
        number of time points per slice (a missing time point).

    Notes
    -----
    Slices are sorted by their distance along the normal of the image plane.
    Time points are grouped per slice position and ordered by
    TemporalPositionIdentifier (TemporalPositionIndex for enhanced images),
    then by EchoTime or FlipAngle where those vary (a multi-echo or variable
    flip angle series becomes 4D along them), then by TriggerTime,
    AcquisitionTime or ContentTime, then InstanceNumber.
    ``times`` comes from TriggerTime when it varies, else AcquisitionTime
    (or AcquisitionDateTime), else ContentTime, taking the earliest slice of
    each time point, relative to the first entry of the fourth axis. Instances
    given twice (same SOP Instance UID) are read once.
    """
    frames = _read_frames(files)
    _check_consistency(frames, single_series)
    first = frames[0]
    normal = np.cross(first.row_cosine, first.column_cosine)
    distances = np.array([float(f.position @ normal) for f in frames])

    # Cluster positions along the normal into slices.
    order = np.argsort(distances, kind="stable")
    slice_of = np.empty(len(frames), dtype=np.int64)
    slice_index = 0
    for rank, frame_index in enumerate(order):
        gap = distances[frame_index] - distances[order[rank - 1]] if rank > 0 else 0.0
        if gap > _POSITION_TOLERANCE_MM:
            slice_index += 1
        slice_of[frame_index] = slice_index
    n_slices = slice_index + 1

    time_source = _time_source(frames)
    reference = min(
        (getattr(f, time_source) for f in frames), default=0.0
    ) if time_source else 0.0

    per_slice: list[list[int]] = [[] for _ in range(n_slices)]
    for frame_index, slice_number in enumerate(slice_of.tolist()):
        per_slice[slice_number].append(frame_index)
    counts = {len(members) for members in per_slice}
    if len(counts) > 1:
        by_count = {len(m): k for k, m in enumerate(per_slice)}
        raise SeriesGeometryError(
            "missing time points: slices have "
            + ", ".join(f"{c} images (e.g. slice {k})" for c, k in sorted(by_count.items()))
        )
    n_times = counts.pop()

    use_temporal = all(f.temporal_position is not None for f in frames)

    # Repeated positions that differ in echo time or flip angle (multi-echo, VFA)
    # are ordered by those values; otherwise by time.
    varying = [
        attribute for attribute in ("echo_time_ms", "flip_angle")
        if len({getattr(f, attribute) for f in frames}) > 1
        and all(getattr(f, attribute) is not None for f in frames)
    ]

    def sort_key(frame_index: int) -> tuple[float, ...]:
        frame = frames[frame_index]
        temporal = float(frame.temporal_position) if use_temporal else 0.0  # type: ignore[arg-type]
        return (
            temporal,
            *(float(getattr(frame, attribute)) for attribute in varying),
            _frame_time(frame, time_source, reference),
            float(frame.instance_number),
        )

    grid = np.empty((n_times, n_slices), dtype=np.int64)
    for k, members in enumerate(per_slice):
        members.sort(key=sort_key)
        if use_temporal:
            labels = [frames[m].temporal_position for m in members]
            if len(set(labels)) != len(labels):
                raise SeriesGeometryError(
                    f"slice {k} has repeated TemporalPositionIdentifier values {labels}"
                )
        grid[:, k] = members
    if use_temporal:
        reference_labels = [frames[m].temporal_position for m in grid[:, 0]]
        for k in range(n_slices):
            labels = [frames[m].temporal_position for m in grid[:, k]]
            if labels != reference_labels:
                raise SeriesGeometryError(
                    f"slice {k} has temporal positions {labels}, slice 0 has {reference_labels}"
                )

    # Slice geometry: regular spacing along the normal, step vector from the ends.
    positions = np.array([frames[m].position for m in grid[0]])
    if n_slices > 1:
        gaps = np.diff(positions @ normal)
        median_gap = float(np.median(gaps))
        irregular = np.abs(gaps - median_gap) > _SPACING_RELATIVE_TOLERANCE * median_gap + 1e-3
        if irregular.any():
            k = int(np.flatnonzero(irregular)[0])
            raise SeriesGeometryError(
                f"irregular slice spacing (missing slice?): gap {gaps[k]:.3f} mm between slices "
                f"{k} and {k + 1}, median {median_gap:.3f} mm"
            )
        step = (positions[-1] - positions[0]) / (n_slices - 1)
    else:
        thickness = _float_or_none(first.header.get("SpacingBetweenSlices")) or _float_or_none(
            first.header.get("SliceThickness")
        ) or 1.0
        step = normal * thickness
    row_spacing, column_spacing = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = first.row_cosine * column_spacing
    affine[:3, 1] = first.column_cosine * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]

    data = np.stack(
        [np.stack([frames[m].pixels for m in grid[t]]) for t in range(n_times)]
    ).astype(np.float32, copy=False)
    uids = np.array([[frames[m].sop_instance_uid for m in row] for row in grid], dtype=object)
    classes = np.array([[frames[m].sop_class_uid for m in row] for row in grid], dtype=object)
    headers = tuple(frames[m].header for m in grid[0])
    spacing = (float(np.linalg.norm(step)), float(row_spacing), float(column_spacing))

    times: np.ndarray | None = None
    if n_times > 1:
        if time_source is not None:
            starts = np.array([
                min(_frame_time(frames[m], time_source, reference) for m in grid[t])
                for t in range(n_times)
            ])
            times = starts - starts[0]
        per_time_point = tuple(frames[m].header for m in grid[:, 0])
        return Volume(data, affine, spacing, times, uids, headers, classes, per_time_point)
    return Volume(data[0], affine, spacing, None, uids[0], headers, classes[0])


def load_segmentation(
    seg_files: Sequence[str | PathLike[str] | Dataset] | str | PathLike[str] | Dataset,
    onto: Volume,
) -> dict[str, np.ndarray]:
    """Read a DICOM SEG and resample every segment onto ``onto``'s grid.

    Parameters
    ----------
    seg_files:
        One or more SEG instances (paths or datasets).
    onto:
        The volume whose ``(z, y, x)`` grid the masks should have. The SEG must
        share its frame of reference.

    Returns
    -------
    dict[str, numpy.ndarray]
        Boolean mask per SegmentLabel (``label``, ``label (2)``, ... when labels
        repeat). Nearest-neighbour mapping through patient coordinates.

    Raises
    ------
    SegmentationError
        The SEG is unreadable, has another frame of reference, or its frames
        do not form a regular volume.
    """
    import highdicom as hd

    items = [seg_files] if isinstance(seg_files, str | PathLike | Dataset) else list(seg_files)
    masks: dict[str, np.ndarray] = {}
    for item in items:
        try:
            seg = hd.seg.Segmentation.from_dataset(item) if isinstance(item, Dataset) else (
                hd.seg.segread(item)
            )
        except (pydicom.errors.InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            raise SegmentationError(f"{item}: not a readable DICOM SEG ({exc})") from exc
        seg_frame_of_reference = str(seg.get("FrameOfReferenceUID", ""))
        if seg_frame_of_reference and seg_frame_of_reference != onto.frame_of_reference_uid:
            raise SegmentationError(
                f"SEG frame of reference {seg_frame_of_reference} differs from the series' "
                f"{onto.frame_of_reference_uid}"
            )
        for description in seg.SegmentSequence:
            number = int(description.SegmentNumber)
            try:
                volume = seg.get_volume(segment_numbers=[number], combine_segments=False)
            except (ValueError, RuntimeError) as exc:
                raise SegmentationError(
                    f"segment {number} of the SEG is not a regular volume ({exc})"
                ) from exc
            array = np.asarray(volume.array)
            if array.ndim == 4:
                array = array[..., 0]
            # FRACTIONAL values come rescaled to 0..1: a voxel belongs from 0.5 on.
            threshold = 0.5 if seg.SegmentationType == "FRACTIONAL" else 0.0
            # highdicom's affine maps (axis0, axis1, axis2) of its array; ours maps
            # (column, row, slice) of a (slice, row, column) array: reverse the axes.
            source_affine = np.eye(4)
            source_affine[:3, 0] = volume.affine[:3, 2]
            source_affine[:3, 1] = volume.affine[:3, 1]
            source_affine[:3, 2] = volume.affine[:3, 0]
            source_affine[:3, 3] = volume.affine[:3, 3]
            mask = resample_nearest(
                array > threshold, source_affine, onto.affine, onto.shape3d, False
            )
            label = str(description.SegmentLabel)
            key, copy = label, 2
            while key in masks:
                key, copy = f"{label} ({copy})", copy + 1
            masks[key] = mask
    return masks

