"""Automatic dural-lesion candidates when the study has no lesion SEG.

Dural lesions (meningiomas, dural metastases) are extra-axial, enhancing and
hyperperfused: they sit at the surface of the brain and have a CBV well above
white matter. The candidates are found as follows:

1. relative CBV: CBV divided by the mean CBV of the white matter of the tissue
   model (:func:`analyzers.dsc.reference.white_matter_mask`);
2. voxels with rCBV ≥ ``min_rcbv`` (2.5; cortex is about 2, so a lower
   threshold returns grey-matter ribbons) inside a shell of ``shell_mm``
   (15 mm) under the surface of the brain mask, excluding the arterial (AIF)
   voxels grown by two voxels;
3. 3-D connected components (26-connectivity) of at least ``min_volume_ml``
   (0.15 ml) and at least ``min_voxels`` (4) voxels: on coarse grids a single
   voxel exceeds 0.15 ml, and single noisy voxels of cortex pass the rCBV
   threshold (on the 7.2 × 7.2 × 10 mm ``--small`` phantom they made up most of
   the candidates); components whose median MTT is below ``min_mtt_s`` (2 s) or
   whose mean rCBV exceeds ``max_rcbv`` (25) are vessels (arterial or venous
   partial volume: tumour tissue stays far below; the phantom's meningiomas reach
   about 10) and dropped;
4. the remaining components, ranked by volume × mean rCBV, at most ``max_candidates``.

The candidates are proposals for a reader, not a segmentation; their detection
rate on the DSC phantoms is measured by ``tests/test_dsc_phantom.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from analyzers.dsc.maps import DscMaps

__all__ = ["CandidateOptions", "find_candidates"]


@dataclass(frozen=True)
class CandidateOptions:
    """Thresholds of the candidate search (see module notes)."""

    min_rcbv: float = 2.5
    max_rcbv: float = 25.0
    shell_mm: float = 15.0
    min_volume_ml: float = 0.15
    min_voxels: int = 4
    min_mtt_s: float = 2.0
    max_candidates: int = 5

    def __post_init__(self) -> None:
        if self.min_rcbv <= 1 or self.shell_mm <= 0 or self.min_volume_ml <= 0:
            raise ValueError("min_rcbv > 1, shell_mm > 0 and min_volume_ml > 0 are required")
        if self.max_rcbv <= self.min_rcbv or self.min_voxels < 1:
            raise ValueError("max_rcbv > min_rcbv and min_voxels >= 1 are required")
        if self.max_candidates < 1:
            raise ValueError("max_candidates must be at least 1")


def find_candidates(
    maps: DscMaps,
    white_matter: np.ndarray,
    spacing_mm: tuple[float, float, float],
    options: CandidateOptions | None = None,
) -> list[np.ndarray]:
    """Boolean ``(z, y, x)`` masks of candidate dural lesions, most prominent first.

    Parameters
    ----------
    maps:
        Maps of the series.
    white_matter:
        White-matter mask used to normalise CBV.
    spacing_mm:
        ``(dz, dy, dx)`` voxel spacing.
    options:
        Thresholds; defaults when ``None``.
    """
    opts = options or CandidateOptions()
    wm = np.asarray(white_matter, dtype=bool) & np.isfinite(maps.cbv)
    if not wm.any():
        return []
    reference = float(np.mean(maps.cbv[wm]))
    if reference <= 0:
        return []
    rcbv = np.where(np.isfinite(maps.cbv), maps.cbv / reference, 0.0)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    depth = ndimage.distance_transform_edt(maps.brain_mask, sampling=spacing)
    vessels = ndimage.binary_dilation(maps.aif_mask, iterations=2)
    seed = (rcbv >= opts.min_rcbv) & maps.brain_mask & (depth <= opts.shell_mm) & ~vessels
    labels, count = ndimage.label(seed, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    found: list[tuple[float, np.ndarray]] = []
    for index in range(1, count + 1):
        component = labels == index
        count = int(component.sum())
        volume = count * voxel_ml
        if volume < opts.min_volume_ml or count < opts.min_voxels:
            continue
        mtt = maps.mtt[component]
        finite_mtt = mtt[np.isfinite(mtt)]
        if finite_mtt.size == 0 or np.median(finite_mtt) < opts.min_mtt_s:
            continue
        mean_rcbv = float(np.mean(rcbv[component]))
        if mean_rcbv > opts.max_rcbv:
            continue
        found.append((volume * mean_rcbv, component))
    found.sort(key=lambda item: -item[0])
    return [mask for _, mask in found[: opts.max_candidates]]
