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

    def bounding_box(self, grid: Grid, reach: float) -> tuple[slice, slice, slice]:
        """Index box of ``grid`` holding every voxel whose normalised distance is below ``reach``."""
        extent = reach * float(np.max(self.radii)) + 1e-6
        corners = self.centre + extent * np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64
        )
        index = np.array([grid.to_index(c) for c in corners])
        lo = np.clip(np.floor(index.min(0)).astype(int) - 1, 0, grid.shape)
        hi = np.clip(np.ceil(index.max(0)).astype(int) + 2, 0, grid.shape)
        return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))

    def fraction(self, grid: Grid, coords: np.ndarray | None = None, edge_mm: float | None = None) -> np.ndarray:
        """Partial-volume fraction (0–1) on ``grid`` with a linear edge about one voxel wide.

        Only the box around the ellipsoid where the fraction can be positive is
        evaluated (the rest of the grid is 0 by construction).
        """
        edge = min(grid.spacing[1:]) if edge_mm is None else edge_mm
        mean_radius = float(np.mean(self.radii))
        # fraction > 0 exactly where d < 1 + edge / (2 * mean radius)
        box = self.bounding_box(grid, 1.0 + 0.5 * edge / mean_radius)
        pts = grid.patient_coordinates(box) if coords is None else coords[box]
        out = np.zeros(grid.shape, dtype=np.float32)
        if pts.size:
            d = self.normalised_distance(pts)
            out[box] = np.clip(0.5 + (1.0 - d) * mean_radius / edge, 0.0, 1.0).astype(np.float32)
        return out


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
