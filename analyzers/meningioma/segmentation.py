"""Automatic ROI of a dural-based enhancing mass on post-contrast T1 (no trained network).

The largest candidate of :func:`analyzers.meningioma.candidates.find_candidates`
that reaches within ``dural_margin_mm`` of the intracranial boundary (the inner
table). It is the ROI of training cases that have no tumour SEG; in use the
analyzer takes the candidate its detection stage calls a meningioma
(:mod:`analyzers.meningioma.detection`), which also decides whether there is one
at all. It is a reproducible baseline, not a validated segmentation: every
automatic ROI is written back as a DICOM SEG so that a reader can check or
replace it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from analyzers.meningioma.candidates import CandidateSettings, find_candidates
from analyzers.meningioma.errors import SegmentationError

__all__ = ["dice", "segment_enhancing_mass"]


def segment_enhancing_mass(
    image: sitk.Image,
    settings: CandidateSettings | None = None,
    intracranial: np.ndarray | None = None,
    dural_margin_mm: float = 6.0,
) -> sitk.Image:
    """The largest dural-based enhancing mass as a 0/1 mask on ``image``'s grid.

    Parameters
    ----------
    image:
        N4-corrected post-contrast T1.
    settings:
        Candidate parameters; :class:`CandidateSettings` defaults when None.
    intracranial:
        The intracranial space ``(z, y, x)`` on ``image``'s grid (e.g. a brain
        mask); :func:`~analyzers.meningioma.candidates.intracranial_mask` when None.
    dural_margin_mm:
        How close to the intracranial boundary a candidate must come.

    Raises
    ------
    SegmentationError
        When no enhancing candidate touches the dura.
    """
    settings = settings or CandidateSettings()
    dural = [c for c in find_candidates(image, intracranial, settings)
             if c.features["boundary_distance_min_mm"] <= dural_margin_mm]
    if not dural:
        raise SegmentationError(
            f"no dural-based enhancing mass of at least {settings.min_volume_ml} ml found; "
            "provide a tumour SEG for this study"
        )
    best = max(dural, key=lambda c: int(c.mask.sum()))
    result = sitk.GetImageFromArray(best.mask.astype(np.uint8))
    result.CopyInformation(image)
    return result


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient of two binary arrays (1.0 when both are empty)."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
