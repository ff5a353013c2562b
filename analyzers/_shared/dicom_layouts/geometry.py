"""Frames of one series → one regular grid: the consensus geometry and its tolerances.

This is the one place where float noise in the headers is forgiven and real
geometry errors are refused:

* Direction cosines that differ by at most :data:`ORIENTATION_TOLERANCE`
  (GE writes ImageOrientationPatient per slice with differences in the 8th to
  10th digit) are replaced by their orthonormalised mean; more is a mixture of
  orientations (several stacks, a three-plane localizer) and is refused.
* Pixel spacings and gaps between slices within :data:`SPACING_TOLERANCE`
  (relative) of their median are made regular; a gap of about twice the
  others is a missing slice, any other irregularity is refused.
* Slice origins must lie on one line along the slice normal (a sideways shift
  of more than :func:`_lateral_tolerance` is refused).

Everything downstream (resampling, SEG/PM/SR builders) sees the consensus
geometry only: the affine of the volume and the normalised headers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analyzers._shared.dicom_layouts.frames import (
    ENHANCED,
    ENHANCED_PER_VOLUME,
    ENHANCED_WHOLE_SERIES,
    Frame,
    SeriesGeometryError,
    float_or_none,
)

__all__ = [
    "ORIENTATION_TOLERANCE",
    "POSITION_TOLERANCE_MM",
    "SPACING_TOLERANCE",
    "Stack",
    "assemble",
    "series_layout",
]

#: Largest difference of direction cosines that is float noise, not another orientation.
ORIENTATION_TOLERANCE = 1e-4
#: Largest relative difference of pixel spacings or slice gaps that is float noise.
SPACING_TOLERANCE = 0.01
#: Frames closer than this along the slice normal belong to the same slice (mm).
POSITION_TOLERANCE_MM = 1e-2


@dataclass(frozen=True)
class Stack:
    """How the frames of a series form a ``(t, z, y, x)`` grid.

    Attributes
    ----------
    grid:
        Frame indices, shape ``(time points, slices)``.
    affine:
        4x4 (column, row, slice) index → LPS mm, from the consensus geometry.
    spacing:
        ``(dz, dy, dx)`` mm.
    times:
        Seconds of each time point from the first (None: static or no timing).
    layout:
        The series' layout (``frames.CLASSIC``, ``frames.MOSAIC``, ...).
    """

    grid: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    times: np.ndarray | None
    layout: str

    @property
    def row_cosine(self) -> np.ndarray:
        return self.affine[:3, 0] / np.linalg.norm(self.affine[:3, 0])

    @property
    def column_cosine(self) -> np.ndarray:
        return self.affine[:3, 1] / np.linalg.norm(self.affine[:3, 1])

    def slice_position(self, k: int) -> np.ndarray:
        """Consensus ImagePositionPatient of slice ``k``."""
        return self.affine[:3, 3] + k * self.affine[:3, 2]


def series_layout(frames: Sequence[Frame]) -> str:
    """The layout of the whole series (enhanced frames are told per-volume from whole-series)."""
    layouts = {f.layout for f in frames}
    if len(layouts) > 1:
        raise SeriesGeometryError(f"the series mixes layouts: {', '.join(sorted(layouts))}")
    layout = layouts.pop()
    if layout != ENHANCED:
        return layout
    instances = {f.sop_instance_uid for f in frames}
    if len(instances) == 1:
        return ENHANCED_WHOLE_SERIES
    per_instance: dict[str, set[int | None]] = {}
    for frame in frames:
        per_instance.setdefault(frame.sop_instance_uid, set()).add(frame.temporal_position)
    if all(len(t) == 1 for t in per_instance.values()):
        return ENHANCED_PER_VOLUME
    return f"{ENHANCED} in {len(instances)} instances"


def _consensus_orientation(frames: Sequence[Frame], layout: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([f.row_cosine for f in frames])
    columns = np.array([f.column_cosine for f in frames])
    row, column = rows.mean(axis=0), columns.mean(axis=0)
    deviation = np.maximum(np.abs(rows - row).max(axis=1), np.abs(columns - column).max(axis=1))
    worst = int(np.argmax(deviation))
    if deviation[worst] > ORIENTATION_TOLERANCE:
        raise SeriesGeometryError(
            f"{layout}: images of different orientations in one series (ImageOrientationPatient of "
            f"{frames[worst].sop_instance_uid} differs by {deviation[worst]:.2g} from the series' mean, "
            f"more than float noise {ORIENTATION_TOLERANCE:g}): send one plane per series"
        )
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column = column / np.linalg.norm(column)
    return row, column


def _consensus_pixel_spacing(frames: Sequence[Frame], layout: str) -> tuple[float, float]:
    spacings = np.array([f.pixel_spacing for f in frames], dtype=np.float64)
    median = np.median(spacings, axis=0)
    if np.any(median <= 0):
        raise SeriesGeometryError(f"{layout}: PixelSpacing {median.tolist()} is not positive")
    relative = np.abs(spacings / median - 1.0).max(axis=1)
    worst = int(np.argmax(relative))
    if relative[worst] > SPACING_TOLERANCE:
        raise SeriesGeometryError(
            f"{layout}: images of different pixel spacing in one series ({frames[worst].pixel_spacing} "
            f"vs {tuple(median.tolist())} mm)"
        )
    return float(median[0]), float(median[1])


def _cluster_slices(distances: np.ndarray) -> tuple[np.ndarray, int]:
    order = np.argsort(distances, kind="stable")
    slice_of = np.empty(len(distances), dtype=np.int64)
    slice_index = 0
    for rank, frame_index in enumerate(order):
        if rank > 0 and distances[frame_index] - distances[order[rank - 1]] > POSITION_TOLERANCE_MM:
            slice_index += 1
        slice_of[frame_index] = slice_index
    return slice_of, slice_index + 1


def _time_source(frames: Sequence[Frame]) -> str | None:
    """The first timing attribute that all frames carry and that varies."""
    for attribute in ("trigger_time_s", "acquisition_time_s", "content_time_s"):
        values = [getattr(f, attribute) for f in frames]
        if all(v is not None for v in values) and len(set(values)) > 1:
            return attribute
    return None


def _frame_time(frame: Frame, source: str | None, reference: float) -> float:
    if source is None:
        return 0.0
    value = float(getattr(frame, source))
    if source != "trigger_time_s" and value < reference - 12 * 3600:
        # A time of day earlier than the series start by half a day crossed midnight.
        value += 24 * 3600.0
    return value


def _what_differs(frames: Sequence[Frame]) -> str:
    """Which attribute tells apart frames that share a slice and a temporal position."""
    named = []
    for attribute, label in (("echo_time_ms", "echo time"), ("flip_angle", "flip angle"),
                             ("image_kind", "image type"), ("extra_dimensions", "a further dimension index")):
        values = {getattr(f, attribute) for f in frames}
        if len(values) > 1:
            named.append(f"{label} ({', '.join(sorted(str(v) for v in values))})")
    return ", ".join(named) or "nothing the headers state"


def _order_time_points(frames: Sequence[Frame], per_slice: list[list[int]], layout: str) -> np.ndarray:
    # One temporal position for all frames says nothing about order (a static multi-echo series).
    use_temporal = (all(f.temporal_position is not None for f in frames)
                    and len({f.temporal_position for f in frames}) > 1)
    time_source = _time_source(frames)
    reference = min((getattr(f, time_source) for f in frames), default=0.0) if time_source else 0.0
    # Repeated positions that differ in echo time or flip angle (multi-echo, VFA) are ordered by them.
    varying = [
        attribute for attribute in ("echo_time_ms", "flip_angle")
        if len({getattr(f, attribute) for f in frames}) > 1
        and all(getattr(f, attribute) is not None for f in frames)
    ]

    def sort_key(frame_index: int) -> tuple[float, ...]:
        frame = frames[frame_index]
        temporal = float(frame.temporal_position) if use_temporal else 0.0  # type: ignore[arg-type]
        return (temporal, *(float(getattr(frame, a)) for a in varying),
                _frame_time(frame, time_source, reference), float(frame.instance_number),
                float(frame.frame_number))

    n_times = len(per_slice[0])
    grid = np.empty((n_times, len(per_slice)), dtype=np.int64)
    for k, members in enumerate(per_slice):
        members.sort(key=sort_key)
        if use_temporal:
            labels = [frames[m].temporal_position for m in members]
            repeated = [label for label, count in Counter(labels).items() if count > 1]
            if repeated:
                clash = [frames[m] for m in members if frames[m].temporal_position == repeated[0]]
                raise SeriesGeometryError(
                    f"{layout}: slice {k} has {len(clash)} images at temporal position {repeated[0]}, "
                    f"told apart by {_what_differs(clash)}: not one time series. Send each as its own series"
                )
        grid[:, k] = members
    if use_temporal:
        reference_labels = [frames[m].temporal_position for m in grid[:, 0]]
        for k in range(len(per_slice)):
            labels = [frames[m].temporal_position for m in grid[:, k]]
            if labels != reference_labels:
                raise SeriesGeometryError(
                    f"{layout}: slice {k} has temporal positions {labels}, slice 0 has {reference_labels}"
                )
    return grid


def _lateral_tolerance(pixel_spacing: tuple[float, float], length_mm: float) -> float:
    """Sideways offset of slice origins that is float noise: 1 % of a pixel plus orientation noise."""
    return 0.01 * min(pixel_spacing) + ORIENTATION_TOLERANCE * length_mm + 1e-3


def _slice_step(positions: np.ndarray, normal: np.ndarray, frames: Sequence[Frame], layout: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Regular step vector between slices and the consensus position of slice 0."""
    n_slices = len(positions)
    if n_slices == 1:
        header = frames[0].header
        thickness = float_or_none(header.get("SpacingBetweenSlices")) or float_or_none(
            header.get("SliceThickness")) or 1.0
        return normal * thickness, positions[0]
    along = positions @ normal
    gaps = np.diff(along)
    median_gap = float(np.median(gaps))
    relative = np.abs(gaps / median_gap - 1.0)
    bad = np.flatnonzero(relative > SPACING_TOLERANCE + 1e-3 / median_gap)
    if bad.size:
        k = int(bad[0])
        ratio = gaps[k] / median_gap
        if abs(ratio - round(ratio)) < 0.1 and round(ratio) >= 2:
            raise SeriesGeometryError(
                f"{layout}: missing slice: {round(ratio) - 1} slice(s) missing between slices {k} and {k + 1} "
                f"(gap {gaps[k]:.3f} mm, the others {median_gap:.3f} mm); send the whole series"
            )
        raise SeriesGeometryError(
            f"{layout}: irregular slice spacing: gap {gaps[k]:.3f} mm between slices {k} and {k + 1}, "
            f"the others {median_gap:.3f} mm (more than {100 * SPACING_TOLERANCE:g} % apart)"
        )
    step = normal * (along[-1] - along[0]) / (n_slices - 1)
    origin = (positions - np.outer(np.arange(n_slices), step)).mean(axis=0)
    lateral = positions - origin - np.outer(np.arange(n_slices), step)
    offset = float(np.linalg.norm(lateral, axis=1).max())
    tolerance = _lateral_tolerance(frames[0].pixel_spacing, float(along[-1] - along[0]))
    if offset > tolerance:
        raise SeriesGeometryError(
            f"{layout}: the slices are not stacked along their normal (an origin lies {offset:.3f} mm "
            f"sideways, more than {tolerance:.3f} mm): not one volume"
        )
    return step, origin


def assemble(frames: Sequence[Frame], single_series: bool = True) -> Stack:
    """Arrange ``frames`` on one regular grid with the series' consensus geometry.

    Raises
    ------
    SeriesGeometryError
        Several series (when ``single_series``), mixed image sizes, image types
        (magnitude and phase), orientations or pixel spacings, irregular or
        missing slices, missing time points, or images that share a slice and a
        temporal position without being one time series; the message starts
        with the layout.
    """
    layout = series_layout(frames)
    first = frames[0]
    series = {f.series_instance_uid for f in frames}
    if single_series and len(series) > 1:
        raise SeriesGeometryError(f"{layout}: files belong to {len(series)} series: {sorted(series)}")
    for frame in frames:
        if frame.pixels.shape != first.pixels.shape:
            raise SeriesGeometryError(
                f"{layout}: mixed image sizes: {frame.sop_instance_uid} is {frame.pixels.shape}, "
                f"{first.sop_instance_uid} is {first.pixels.shape}"
            )
    kinds = sorted({f.image_kind for f in frames if f.image_kind is not None})
    if len(kinds) > 1:
        raise SeriesGeometryError(
            f"{layout}: images of {len(kinds)} image types in one series ({', '.join(kinds)}: magnitude, "
            "phase, real or imaginary); an analysis needs one. Send the magnitude images as their own series"
        )
    row, column = _consensus_orientation(frames, layout)
    row_spacing, column_spacing = _consensus_pixel_spacing(frames, layout)
    normal = np.cross(row, column)
    distances = np.array([float(f.position @ normal) for f in frames])
    slice_of, n_slices = _cluster_slices(distances)
    per_slice: list[list[int]] = [[] for _ in range(n_slices)]
    for frame_index, slice_number in enumerate(slice_of.tolist()):
        per_slice[slice_number].append(frame_index)
    counts = {len(members) for members in per_slice}
    if len(counts) > 1:
        by_count = {len(m): k for k, m in enumerate(per_slice)}
        raise SeriesGeometryError(
            f"{layout}: missing time points: slices have "
            + ", ".join(f"{c} images (e.g. slice {k})" for c, k in sorted(by_count.items()))
        )
    grid = _order_time_points(frames, per_slice, layout)
    positions = np.array([np.mean([frames[m].position for m in grid[:, k]], axis=0) for k in range(n_slices)])
    step, origin = _slice_step(positions, normal, frames, layout)
    affine = np.eye(4)
    affine[:3, 0] = row * column_spacing
    affine[:3, 1] = column * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    times: np.ndarray | None = None
    time_source = _time_source(frames)
    if grid.shape[0] > 1 and time_source is not None:
        reference = min(getattr(f, time_source) for f in frames)
        starts = np.array([min(_frame_time(frames[m], time_source, reference) for m in grid[t])
                           for t in range(grid.shape[0])])
        times = starts - starts[0]
    spacing = (float(np.linalg.norm(step)), row_spacing, column_spacing)
    return Stack(grid=grid, affine=affine, spacing=spacing, times=times, layout=layout)

