"""Indicator-dilution deconvolution: CBV, CBF and MTT from concentration curves.

Follows the DSC tracer-kinetic model of Østergaard et al. (MRM 1996;36:715):
``C_t(t) = (ρ/k_H)·CBF·(C_a ⊗ R)(t)``, solved by truncated singular value
decomposition of the discretised convolution matrix.

* ``"osvd"`` (default): block-circulant SVD with a per-voxel truncation chosen by
  the oscillation index (Wu et al., MRM 2003;50:164): the convolution is made
  circular by zero padding to twice the number of frames, which makes the
  estimate insensitive to tracer arrival delay, and for each voxel the
  smallest threshold whose residue has an oscillation index at or below
  ``oi_target`` (0.035) is kept; 24 thresholds from 0.95 down to 0.01 of the
  largest singular value are tried on a logarithmic grid.
* ``"ssvd"``: standard SVD of the lower-triangular (Toeplitz) matrix with a fixed
  threshold (0.2 of the largest singular value, Østergaard 1996).

The SVD of the AIF matrix is computed once and reused for every voxel; all
voxels are processed as matrix products in chunks of bounded memory.

Units: CBV = 100·(k_H/ρ)·∫C_t/∫C_a in ml/100 g, CBF = 100·60·(k_H/ρ)·max(F·R)
in ml/100 g/min, MTT = 60·CBV/CBF in s (central volume theorem). With
``k_h = density = 1`` the values are in ml/100 ml, the convention of the OSIPI
DSC test data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from analyzers.dsc.errors import DscInputError

__all__ = [
    "BRAIN_DENSITY_G_PER_ML",
    "HEMATOCRIT_FACTOR",
    "Perfusion",
    "SvdDeconvolver",
    "cbv_area_ratio",
    "oscillation_index",
    "perfusion_from_concentration",
]

#: (1 − Hct_large vessels) / (1 − Hct_small vessels) = (1 − 0.45) / (1 − 0.25) (Rempp 1994).
HEMATOCRIT_FACTOR = (1.0 - 0.45) / (1.0 - 0.25)
#: Brain tissue density in g/ml (Rempp 1994).
BRAIN_DENSITY_G_PER_ML = 1.04

DeconvolutionMethod = Literal["osvd", "ssvd"]

# Relative thresholds tried by oSVD, from strongest to weakest truncation; a log
# grid is as fine as the OI criterion can resolve and keeps the cost bounded.
_OSVD_THRESHOLDS = np.geomspace(0.95, 0.01, 24)
# Voxels per matrix product; bounds the working memory to a few tens of MB.
_CHUNK_VOXELS = 16384


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """Oscillation index of residue functions (Wu et al. 2003, eq. 6).

    ``OI = (1/L)·(1/max f)·Σ_k |f(k) − 2f(k−1) + f(k−2)|`` over the ``L``
    samples of each residue ``f``.

    Parameters
    ----------
    residue:
        Shape ``(L, voxels)`` or ``(L,)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(voxels,)`` (or a 0-d array); ``inf`` where the residue peak is not positive.
    """
    f = np.asarray(residue, dtype=np.float64)
    length = f.shape[0]
    peak = f.max(axis=0)
    second = np.abs(f[2:] - 2.0 * f[1:-1] + f[:-2]).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        oi = np.where(peak > 0, second / (length * np.where(peak > 0, peak, 1.0)), np.inf)
    return oi


class SvdDeconvolver:
    """Truncated-SVD deconvolution against one arterial input function.

    Parameters
    ----------
    aif:
        Arterial concentration (ΔR2* or mM), shape ``(n,)``, uniformly sampled.
    dt:
        Sampling interval in seconds.
    method:
        ``"osvd"`` (block-circulant, oscillation-index threshold per voxel) or
        ``"ssvd"`` (standard SVD, fixed threshold).
    oi_target:
        Largest oscillation index accepted by oSVD (Wu 2003).
    threshold:
        Relative singular-value threshold of sSVD.

    Raises
    ------
    DscInputError
        The AIF is not a finite 1-D curve with a positive peak, or ``dt`` is not positive.
    """

    def __init__(
        self,
        aif: np.ndarray,
        dt: float,
        method: DeconvolutionMethod = "osvd",
        oi_target: float = 0.035,
        threshold: float = 0.2,
    ) -> None:
        curve = np.asarray(aif, dtype=np.float64)
        if curve.ndim != 1 or curve.size < 4 or not np.all(np.isfinite(curve)):
            raise DscInputError("the AIF must be a finite curve of at least 4 samples")
        if curve.max() <= 0:
            raise DscInputError("the AIF has no positive concentration peak")
        if not dt > 0:
            raise DscInputError(f"the sampling interval must be positive, got {dt}")
        if method not in ("osvd", "ssvd"):
            raise DscInputError(f"unknown deconvolution method {method!r} (use 'osvd' or 'ssvd')")
        if not 0 < oi_target < 1:
            raise DscInputError(f"oi_target must lie in (0, 1), got {oi_target}")
        if not 0 < threshold < 1:
            raise DscInputError(f"threshold must lie in (0, 1), got {threshold}")
        self.aif = curve
        self.dt = float(dt)
        self.method: DeconvolutionMethod = method
        self.oi_target = float(oi_target)
        self.threshold = float(threshold)
        n = curve.size
        # Piecewise-linear ("Volterra") discretisation of the convolution integral
        # (Sourbron et al., MRM 2007;57:1083): weights (1, 4, 1)/6 over neighbouring
        # AIF samples. It removes most of the CBF underestimate of the rectangle
        # rule for short transit times.
        length = 2 * n if method == "osvd" else n
        padded = np.concatenate([curve, np.zeros(length - n + 2)])
        lag = np.arange(length)[:, None] - np.arange(length)[None, :]
        if method == "osvd":
            lag = lag % length
            before = padded[(lag - 1) % length]
        else:
            before = np.where(lag >= 1, padded[np.clip(lag - 1, 0, None)], 0.0)
        at = np.where(lag >= 0, padded[np.clip(lag, 0, None)], 0.0)
        after = np.where(lag >= -1, padded[np.clip(lag + 1, 0, None)], 0.0)
        matrix = self.dt * (before + 4.0 * at + after) / 6.0
        self.length = length
        u, s, vt = np.linalg.svd(matrix)
        self._u_t = u.T
        self._singular = s
        self._v = vt.T
        # Single-precision copies for the oSVD sweep (memory bandwidth bound); the
        # flow it returns agrees with double precision far below the OSIPI tolerances.
        self._u_t32 = self._u_t.astype(np.float32)
        self._singular32 = s.astype(np.float32)
        self._v32 = self._v.astype(np.float32)
        self._second_v32 = np.diff(self._v, n=2, axis=0).astype(np.float32)
        # Number of singular values kept for each oSVD threshold (strong → weak truncation).
        kept = np.searchsorted(-s, -_OSVD_THRESHOLDS * s[0], side="right")
        self._osvd_kept = np.unique(np.clip(kept, 1, length))

    @property
    def singular_values(self) -> np.ndarray:
        """Singular values of the convolution matrix, decreasing."""
        return self._singular.copy()

    @property
    def left_vectors(self) -> np.ndarray:
        """U of the SVD (columns), shape ``(L, L)``."""
        return self._u_t.T.copy()

    @property
    def right_vectors(self) -> np.ndarray:
        """V of the SVD (columns), shape ``(L, L)``."""
        return self._v.copy()

    @property
    def truncation_grid(self) -> np.ndarray:
        """Numbers of singular values tried by oSVD, strongest truncation first."""
        return self._osvd_kept.copy()

    def flow(self, concentration: np.ndarray) -> np.ndarray:
        """Peak of the flow-scaled residue, F·R_max, in 1/s for every voxel.

        Parameters
        ----------
        concentration:
            Tissue curves in the units of the AIF, shape ``(voxels, n)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(voxels,)``.
        """
        conc = np.asarray(concentration, dtype=np.float64)
        if conc.ndim != 2 or conc.shape[1] != self.aif.size:
            raise DscInputError(
                f"concentration must have shape (voxels, {self.aif.size}), got {conc.shape}"
            )
        out = np.empty(conc.shape[0])
        for start in range(0, conc.shape[0], _CHUNK_VOXELS):
            block = conc[start : start + _CHUNK_VOXELS]
            if self.method == "osvd":
                out[start : start + block.shape[0]] = self._osvd_block(block)
            else:
                out[start : start + block.shape[0]] = self._ssvd_block(block)
        return out

    def residue(self, concentration: np.ndarray, kept: int) -> np.ndarray:
        """Flow-scaled residue F·R(t) with ``kept`` singular values, shape ``(L, voxels)``.

        For inspection and tests; :meth:`flow` is the fast path.
        """
        conc = np.atleast_2d(np.asarray(concentration, dtype=np.float64))
        padded = np.zeros((self.length, conc.shape[0]))
        padded[: conc.shape[1]] = conc.T
        projected = self._u_t[:kept] @ padded
        return self._v[:, :kept] @ (projected / self._singular[:kept, None])

    def _ssvd_block(self, block: np.ndarray) -> np.ndarray:
        kept = int(np.count_nonzero(self._singular >= self.threshold * self._singular[0]))
        return self.residue(block, max(kept, 1)).max(axis=0)

    def _osvd_block(self, block: np.ndarray) -> np.ndarray:
        padded = np.zeros((self.length, block.shape[0]), dtype=np.float32)
        padded[: block.shape[1]] = block.T
        # Coefficients of the residue in the V basis; adding singular vectors one
        # group at a time walks from strong to weak truncation with one product
        # each. The second difference needed by the oscillation index is linear in
        # the residue, so it is accumulated the same way instead of recomputed.
        coefficients = (self._u_t32 @ padded) / self._singular32[:, None]
        residue = np.zeros_like(padded)
        second = np.zeros((self.length - 2, block.shape[0]), dtype=np.float32)
        flow = np.zeros(block.shape[0], dtype=np.float32)
        previous = 0
        for kept in self._osvd_kept:
            residue += self._v32[:, previous:kept] @ coefficients[previous:kept]
            second += self._second_v32[:, previous:kept] @ coefficients[previous:kept]
            peak = residue.max(axis=0)
            if previous == 0:
                # The strongest truncation is the fallback when no threshold meets the target.
                flow[:] = peak
            previous = kept
            # Wu 2003: the smallest threshold (most singular values) whose residue
            # oscillates no more than the target wins; later (weaker) truncations overwrite.
            roughness = np.abs(second).sum(axis=0)
            accept = (peak > 0) & (roughness <= self.oi_target * self.length * peak)
            flow[accept] = peak[accept]
        return flow.astype(np.float64)


def cbv_area_ratio(
    concentration: np.ndarray,
    aif: np.ndarray,
    times: np.ndarray,
    k_h: float = HEMATOCRIT_FACTOR,
    density: float = BRAIN_DENSITY_G_PER_ML,
) -> np.ndarray:
    """CBV = 100·(k_H/ρ)·∫C_t dt / ∫C_a dt (Rempp et al., Radiology 1994), in ml/100 g.

    Parameters
    ----------
    concentration:
        Shape ``(voxels, n)``.
    aif:
        Shape ``(n,)``, same units as ``concentration``.
    times:
        Shape ``(n,)`` in seconds.
    """
    area_aif = float(np.trapezoid(aif, times))
    if area_aif <= 0:
        raise DscInputError("the AIF has no positive area")
    return 100.0 * (k_h / density) * np.trapezoid(concentration, times, axis=-1) / area_aif


@dataclass(frozen=True)
class Perfusion:
    """Perfusion values of a set of voxels.

    Attributes
    ----------
    cbv:
        ml/100 g (ml/100 ml when ``k_h = density = 1``).
    cbf:
        ml/100 g/min.
    mtt:
        Seconds, CBV/CBF·60; NaN where CBF is not positive.
    """

    cbv: np.ndarray
    cbf: np.ndarray
    mtt: np.ndarray


def perfusion_from_concentration(
    concentration: np.ndarray,
    aif: np.ndarray,
    times: np.ndarray,
    method: DeconvolutionMethod = "osvd",
    oi_target: float = 0.035,
    threshold: float = 0.2,
    k_h: float = HEMATOCRIT_FACTOR,
    density: float = BRAIN_DENSITY_G_PER_ML,
    deconvolver: SvdDeconvolver | None = None,
) -> Perfusion:
    """CBV, CBF and MTT of every voxel from concentration curves and an AIF.

    Parameters
    ----------
    concentration:
        Tissue curves, shape ``(voxels, n)``.
    aif:
        Arterial curve, shape ``(n,)``, same units.
    times:
        Frame times in seconds, shape ``(n,)``, uniformly spaced.
    method, oi_target, threshold:
        See :class:`SvdDeconvolver`.
    k_h, density:
        Hematocrit factor and brain density; 1 and 1 give ml/100 ml.
    deconvolver:
        A deconvolver already built for this AIF and sampling (its SVD is
        reused; ``method``, ``oi_target`` and ``threshold`` are then its own).

    Raises
    ------
    DscInputError
        Shapes do not match or the frames are not uniformly spaced.
    """
    t = np.asarray(times, dtype=np.float64)
    conc = np.atleast_2d(np.asarray(concentration, dtype=np.float64))
    if t.ndim != 1 or t.size != conc.shape[1] or t.size != np.asarray(aif).size:
        raise DscInputError("times, AIF and concentration curves must have the same length")
    steps = np.diff(t)
    dt = float(np.median(steps))
    if dt <= 0 or np.max(np.abs(steps - dt)) > 0.05 * dt:
        raise DscInputError("DSC frames must be uniformly spaced in time (within 5 %)")
    if deconvolver is None:
        deconvolver = SvdDeconvolver(
            aif, dt, method=method, oi_target=oi_target, threshold=threshold
        )
    elif deconvolver.aif.size != t.size or abs(deconvolver.dt - dt) > 1e-9 * dt:
        raise DscInputError("the given deconvolver was built for another AIF or sampling")
    scale = k_h / density
    cbv = cbv_area_ratio(conc, aif, t, k_h=k_h, density=density)
    cbf = 100.0 * 60.0 * scale * deconvolver.flow(conc)
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(cbf > 0, 60.0 * cbv / np.where(cbf > 0, cbf, 1.0), np.nan)
    return Perfusion(cbv=cbv, cbf=cbf, mtt=mtt)
