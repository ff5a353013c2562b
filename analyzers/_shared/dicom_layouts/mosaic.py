"""Siemens MOSAIC: one classic instance per volume, its slices as tiles of one image.

Siemens VB/VD/VE scanners write EPI (fMRI, DWI, DSC ``ep2d_perf``) this way by
default: the slices of one time point are tiles of a square grid in one
image, ``NumberOfImagesInMosaic`` (CSA image header, also (0019,100A)) of them,
row by row. ImagePositionPatient of the instance is the corner of the whole
tile grid, not of slice 1, and the order of the slices along the normal is
given only by the CSA ``SliceNormalVector``.

The CSA headers are read with nibabel's maintained reader
(:mod:`nibabel.nicom.csareader`, :class:`nibabel.nicom.dicomwrappers.MosaicWrapper`):

* slice 1's position is the wrapper's corrected ``image_position`` and slice
  ``k`` lies ``k`` slice spacings along the CSA slice normal;
* when the series CSA header carries the protocol (``MrPhoenixProtocol``,
  parsed with :func:`nibabel.nicom.ascconv.parse_ascconv`), the centre of every
  slice it prescribes (``sSliceArray.asSlice[k].sPosition``) must agree with
  that within 0.1 mm, and the spacing of those centres is the slice spacing;
  disagreement, or a mosaic without a CSA header, is refused with the reason.

Compressed mosaics (JPEG Lossless, JPEG 2000) are decoded by pydicom's pixel
handlers (pylibjpeg) before the tiles are cut.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from analyzers._shared.dicom_layouts.classic import instance_fields, pixels_of
from analyzers._shared.dicom_layouts.frames import (
    MOSAIC,
    Frame,
    SeriesGeometryError,
    float_or_none,
    header_without_pixels,
    vector,
)

__all__ = ["MosaicGeometry", "is_mosaic", "mosaic_frames", "mosaic_geometry", "protocol_value"]

# Tile centres from the CSA slice normal and from the prescribed protocol must agree this well (mm).
_PROTOCOL_AGREEMENT_MM = 0.1


def _nicom() -> tuple[Any, Any, Any]:
    """nibabel's ascconv, csareader and dicomwrappers modules."""
    with warnings.catch_warnings():
        # nibabel warns on import that its DICOM readers are experimental; MOSAIC is their tested case.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import ascconv, csareader, dicomwrappers
    return ascconv, csareader, dicomwrappers


def is_mosaic(ds: Dataset) -> bool:
    """Whether a classic image is a Siemens MOSAIC (ImageType says so)."""
    return any(str(v).upper() == "MOSAIC" for v in (ds.get("ImageType") or []))


def _protocol(ds: Dataset) -> dict[str, Any] | None:
    """The ASCCONV protocol of the series CSA header (None when absent or unreadable)."""
    ascconv, csar, _ = _nicom()
    try:
        series = csar.get_csa_header(ds, "series")
        text = csar.get_scalar(series, "MrPhoenixProtocol") if series else None
    except (csar.CSAReadError, KeyError, TypeError, ValueError):
        return None
    if not isinstance(text, str):
        return None
    begin, end = text.find("### ASCCONV BEGIN"), text.find("### ASCCONV END ###")
    if begin < 0 or end < 0:
        return None
    try:
        protocol, _ = ascconv.parse_ascconv(text[begin:end + len("### ASCCONV END ###")], '""')
    except (AttributeError, ValueError, SyntaxError, KeyError):
        return None
    return dict(protocol)


def protocol_value(ds: Dataset, *path: str | int) -> Any:
    """A value of the series' ASCCONV protocol by path (``"sSliceArray", "lSize"``), or None."""
    node: Any = _protocol(ds)
    for key in path:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _prescribed_centres(protocol: dict[str, Any] | None, count: int) -> np.ndarray | None:
    """Centres of the prescribed slices (``count`` of them) from the protocol, or None."""
    if protocol is None:
        return None
    try:
        slices = protocol["sSliceArray"]["asSlice"]
        size = int(protocol["sSliceArray"].get("lSize", 0))
    except (KeyError, TypeError, ValueError):
        return None
    if size != count or len(slices) < count:
        return None
    centres = []
    for item in slices[:count]:
        position = (item or {}).get("sPosition", {}) if isinstance(item, dict) else {}
        centres.append([float(position.get(axis, 0.0)) for axis in ("dSag", "dCor", "dTra")])
    return np.asarray(centres, dtype=np.float64)


@dataclass(frozen=True)
class MosaicGeometry:
    """Where the tiles of one mosaic instance are: one slice per tile, in tile order."""

    rows: int
    columns: int
    grid: int
    positions: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]

    @property
    def count(self) -> int:
        return len(self.positions)

    def tile_offset(self, k: int) -> tuple[int, int]:
        """(row, column) of tile ``k``'s first pixel in the stored image."""
        return (k // self.grid) * self.rows, (k % self.grid) * self.columns


def mosaic_geometry(ds: Dataset, source: str) -> MosaicGeometry:
    """The slice positions of a MOSAIC instance from its headers (no pixel data needed)."""
    _, csar, dicomwrappers = _nicom()
    try:
        csa = csar.get_csa_header(ds, "image")
        wrapper = dicomwrappers.MosaicWrapper(ds, csa) if csa else None
    except (csar.CSAReadError, dicomwrappers.WrapperError, KeyError, ValueError, TypeError) as exc:
        raise SeriesGeometryError(
            f"{source}: {MOSAIC} whose CSA image header cannot be read ({exc}); the slice positions "
            "are unknown. Export the series with its Siemens private tags, or without MOSAIC"
        ) from exc
    if wrapper is None:
        raise SeriesGeometryError(
            f"{source}: {MOSAIC} without the Siemens CSA image header (0029,1010): the number of "
            "slices, their order and positions are unknown. Export the series with its Siemens "
            "private tags (an anonymiser may have removed them), or without MOSAIC"
        )
    orientation = vector(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", source)
    row_spacing, column_spacing = vector(ds.get("PixelSpacing"), 2, "PixelSpacing", source)
    rows, columns, count = (int(v) for v in wrapper.image_shape)
    grid = int(wrapper.mosaic_size)
    if count < 1 or int(ds.Rows) != rows * grid or int(ds.Columns) != columns * grid:
        raise SeriesGeometryError(
            f"{source}: {MOSAIC} of {ds.Rows}x{ds.Columns} pixels cannot hold {count} tiles "
            f"on a {grid}x{grid} grid"
        )
    normal = np.asarray(wrapper.slice_normal, dtype=np.float64)
    if csar.get_slice_normal(csa) is None:
        raise SeriesGeometryError(
            f"{source}: {MOSAIC} without the CSA SliceNormalVector: the order of its slices is unknown"
        )
    first = np.asarray(wrapper.image_position, dtype=np.float64)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    spacing_along = float_or_none(ds.get("SpacingBetweenSlices")) or float_or_none(ds.get("SliceThickness"))
    half_tile = row_cosine * column_spacing * columns / 2.0 + column_cosine * row_spacing * rows / 2.0
    centres = _prescribed_centres(_protocol(ds), count)
    if centres is not None:
        expected = first + half_tile
        if np.linalg.norm(centres[0] - expected) > _PROTOCOL_AGREEMENT_MM:
            raise SeriesGeometryError(
                f"{source}: {MOSAIC}: the first prescribed slice centre {np.round(centres[0], 2).tolist()} "
                f"disagrees with the CSA geometry {np.round(expected, 2).tolist()}; slice positions unknown"
            )
        positions = centres - half_tile
    else:
        if spacing_along is None and count > 1:
            raise SeriesGeometryError(
                f"{source}: {MOSAIC} without SpacingBetweenSlices/SliceThickness and without the "
                "protocol's slice positions: slice positions unknown"
            )
        positions = first + np.outer(np.arange(count) * (spacing_along or 0.0), normal)
    if centres is not None and count > 1:
        along = positions @ normal
        if not np.all(np.diff(along) > 0):
            raise SeriesGeometryError(
                f"{source}: {MOSAIC}: the prescribed slices are not in tile order along the CSA normal"
            )
    return MosaicGeometry(rows=rows, columns=columns, grid=grid, positions=np.asarray(positions),
                          row_cosine=row_cosine, column_cosine=column_cosine,
                          pixel_spacing=(float(row_spacing), float(column_spacing)))


def mosaic_frames(ds: Dataset, source: str, owned: bool) -> list[Frame]:
    """The slices of one MOSAIC instance as frames, in tile order."""
    geometry = mosaic_geometry(ds, source)
    rows, columns, grid, count = geometry.rows, geometry.columns, geometry.grid, geometry.count
    stored = pixels_of(ds, source)
    tiles = stored.reshape(grid, rows, grid, columns).transpose(0, 2, 1, 3).reshape(grid * grid, rows, columns)
    fields = instance_fields(ds)
    header = header_without_pixels(ds, owned)
    frames = []
    for k in range(count):
        frames.append(
            Frame(
                position=geometry.positions[k],
                row_cosine=geometry.row_cosine,
                column_cosine=geometry.column_cosine,
                pixel_spacing=geometry.pixel_spacing,
                pixels=np.ascontiguousarray(tiles[k]),
                **fields,
                header=header,
                layout=MOSAIC,
                tile_offset=geometry.tile_offset(k),
            )
        )
    return frames
