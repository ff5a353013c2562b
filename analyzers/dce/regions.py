"""Regions of the readout: head mask, enhancing lesions and contralateral normal white matter.

* Enhancing lesion (used when the study has no SEG): voxels whose late enhancement
  (mean concentration over the last third of the frames) exceeds both
  ``late_threshold_mM`` and ``relative_to_median`` times the median late enhancement of
  the head, and stays at least ``persistence`` of their peak (lesions keep enhancing;
  arteries and sinuses wash out to ~15 % of their peak), grouped in 26-connected
  components of at least ``min_volume_ml``. Measured on the ``dce`` phantoms in ``tests/test_dce_analyzer.py``.
* Reference: contralateral normal-appearing white matter, as in the study. The lesion
  centroid is mirrored across the mid-sagittal plane (the patient x = LR coordinate of the
  head-mask centroid); the reference is the white-matter-like voxels in a sphere around the
  mirrored point that are neither enhancing nor vessels nor lesion. White-matter-like: T10
  within ±25 % of the white-matter T10 when a VFA T1 map exists; otherwise the voxels
  whose fitted vp is at or below the sphere's median (white matter has the lowest blood
  volume of the brain tissues), which keeps grey matter and vessels out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from analyzers.dce.errors import DceInputError

__all__ = [
    "LesionSegmentationSettings",
    "contralateral_reference",
    "enhancing_voxels",
    "head_mask",
    "segment_enhancing_lesions",
]


def head_mask(baseline: NDArray[np.float64], fraction: float = 0.1) -> NDArray[np.bool_]:
    """Voxels brighter than ``fraction`` of the 99th percentile of the baseline signal.

    The largest connected component is kept and holes are filled.
    """
    finite = np.isfinite(baseline)
    if not finite.any():
        raise DceInputError("the baseline image has no finite voxel")
    level = fraction * np.percentile(baseline[finite], 99.0)
    mask = finite & (baseline > level)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise DceInputError("no voxel above the head-mask threshold; is the series empty?")
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (1 + int(np.argmax(sizes)))
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


@dataclass(frozen=True)
class LesionSegmentationSettings:
    """Thresholds of the automatic enhancing-lesion segmentation.

    Parameters
    ----------
    late_threshold_mM:
        Smallest mean late concentration of a lesion voxel (mM).
    relative_to_median:
        Smallest late concentration relative to the median of the head mask.
    persistence:
        Smallest late / peak concentration ratio (rejects washing-out vessels).
    min_volume_ml:
        Smallest lesion volume kept.
    """

    late_threshold_mM: float = 0.05
    relative_to_median: float = 2.5
    persistence: float = 0.25
    min_volume_ml: float = 0.1

    def __post_init__(self) -> None:
        if (self.late_threshold_mM <= 0 or self.relative_to_median < 0
                or not 0 < self.persistence <= 1 or self.min_volume_ml < 0):
            raise DceInputError("invalid lesion segmentation thresholds")


def enhancing_voxels(conc: NDArray[np.floating], mask: NDArray[np.bool_],
                     settings: LesionSegmentationSettings | None = None, *,
                     persistent_only: bool = True) -> NDArray[np.bool_]:
    """Voxels of ``mask`` that enhance late (and, if asked, persistently).

    With ``persistent_only=False`` the result also holds vessels: voxels whose peak is
    above ``5 × relative_to_median`` times the head's median peak. That wider set is what a
    normal-tissue reference must avoid.
    """
    cfg = settings or LesionSegmentationSettings()
    n_frames = conc.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN voxels outside the head
        late = np.nanmean(conc[-max(n_frames // 3, 1):], axis=0)
        peak = np.nanmax(conc, axis=0)
        persistent = late >= cfg.persistence * peak
    usable = mask & np.isfinite(late) & np.isfinite(peak)
    level = max(cfg.late_threshold_mM,
                cfg.relative_to_median * float(np.median(late[usable])) if usable.any() else 0.0)
    late_enhancing = usable & (late >= level)
    if persistent_only:
        return late_enhancing & persistent
    vessel_level = 5.0 * cfg.relative_to_median * float(np.median(peak[usable])) if usable.any() \
        else np.inf
    return late_enhancing | (usable & (peak >= vessel_level))


def segment_enhancing_lesions(conc: NDArray[np.floating], mask: NDArray[np.bool_],
                              voxel_ml: float,
                              settings: LesionSegmentationSettings | None = None
                              ) -> list[NDArray[np.bool_]]:
    """Enhancing lesions from the late post-contrast frames.

    Parameters
    ----------
    conc:
        Concentration, shape (T, z, y, x) (NaN allowed).
    mask:
        Voxels to consider (the head mask), shape (z, y, x).
    voxel_ml:
        Volume of one voxel in ml.
    settings:
        Thresholds.

    Returns
    -------
    list of numpy.ndarray
        One boolean mask per lesion, largest first.
    """
    cfg = settings or LesionSegmentationSettings()
    candidate = enhancing_voxels(conc, mask, cfg)
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3, 3)))
    lesions = []
    for index in range(1, n + 1):
        component = labels == index
        if component.sum() * voxel_ml >= cfg.min_volume_ml:
            lesions.append(component)
    lesions.sort(key=lambda m: -int(m.sum()))
    return lesions


def contralateral_reference(lesion: NDArray[np.bool_], head: NDArray[np.bool_],
                            exclude: NDArray[np.bool_], vp: NDArray[np.float64],
                            affine: NDArray[np.float64], *, t10: NDArray[np.float64] | None,
                            wm_t10_s: float, min_voxels: int = 20,
                            radii_mm: tuple[float, ...] = (10.0, 15.0, 20.0, 30.0)
                            ) -> NDArray[np.bool_]:
    """Normal-appearing white matter around the mirror image of the lesion.

    Parameters
    ----------
    lesion:
        The lesion mask (z, y, x).
    head:
        Head mask.
    exclude:
        Voxels never used as reference (all lesions, enhancing voxels, vessels).
    vp:
        Fitted vp map (NaN = failed).
    affine:
        Voxel (column, row, slice) → patient LPS (mm), 4 × 4.
    t10:
        T10 map (s) from VFA, or None.
    wm_t10_s:
        White-matter T10 at this field strength (s).
    min_voxels:
        Fewest reference voxels; the sphere grows through ``radii_mm`` until reached.

    Returns
    -------
    numpy.ndarray
        Boolean reference mask (may be empty when nothing qualifies).
    """
    zz, yy, xx = np.indices(lesion.shape)
    ijk = np.stack([xx, yy, zz, np.ones_like(xx)], axis=-1).reshape(-1, 4).astype(np.float64)
    xyz = (ijk @ affine.T)[:, :3].reshape(*lesion.shape, 3)
    if not lesion.any():
        raise DceInputError("the lesion mask is empty")
    centroid = xyz[lesion].mean(axis=0)
    midline_x = float(xyz[head][:, 0].mean())
    mirrored = centroid.copy()
    mirrored[0] = 2.0 * midline_x - centroid[0]
    distance = np.linalg.norm(xyz - mirrored, axis=-1)
    allowed = head & ~exclude & ~lesion & np.isfinite(vp)
    if t10 is not None:
        allowed &= np.isfinite(t10) & (np.abs(t10 - wm_t10_s) <= 0.25 * wm_t10_s)
    region = np.zeros(lesion.shape, dtype=bool)
    for radius in radii_mm:
        sphere = allowed & (distance <= radius)
        if t10 is None and sphere.any():
            sphere &= vp <= np.median(vp[sphere])
        region = sphere
        if int(region.sum()) >= min_voxels:
            break
    return region
