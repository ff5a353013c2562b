"""Brain anatomy for the phantoms: the MNI152 2009a template resampled onto a series grid.

The template (T1 and grey/white matter probability maps of the ICBM 2009a
nonlinear symmetric atlas, Fonov et al., NeuroImage 2011) ships inside nilearn,
so the phantoms need no download. Each simulated patient gets its own rigid
pose and size (a random similarity transform), so two cases never share the
same voxels.

Coordinates: the template is RAS (MNI); DICOM patient coordinates are LPS. A
:class:`Grid` maps array indices ``[slice, row, column]`` to LPS millimetres
exactly as ImagePositionPatient / ImageOrientationPatient / PixelSpacing do.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "Anatomy",
    "Grid",
    "PatientPose",
    "Template",
    "TemplateNotFound",
    "as_triple",
    "axial_grid",
    "load_template",
    "random_pose",
    "sample_anatomy",
]

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# RAS <-> LPS flips the first two axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# Centre of the brain in MNI (RAS) millimetres, used to centre fields of view.
BRAIN_CENTRE_MNI = np.array([0.0, -18.0, 10.0])


class TemplateNotFound(FileNotFoundError):
    """nilearn or its packaged MNI152 files are not installed."""


@dataclass(frozen=True)
class Grid:
    """Geometry of an image series in DICOM patient coordinates (LPS, mm).

    Parameters
    ----------
    shape:
        ``(slices, rows, columns)``.
    spacing:
        ``(slice spacing, row spacing, column spacing)`` in mm; the last two are
        DICOM PixelSpacing (between rows, between columns).
    origin:
        Patient position of the centre of voxel ``[0, 0, 0]``.
    row_direction, column_direction:
        ImageOrientationPatient: direction of increasing column index and of
        increasing row index (unit vectors, orthogonal).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_direction: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"grid shape must be three positive sizes, got {self.shape}")
        if min(self.spacing) <= 0:
            raise ValueError(f"grid spacing must be positive, got {self.spacing}")
        r, c = np.asarray(self.row_direction), np.asarray(self.column_direction)
        if abs(np.linalg.norm(r) - 1) > 1e-6 or abs(np.linalg.norm(c) - 1) > 1e-6 or abs(r @ c) > 1e-6:
            raise ValueError("row and column directions must be orthonormal")

    @property
    def normal(self) -> np.ndarray:
        """Slice normal (row × column direction): direction of increasing slice index."""
        return np.cross(self.row_direction, self.column_direction)

    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix from ``(slice, row, column, 1)`` indices to LPS millimetres."""
        a = np.eye(4)
        a[:3, 0] = self.normal * self.spacing[0]
        a[:3, 1] = np.asarray(self.column_direction) * self.spacing[1]
        a[:3, 2] = np.asarray(self.row_direction) * self.spacing[2]
        a[:3, 3] = self.origin
        return a

    def slice_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k``."""
        return np.asarray(self.origin) + k * self.spacing[0] * self.normal

    def patient_coordinates(self, box: tuple[slice, ...] | None = None) -> np.ndarray:
        """LPS coordinates of every voxel centre (of ``box`` when given), shape ``(..., 3)``."""
        a = self.affine
        ranges = [np.arange(n)[b] for n, b in zip(self.shape, box or (slice(None),) * 3, strict=True)]
        out = np.empty((*(r.size for r in ranges), 3), dtype=np.float64)
        out[...] = a[:3, 3]
        out += (ranges[0][:, None] * a[:3, 0])[:, None, None, :]
        out += (ranges[1][:, None] * a[:3, 1])[None, :, None, :]
        out += (ranges[2][:, None] * a[:3, 2])[None, None, :, :]
        return out

    def to_index(self, point_lps: np.ndarray) -> np.ndarray:
        """Fractional ``(slice, row, column)`` index of a patient-coordinate point."""
        inv = np.linalg.inv(self.affine)
        return inv[:3, :3] @ np.asarray(point_lps, dtype=np.float64) + inv[:3, 3]


def as_triple(values: np.ndarray | tuple[float, ...]) -> tuple[float, float, float]:
    """Three floats (a point or direction) from any length-3 sequence."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != 3:
        raise ValueError(f"expected three values, got {v.size}")
    return (float(v[0]), float(v[1]), float(v[2]))


def axial_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre_lps: np.ndarray) -> Grid:
    """An axial grid (rows anterior→posterior, columns right→left) centred on a point."""
    centre = np.asarray(centre_lps, dtype=np.float64)
    half = (np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    origin = (
        centre - half[2] * np.array([1.0, 0, 0]) - half[1] * np.array([0, 1.0, 0]) - half[0] * np.array([0, 0, 1.0])
    )
    return Grid(shape=shape, spacing=spacing, origin=as_triple(origin))


@dataclass(frozen=True)
class Template:
    """The MNI152 template at 1 mm: T1 intensity, tissue probabilities, distance outside the brain."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    outside_mm: np.ndarray
    affine_ras: np.ndarray


def _template_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateNotFound("nilearn is not installed; it provides the MNI152 template the phantoms use")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in _TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TemplateNotFound(f"nilearn's packaged MNI152 files are missing from {folder}: {missing}")
    return folder


def _cache_dir() -> Path:
    """Where derived template arrays are cached (``$PACSNODE_CACHE_DIR`` or ``$XDG_CACHE_HOME/pacsnode``)."""
    explicit = os.environ.get("PACSNODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pacsnode"


def _outside_distance(folder: Path, brain: np.ndarray) -> np.ndarray:
    """Distance (mm) outside the brain mask, from a cache file when one matches the template.

    The Euclidean distance transform of the 197×233×189 template costs about 2
    CPU-seconds; its result depends only on the packaged template files, so it
    is computed once per machine and cached (keyed by the files' names, sizes
    and modification times). An unwritable cache only costs the recomputation.
    """
    stamp = hashlib.sha256()
    for name in sorted(_TEMPLATE_FILES.values()):
        info = (folder / name).stat()
        stamp.update(f"{name}|{info.st_size}|{info.st_mtime_ns}|edt-v1".encode())
    cache = _cache_dir() / f"mni152_2009a_outside_mm_{stamp.hexdigest()[:16]}.npy"
    try:
        cached = np.load(cache)
        if cached.shape == brain.shape and cached.dtype == np.float32:
            return np.asarray(cached)
    except (OSError, ValueError):
        pass
    outside = ndimage.distance_transform_edt(~brain).astype(np.float32)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as handle:
            np.save(handle, outside)
        os.replace(handle.name, cache)
    except OSError:
        pass
    return outside


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the packaged MNI152 2009a template once per process (under 1 s once the distance map is cached)."""
    import nibabel as nib

    folder = _template_dir()
    arrays: dict[str, np.ndarray] = {}
    affine = None
    for key, name in _TEMPLATE_FILES.items():
        img: Any = nib.load(str(folder / name))
        arrays[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        affine = np.asarray(img.affine)
    brain = arrays["t1"] > 0.02
    # The brain mask includes sulcal and ventricular CSF: what is neither GM nor WM.
    csf = np.clip(brain.astype(np.float32) - arrays["gm"] - arrays["wm"], 0.0, 1.0)
    # Distance (mm) outside the brain mask gives dura, skull and scalp shells.
    outside = _outside_distance(folder, brain)
    assert affine is not None
    return Template(t1=arrays["t1"], gm=arrays["gm"], wm=arrays["wm"], csf=csf, outside_mm=outside, affine_ras=affine)


@dataclass(frozen=True)
class PatientPose:
    """A similarity transform from MNI (RAS) space to this patient's LPS coordinates."""

    rotation: np.ndarray
    scale: float
    translation: np.ndarray

    def mni_to_patient(self, points_ras: np.ndarray) -> np.ndarray:
        """Map MNI points ``(..., 3)`` to patient LPS points."""
        return (points_ras @ (self.scale * self.rotation).T) @ _RAS_TO_LPS.T + self.translation

    def patient_to_mni(self, points_lps: np.ndarray) -> np.ndarray:
        """Map patient LPS points ``(..., 3)`` to MNI (RAS) points."""
        ras = (points_lps - self.translation) @ _RAS_TO_LPS.T
        return ras @ np.linalg.inv(self.scale * self.rotation).T

    @property
    def brain_centre(self) -> np.ndarray:
        """Patient coordinates of the brain centre."""
        return self.mni_to_patient(BRAIN_CENTRE_MNI)


def random_pose(rng: np.random.Generator) -> PatientPose:
    """A plausible head position: a few degrees of tilt, ±8 % size, a few mm of shift."""
    angles = np.deg2rad(rng.uniform([-8, -4, -5], [8, 4, 5]))  # pitch, roll, yaw
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return PatientPose(
        rotation=rz @ ry @ rx,
        scale=float(rng.uniform(0.92, 1.08)),
        translation=rng.uniform(-5, 5, size=3),
    )


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps of one patient on one series grid (all arrays have ``grid.shape``).

    ``gm``, ``wm``, ``csf`` are partial-volume fractions of the intracranial
    tissue; ``outside_mm`` is the distance outside the brain surface (0 inside),
    from which dura (0–2 mm), skull (2–7 mm) and scalp (7–12 mm) follow.
    """

    grid: Grid
    pose: PatientPose
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    outside_mm: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        """Voxels whose tissue fractions sum to at least one half."""
        return (self.gm + self.wm + self.csf) >= 0.5

    @property
    def skull(self) -> np.ndarray:
        return (self.outside_mm > 2.0) & (self.outside_mm <= 7.0)

    @property
    def scalp(self) -> np.ndarray:
        return (self.outside_mm > 7.0) & (self.outside_mm <= 12.0)

    @property
    def dura(self) -> np.ndarray:
        """The shell just outside the brain where dural-based lesions arise."""
        return (self.outside_mm > 0.0) & (self.outside_mm <= 2.0)

    def tissue_labels(self) -> np.ndarray:
        """0 background, 1 CSF, 2 GM, 3 WM (largest fraction within the brain)."""
        stack = np.stack([self.csf, self.gm, self.wm])
        labels = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
        labels[~self.brain] = 0
        return labels


def sample_anatomy(grid: Grid, pose: PatientPose) -> Anatomy:
    """Resample the template onto ``grid`` for the patient ``pose``.

    Tissue fractions are trilinear on grids coarser than 1.5 mm and nearest-neighbour
    on finer ones; the distance map is always nearest-neighbour.
    """
    template = load_template()
    # grid index -> LPS -> MNI RAS -> template index is one affine map.
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_to_ras[:3, 3] = -(_RAS_TO_LPS @ pose.translation)
    similarity = np.eye(4)
    similarity[:3, :3] = np.linalg.inv(pose.scale * pose.rotation)
    matrix = np.linalg.inv(template.affine_ras) @ similarity @ lps_to_ras @ grid.affine

    # The template is 1 mm: on grids about as fine, nearest-neighbour sampling of its (smooth)
    # probability maps loses little and is three times faster than trilinear.
    fine = min(grid.spacing) < 1.5

    def sample(volume: np.ndarray, cval: float, order: int = 1) -> np.ndarray:
        return ndimage.affine_transform(
            volume,
            matrix,
            output_shape=grid.shape,
            order=0 if fine else order,
            mode="constant",
            cval=cval,
            prefilter=False,
            output=np.float32,
        )

    outside = sample(template.outside_mm, 50.0, order=0) * np.float32(pose.scale)
    return Anatomy(
        grid=grid,
        pose=pose,
        gm=sample(template.gm, 0.0),
        wm=sample(template.wm, 0.0),
        csf=sample(template.csf, 0.0),
        outside_mm=outside,
    )
