"""Head vessels (arteries, dural venous sinuses, cortical veins) rasterised onto a series grid, from MNI polylines."""

from __future__ import annotations

import itertools

import numpy as np

from analyzers.phantoms.anatomy import Grid, PatientPose, load_template

__all__ = [
    "HEAD_VESSELS",
    "MCA_POLYLINES",
    "cortical_veins",
    "distance_to_polyline",
    "rasterise_polylines",
    "vessel_fraction",
]

# Middle cerebral arteries (M1 lateral course, then M2 up the insula), MNI RAS mm.
_MCA_LEFT = np.array(
    [[-12.0, 2.0, -10.0], [-24.0, 3.0, -7.0], [-35.0, 4.0, -4.0], [-40.0, -2.0, 5.0], [-42.0, -10.0, 16.0]]
)
MCA_POLYLINES = (_MCA_LEFT, _MCA_LEFT * np.array([-1.0, 1.0, 1.0]))

HEAD_VESSELS = (
    *MCA_POLYLINES,
    np.array([[0.0, 30.0, -8.0], [0.0, 40.0, 10.0], [0.0, 25.0, 30.0], [0.0, -10.0, 38.0], [0.0, -40.0, 35.0]]),
    np.array(
        [
            [0.0, 58.0, 20.0],
            [0.0, 40.0, 52.0],
            [0.0, 5.0, 72.0],
            [0.0, -40.0, 70.0],
            [0.0, -75.0, 48.0],
            [0.0, -95.0, 20.0],
        ]
    ),
    np.array([[0.0, -45.0, 20.0], [0.0, -70.0, 8.0], [0.0, -95.0, 12.0]]),
    np.array([[0.0, -98.0, 10.0], [-40.0, -90.0, -2.0], [-60.0, -60.0, -15.0]]),
    np.array([[0.0, -98.0, 10.0], [40.0, -90.0, -2.0], [60.0, -60.0, -15.0]]),
    np.array([[-8.0, -20.0, -12.0], [-22.0, -40.0, -4.0], [-20.0, -70.0, 6.0]]),
    np.array([[8.0, -20.0, -12.0], [22.0, -40.0, -4.0], [20.0, -70.0, 6.0]]),
)
"""Head vessels in MNI (RAS) mm: the middle cerebral arteries, the pericallosal artery, the superior
sagittal, straight and transverse sinuses, and the posterior cerebral arteries (in that order)."""


def _densify(polyline: np.ndarray, step_mm: float) -> np.ndarray:
    points = []
    for a, b in itertools.pairwise(polyline):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / step_mm)) + 1)
        points.append(a + np.linspace(0.0, 1.0, n)[:, None] * (b - a))
    return np.concatenate(points)


def distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance (mm) from ``points`` ``(n, 3)`` to the nearest segment of ``polyline``."""
    best = np.full(points.shape[0], np.inf)
    for a, b in itertools.pairwise(polyline):
        ab = b - a
        s = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + s[:, None] * ab), axis=1))
    return best


def rasterise_polylines(
    grid: Grid,
    pose: PatientPose,
    polylines: tuple[np.ndarray, ...],
    radius_mm: float,
    core_fraction: float = 1.0,
    rim_fraction: float = 0.35,
) -> np.ndarray:
    """Blood-volume fraction of vessels on ``grid``.

    Voxels whose centre lies within ``radius_mm`` of a vessel's centreline are
    filled (``core_fraction``); their in-plane neighbours get ``rim_fraction``
    (partial volume). Each voxel is at least reached by the nearest-voxel
    rasterisation of the centreline, so thin vessels stay connected.
    """
    frac = np.zeros(grid.shape, dtype=np.float32)
    inv = np.linalg.inv(grid.affine)
    shape = np.asarray(grid.shape)
    for line in polylines:
        pts = pose.mni_to_patient(line)
        dense = pose.mni_to_patient(_densify(line, 0.25))
        idx = dense @ inv[:3, :3].T + inv[:3, 3]
        nearest = np.rint(idx).astype(int)
        inside = np.all((nearest >= 0) & (nearest < shape), axis=1)
        core = np.zeros(grid.shape, dtype=bool)
        core[tuple(nearest[inside].T)] = True
        pad = np.ceil(radius_mm / np.asarray(grid.spacing)).astype(int) + 1
        lo = np.clip(np.floor(idx.min(0)).astype(int) - pad, 0, shape)
        hi = np.clip(np.ceil(idx.max(0)).astype(int) + pad + 1, 0, shape)
        if np.any(hi <= lo):
            continue
        box = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
        world = box @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        near = distance_to_polyline(world, pts) <= radius_mm
        core[tuple(box[near].T)] = True
        frac[core] = np.maximum(frac[core], core_fraction)
    core = frac >= core_fraction
    rim = np.zeros_like(core)
    rim[:, 1:, :] |= core[:, :-1, :]
    rim[:, :-1, :] |= core[:, 1:, :]
    rim[:, :, 1:] |= core[:, :, :-1]
    rim[:, :, :-1] |= core[:, :, 1:]
    frac[rim & ~core] = np.maximum(frac[rim & ~core], rim_fraction)
    return frac


def cortical_veins(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Random smooth vessels hugging the brain surface, in MNI (RAS) mm."""
    template = load_template()
    surface = np.argwhere((template.outside_mm[::2, ::2, ::2] > 0.5) & (template.outside_mm[::2, ::2, ::2] < 2.5)) * 2
    points = surface @ template.affine_ras[:3, :3].T + template.affine_ras[:3, 3]
    veins = []
    for _ in range(count):
        path = [points[int(rng.integers(len(points)))]]
        heading = rng.normal(size=3)
        for _ in range(int(rng.integers(4, 8))):
            d = np.linalg.norm(points - path[-1], axis=1)
            ahead = (points - path[-1]) @ heading
            candidates = np.nonzero((d > 8.0) & (d < 14.0) & (ahead > 0))[0]
            if candidates.size == 0:
                break
            nxt = points[int(rng.choice(candidates))]
            heading = nxt - path[-1]
            path.append(nxt)
        if len(path) >= 3:
            veins.append(np.asarray(path))
    return veins


def vessel_fraction(grid: Grid, pose: PatientPose, vessels: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Partial-volume fraction of tubes (MNI polylines with radii) on ``grid``."""
    frac = np.zeros(grid.shape, dtype=np.float32)
    inv = np.linalg.inv(grid.affine)
    shape = np.asarray(grid.shape)
    half_voxel = 0.5 * min(grid.spacing)
    for line, radius in vessels:
        pts = pose.mni_to_patient(line)
        idx = pts @ inv[:3, :3].T + inv[:3, 3]
        pad = np.ceil((radius + 1.0) / np.asarray(grid.spacing)).astype(int) + 1
        lo = np.clip(np.floor(idx.min(0)).astype(int) - pad, 0, shape)
        hi = np.clip(np.ceil(idx.max(0)).astype(int) + pad + 1, 0, shape)
        if np.any(hi <= lo):
            continue
        box = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
        world = box @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        value = np.clip((radius + half_voxel - distance_to_polyline(world, pts)) / (2 * half_voxel), 0.0, 1.0)
        keep = value > 0
        sel = tuple(box[keep].T)
        frac[sel] = np.maximum(frac[sel], value[keep])
    return frac
