"""Extended Tofts and Patlak models: forward models and vectorised voxel-wise fits.

Model (Tofts et al., JMRI 1999;10:223, "extended" with the plasma term of
Tofts 1997 / Sourbron & Buckley, MRM 2011;66:735)::

    C_t(t) = vp * Cp(t) + Ktrans * ∫_0^t Cp(τ) exp(-kep (t - τ)) dτ,   kep = Ktrans / ve

and Patlak (Patlak et al., J Cereb Blood Flow Metab 1983;3:1)::

    C_t(t) = vp * Cp(t) + Ktrans * ∫_0^t Cp(τ) dτ

Times are given in seconds; Ktrans and kep are returned in 1/min, ve and vp in ml/ml,
the units of the OSIPI DCE code collection and of DICOM codes DCM 126312-126314/126331.

The exponential convolution is evaluated exactly for a plasma curve that is linear
between samples (the recursion of Flouri et al., MRM 2016;76:998, which also handles
irregular frame times). The fit follows the issue's method: a linear least-squares
initialisation (the Murase linearisation, MRM 2004;51:858, together with a
variable-projection search over a fixed kep grid, whichever fits better per voxel),
then a bounded Levenberg-Marquardt refinement of (Ktrans, ve, vp) run for all voxels of
a batch at once. Voxels whose curve or result is not finite, or whose refinement did
not converge, are *failures*: NaN in every map and counted in :attr:`ToftsFit.n_failed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.signal import lfilter

from analyzers.dce.errors import DceInputError

__all__ = [
    "DEFAULT_BOUNDS",
    "FitBounds",
    "PatlakFit",
    "ToftsFit",
    "exponential_convolution",
    "extended_tofts",
    "fit_extended_tofts",
    "fit_patlak",
    "murase_initialisation",
    "patlak",
]

_SERIES_THRESHOLD = 1e-3  # below this kep*dt, Taylor series avoid cancellation
_FD_STEP = 1e-6  # relative forward-difference step of the kep derivative
# Per-curve C recursion (scipy lfilter, ~100 µs a call) beats the per-frame numpy loop
# (~1.5 µs a frame) only when frames outnumber curves by about this factor.
_LFILTER_RATIO = 60
_RELATIVE_GAIN_TOL = 1e-7  # an accepted step lowering the cost by less than this: converged


@dataclass(frozen=True)
class FitBounds:
    """Box bounds of the extended Tofts parameters (OSIPI DCEmodels defaults).

    Parameters
    ----------
    ktrans:
        (low, high) of Ktrans in 1/min.
    ve:
        (low, high) of ve; the low bound is positive because kep = Ktrans / ve.
    vp:
        (low, high) of vp.
    """

    ktrans: tuple[float, float] = (0.0, 5.0)
    ve: tuple[float, float] = (1e-3, 1.0)
    vp: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("ktrans", "ve", "vp"):
            low, high = getattr(self, name)
            if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low < high):
                raise DceInputError(f"bounds of {name} must satisfy 0 <= low < high, got {low, high}")
        if self.ve[0] <= 0.0:
            raise DceInputError("the low bound of ve must be > 0 (kep = Ktrans / ve)")

    def arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Low and high bounds as arrays in the order (Ktrans, ve, vp)."""
        low = np.array([self.ktrans[0], self.ve[0], self.vp[0]])
        high = np.array([self.ktrans[1], self.ve[1], self.vp[1]])
        return low, high


DEFAULT_BOUNDS = FitBounds()


@dataclass(frozen=True)
class ToftsFit:
    """Voxel-wise extended Tofts estimates (1-D arrays, one entry per curve).

    Attributes
    ----------
    ktrans, kep:
        1/min. ``kep = ktrans / ve``.
    ve, vp:
        ml/ml.
    rss:
        Residual sum of squares (mM²).
    r2:
        Coefficient of determination of the fit.
    failed:
        True where the fit failed; every parameter there is NaN.
    """

    ktrans: NDArray[np.float64]
    ve: NDArray[np.float64]
    vp: NDArray[np.float64]
    kep: NDArray[np.float64]
    rss: NDArray[np.float64]
    r2: NDArray[np.float64]
    failed: NDArray[np.bool_]

    @property
    def n_failed(self) -> int:
        """Number of curves whose fit failed (NaN in the maps)."""
        return int(np.count_nonzero(self.failed))


@dataclass(frozen=True)
class PatlakFit:
    """Voxel-wise Patlak estimates; ``ktrans`` in 1/min, ``vp`` in ml/ml."""

    ktrans: NDArray[np.float64]
    vp: NDArray[np.float64]
    rss: NDArray[np.float64]
    r2: NDArray[np.float64]
    failed: NDArray[np.bool_]

    @property
    def n_failed(self) -> int:
        """Number of curves whose fit failed (NaN in the maps)."""
        return int(np.count_nonzero(self.failed))


def _check_time_and_aif(t: ArrayLike, cp: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t_arr = np.asarray(t, dtype=np.float64)
    cp_arr = np.asarray(cp, dtype=np.float64)
    if t_arr.ndim != 1 or t_arr.size < 4:
        raise DceInputError(f"the time axis must be 1-D with >= 4 frames, got shape {t_arr.shape}")
    if cp_arr.shape != t_arr.shape:
        raise DceInputError(f"the AIF has shape {cp_arr.shape}, the time axis {t_arr.shape}")
    if not (np.all(np.isfinite(t_arr)) and np.all(np.diff(t_arr) > 0)):
        raise DceInputError("frame times must be finite and strictly increasing")
    if not np.all(np.isfinite(cp_arr)):
        raise DceInputError("the AIF contains non-finite values")
    return t_arr / 60.0, cp_arr


def _curves_2d(ct: ArrayLike, n_frames: int) -> NDArray[np.float64]:
    arr = np.asarray(ct, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2 or arr.shape[1] != n_frames:
        raise DceInputError(f"tissue curves must be (n_voxels, {n_frames}), got shape {arr.shape}")
    return arr


def _step_weights(x: NDArray[np.float64], dt: float
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Decay and the weights of Cp[i-1], Cp[i] for one step of length dt (x = kep dt)."""
    small = x < _SERIES_THRESHOLD
    x_safe = np.where(small, 1.0, x)
    # Weights for a plasma curve linear on [t_{i-1}, t_i]; Taylor series where x is small.
    w_total = np.where(small, dt * (1 - x / 2 + x * x / 6 - x**3 / 24),
                       -np.expm1(-x_safe) / x_safe * dt)
    w_new = np.where(small, dt * (0.5 - x / 6 + x * x / 24 - x**3 / 120),
                     (x_safe - 1 + np.exp(-x_safe)) / (x_safe * x_safe) * dt)
    return np.exp(-x), w_total - w_new, w_new


def _exp_conv_minutes(t_min: NDArray[np.float64], cp: NDArray[np.float64],
                      kep: NDArray[np.float64]) -> NDArray[np.float64]:
    """∫ Cp(τ) exp(-kep (t-τ)) dτ for each kep (shape (N,)) -> (N, T); t in minutes."""
    n_frames = t_min.size
    k = np.maximum(kep, 0.0)
    steps = np.diff(t_min)
    out = np.zeros((k.size, n_frames))
    if np.allclose(steps, steps[0], rtol=1e-9, atol=0.0):
        # Regular sampling: one set of weights per voxel, source term for all frames at once.
        decay, w_old, w_new = _step_weights(k * steps[0], float(steps[0]))
        source = w_old[:, np.newaxis] * cp[:-1] + w_new[:, np.newaxis] * cp[1:]
        if k.size * _LFILTER_RATIO < n_frames:
            # Very few curves, many frames: the recursion runs in C, one call per curve.
            for j in range(k.size):
                out[j, 1:] = lfilter([1.0], [1.0, -decay[j]], source[j])
            return out
        for i in range(1, n_frames):
            out[:, i] = decay * out[:, i - 1] + source[:, i - 1]
        return out
    for i in range(1, n_frames):
        decay, w_old, w_new = _step_weights(k * steps[i - 1], float(steps[i - 1]))
        out[:, i] = decay * out[:, i - 1] + cp[i - 1] * w_old + cp[i] * w_new
    return out


def exponential_convolution(t: ArrayLike, cp: ArrayLike, kep: ArrayLike) -> NDArray[np.float64]:
    """Convolve a plasma curve with ``exp(-kep t)`` for many kep values at once.

    Parameters
    ----------
    t:
        Frame times in seconds, shape (T,).
    cp:
        Plasma concentration at those times (mM), shape (T,).
    kep:
        Rate constants in 1/min, any shape (S).

    Returns
    -------
    numpy.ndarray
        Shape (S + (T,)), in mM·min.
    """
    t_min, cp_arr = _check_time_and_aif(t, cp)
    kep_arr = np.asarray(kep, dtype=np.float64)
    flat = _exp_conv_minutes(t_min, cp_arr, kep_arr.reshape(-1))
    return flat.reshape((*kep_arr.shape, t_min.size))


def extended_tofts(t: ArrayLike, cp: ArrayLike, ktrans: ArrayLike, ve: ArrayLike,
                   vp: ArrayLike) -> NDArray[np.float64]:
    """Tissue concentration of the extended Tofts model.

    Parameters
    ----------
    t:
        Frame times (s), shape (T,).
    cp:
        Plasma concentration (mM), shape (T,).
    ktrans, ve, vp:
        Parameters (1/min, ml/ml, ml/ml), broadcastable to a common shape (S).

    Returns
    -------
    numpy.ndarray
        Concentrations in mM, shape (S + (T,)).
    """
    t_min, cp_arr = _check_time_and_aif(t, cp)
    k, v, p = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (ktrans, ve, vp)))
    if np.any(v <= 0):
        raise DceInputError("ve must be > 0 in the extended Tofts model")
    conv = _exp_conv_minutes(t_min, cp_arr, (k / v).reshape(-1))
    out = p.reshape(-1, 1) * cp_arr + k.reshape(-1, 1) * conv
    return out.reshape((*k.shape, t_min.size))


def _cumtrapz(t: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    steps = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t)
    out = np.zeros(y.shape)
    out[..., 1:] = np.cumsum(steps, axis=-1)
    return out


def patlak(t: ArrayLike, cp: ArrayLike, ktrans: ArrayLike, vp: ArrayLike) -> NDArray[np.float64]:
    """Tissue concentration of the Patlak model (mM), shape (S + (T,))."""
    t_min, cp_arr = _check_time_and_aif(t, cp)
    k, p = np.broadcast_arrays(np.asarray(ktrans, float), np.asarray(vp, float))
    integral = _cumtrapz(t_min, cp_arr)
    return p[..., np.newaxis] * cp_arr + k[..., np.newaxis] * integral


def murase_initialisation(t: ArrayLike, cp: ArrayLike, ct: ArrayLike
                          ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Linear least-squares estimates of (Ktrans, ve, vp) by the Murase linearisation.

    Integrating the extended Tofts model gives, for every frame,
    ``C(t) = vp Cp(t) + (Ktrans + kep vp) ∫Cp - kep ∫C`` (Murase, MRM 2004;51:858),
    linear in (vp, Ktrans + kep vp, kep); the three-by-three normal equations are solved
    for every curve at once. No bounds are applied here; values may be unphysical.

    Returns
    -------
    tuple of numpy.ndarray
        Ktrans (1/min), ve, vp, each of shape (N,). NaN where the system is singular.
    """
    t_min, cp_arr = _check_time_and_aif(t, cp)
    curves = _curves_2d(ct, t_min.size)
    icp = _cumtrapz(t_min, cp_arr)
    ic = _cumtrapz(t_min, curves)
    n = curves.shape[0]
    a = np.empty((n, 3, 3))
    a[:, 0, 0] = cp_arr @ cp_arr
    a[:, 0, 1] = a[:, 1, 0] = cp_arr @ icp
    a[:, 1, 1] = icp @ icp
    a[:, 0, 2] = a[:, 2, 0] = -(ic @ cp_arr)
    a[:, 1, 2] = a[:, 2, 1] = -(ic @ icp)
    a[:, 2, 2] = np.einsum("nt,nt->n", ic, ic)
    b = np.stack([curves @ cp_arr, curves @ icp, -np.einsum("nt,nt->n", ic, curves)], axis=1)
    det = np.linalg.det(a)
    ok = np.isfinite(det) & (np.abs(det) > 1e-300)
    x = np.full((n, 3), np.nan)
    if np.any(ok):
        x[ok] = np.linalg.solve(a[ok], b[ok][..., np.newaxis])[..., 0]
    vp, kep = x[:, 0], x[:, 2]
    ktrans = x[:, 1] - kep * vp
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
    return ktrans, ve, vp


def _two_column_nnls(f: NDArray[np.float64], cp: NDArray[np.float64], curves: NDArray[np.float64]
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Non-negative LSQ of curves on the shared columns [f, cp]; returns (a, b, rss)."""
    ff, fc, cc = f @ f, f @ cp, cp @ cp
    yf, yc, yy = curves @ f, curves @ cp, np.einsum("nt,nt->n", curves, curves)
    det = ff * cc - fc * fc
    a = (yf * cc - yc * fc) / det if det > 0 else np.full(yf.shape, -1.0)
    b = (yc * ff - yf * fc) / det if det > 0 else np.full(yf.shape, -1.0)
    # One-column solutions where the joint solution leaves the non-negative orthant.
    a_only = np.maximum(yf / ff, 0.0) if ff > 0 else np.zeros_like(yf)
    b_only = np.maximum(yc / cc, 0.0) if cc > 0 else np.zeros_like(yc)
    joint_ok = (a >= 0) & (b >= 0)
    rss_a = yy - 2 * a_only * yf + a_only**2 * ff
    rss_b = yy - 2 * b_only * yc + b_only**2 * cc
    use_a = ~joint_ok & (rss_a <= rss_b)
    use_b = ~joint_ok & ~use_a
    a = np.where(joint_ok, a, np.where(use_a, a_only, 0.0))
    b = np.where(joint_ok, b, np.where(use_b, b_only, 0.0))
    rss = yy - 2 * a * yf - 2 * b * yc + a * a * ff + 2 * a * b * fc + b * b * cc
    return a, b, rss


def _grid_initialisation(t_min: NDArray[np.float64], cp: NDArray[np.float64],
                         curves: NDArray[np.float64], bounds: FitBounds
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Best (Ktrans, ve, vp) on a log kep grid, solving (Ktrans, vp) exactly at each kep.

    All grid points are handled by one matrix product: for every kep the columns
    [conv(kep), Cp] are shared by all curves, so the 2 x 2 normal equations differ only
    in their right-hand sides.
    """
    k_low = max(bounds.ktrans[1] * 1e-5, 1e-4)
    grid = np.geomspace(k_low, 50.0, 48)
    convs = _exp_conv_minutes(t_min, cp, grid)  # (G, T)
    ff = np.einsum("gt,gt->g", convs, convs)
    fc = convs @ cp
    cc = float(cp @ cp)
    yf = curves @ convs.T  # (N, G)
    yc = (curves @ cp)[:, np.newaxis]
    yy = np.einsum("nt,nt->n", curves, curves)[:, np.newaxis]
    det = ff * cc - fc * fc
    with np.errstate(divide="ignore", invalid="ignore"):
        k_joint = (yf * cc - yc * fc) / det
        v_joint = (yc * ff - yf * fc) / det
    joint_ok = (k_joint >= 0) & (v_joint >= 0) & (det > 0)
    # Where the joint solution leaves the non-negative orthant, the better one-column fit.
    k_only = np.maximum(yf / ff, 0.0)
    v_only = np.maximum(yc / cc, 0.0) if cc > 0 else np.zeros_like(yc)
    rss_k = yy - 2 * k_only * yf + k_only**2 * ff
    rss_v = yy - 2 * v_only * yc + v_only**2 * cc
    use_k = ~joint_ok & (rss_k <= rss_v)
    ktrans = np.where(joint_ok, k_joint, np.where(use_k, k_only, 0.0))
    vp = np.where(joint_ok, v_joint, np.where(use_k, 0.0, v_only))
    rss = yy - 2 * ktrans * yf - 2 * vp * yc + ktrans**2 * ff + 2 * ktrans * vp * fc + vp**2 * cc
    best = np.argmin(rss, axis=1)
    rows = np.arange(curves.shape[0])
    k_best = ktrans[rows, best]
    p0 = np.stack([k_best, k_best / grid[best], vp[rows, best]], axis=1)
    return p0, rss[rows, best]


def _model_and_conv(t_min: NDArray[np.float64], cp: NDArray[np.float64], p: NDArray[np.float64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    conv = _exp_conv_minutes(t_min, cp, p[:, 0] / p[:, 1])
    return p[:, 2:3] * cp + p[:, 0:1] * conv, conv


def _levenberg_marquardt(t_min: NDArray[np.float64], cp: NDArray[np.float64],
                         curves: NDArray[np.float64], p0: NDArray[np.float64],
                         bounds: FitBounds, max_iter: int
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Bounded (projected) Levenberg-Marquardt on (Ktrans, ve, vp) for all curves at once."""
    low, high = bounds.arrays()
    p = np.clip(p0, low, high)
    model, conv = _model_and_conv(t_min, cp, p)
    resid = curves - model
    rss = np.einsum("nt,nt->n", resid, resid)
    lam = np.full(p.shape[0], 1e-3)
    done = np.zeros(p.shape[0], dtype=bool)
    converged = np.zeros(p.shape[0], dtype=bool)
    scale = np.maximum(np.einsum("nt,nt->n", curves, curves), 1e-30)
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        pa, ca, ra = p[act], conv[act], resid[act]
        kep = pa[:, 0] / pa[:, 1]
        step = _FD_STEP * np.maximum(kep, 1e-3)
        dconv = (_exp_conv_minutes(t_min, cp, kep + step) - ca) / step[:, np.newaxis]
        jac = np.empty((act.size, t_min.size, 3))
        jac[:, :, 0] = ca + (pa[:, 0] / pa[:, 1])[:, np.newaxis] * dconv
        jac[:, :, 1] = -(pa[:, 0] ** 2 / pa[:, 1] ** 2)[:, np.newaxis] * dconv
        jac[:, :, 2] = cp
        jac_t = jac.transpose(0, 2, 1)
        jtj = jac_t @ jac
        grad = (jac_t @ ra[:, :, np.newaxis])[:, :, 0]
        diag = np.einsum("nkk->nk", jtj)
        damped = jtj + (lam[act][:, np.newaxis] * np.maximum(diag, 1e-12))[:, :, np.newaxis] * np.eye(3)
        with np.errstate(all="ignore"):
            delta = np.linalg.solve(damped, grad[..., np.newaxis])[..., 0]
        bad_step = ~np.all(np.isfinite(delta), axis=1)
        delta[bad_step] = 0.0
        p_new = np.clip(pa + delta, low, high)
        m_new, conv_new = _model_and_conv(t_min, cp, p_new)
        r_new = curves[act] - m_new
        rss_new = np.einsum("nt,nt->n", r_new, r_new)
        better = (rss_new < rss[act]) & ~bad_step
        acc = act[better]
        # Gain relative to the current cost (noisy curves) or to the curve energy
        # (noise-free curves, whose cost tends to zero).
        rel_gain = (rss[acc] - rss_new[better]) / (rss[acc] + 1e-12 * scale[acc])
        moved = np.max(np.abs(p_new[better] - pa[better]) / (np.abs(pa[better]) + 1e-6), axis=1)
        p[acc], conv[acc], resid[acc], rss[acc] = p_new[better], conv_new[better], r_new[better], rss_new[better]
        lam[acc] = np.maximum(lam[acc] / 10.0, 1e-12)
        lam[act[~better]] *= 10.0
        small = (rel_gain < _RELATIVE_GAIN_TOL) | (moved < 1e-8)
        converged[acc[small]] = True
        # A damping this large means no step along the gradient lowers the cost: a minimum.
        stalled = lam[act] > 1e6
        converged[act[stalled]] = True
        done[act] = converged[act]
    return p, rss, converged


def fit_extended_tofts(t: ArrayLike, cp: ArrayLike, ct: ArrayLike, *,
                       bounds: FitBounds = DEFAULT_BOUNDS, max_iter: int = 300,
                       batch_size: int = 8192) -> ToftsFit:
    """Fit the extended Tofts model to many tissue curves at once.

    Parameters
    ----------
    t:
        Frame times in seconds, shape (T,).
    cp:
        Plasma concentration of the AIF (mM), shape (T,).
    ct:
        Tissue concentration curves (mM), shape (N, T) or (T,).
    bounds:
        Box bounds of (Ktrans, ve, vp).
    max_iter:
        Maximum Levenberg-Marquardt iterations; curves not converged by then are failures.
    batch_size:
        Curves refined together (bounds the memory of the Jacobians, ~ 24·T bytes per curve).

    Returns
    -------
    ToftsFit
        Estimates per curve; failures are NaN and flagged.
    """
    t_min, cp_arr = _check_time_and_aif(t, cp)
    curves = _curves_2d(ct, t_min.size)
    if max_iter < 1 or batch_size < 1:
        raise DceInputError("max_iter and batch_size must be >= 1")
    n = curves.shape[0]
    finite = np.all(np.isfinite(curves), axis=1)
    params = np.full((n, 3), np.nan)
    rss = np.full(n, np.nan)
    converged = np.zeros(n, dtype=bool)
    low, high = bounds.arrays()
    index = np.flatnonzero(finite)
    for start in range(0, index.size, batch_size):
        sel = index[start:start + batch_size]
        block = curves[sel]
        p_grid, rss_grid = _grid_initialisation(t_min, cp_arr, block, bounds)
        k_m, v_m, p_m = murase_initialisation(t, cp_arr, block)
        p_mur = np.clip(np.stack([k_m, v_m, p_m], axis=1), low, high)
        mur_ok = np.all(np.isfinite(p_mur), axis=1)
        p_mur[~mur_ok] = p_grid[~mur_ok]
        m_mur, _ = _model_and_conv(t_min, cp_arr, p_mur)
        rss_mur = np.sum((block - m_mur) ** 2, axis=1)
        p0 = np.where((mur_ok & (rss_mur < rss_grid))[:, np.newaxis], p_mur, p_grid)
        p_fit, rss_fit, conv_ok = _levenberg_marquardt(t_min, cp_arr, block, p0, bounds, max_iter)
        params[sel], rss[sel], converged[sel] = p_fit, rss_fit, conv_ok
    failed = ~(finite & converged & np.all(np.isfinite(params), axis=1) & np.isfinite(rss))
    params[failed] = np.nan
    rss[failed] = np.nan
    ktrans, ve, vp = params[:, 0], params[:, 1], params[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tss = np.sum((curves - np.mean(curves, axis=1, keepdims=True)) ** 2, axis=1)
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
        kep = ktrans / ve
    return ToftsFit(ktrans=ktrans, ve=ve, vp=vp, kep=kep, rss=rss, r2=r2, failed=failed)


def fit_patlak(t: ArrayLike, cp: ArrayLike, ct: ArrayLike) -> PatlakFit:
    """Non-negative linear least-squares Patlak fit of many curves at once.

    Parameters
    ----------
    t:
        Frame times in seconds, shape (T,).
    cp:
        Plasma concentration (mM), shape (T,).
    ct:
        Tissue curves (mM), shape (N, T) or (T,).

    Returns
    -------
    PatlakFit
        Ktrans (1/min) and vp per curve; failures (non-finite curves) are NaN.
    """
    t_min, cp_arr = _check_time_and_aif(t, cp)
    curves = _curves_2d(ct, t_min.size)
    finite = np.all(np.isfinite(curves), axis=1)
    safe = np.where(finite[:, np.newaxis], curves, 0.0)
    ktrans, vp, rss = _two_column_nnls(_cumtrapz(t_min, cp_arr), cp_arr, safe)
    tss = np.sum((safe - safe.mean(axis=1, keepdims=True)) ** 2, axis=1)
    failed = ~finite | ~np.isfinite(ktrans) | ~np.isfinite(vp)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
    for arr in (ktrans, vp, rss, r2):
        arr[failed] = np.nan
    return PatlakFit(ktrans=ktrans, vp=vp, rss=np.maximum(rss, 0.0), r2=r2, failed=failed)
