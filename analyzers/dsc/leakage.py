"""Leakage correction of ΔR2* curves (Boxerman, Schmainda & Weisskoff, AJNR 2006;27:859).

Contrast agent leaking through a disrupted blood–brain barrier adds a term
proportional to the running integral of the intravascular curve:

    ΔR2*_measured(t) ≈ K1·ΔR2*_ref(t) − K2·∫₀ᵗ ΔR2*_ref(t') dt'

where ``ΔR2*_ref`` is the whole-brain average of non-enhancing voxels. K1 and K2
are fitted per voxel by linear least squares (one 2×n pseudo-inverse for all
voxels) and the corrected curve is ``ΔR2*_measured + K2·∫ΔR2*_ref``. K2 > 0
means T1-dominant leakage (CBV underestimated without correction), K2 < 0
T2*-dominant leakage (overestimated). K2 is in 1/s.

Fit window. Boxerman et al. fit every frame. The model's first term assumes
that the intravascular curve of the voxel has the shape of the reference; a
lesion whose mean transit time differs from normal brain's has a narrower or
broader first pass, and a whole-curve fit takes the excess late area of a
broad curve for T2*-dominant leakage (and the reverse for a narrow one): on
noise-free curves of the project's phantom, an exponential-residue lesion with
MTT 9 s (normal brain 4-5 s) loses 23 % of its CBV to the correction even
without any leakage, one with 11.5 s 32 %, one with 2.4 s gains 11 % (Bjørnerud
et al., JCBFM 2011;31:2041 describe this MTT sensitivity of the BSW fit).
Some transit times after the first pass the intravascular curve of every
tissue is the slowly varying blood curve times its blood volume, i.e.
proportional to the reference, and only leakage keeps them apart; so
:func:`bsw_correct` can fit K1 and K2 on the frames from ``fit_start`` on
(``leakage_fit_delay_s`` = 25 s after bolus arrival in :mod:`analyzers.dsc.maps`) and
then corrects the whole curve with that K2. The same noise-free lesions then
keep their CBV within 8 % for MTT 2.4-11.5 s and K2 from −0.02 to +0.01 1/s
(``tests/test_dsc_leakage.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid

from analyzers.dsc.errors import DscInputError

__all__ = ["LeakageFit", "bsw_correct", "non_enhancing_reference"]

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


@dataclass(frozen=True)
class LeakageFit:
    """Result of the BSW fit for every voxel.

    Attributes
    ----------
    k1:
        Dimensionless scale of the reference curve.
    k2:
        Leakage coefficient in 1/s.
    corrected:
        Corrected ΔR2* curves, shape ``(voxels, n)``.
    """

    k1: np.ndarray
    k2: np.ndarray
    corrected: np.ndarray


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


def bsw_correct(
    delta_r2: np.ndarray, reference: np.ndarray, times: np.ndarray, fit_start: int = 0
) -> LeakageFit:
    """Fit K1, K2 per voxel and return the leakage-corrected curves.

    Parameters
    ----------
    delta_r2:
        Shape ``(voxels, n)`` in 1/s.
    reference:
        Non-enhancing reference curve, shape ``(n,)``.
    times:
        Frame times in seconds, shape ``(n,)``.
    fit_start:
        First frame of the fit (0: the whole curve, as Boxerman et al.); the
        integral still starts at the first frame and the whole curve is corrected.

    Raises
    ------
    DscInputError
        Shapes differ, the fit window has fewer than 3 frames, or the reference is degenerate.
    """
    curves = np.atleast_2d(np.asarray(delta_r2, dtype=np.float64))
    ref = np.asarray(reference, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if ref.shape != (curves.shape[1],) or t.shape != ref.shape:
        raise DscInputError("reference, times and curves must have the same number of frames")
    if not 0 <= fit_start <= ref.size - 3:
        raise DscInputError(f"the leakage fit window from frame {fit_start} has fewer than 3 frames")
    integral = cumulative_trapezoid(ref, t, initial=0.0)
    design = np.stack([ref, -integral], axis=1)[fit_start:]
    if np.linalg.matrix_rank(design) < 2:
        raise DscInputError("the leakage reference curve is degenerate (no bolus)")
    coefficients = np.linalg.pinv(design) @ curves[:, fit_start:].T
    k1, k2 = coefficients[0], coefficients[1]
    corrected = curves + k2[:, None] * integral[None, :]
    return LeakageFit(k1=k1, k2=k2, corrected=corrected)
