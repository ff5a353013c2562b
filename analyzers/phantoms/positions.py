"""Patient-position variants of a phantom case: the same patient, lying differently in the scanner.

DICOM patient coordinates (LPS) are attached to the patient, so the anatomy of a
case does not move when the patient lies prone or on a side; what changes is how
the scanner's axes, and with them the rows, columns and slices of every image,
lie in the patient. :func:`reposition` rewrites each series of a case for a
PatientPosition (PS3.3 C.7.3.1.1.2): the scanner's x, y and z axes expressed in
patient coordinates (:data:`SCANNER_AXES`) rotate every image axis, and the
voxels are re-indexed accordingly. Positions, spacings and values of the voxels
stay exactly the same (no interpolation): a series is the same set of voxels
written in another order with another ImageOrientationPatient.

This is exact for grids whose axes run along the patient axes (all phantoms).
Head/feet-first supine and prone keep every plane; a decubitus position turns
the scanner's y axis sideways, which keeps axial planes axial (the image turns
by 90 degrees) but would turn a sagittal prescription into a coronal one, so
decubitus variants of sagittal or coronal series are refused. The truth maps
stay on the original (HFS) grid with their ``affine_lps``; lesion centres in the
truth are patient coordinates and hold for every variant.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import numpy as np

from analyzers.phantoms.anatomy import Grid, as_triple
from analyzers.phantoms.model import PhantomCase, PhantomError, SeriesData

__all__ = ["PATIENT_POSITIONS", "SCANNER_AXES", "reposition", "reposition_series"]

_L, _R = (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)
_P, _A = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0)
_S, _I = (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)

#: PatientPosition -> the scanner's x, y (towards the table) and z (into the bore) axes in patient
#: coordinates (the columns of the rotation from scanner to patient); HFS is the identity.
SCANNER_AXES = MappingProxyType({
    "HFS": (_L, _P, _S),
    "HFP": (_R, _A, _S),
    "FFS": (_R, _P, _I),
    "FFP": (_L, _A, _I),
    "HFDL": (_A, _L, _S),
    "HFDR": (_P, _R, _S),
    "FFDL": (_P, _L, _I),
    "FFDR": (_A, _R, _I),
})
PATIENT_POSITIONS = tuple(SCANNER_AXES)


def _rotation(position: str) -> np.ndarray:
    if position not in SCANNER_AXES:
        raise PhantomError(f"patient position must be one of {', '.join(PATIENT_POSITIONS)}, got {position!r}")
    return np.array(SCANNER_AXES[position], dtype=np.float64).T


def reposition_series(series: SeriesData, position: str) -> SeriesData:
    """``series`` as the scanner writes it for a patient in ``position`` (same voxels, re-indexed)."""
    rotation = _rotation(position)
    grid = series.grid
    old_axes = np.array([grid.normal, grid.column_direction, grid.row_direction])  # array axes 0, 1, 2
    new_axes = (rotation @ old_axes.T).T
    if abs(abs(float(new_axes[0] @ old_axes[0])) - 1.0) > 1e-6:
        raise PhantomError(
            f"{position} would turn the slices of series {series.folder!r} into another plane; "
            "decubitus variants are written for axial series only"
        )
    permutation, flips = [], []
    for axis in new_axes:
        match = np.flatnonzero(np.abs(np.abs(old_axes @ axis) - 1.0) < 1e-6)
        if match.size != 1:
            raise PhantomError(
                f"series {series.folder!r} is oblique: its patient-position variant would need interpolation"
            )
        permutation.append(int(match[0]))
        flips.append(bool(old_axes[match[0]] @ axis < 0))
    pixels = series.pixels.transpose(0, *(1 + p for p in permutation))
    for axis, flip in enumerate(flips):
        if flip:
            pixels = np.flip(pixels, axis=1 + axis)
    shape = tuple(int(grid.shape[p]) for p in permutation)
    spacing = tuple(float(grid.spacing[p]) for p in permutation)
    corner = np.array([(grid.shape[p] - 1) if flip else 0 for p, flip in zip(permutation, flips, strict=True)])
    old_index = np.zeros(3)
    old_index[permutation] = corner
    origin = np.asarray(grid.origin) + old_index @ (old_axes * np.asarray(grid.spacing)[:, None])
    new_grid = Grid(shape=shape, spacing=spacing, origin=as_triple(origin),  # type: ignore[arg-type]
                    row_direction=as_triple(new_axes[2]), column_direction=as_triple(new_axes[1]))
    if not np.allclose(new_grid.normal, new_axes[0]):
        raise PhantomError(f"{position}: the re-indexed slices of {series.folder!r} are not right-handed")
    return dataclasses.replace(series, grid=new_grid, pixels=np.ascontiguousarray(pixels),
                               attributes={**series.attributes, "PatientPosition": position})


def reposition(case: PhantomCase, position: str) -> PhantomCase:
    """Every series of ``case`` written for a patient in ``position`` (see the module notes)."""
    if position == "HFS":
        return case
    return dataclasses.replace(case, series=[reposition_series(s, position) for s in case.series],
                               truth={**case.truth, "patient_position": position})
