"""What the SEG / Parametric Map / SR builders reference, for every source layout.

highdicom derives an output's geometry from its source images. That works as
is for classic series (one instance per slice, headers already carrying the
series' consensus geometry, see :func:`analyzers._shared.volume.load_series`),
but not for:

* Enhanced MR (multi-frame) sources, whose plane orientation is often
  per frame (Siemens XA, Philips) while highdicom wants it shared: the source
  handed to highdicom is a copy of the instance's header with the consensus
  orientation and pixel measures in its shared functional groups;
* Siemens MOSAIC sources, whose stored image is the tile grid: the mosaic
  instance is referenced, and the output's planes (one per real slice, where
  the slices are) are given explicitly, so the output is not tied to the
  mosaic's pixel matrix.

:func:`region_reference` says which stored image and pixel offset a slice of
the volume is, for SCOORD image regions in an SR.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from analyzers._shared.dicom_layouts import MOSAIC, decimal_string
from analyzers._shared.volume import Volume

__all__ = ["OutputError", "RegionReference", "SourceImages", "region_reference", "source_images"]


class OutputError(ValueError):
    """Inputs to an output builder are inconsistent (shape, geometry, empty content)."""


@dataclass(frozen=True)
class SourceImages:
    """Source images for highdicom and the geometry arguments that go with them."""

    images: list[Dataset]
    geometry: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegionReference:
    """The stored image a slice is in: SOP class/instance, frame number, pixel offset (column, row)."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    pixel_offset: tuple[int, int]


def _first_time_point(values: np.ndarray, volume: Volume) -> np.ndarray:
    return values[0] if volume.is_dynamic else values


def _full_multiframe(header: Dataset, given: Sequence[Dataset]) -> Dataset:
    """The multi-frame source instance of ``header`` with its per-frame functional groups."""
    uid = str(header.SOPInstanceUID)
    for dataset in given:
        if str(dataset.SOPInstanceUID) == uid:
            return dataset
    if "PerFrameFunctionalGroupsSequence" in header:
        return header
    # load_series keeps one header per instance without the per-frame groups; read them again
    # from the file it came from (without pixel data: the builders need only the metadata).
    filename = getattr(header, "filename", None)
    if isinstance(filename, str) and filename:
        try:
            return pydicom.dcmread(filename, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise OutputError(f"cannot re-read the multi-frame source {filename}: {exc}") from exc
    raise OutputError(
        f"the multi-frame source {uid} was not read from a file; pass it as source_datasets"
    )


def _plane_geometry(volume: Volume) -> dict[str, Any]:
    """Explicit plane positions, orientation and pixel measures of every slice of ``volume``."""
    direction = volume.direction
    orientation = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
    dz, dy, dx = volume.spacing
    thickness = volume.headers[0].get("SliceThickness") if volume.headers else None
    positions = [
        hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_position=[float(v) for v in volume.affine[:3, 2] * k + volume.affine[:3, 3]],
        )
        for k in range(volume.shape3d[0])
    ]
    return {
        "plane_positions": positions,
        "plane_orientation": hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=orientation),
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=[float(dy), float(dx)],
            slice_thickness=float(thickness) if thickness not in (None, "") else float(dz),
            spacing_between_slices=float(dz),
        ),
    }


def _with_shared_geometry(dataset: Dataset, volume: Volume) -> Dataset:
    """A copy of a multi-frame header whose orientation and pixel measures are shared (consensus)."""
    normalised = Dataset()
    normalised.update(dataset)
    for name in ("file_meta", "filename"):
        value = getattr(dataset, name, None)
        if value is not None:
            setattr(normalised, name, value)
    direction = volume.direction
    orientation = Dataset()
    orientation.ImageOrientationPatient = [decimal_string(v) for v in (*direction[:, 0], *direction[:, 1])]
    measures = Dataset()
    measures.PixelSpacing = [decimal_string(volume.spacing[1]), decimal_string(volume.spacing[2])]
    shared_source = dataset.get("SharedFunctionalGroupsSequence")
    measures.SliceThickness = decimal_string(volume.spacing[0])
    if shared_source and "PixelMeasuresSequence" in shared_source[0]:
        thickness = shared_source[0].PixelMeasuresSequence[0].get("SliceThickness")
        if thickness not in (None, ""):
            measures.SliceThickness = thickness
    shared = copy.deepcopy(shared_source[0]) if shared_source else Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    normalised.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for item in dataset.get("PerFrameFunctionalGroupsSequence") or []:
        groups = Dataset()
        groups.update(item)
        for keyword in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
            if keyword in groups:
                delattr(groups, keyword)
        per_frame.append(groups)
    if per_frame:
        normalised.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return normalised


def source_images(volume: Volume, source_datasets: Sequence[Dataset] = ()) -> SourceImages:
    """The source images of an output drawn on ``volume`` (its first time point).

    Classic sources are referenced slice by slice. A multi-frame source: the
    instance holding the first time point's frames, with consensus geometry,
    and each output plane at its slice's position (highdicom matches them to
    the source frames and references those by frame number). A MOSAIC: the
    mosaic instance of the first time point and one output plane per real
    slice, placed where the slice is.
    """
    if not volume.headers:
        raise OutputError("the source volume has no headers to reference")
    uids = list(dict.fromkeys(str(u) for u in np.ravel(_first_time_point(volume.sop_instance_uids, volume))))
    if volume.layout == MOSAIC:
        if len(uids) != 1:
            raise OutputError(f"the first time point of the MOSAIC spans {len(uids)} instances")
        return SourceImages([volume.headers[0]], _plane_geometry(volume))
    if all(int(h.get("NumberOfFrames", 1) or 1) <= 1 for h in volume.headers):
        return SourceImages(list(volume.headers))
    if len(uids) != 1:
        raise OutputError(
            f"the first time point of the multi-frame source spans {len(uids)} instances; "
            "an output can reference one multi-frame source instance"
        )
    header = next(h for h in volume.headers if str(h.SOPInstanceUID) == uids[0])
    dataset = _with_shared_geometry(_full_multiframe(header, source_datasets), volume)
    geometry = _plane_geometry(volume)
    return SourceImages([dataset], {"plane_positions": geometry["plane_positions"]})


def region_reference(volume: Volume, slice_index: int) -> RegionReference:
    """Where slice ``slice_index`` (first time point) is stored, for an SCOORD image region."""
    uids = _first_time_point(volume.sop_instance_uids, volume)
    classes = _first_time_point(volume.sop_class_uids, volume)
    frame = 0
    if volume.frame_numbers is not None:
        frame = int(_first_time_point(volume.frame_numbers, volume)[slice_index])
    row, column = (0, 0)
    if volume.tile_offsets is not None:
        row, column = (int(v) for v in volume.tile_offsets[slice_index])
    return RegionReference(
        sop_class_uid=str(classes[slice_index]),
        sop_instance_uid=str(uids[slice_index]),
        frame_number=frame or None,
        pixel_offset=(column, row),
    )
