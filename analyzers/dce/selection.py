"""Is there leakage at all? Nested model selection between "plasma only" and extended Tofts.

Where the blood-brain barrier is intact the tissue curve is ``vp·Cp`` alone, and the
extended Tofts model is degenerate: as kep grows, ``Ktrans ∫Cp e^(−kep(t−s)) ds`` tends to
``ve·Cp``, so any Ktrans with a small enough ve fits as well as Ktrans = 0 and noise picks
one (measured on the DCE reference object: in normal tissue with Ktrans 0, 11 % of voxels
got Ktrans > 0.1 /min at SNR 50, 49 % at SNR 20; the region mean was 0.25 and 1.0 /min).

The remedy follows the nested model selection of Ewing & Bagher-Ebadian (NMR Biomed
2013;26:1028; Bagher-Ebadian et al., MRM 2012;68:241): the no-leakage model
``C = vp·Cp`` (one parameter) is the null hypothesis, and the extended Tofts fit (three
parameters) replaces it only when an F-test on the residual sums of squares rejects it at
level ``alpha``. Where it is kept, Ktrans is 0, vp comes from the one-parameter fit, and
ve and kep are undefined (NaN, not a failed fit).

An extended Tofts result whose kep exceeds ``60 / Δt`` per minute (extravascular exchange
faster than one frame interval Δt) is not resolvable at this sampling: its
extravascular term is indistinguishable from plasma signal, and it is treated as no
leakage too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from analyzers.dce.errors import DceInputError
from analyzers.dce.tofts import ToftsFit

__all__ = ["LeakageSelection", "select_leakage"]


@dataclass(frozen=True)
class LeakageSelection:
    """The fit after model selection.

    Attributes
    ----------
    fit:
        Extended Tofts estimates where leakage was detected, the no-leakage values
        (Ktrans 0, ve/kep NaN, vp of the plasma-only fit) elsewhere.
    no_leakage:
        True where the plasma-only model was kept.
    unresolved:
        True where the extended Tofts kep exceeded the resolvable limit.
    kep_limit_per_min:
        That limit.
    """

    fit: ToftsFit
    no_leakage: NDArray[np.bool_]
    unresolved: NDArray[np.bool_]
    kep_limit_per_min: float


def select_leakage(t: ArrayLike, cp: ArrayLike, ct: ArrayLike, fit: ToftsFit, *,
                   alpha: float = 0.05) -> LeakageSelection:
    """Keep the plasma-only model where extended Tofts is not significantly better.

    Parameters
    ----------
    t:
        Frame times (s).
    cp:
        Plasma AIF (mM).
    ct:
        Tissue curves (N, T), the ones ``fit`` was fitted to.
    fit:
        Their extended Tofts fit.
    alpha:
        Level of the F-test (2 and T − 3 degrees of freedom).
    """
    if not 0.0 < alpha < 1.0:
        raise DceInputError(f"the leakage test level must be in (0, 1), got {alpha}")
    t_arr = np.asarray(t, dtype=np.float64)
    cp_arr = np.asarray(cp, dtype=np.float64)
    curves = np.asarray(ct, dtype=np.float64)
    n_frames = t_arr.size
    if curves.ndim != 2 or curves.shape[1] != n_frames or n_frames < 5:
        raise DceInputError(f"curves must be (N, {n_frames}) with at least 5 frames")
    safe = np.where(np.isfinite(curves), curves, 0.0)
    cc = float(cp_arr @ cp_arr)
    vp_only = np.maximum(safe @ cp_arr / cc, 0.0) if cc > 0 else np.zeros(curves.shape[0])
    rss_null = np.sum((safe - vp_only[:, np.newaxis] * cp_arr) ** 2, axis=1)
    dof = n_frames - 3
    with np.errstate(divide="ignore", invalid="ignore"):
        f_stat = ((rss_null - fit.rss) / 2.0) / (fit.rss / dof)
    # A perfect fit (rss 0) with a better-than-null gain is significant.
    f_stat = np.where((fit.rss <= 0) & (rss_null > fit.rss), np.inf, f_stat)
    p_value = stats.f.sf(np.nan_to_num(f_stat, nan=0.0, posinf=np.inf), 2, dof)
    kep_limit = 60.0 / float(np.median(np.diff(t_arr)))
    fitted = ~fit.failed
    unresolved = fitted & (fit.kep > kep_limit)
    no_leak = fitted & ((p_value > alpha) | unresolved)
    nan = np.full(curves.shape[0], np.nan)
    ktrans = np.where(no_leak, 0.0, fit.ktrans)
    vp = np.where(no_leak, vp_only, fit.vp)
    ve = np.where(no_leak, nan, fit.ve)
    kep = np.where(no_leak, nan, fit.kep)
    rss = np.where(no_leak, rss_null, fit.rss)
    with np.errstate(divide="ignore", invalid="ignore"):
        tss = np.sum((safe - safe.mean(axis=1, keepdims=True)) ** 2, axis=1)
        r2 = np.where(no_leak, np.where(tss > 0, 1.0 - rss_null / tss, np.nan), fit.r2)
    selected = ToftsFit(ktrans=ktrans, ve=ve, vp=vp, kep=kep, rss=rss, r2=r2, failed=fit.failed)
    return LeakageSelection(fit=selected, no_leakage=no_leak, unresolved=unresolved,
                            kep_limit_per_min=kep_limit)
