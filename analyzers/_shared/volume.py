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

from analyzers._shared.dicom_layouts import (
    CLASSIC,
    ENHANCED_PER_VOLUME,
    ENHANCED_WHOLE_SERIES,
    MOSAIC,
    Frame,
    SeriesGeometryError,
    assemble,
    decimal_string,
    read_frames,
)

__all__ = [
    "CLASSIC",
    "ENHANCED_PER_VOLUME",
    "ENHANCED_WHOLE_SERIES",
    "MOSAIC",
    "SegmentationError",
    "SeriesGeometryError",
    "Volume",
    "load_segmentation",
    "load_series",
    "resample_nearest",
]

class SegmentationError(ValueError):
    """A DICOM SEG cannot be read or mapped onto the requested grid."""


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
    layout: str = CLASSIC
    frame_numbers: np.ndarray | None = None
    tile_offsets: np.ndarray | None = None

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
    def describe(self) -> str:
        """The layout, size and voxel size in words, for messages."""
        nz, ny, nx = self.shape3d
        dz, dy, dx = self.spacing
        times = f" x {self.data.shape[0]} time points" if self.is_dynamic else ""
        return f"{self.layout}, {nz} slices{times} ({nx}x{ny} pixels, {dx:.3g}x{dy:.3g}x{dz:.3g} mm)"

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
def _normalised_header(header: Dataset, position: np.ndarray, row: np.ndarray, column: np.ndarray,
                       pixel_spacing: tuple[float, float]) -> Dataset:
    """A copy of a classic slice header with the series' consensus geometry.

    The copy shares the other elements; only the geometry elements are new
    objects, so the caller's datasets are not changed.
    """
    copy = Dataset()
    copy.update(header)
    for name in ("file_meta", "filename"):
        value = getattr(header, name, None)
        if value is not None:
            setattr(copy, name, value)
    copy.add_new(0x00200037, "DS", [decimal_string(v) for v in (*row, *column)])
    copy.add_new(0x00200032, "DS", [decimal_string(v) for v in position])
    copy.add_new(0x00280030, "DS", [decimal_string(v) for v in pixel_spacing])
    return copy


def _with_acquisition(frame: Frame) -> Dataset:
    """A shallow copy of a multi-frame instance's header carrying the frame's EchoTime,
    RepetitionTime and FlipAngle at the top level, where analyzers read them for any layout."""
    copy = Dataset()
    copy.update(frame.header)
    for name in ("file_meta", "filename"):
        value = getattr(frame.header, name, None)
        if value is not None:
            setattr(copy, name, value)
    for tag, value in ((0x00180081, frame.echo_time_ms), (0x00180080, frame.repetition_time_ms),
                       (0x00181314, frame.flip_angle)):
        if value is not None:
            copy.add_new(tag, "DS", decimal_string(value))
    return copy


def load_series(
    files: Iterable[str | PathLike[str] | Dataset], *, single_series: bool = True
) -> Volume:
    """Read one MR series, of any vendor layout, into a :class:`Volume`.

    Parameters
    ----------
    files:
        Paths (or already read datasets) of the series' instances in any order:
        classic images (one per slice per time point), Siemens MOSAIC (one per
        time point, slices as tiles), Enhanced MR multi-frame (one instance per
        volume, or the whole series in one).
    single_series:
        Refuse files of several series (the default). ``False`` combines
        series of identical geometry, e.g. a variable flip angle acquisition
        written as one series per flip angle.

    Returns
    -------
    Volume
        3D for a static, 4D for a dynamic series, with the consensus geometry
        (see :mod:`analyzers._shared.dicom_layouts.geometry`) in its affine and
        in its classic slice headers, and :attr:`Volume.layout` naming the layout.

    Raises
    ------
    SeriesGeometryError
        (an :class:`~analyzers.contract.UnsuitableInput`) Files of several
        series, mixed orientations, pixel spacings, image sizes or image types,
        irregular or missing slices, missing time points, a MOSAIC without its
        CSA header; the message names the layout.

    Notes
    -----
    Slices are sorted by their distance along the normal of the image plane.
    Time points are grouped per slice position and ordered by
    TemporalPositionIdentifier (TemporalPositionIndex for enhanced images),
    then by EchoTime or FlipAngle where those vary (a multi-echo or variable
    flip angle series becomes 4D along them), then by TriggerTime,
    AcquisitionTime or ContentTime, then InstanceNumber and frame number.
    ``times`` comes from TriggerTime (enhanced: Temporal Position Time Offset
    or trigger delay) when it varies, else AcquisitionTime (enhanced:
    FrameAcquisitionDateTime; MOSAIC: the mosaic's, for all its slices),
    else ContentTime, taking the earliest slice of each time point,
    relative to the first. Instances given twice (same SOP Instance UID) are
    read once.
    """
    frames = read_frames(files)
    stack = assemble(frames, single_series)
    grid = stack.grid
    n_times = grid.shape[0]
    data = np.stack(
        [np.stack([frames[m].pixels for m in grid[t]]) for t in range(n_times)]
    ).astype(np.float32, copy=False)
    uids = np.array([[frames[m].sop_instance_uid for m in row] for row in grid], dtype=object)
    classes = np.array([[frames[m].sop_class_uid for m in row] for row in grid], dtype=object)
    frame_numbers = np.array([[frames[m].frame_number for m in row] for row in grid], dtype=np.int64)
    tile_offsets = np.array([frames[m].tile_offset for m in grid[0]], dtype=np.int64)
    row_spacing, column_spacing = stack.spacing[1], stack.spacing[2]
    if stack.layout == CLASSIC:
        headers = tuple(
            _normalised_header(frames[m].header, stack.slice_position(k), stack.row_cosine,
                               stack.column_cosine, (row_spacing, column_spacing))
            for k, m in enumerate(grid[0])
        )
    elif stack.layout == MOSAIC:
        headers = tuple(frames[m].header for m in grid[0])
    else:
        headers = tuple(_with_acquisition(frames[m]) for m in grid[0])
    if n_times > 1:
        per_time_point = tuple(
            frames[m].header if stack.layout in (CLASSIC, MOSAIC) else _with_acquisition(frames[m])
            for m in grid[:, 0])
        return Volume(data, stack.affine, stack.spacing, stack.times, uids, headers, classes,
                      per_time_point, layout=stack.layout, frame_numbers=frame_numbers,
                      tile_offsets=tile_offsets)
    return Volume(data[0], stack.affine, stack.spacing, None, uids[0], headers, classes[0],
                  layout=stack.layout, frame_numbers=frame_numbers[0], tile_offsets=tile_offsets)


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

