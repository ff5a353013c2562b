"""Lesion instances of a predicted metastasis mask: size, longest diameter, centroid.

Instances are the 26-connected components of the binary prediction, as in the
study's evaluation ("MRI cross-technique transfer learning for brain
metastasis detection", Eur Radiol Exp 2025;9:15). Components smaller than a
minimum size (default 3 voxels) are dropped as noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist

from analyzers.brainmets.metrics import connected_components

__all__ = ["DEFAULT_MIN_VOXELS", "InstanceError", "Lesion", "LesionSet", "extract_lesions"]

DEFAULT_MIN_VOXELS = 3


class InstanceError(ValueError):
    """The mask or its geometry cannot be turned into lesion instances."""


@dataclass(frozen=True)
class Lesion:
    """One connected component of the prediction.

    Attributes
    ----------
    label:
        Its value in :attr:`LesionSet.labels` (1-based, ordered by decreasing volume).
    voxel_count, volume_ml:
        Size in voxels and in millilitres (voxel count × voxel volume).
    longest_diameter_mm:
        Largest distance between the centres of two of its voxels (patient mm).
    centroid_lps:
        Centre of mass in patient coordinates (DICOM LPS, mm).
    centroid_ijk:
        Centre of mass as (column, row, slice) voxel indices.
    """

    label: int
    voxel_count: int
    volume_ml: float
    longest_diameter_mm: float
    centroid_lps: tuple[float, float, float]
    centroid_ijk: tuple[float, float, float]


@dataclass(frozen=True)
class LesionSet:
    """The kept lesions and their label map ``(z, y, x)`` (0 background)."""

    labels: np.ndarray
    lesions: tuple[Lesion, ...]
    dropped: int

    @property
    def mask(self) -> np.ndarray:
        """Binary mask of the kept lesions."""
        return self.labels > 0


def _longest_diameter(points_mm: np.ndarray) -> float:
    if len(points_mm) < 2:
        return 0.0
    return float(pdist(points_mm).max())


def extract_lesions(mask: np.ndarray, affine: np.ndarray, min_voxels: int = DEFAULT_MIN_VOXELS) -> LesionSet:
    """Split a binary ``(z, y, x)`` mask into lesions and measure them.

    Parameters
    ----------
    mask:
        Binary prediction on the series grid.
    affine:
        4x4 matrix mapping (column, row, slice, 1) to LPS mm
        (:attr:`analyzers._shared.volume.Volume.affine`).
    min_voxels:
        Components with fewer voxels are dropped.
    """
    arr = np.asarray(mask)
    aff = np.asarray(affine, dtype=np.float64)
    if arr.ndim != 3:
        raise InstanceError(f"expected a (z, y, x) mask, got shape {arr.shape}")
    if aff.shape != (4, 4) or abs(np.linalg.det(aff[:3, :3])) <= 0:
        raise InstanceError("affine must be an invertible 4x4 matrix")
    if min_voxels < 1:
        raise InstanceError("min_voxels must be at least 1")
    components, count = connected_components(arr)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    kept = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_voxels]
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    labels = relabel[components]
    voxel_ml = abs(float(np.linalg.det(aff[:3, :3]))) / 1000.0
    lesions: list[Lesion] = []
    objects = ndimage.find_objects(labels)
    for new_label, box in enumerate(objects, start=1):
        if box is None:
            continue
        local = labels[box] == new_label
        zyx = np.argwhere(local) + np.array([s.start for s in box])
        ijk = zyx[:, ::-1].astype(np.float64)
        centroid_ijk = ijk.mean(axis=0)
        # The longest chord ends on the surface: measure between boundary voxels only.
        surface = local & ~ndimage.binary_erosion(local, structure=np.ones((3, 3, 3), dtype=bool))
        surface_ijk = (np.argwhere(surface) + np.array([s.start for s in box]))[:, ::-1].astype(np.float64)
        surface_mm = surface_ijk @ aff[:3, :3].T
        centroid_lps = centroid_ijk @ aff[:3, :3].T + aff[:3, 3]
        lesions.append(
            Lesion(
                label=new_label,
                voxel_count=len(zyx),
                volume_ml=len(zyx) * voxel_ml,
                longest_diameter_mm=_longest_diameter(surface_mm),
                centroid_lps=tuple(float(v) for v in centroid_lps),  # type: ignore[arg-type]
                centroid_ijk=tuple(float(v) for v in centroid_ijk),  # type: ignore[arg-type]
            )
        )
    return LesionSet(labels=labels, lesions=tuple(lesions), dropped=count - len(kept))
