"""Leakage correction of ΔR2* curves that leaves non-leaky tissue and transit times alone.

Contrast agent leaking through a disrupted blood–brain barrier adds a term
proportional to the running integral of the blood curve: positive where the
extravasated agent's susceptibility effect dominates (T2*-dominant), negative
where its T1 shortening raises the signal (T1-dominant). Boxerman, Schmainda &
Weisskoff (AJNR 2006;27:859) fit ``ΔR2* ≈ K1·ΔR2*_ref − K2·∫ΔR2*_ref`` against
the whole-brain non-enhancing curve in every voxel. That fit assumes every
voxel's intravascular curve has the reference's shape, so a lesion whose mean
transit time differs from normal brain's gets a spurious K2 (Bjørnerud et al.,
JCBFM 2011;31:2041): on this project's digital reference object (MTT 2-12 s,
no leakage) the whole-curve fit moved CBV by -36 % at MTT 12 s and +24 % at
MTT 2 s, and it corrected every voxel, leaky or not.

Here the leakage term is fitted beside an intravascular term with its own
transit time, against the AIF (Bjørnerud et al.'s formulation, with the
parametric residue of :mod:`analyzers.dsc.bayes`), and removed only where the
neighbourhood shows leakage (:func:`gated_leakage`); every other voxel keeps
its curve. :func:`non_enhancing_reference` gives the whole-brain non-enhancing
curve on which K2 is reported (Boxerman's scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from analyzers.dsc.errors import DscInputError

__all__ = ["GatedLeakage", "gated_leakage", "non_enhancing_reference"]

# Voxels whose late-to-peak ratio lies within this many robust standard
# deviations of the brain median count as non-enhancing ...
_NON_ENHANCING_SD = 3.0
# ... or within this fraction of the median itself, so that grey and white
# matter (slightly different ratios) both stay in the reference when the data
# are almost noise-free.
_NON_ENHANCING_RELATIVE = 0.25
# ... or within this absolute ratio (curves without a late plateau have ratios near 0).
_NON_ENHANCING_FLOOR = 0.02
# The late phase used to judge enhancement: the last fraction of the frames.
_LATE_FRACTION = 0.2


def non_enhancing_reference(
    delta_r2: np.ndarray, first_bolus_frame: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-brain average ΔR2* of non-enhancing voxels (Boxerman et al. 2006).

    Leakage shows after the first pass: T1-dominant leakage pulls the late ΔR2*
    down (below zero), T2*-dominant leakage pushes it up; large vessels keep a
    different late-to-peak ratio as well. A voxel is non-enhancing when the ratio
    of its mean ΔR2* over the last 20 % of the frames to its peak lies within
    three robust standard deviations (1.4826·MAD), within 25 %, or within 0.02
    of the brain median. Using the ratio rather than the late level itself keeps grey and
    white matter (different CBV, same shape) together in the reference.

    Parameters
    ----------
    delta_r2:
        Brain curves, shape ``(voxels, n)``.
    first_bolus_frame:
        Frame where the bolus starts; the late phase never starts before it.

    Returns
    -------
    reference, selected:
        The reference curve ``(n,)`` and the boolean selection ``(voxels,)``.
    """
    curves = np.atleast_2d(np.asarray(delta_r2, dtype=np.float64))
    if curves.shape[0] < 10:
        raise DscInputError("too few brain voxels to build a leakage reference curve")
    n = curves.shape[1]
    late_start = max(first_bolus_frame + 1, round(n * (1.0 - _LATE_FRACTION)))
    late_start = min(late_start, n - 1)
    peak = curves.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(peak > 0, curves[:, late_start:].mean(axis=1) / peak, np.nan)
    finite = np.isfinite(ratio)
    centre = float(np.median(ratio[finite])) if finite.any() else 0.0
    spread = 1.4826 * float(np.median(np.abs(ratio[finite] - centre))) if finite.any() else 0.0
    tolerance = max(
        _NON_ENHANCING_SD * spread, _NON_ENHANCING_RELATIVE * abs(centre), _NON_ENHANCING_FLOOR
    )
    selected = finite & (np.abs(ratio - centre) <= tolerance)
    if np.count_nonzero(selected) < 10:
        selected = np.ones(curves.shape[0], dtype=bool)
    return curves[selected].mean(axis=0), selected


@dataclass(frozen=True)
class GatedLeakage:
    """Leakage correction applied only where the data show leakage (see :func:`gated_leakage`).

    Attributes
    ----------
    k:
        Leakage coefficient removed from each curve (0 where none is), in the
        curve's units per unit of ``∫C_a`` (1/s).
    z:
        Neighbourhood evidence ``E[K]/sd[K]`` that decided it.
    leaky:
        Where a correction was applied.
    corrected:
        ``curves − k·∫C_a``, shape ``(voxels, n)``.
    """

    k: np.ndarray
    z: np.ndarray
    leaky: np.ndarray
    corrected: np.ndarray


def gated_leakage(
    curves: np.ndarray,
    k: np.ndarray,
    k_sd: np.ndarray,
    regressor: np.ndarray,
    mask: np.ndarray,
    times: np.ndarray,
    z_threshold: float = 3.0,
    min_effect: float = 0.05,
    pool: tuple[int, int, int] = (3, 5, 5),
    evidence: np.ndarray | None = None,
) -> GatedLeakage:
    """Remove ``K·∫C_a`` where the neighbourhood shows leakage, nowhere else.

    ``k`` and ``k_sd`` are the per-voxel posterior mean and standard deviation
    of the leakage coefficient of the model-based fit
    (:meth:`analyzers.dsc.bayes.ResidueGrid.leakage`, Bjørnerud et al. 2011's
    extravasation term beside a residue with its own transit time, so a long or
    short MTT is not taken for leakage). One voxel's K is noisy; leakage is a
    property of tissue regions, so the evidence is pooled over the ``pool``
    neighbourhood inside ``mask`` (mean of K, standard error from the voxels'
    posterior variances). A voxel is corrected, with its own K (unbiased; a
    pooled K would carry the neighbours' leakage across tissue borders), where
    the pooled K is more than ``z_threshold`` standard errors from zero and
    would change the neighbourhood's CBV (curve area) by at least
    ``min_effect``; every other voxel keeps its curve unchanged. The effect
    size keeps noise-free data, whose standard errors are tiny, from correcting
    a model mismatch of a few per cent.

    Parameters
    ----------
    curves:
        ΔR2* of the voxels of ``mask`` (in the order of ``mask[mask]``), ``(voxels, n)``.
    k, k_sd:
        Shape ``(voxels,)``.
    regressor:
        ``∫C_a`` at the frame times, shape ``(n,)``.
    mask:
        Boolean ``(z, y, x)`` volume of the voxels.
    times:
        Frame times (s).
    evidence:
        Boolean ``(voxels,)``: the voxels whose K counts as evidence (default all;
        the arterial voxels are left out, they are not tissue).
    """
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    volume_mask = np.asarray(mask, dtype=bool)
    if curves.shape[0] != int(volume_mask.sum()) or np.shape(k) != (curves.shape[0],):
        raise DscInputError("curves, K and the mask must describe the same voxels")

    def pooled_sum(values: np.ndarray) -> np.ndarray:
        volume = np.zeros(volume_mask.shape)
        volume[volume_mask] = values
        mean = ndimage.uniform_filter(volume, size=pool, mode="constant")
        return np.asarray(mean)[volume_mask] * float(np.prod(pool))

    weight = np.ones(curves.shape[0]) if evidence is None else np.asarray(evidence, dtype=np.float64)
    count = np.maximum(pooled_sum(weight), 1e-9)
    k_pooled = pooled_sum(weight * k) / count
    standard_error = np.sqrt(np.maximum(pooled_sum(weight * np.asarray(k_sd) ** 2), 0.0)) / count
    area = pooled_sum(weight * np.trapezoid(curves, times, axis=1)) / count
    effect = np.abs(k_pooled) * float(np.trapezoid(regressor, times)) >= min_effect * np.abs(area)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(standard_error > 0, k_pooled / standard_error, 0.0)
    leaky = (np.abs(z) > z_threshold) & effect & (count >= 1.0)
    applied = np.where(leaky, k, 0.0)
    return GatedLeakage(k=applied, z=z, leaky=leaky,
                        corrected=curves - applied[:, None] * np.asarray(regressor)[None, :])
