"""Spoiled gradient-echo (SPGR) signal and variable-flip-angle (VFA) T1 mapping.

SPGR steady state (Ernst; e.g. Deoni et al., MRM 2003;49:515)::

    S(α) = M0 sin(α) (1 - E1) / (1 - cos(α) E1),   E1 = exp(-TR R1)

* Linearised fit (Gupta, J Magn Reson 1977;25:231; Deoni 2003, "DESPOT1"):
  ``S/sin α = E1 · S/tan α + M0 (1 - E1)``, a straight line per voxel.
* Nonlinear fit: least squares on the SPGR equation in (M0, E1), bounded to
  0 < E1 < 1, refined by a vectorised Levenberg-Marquardt from the linear estimate.

B1 is not assumed: nominal flip angles are used unless a relative B1 map is given
(``b1``, 1.0 = nominal), so a site with a B1 map can correct, and one without gets the
uncorrected estimate that the OSIPI T1 tests also use.

Without a VFA series the analyzer uses a fixed T10 (:data:`DEFAULT_T10_S`), the
normal-appearing white-matter T1 of Stanisz et al., MRM 2005;54:507 (Table 1: 884 ms at
1.5 T, 1084 ms at 3 T). Blood without a VFA series: the in-vivo arterial blood T1 that the
ISMRM perfusion study group's consensus recommends (Alsop et al., MRM 2015;73:102:
1350 ms at 1.5 T, 1650 ms at 3 T; Stanisz's 1441/1932 ms were measured in vitro).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers.dce.errors import DceInputError

__all__ = [
    "BLOOD_T1_S",
    "DEFAULT_T10_S",
    "VfaFit",
    "default_t10",
    "fit_vfa_linear",
    "fit_vfa_nonlinear",
    "spgr_signal",
]

#: White-matter T1 (s) by field strength (T), Stanisz et al. MRM 2005;54:507, Table 1.
DEFAULT_T10_S: dict[float, float] = {1.5: 0.884, 3.0: 1.084}
#: Arterial blood T1 (s) by field strength (T), Alsop et al. MRM 2015;73:102 (consensus values).
BLOOD_T1_S: dict[float, float] = {1.5: 1.35, 3.0: 1.65}


def _nearest_field(table: dict[float, float], field_t: float) -> float:
    if not (np.isfinite(field_t) and field_t > 0):
        raise DceInputError(f"field strength must be a positive number of tesla, got {field_t}")
    key = min(table, key=lambda b0: abs(np.log(b0 / field_t)))
    return table[key]


def default_t10(field_t: float, *, blood: bool = False) -> float:
    """Literature T10 (s) at the tabulated field strength nearest to ``field_t``."""
    return _nearest_field(BLOOD_T1_S if blood else DEFAULT_T10_S, field_t)


def spgr_signal(m0: ArrayLike, r1: ArrayLike, tr: float, flip_deg: ArrayLike) -> NDArray[np.float64]:
    """SPGR steady-state signal.

    Parameters
    ----------
    m0:
        Equilibrium signal (arbitrary units).
    r1:
        Longitudinal relaxation rate (1/s).
    tr:
        Repetition time (s).
    flip_deg:
        Flip angle(s) in degrees.

    Returns
    -------
    numpy.ndarray
        Broadcast signal.
    """
    if not (np.isfinite(tr) and tr > 0):
        raise DceInputError(f"TR must be positive (s), got {tr}")
    alpha = np.deg2rad(np.asarray(flip_deg, dtype=np.float64))
    e1 = np.exp(-tr * np.asarray(r1, dtype=np.float64))
    return np.asarray(m0, dtype=np.float64) * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1)


@dataclass(frozen=True)
class VfaFit:
    """VFA estimates per voxel; NaN where the fit failed (non-finite or E1 outside (0, 1))."""

    t1: NDArray[np.float64]
    m0: NDArray[np.float64]
    failed: NDArray[np.bool_]

    @property
    def r1(self) -> NDArray[np.float64]:
        """1 / T1 in 1/s."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 / self.t1

    @property
    def n_failed(self) -> int:
        """Number of voxels without a T1 estimate."""
        return int(np.count_nonzero(self.failed))


def _prepare(signal: ArrayLike, flip_deg: ArrayLike, tr: float, b1: ArrayLike | None
             ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    s = np.asarray(signal, dtype=np.float64)
    if s.ndim == 1:
        s = s[np.newaxis, :]
    fa = np.asarray(flip_deg, dtype=np.float64).reshape(-1)
    if s.ndim != 2 or s.shape[1] != fa.size:
        raise DceInputError(f"signals must be (N, {fa.size}) for {fa.size} flip angles, got {s.shape}")
    if fa.size < 2 or np.unique(fa).size < 2:
        raise DceInputError("VFA T1 mapping needs at least two different flip angles")
    if not (np.isfinite(tr) and tr > 0):
        raise DceInputError(f"TR must be positive (s), got {tr}")
    scale = np.ones(s.shape[0]) if b1 is None else np.asarray(b1, float).reshape(-1)
    if scale.size != s.shape[0]:
        raise DceInputError("the B1 map must have one value per voxel")
    alpha = np.deg2rad(fa)[np.newaxis, :] * scale[:, np.newaxis]
    return s, alpha


def _linear(s: NDArray[np.float64], alpha: NDArray[np.float64]
            ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    y = s / np.sin(alpha)
    x = s / np.tan(alpha)
    xm, ym = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    sxx = np.sum((x - xm) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.sum((x - xm) * (y - ym), axis=1) / sxx
        m0 = (ym[:, 0] - e1 * xm[:, 0]) / (1 - e1)
    return e1, m0


def _result(e1: NDArray[np.float64], m0: NDArray[np.float64], tr: float,
            finite_in: NDArray[np.bool_]) -> VfaFit:
    ok = finite_in & np.isfinite(e1) & np.isfinite(m0) & (e1 > 0) & (e1 < 1) & (m0 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(ok, -tr / np.log(np.where(ok, e1, 0.5)), np.nan)
    return VfaFit(t1=t1, m0=np.where(ok, m0, np.nan), failed=~ok)


def fit_vfa_linear(signal: ArrayLike, flip_deg: ArrayLike, tr: float,
                   b1: ArrayLike | None = None) -> VfaFit:
    """Linearised VFA T1 fit (DESPOT1), vectorised.

    Parameters
    ----------
    signal:
        Signals, shape (N, n_flip) or (n_flip,).
    flip_deg:
        Nominal flip angles in degrees, shape (n_flip,).
    tr:
        Repetition time in seconds.
    b1:
        Optional relative B1 per voxel (1.0 = nominal).

    Returns
    -------
    VfaFit
        T1 (s) and M0 per voxel.
    """
    s, alpha = _prepare(signal, flip_deg, tr, b1)
    e1, m0 = _linear(s, alpha)
    return _result(e1, m0, tr, np.all(np.isfinite(s), axis=1))


def fit_vfa_nonlinear(signal: ArrayLike, flip_deg: ArrayLike, tr: float,
                      b1: ArrayLike | None = None, *, max_iter: int = 50) -> VfaFit:
    """Nonlinear least-squares VFA T1 fit on the SPGR equation, vectorised.

    The linear estimate (clipped into 0 < E1 < 1) starts a Levenberg-Marquardt
    refinement of (M0, E1) run for all voxels at once.

    Parameters
    ----------
    signal, flip_deg, tr, b1:
        As for :func:`fit_vfa_linear`.
    max_iter:
        Maximum iterations.

    Returns
    -------
    VfaFit
        T1 (s) and M0 per voxel.
    """
    s, alpha = _prepare(signal, flip_deg, tr, b1)
    finite = np.all(np.isfinite(s), axis=1)
    s = np.where(finite[:, np.newaxis], s, 0.0)
    e1, m0 = _linear(s, alpha)
    e1 = np.clip(np.nan_to_num(e1, nan=0.99), 1e-6, 1 - 1e-9)
    sa, ca = np.sin(alpha), np.cos(alpha)

    def model(m: NDArray[np.float64], e: NDArray[np.float64]) -> NDArray[np.float64]:
        return m[:, None] * sa * (1 - e[:, None]) / (1 - ca * e[:, None])

    # Given E1, the best M0 is linear: use it as the start where the linear M0 is unusable.
    f = model(np.ones_like(e1), e1)
    m0_vp = np.sum(f * s, axis=1) / np.maximum(np.sum(f * f, axis=1), 1e-300)
    m0 = np.where(np.isfinite(m0) & (m0 > 0), m0, m0_vp)
    resid = s - model(m0, e1)
    rss = np.sum(resid**2, axis=1)
    lam = np.full(e1.size, 1e-3)
    for _ in range(max_iter):
        d_m = sa * (1 - e1[:, None]) / (1 - ca * e1[:, None])
        d_e = m0[:, None] * sa * (ca - 1) / (1 - ca * e1[:, None]) ** 2
        a11, a12, a22 = np.sum(d_m * d_m, 1), np.sum(d_m * d_e, 1), np.sum(d_e * d_e, 1)
        g1, g2 = np.sum(d_m * resid, 1), np.sum(d_e * resid, 1)
        b11, b22 = a11 * (1 + lam), a22 * (1 + lam)
        det = b11 * b22 - a12 * a12
        with np.errstate(divide="ignore", invalid="ignore"):
            step_m = (b22 * g1 - a12 * g2) / det
            step_e = (b11 * g2 - a12 * g1) / det
        step_m, step_e = np.nan_to_num(step_m), np.nan_to_num(step_e)
        m_new = m0 + step_m
        e_new = np.clip(e1 + step_e, 1e-6, 1 - 1e-9)
        r_new = s - model(m_new, e_new)
        rss_new = np.sum(r_new**2, axis=1)
        better = rss_new < rss
        m0, e1 = np.where(better, m_new, m0), np.where(better, e_new, e1)
        resid = np.where(better[:, None], r_new, resid)
        rss = np.where(better, rss_new, rss)
        lam = np.where(better, lam / 10, lam * 10)
        if np.all(lam > 1e8):
            break
    return _result(e1, m0, tr, finite)
