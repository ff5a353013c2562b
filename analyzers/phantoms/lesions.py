"""Lesion geometry shared by the phantoms: soft-edged ellipsoids placed in the anatomy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analyzers.phantoms.anatomy import Anatomy, Grid
from analyzers.phantoms.model import PhantomError

__all__ = ["Ellipsoid", "dural_ellipsoid", "intra_axial_ellipsoid", "random_rotation"]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in patient coordinates (mm): centre, semi-axes and axes (columns of ``rotation``)."""

    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray

    def normalised_distance(self, points: np.ndarray) -> np.ndarray:
        """1 on the surface, < 1 inside, for points ``(..., 3)``."""
        local = (points - self.centre) @ self.rotation
        return np.sqrt(np.sum((local / self.radii) ** 2, axis=-1))

    def fraction(self, grid: Grid, coords: np.ndarray | None = None, edge_mm: float | None = None) -> np.ndarray:
        """Partial-volume fraction (0–1) on ``grid`` with a linear edge about one voxel wide."""
        pts = grid.patient_coordinates() if coords is None else coords
        edge = min(grid.spacing[1:]) if edge_mm is None else edge_mm
        d = self.normalised_distance(pts)
        return np.clip(0.5 + (1.0 - d) * float(np.mean(self.radii)) / edge, 0.0, 1.0).astype(np.float32)


def _slab_candidates(anatomy: Anatomy, mask: np.ndarray, margin_slices: int) -> np.ndarray:
    nz = anatomy.grid.shape[0]
    slab = np.zeros(anatomy.grid.shape, dtype=bool)
    lo, hi = margin_slices, nz - margin_slices
    if hi <= lo:
        lo, hi = 0, nz
    slab[lo:hi] = True
    return np.argwhere(mask & slab)


def dural_ellipsoid(
    anatomy: Anatomy,
    rng: np.random.Generator,
    radius_mm: float,
    avoid: list[tuple[np.ndarray, float]],
    coords: np.ndarray,
    margin_slices: int = 2,
    flatten: tuple[float, float] = (0.6, 0.9),
) -> Ellipsoid:
    """A dural-based ellipsoid: attached to the inner skull surface, bulging into the brain.

    The short axis points from the dura towards the brain centre, so the mass
    is plaque- or dome-shaped; ``avoid`` lists (centre, radius) of lesions
    already placed, which this one keeps 4 mm away from.
    """
    candidates = _slab_candidates(anatomy, anatomy.dura & (anatomy.outside_mm > 0.8), margin_slices)
    if len(candidates) == 0:
        raise PhantomError("no dura in the field of view to place a dural lesion")
    brain_centre = anatomy.pose.brain_centre
    for _ in range(200):
        k, i, j = candidates[int(rng.integers(len(candidates)))]
        surface = coords[k, i, j]
        inward = brain_centre - surface
        inward /= np.linalg.norm(inward)
        centre = surface + 0.3 * radius_mm * inward
        if all(np.linalg.norm(centre - c) > radius_mm + r + 4.0 for c, r in avoid):
            break
    else:
        raise PhantomError("could not place non-overlapping dural lesions; use fewer or smaller lesions")
    # Build axes with the first axis along the inward direction.
    helper = np.array([0.0, 0.0, 1.0]) if abs(inward[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    a2 = np.cross(inward, helper)
    a2 /= np.linalg.norm(a2)
    a3 = np.cross(inward, a2)
    radii = radius_mm * np.array([rng.uniform(*flatten), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
    return Ellipsoid(centre=centre, radii=radii, rotation=np.stack([inward, a2, a3], axis=1))


def intra_axial_ellipsoid(
    anatomy: Anatomy,
    rng: np.random.Generator,
    radius_mm: float,
    avoid: list[tuple[np.ndarray, float]],
    coords: np.ndarray,
    tissue: np.ndarray | None = None,
    margin_slices: int = 2,
) -> Ellipsoid:
    """A roughly spherical lesion centred in brain tissue (``tissue`` mask, default GM ∪ WM)."""
    if tissue is None:
        tissue = (anatomy.gm + anatomy.wm) > 0.6
    # Keep the whole lesion inside the intracranial space.
    deep = tissue & (anatomy.outside_mm <= 0.0)
    candidates = _slab_candidates(anatomy, deep, margin_slices)
    if len(candidates) == 0:
        raise PhantomError("no brain tissue in the field of view to place a lesion")
    for _ in range(300):
        k, i, j = candidates[int(rng.integers(len(candidates)))]
        centre = coords[k, i, j]
        if all(np.linalg.norm(centre - c) > radius_mm + r + 3.0 for c, r in avoid):
            break
    else:
        raise PhantomError("could not place non-overlapping lesions; use fewer or smaller lesions")
    radii = radius_mm * rng.uniform(0.85, 1.15, size=3)
    return Ellipsoid(centre=centre, radii=radii, rotation=random_rotation(rng))
