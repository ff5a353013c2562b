"""Classic MR images (one instance per slice per time point), all vendors.

Timing conventions: GE writes TriggerTime (ms from the start of the series)
and TemporalPositionIdentifier on each phase of a dynamic; Philips and Canon
TemporalPositionIdentifier with AcquisitionTime; Siemens AcquisitionTime per
image. All candidates are kept on the frame; :mod:`.geometry` picks the one
that varies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from analyzers._shared.dicom_layouts.frames import (
    CLASSIC,
    Frame,
    SeriesGeometryError,
    float_or_none,
    header_without_pixels,
    image_kind,
    seconds_of_dt,
    seconds_of_tm,
    vector,
)

__all__ = ["classic_frames", "pixels_of"]


def pixels_of(ds: Dataset, source: str, *, rescale: bool = True) -> np.ndarray:
    """The stored pixels as float32, with RescaleSlope/Intercept applied when ``rescale``."""
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        transfer = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise SeriesGeometryError(
            f"{source}: the pixel data cannot be decoded (transfer syntax {transfer}: {exc})"
        ) from exc
    if not rescale:
        return pixels
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:
        pixels = pixels * np.float32(slope) + np.float32(intercept)
    return pixels


def instance_fields(ds: Dataset) -> dict[str, Any]:
    """The :class:`Frame` fields a single-frame header states once for all its frames (one
    image, or every tile of a MOSAIC): identity, timing candidates, acquisition, image kind."""
    temporal = ds.get("TemporalPositionIdentifier")
    trigger = float_or_none(ds.get("TriggerTime"))
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "instance_number": int(ds.get("InstanceNumber", 0) or 0),
        "temporal_position": None if temporal in (None, "") else int(temporal),
        "trigger_time_s": None if trigger is None else trigger / 1000.0,
        "acquisition_time_s": (
            seconds_of_tm(ds.get("AcquisitionTime"))
            if ds.get("AcquisitionTime")
            else seconds_of_dt(ds.get("AcquisitionDateTime"))
        ),
        "content_time_s": seconds_of_tm(ds.get("ContentTime")),
        "echo_time_ms": float_or_none(ds.get("EchoTime")),
        "flip_angle": float_or_none(ds.get("FlipAngle")),
        "repetition_time_ms": float_or_none(ds.get("RepetitionTime")),
        "image_kind": image_kind(ds.get("ImageType")),
    }


def classic_frames(ds: Dataset, source: str, owned: bool) -> list[Frame]:
    """The one frame of a classic (single-frame) MR image."""
    orientation = vector(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", source)
    position = vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", source)
    spacing = vector(ds.get("PixelSpacing"), 2, "PixelSpacing", source)
    pixels = pixels_of(ds, source)
    return [
        Frame(
            position=position,
            row_cosine=orientation[:3],
            column_cosine=orientation[3:],
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            pixels=pixels,
            **instance_fields(ds),
            header=header_without_pixels(ds, owned),
            layout=CLASSIC,
        )
    ]
