"""Enhanced MR multi-frame images (PS3.3 C.7.6.16), in both vendor styles.

* One instance per volume (Siemens XA: Vida, Sola, Free.Max write DSC, DCE
  and BOLD this way): every instance holds the slices of one time point, its
  frames share one TemporalPositionIndex and NumberOfTemporalPositions says
  how many instances make the series.
* The whole series in one instance (Philips): all slices of all time points
  are frames of one object.

Geometry comes from each frame's Plane Position, Plane Orientation and Pixel
Measures (per-frame or shared functional groups). Time: the Temporal Position
Time Offset (Temporal Position Sequence) or the cardiac trigger delay when
present, else FrameAcquisitionDateTime, else FrameReferenceDateTime; frames
are ordered by TemporalPositionIndex. Dimension indices other than stack,
in-stack position and temporal position (a Philips label/control index, a
private image type) are kept per frame, so frames that share a slice and a
time point are told apart, and refused, rather than mixed into one volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from analyzers._shared.dicom_layouts.classic import pixels_of
from analyzers._shared.dicom_layouts.frames import (
    ENHANCED,
    Frame,
    SeriesGeometryError,
    float_or_none,
    header_without_pixels,
    image_kind,
    seconds_of_dt,
    vector,
)

__all__ = ["enhanced_frames", "is_enhanced"]

# Dimension index pointers that say where and when a frame is (the rest are "extra" dimensions).
_SPATIAL_OR_TEMPORAL = {
    Tag("StackID"), Tag("InStackPositionNumber"), Tag("TemporalPositionIndex"),
    Tag("ImagePositionPatient"), Tag("FrameAcquisitionDateTime"), Tag("TriggerTime"),
    Tag("NominalCardiacTriggerDelayTime"), Tag("TemporalPositionTimeOffset"),
}


def is_enhanced(ds: Dataset) -> bool:
    """Whether ``ds`` is a multi-frame image with per-frame functional groups."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _group_item(per_frame: Dataset, shared: Dataset | None, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword``, per-frame first, then shared."""
    for groups in (per_frame, shared):
        if groups is not None and keyword in groups and len(groups[keyword].value) > 0:
            return groups[keyword].value[0]
    return None


def _echo_time(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> float | None:
    echo = _group_item(per_frame, shared, "MREchoSequence")
    if echo is not None:
        return float_or_none(echo.get("EffectiveEchoTime"))
    return float_or_none(ds.get("EchoTime"))


def _repetition_time(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> float | None:
    timing = _group_item(per_frame, shared, "MRTimingAndRelatedParametersSequence")
    if timing is not None and timing.get("RepetitionTime") not in (None, ""):
        return float(timing.RepetitionTime)
    return float_or_none(ds.get("RepetitionTime"))


def _flip_angle(per_frame: Dataset, shared: Dataset | None, ds: Dataset) -> float | None:
    timing = _group_item(per_frame, shared, "MRTimingAndRelatedParametersSequence")
    if timing is not None and timing.get("FlipAngle") not in (None, ""):
        return float(timing.FlipAngle)
    return float_or_none(ds.get("FlipAngle"))


def _extra_dimension_positions(ds: Dataset) -> list[int]:
    """Positions, within DimensionIndexValues, of the dimensions that are neither space nor time."""
    positions = []
    for index, item in enumerate(ds.get("DimensionIndexSequence") or []):
        pointer = item.get("DimensionIndexPointer")
        if pointer is not None and Tag(pointer) not in _SPATIAL_OR_TEMPORAL:
            positions.append(index)
    return positions


def _relative_time(groups: Dataset, shared: Dataset | None) -> float | None:
    """Seconds from the series start stated for the frame (temporal offset or trigger delay)."""
    temporal = _group_item(groups, shared, "TemporalPositionSequence")
    if temporal is not None and temporal.get("TemporalPositionTimeOffset") not in (None, ""):
        return float(temporal.TemporalPositionTimeOffset)
    cardiac = _group_item(groups, shared, "CardiacSynchronizationSequence")
    if cardiac is not None:
        delay = float_or_none(cardiac.get("NominalCardiacTriggerDelayTime"))
        return None if delay is None else delay / 1000.0
    return None


def enhanced_frames(ds: Dataset, source: str, owned: bool) -> list[Frame]:
    """The frames of an Enhanced MR (multi-frame) instance, in stored order."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame_seq:
        raise SeriesGeometryError(f"{source}: {ENHANCED} image without per-frame functional groups")
    all_pixels = pixels_of_frames(ds, source)
    if all_pixels.shape[0] != len(per_frame_seq):
        raise SeriesGeometryError(
            f"{source}: {ENHANCED} image with {all_pixels.shape[0]} frames of pixels but "
            f"{len(per_frame_seq)} per-frame functional groups"
        )
    extra_positions = _extra_dimension_positions(ds)
    instance_kind = image_kind(ds.get("ImageType"))
    header = header_without_pixels(ds, owned)
    frames = []
    for index, groups in enumerate(per_frame_seq):
        where = f"{source} frame {index + 1}"
        plane_position = _group_item(groups, shared, "PlanePositionSequence")
        plane_orientation = _group_item(groups, shared, "PlaneOrientationSequence")
        measures = _group_item(groups, shared, "PixelMeasuresSequence")
        if plane_position is None or plane_orientation is None or measures is None:
            raise SeriesGeometryError(f"{where}: plane position/orientation/pixel measures missing")
        orientation = vector(plane_orientation.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where)
        position = vector(plane_position.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
        spacing = vector(measures.get("PixelSpacing"), 2, "PixelSpacing", where)
        pixels = all_pixels[index]
        transform = _group_item(groups, shared, "PixelValueTransformationSequence")
        if transform is not None:
            slope = float(transform.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(transform.get("RescaleIntercept", 0.0) or 0.0)
            pixels = pixels * np.float32(slope) + np.float32(intercept)
        content = _group_item(groups, None, "FrameContentSequence")
        temporal = None if content is None else content.get("TemporalPositionIndex")
        stated = None if content is None else content.get("DimensionIndexValues")
        indices: list[Any] = [] if stated in (None, "") else (
            list(stated) if isinstance(stated, MultiValue | list | tuple) else [stated])
        frame_type = _group_item(groups, shared, "MRImageFrameTypeSequence")
        kind = image_kind(frame_type.get("FrameType")) if frame_type is not None else instance_kind
        frames.append(
            Frame(
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
                trigger_time_s=_relative_time(groups, shared),
                acquisition_time_s=None if content is None else seconds_of_dt(
                    content.get("FrameAcquisitionDateTime")),
                content_time_s=None if content is None else seconds_of_dt(
                    content.get("FrameReferenceDateTime")),
                echo_time_ms=_echo_time(groups, shared, ds),
                flip_angle=_flip_angle(groups, shared, ds),
                repetition_time_ms=_repetition_time(groups, shared, ds),
                header=header,
                layout=ENHANCED,
                frame_number=index + 1,
                image_kind=kind,
                extra_dimensions=tuple(indices[p] for p in extra_positions if p < len(indices)),
            )
        )
    return frames


def pixels_of_frames(ds: Dataset, source: str) -> np.ndarray:
    """All frames' stored pixels as float32 ``(frames, rows, columns)``; rescaling is per frame."""
    pixels = pixels_of(ds, source, rescale=False)
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels
