"""Every vendor layout of an MR series, read into frames and arranged on one grid.

:func:`read_frames` turns the files of a series into :class:`Frame` objects
(one per 2D slice image): classic images (:mod:`.classic`), Siemens MOSAIC
(:mod:`.mosaic`, tiles cut with nibabel's CSA reader) and Enhanced MR
multi-frame in both vendor styles (:mod:`.enhanced`). :func:`assemble`
(:mod:`.geometry`) puts them on one regular grid with the series' consensus
geometry, the one place where header float noise is forgiven and real
geometry errors are refused. :func:`analyzers._shared.volume.load_series` is
the public entry point built on both.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike

import pydicom
from pydicom.dataset import Dataset

from analyzers._shared.dicom_layouts.classic import classic_frames
from analyzers._shared.dicom_layouts.enhanced import enhanced_frames, is_enhanced
from analyzers._shared.dicom_layouts.frames import (
    CLASSIC,
    ENHANCED,
    ENHANCED_PER_VOLUME,
    ENHANCED_WHOLE_SERIES,
    MOSAIC,
    Frame,
    SeriesGeometryError,
    decimal_string,
)
from analyzers._shared.dicom_layouts.geometry import (
    ORIENTATION_TOLERANCE,
    SPACING_TOLERANCE,
    Stack,
    assemble,
)
from analyzers._shared.dicom_layouts.mosaic import is_mosaic, mosaic_frames

__all__ = [
    "CLASSIC",
    "ENHANCED",
    "ENHANCED_PER_VOLUME",
    "ENHANCED_WHOLE_SERIES",
    "MOSAIC",
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE",
    "Frame",
    "SeriesGeometryError",
    "Stack",
    "assemble",
    "decimal_string",
    "read_frames",
]


def read_frames(files: Iterable[str | PathLike[str] | Dataset]) -> list[Frame]:
    """The 2D frames of every file (or dataset) of a series, whatever its layout.

    Instances given twice (same SOP Instance UID) are read once.

    Raises
    ------
    SeriesGeometryError
        A file is not readable DICOM, has no pixel data, lacks the geometry
        attributes of its layout, or its pixels cannot be decoded.
    """
    frames: list[Frame] = []
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
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid and uid in seen:
            continue
        seen.add(uid)
        if is_enhanced(ds):
            frames.extend(enhanced_frames(ds, source, owned))
        elif is_mosaic(ds):
            frames.extend(mosaic_frames(ds, source, owned))
        else:
            frames.extend(classic_frames(ds, source, owned))
    if not frames:
        raise SeriesGeometryError("no files given")
    return frames
