"""One 2D image of a series, whatever file layout it came from, and the header helpers.

Every vendor layout (classic, Siemens MOSAIC, Enhanced MR) is turned into a list
of :class:`Frame`: one slice image with its own patient position, orientation,
pixel spacing, timing and the instance (and frame, and mosaic tile) it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

from analyzers.contract import UnsuitableInput

__all__ = [
    "CLASSIC",
    "ENHANCED",
    "ENHANCED_PER_VOLUME",
    "ENHANCED_WHOLE_SERIES",
    "MOSAIC",
    "Frame",
    "SeriesGeometryError",
    "decimal_string",
    "float_or_none",
    "header_without_pixels",
    "image_kind",
    "seconds_of_dt",
    "seconds_of_tm",
    "vector",
]

#: Layout names, as messages and :attr:`analyzers._shared.volume.Volume.layout` give them.
CLASSIC = "classic MR (one instance per slice)"
MOSAIC = "Siemens MOSAIC (one instance per volume, slices as tiles)"
ENHANCED = "Enhanced MR multi-frame"
ENHANCED_PER_VOLUME = "Enhanced MR, one multi-frame instance per volume (Siemens XA style)"
ENHANCED_WHOLE_SERIES = "Enhanced MR, the whole series in one multi-frame instance (Philips style)"


class SeriesGeometryError(UnsuitableInput, ValueError):
    """The files do not form one regular volume; the message names the layout and the problem.

    It is an :class:`~analyzers.contract.UnsuitableInput`: a job whose input
    cannot be read ends ``rejected`` with this reason, never ``done`` on a
    misread volume.
    """


@dataclass(frozen=True)
class Frame:
    """One 2D image: a classic instance, one frame of an enhanced one, or one mosaic tile.

    Attributes
    ----------
    position:
        Patient position (LPS mm) of the centre of the first pixel.
    row_cosine, column_cosine:
        ImageOrientationPatient: direction of increasing column index, of
        increasing row index.
    pixel_spacing:
        (distance between rows, distance between columns) in mm.
    pixels:
        float32 ``(rows, columns)``, rescale slope/intercept applied.
    frame_number:
        1-based frame within its multi-frame instance; 0 for a single-frame image.
    tile_offset:
        (row, column) of the tile's first pixel in the stored mosaic image;
        (0, 0) outside MOSAIC.
    temporal_position:
        TemporalPositionIdentifier / TemporalPositionIndex.
    trigger_time_s, acquisition_time_s, content_time_s:
        Timing candidates (see :func:`analyzers._shared.volume.load_series`).
    image_kind:
        Magnitude/phase/real/imaginary (``M``, ``P``, ``R``, ``I`` ...) from
        ImageType or the frame type; ``None`` when not stated.
    extra_dimensions:
        Values of Enhanced MR dimension indices other than stack, in-stack
        position and temporal position (e.g. a label/control index).
    echo_time_ms, flip_angle, repetition_time_ms:
        Acquisition parameters of the frame (Enhanced MR: from its functional groups).
    layout:
        Which layout the frame came from (:data:`CLASSIC`, :data:`MOSAIC`, ...).
    """

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
    layout: str = CLASSIC
    frame_number: int = 0
    tile_offset: tuple[int, int] = (0, 0)
    image_kind: str | None = None
    extra_dimensions: tuple[Any, ...] = ()
    repetition_time_ms: float | None = None


def seconds_of_tm(value: Any) -> float | None:
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


def seconds_of_dt(value: Any) -> float | None:
    """Seconds since midnight of the time part of a DICOM DT value."""
    if value is None or len(str(value).strip()) < 8:
        return None
    text = str(value).strip()
    # Drop a UTC offset suffix; timing differences within a series do not need it.
    for sign in ("+", "-"):
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return seconds_of_tm(text[8:]) if len(text) > 8 else 0.0


def float_or_none(value: Any) -> float | None:
    """``float(value)``, or None for an absent or empty value."""
    if value is None or str(value).strip() == "":
        return None
    return float(value)


def decimal_string(value: float) -> DSfloat:
    """A DS value of at most 16 characters for ``value`` (for normalised geometry)."""
    return DSfloat(float(value), auto_format=True)


def image_kind(image_type: Any) -> str | None:
    """Magnitude/phase/... flag (value 3 of ImageType or FrameType) when it names one."""
    values = [str(v).upper() for v in (image_type or [])]
    if len(values) >= 3 and values[2] in {"M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY"}:
        return values[2][0]
    if len(values) >= 4 and values[3] in {"M", "P", "R", "I", "MAGNITUDE", "PHASE", "REAL", "IMAGINARY"}:
        return values[3][0]
    return None


def header_without_pixels(ds: Dataset, owned: bool) -> Dataset:
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
    filename = getattr(ds, "filename", None)
    if filename:
        header.filename = filename
    return header


def vector(value: Any, length: int, what: str, source: str) -> np.ndarray:
    """``value`` as a float vector of ``length`` values, or a :class:`SeriesGeometryError`."""
    if value is None:
        raise SeriesGeometryError(f"{source}: {what} is missing")
    try:
        result = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SeriesGeometryError(f"{source}: {what} is not numeric ({value!r})") from exc
    if result.shape != (length,) or not np.all(np.isfinite(result)):
        raise SeriesGeometryError(f"{source}: {what} has {result.size} values, expected {length} finite ones")
    return result
