"""Model-based DSC deconvolution: Bayesian estimation on a grid of residue functions, with leakage.

The tissue curve is modelled as (Mouridsen et al., "Bayesian estimation of
cerebral perfusion using a physiological model of microvasculature",
NeuroImage 2006;33:570)

    C_t(t) = F·(C_a ⊗ R_θ)(t − δ) + K·∫₀ᵗ C_a(t') dt' + ε(t),

with the residue ``R_θ(t) = 1 − P(k, k·t/MTT)`` of a gamma distribution of
capillary transit times (shape ``k``, mean ``MTT``; ``k = 1`` is the exponential
residue), an arterial-to-tissue delay ``δ``, and white Gaussian noise of the
voxel's standard deviation ``σ``. The second term is the extravasation term of
Bjørnerud et al. ("T1- and T2*-dominant extravasation correction in DSC-MRI:
Part I", JCBFM 2011;31:2041) in its Patlak limit (k_ep → 0): leaked agent adds
``K·∫C_a`` to the curve, K > 0 for T2*-dominant and K < 0 for T1-dominant
leakage. Because the intravascular term carries its own transit time, K does not
absorb a long or short MTT as the whole-curve fit of Boxerman et al. does.

Estimation. ``F`` and ``K`` enter linearly and get flat priors, so for every
grid point ``θ = (MTT, k, δ)`` they are integrated out in closed form: the
marginal likelihood is ``|M_θ|^{-1/2}·exp(−RSS_θ/2σ²)`` with ``M_θ`` the 2 × 2
(or 1 × 1 without K) normal matrix and ``RSS_θ`` the least-squares residual.
The flat prior is put on the curve's area scale (``F·MTT``, the blood volume)
rather than on F, which adds ``log MTT`` to the log evidence: a flat prior on F
would favour the shortest transit times whenever the data are noisy. The grid
prior is uniform over 24 MTTs log-spaced from 0.5 to 40 s (a log-uniform prior
on MTT) and shapes k ∈ {1, 2, 4, 8}, with delays 0-3 s in steps of one frame
interval under an exponential prior of scale 0.5 s (tissue usually arrives within
a frame of the arterial input). Every estimate is a posterior mean over the grid
(Mouridsen et al. report posterior means from a variational approximation; the
grid gives the posterior exactly up to its resolution):

* :meth:`ResidueGrid.leakage`: E[K] and sd[K] of the two-term model; the map
  pipeline decides per neighbourhood whether to remove it
  (:func:`analyzers.dsc.leakage.gated_leakage`);
* :meth:`ResidueGrid.transit`: on leakage-corrected curves, the one-term
  model's E[F] (CBF = 100·60·(k_H/ρ)·E[F], since R(0) = 1), the geometric mean
  transit time and the area of the fitted curve over the acquired frames (the
  analyzer's CBV: a matched filter of the raw area, which integrates the noise
  of every frame), and the posterior of the residue shape. A per-curve prior
  over the shapes may replace the flat one (the map pipeline's neighbourhood
  prior, :func:`neighbourhood_shape_prior`).

Neighbourhood prior on the residue shape. At a contrast-to-noise ratio of a
clinical series the shape of the transit-time distribution is barely
identified by one voxel's curve, while the data fix the curve's area and its
first moment (the mean residence time, ``MTT·(1 + 1/k)/2`` for shape ``k``):
the posterior runs along that ridge, and a flat prior over the shapes then
lengthens the MTT of an exponential residue (shapes 2-8 need a longer MTT for
the same residence time) and shortens that of a narrow one. The heterogeneity
of capillary transit times relative to their mean is a property of the
microvascular architecture that neighbouring voxels of a tissue share
(Jespersen & Østergaard, JCBFM 2012), so :func:`neighbourhood_shape_prior`
gives each voxel, as its prior over the shapes, the mean shape posterior of
the other voxels of its 3 × 3 × 3 neighbourhood: one step of empirical Bayes
with a local population (the spatial priors of Penny et al., NeuroImage 2005,
and Groves et al., NeuroImage 2009, pool parameters over neighbours the same
way; FSL's VERBENA, Chappell et al., MRM 2015, fits this vascular model with
their inference engine). MTT, F and the delay keep their voxel-wise priors, so
the maps keep their resolution.

Computation: the atoms are built once per AIF (fine-grid convolution, 10 steps
per frame); for a block of voxels the projections on all atoms are one matrix
product, the posterior weights one exponential per voxel and grid point, and
every posterior mean a matrix product with per-atom constants (float32; the
float64 result differs by < 1e-3 relative, ``tests/test_dsc_bayes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.integrate import cumulative_trapezoid
from scipy.signal import fftconvolve
from scipy.special import gammainc

from analyzers.dsc.errors import DscInputError

__all__ = ["LeakageEstimate", "ResidueGrid", "TransitEstimate", "neighbourhood_shape_prior"]

#: Mean transit times of the grid (s), log-spaced.
GRID_MTT_S = np.geomspace(0.5, 40.0, 24)
#: Shapes of the gamma transit-time distribution (1: exponential residue).
GRID_SHAPES = (1.0, 2.0, 4.0, 8.0)
#: Scale (s) of the exponential prior on the arterial-to-tissue delay.
DELAY_PRIOR_SCALE_S = 0.5
#: Largest arterial-to-tissue delay of the grid (s).
GRID_MAX_DELAY_S = 3.0
# Fine time steps per frame interval used to evaluate the convolutions.
_OVERSAMPLE = 10
# Voxels per block (bounds memory: block × atoms × a few float32 arrays).
_CHUNK_VOXELS = 2048
# Smallest prior probability of a shape (keeps the logarithm finite).
_MIN_SHAPE_PRIOR = 1e-6
#: Neighbourhood (z, y, x voxels) of the shape prior.
SHAPE_PRIOR_NEIGHBOURHOOD = (3, 3, 3)


@dataclass(frozen=True)
class LeakageEstimate:
    """Posterior of the leakage coefficient K under the two-term model, per curve.

    Attributes
    ----------
    k:
        ``E[K]`` (1/s; the curve's units per unit of ``∫C_a``).
    sd:
        Posterior standard deviation of K.
    """

    k: np.ndarray
    sd: np.ndarray


@dataclass(frozen=True)
class TransitEstimate:
    """Posterior of the one-term model (no leakage), per curve.

    Attributes
    ----------
    mtt_s:
        ``exp(E[log MTT])``, the posterior geometric mean transit time (s).
    flow:
        ``E[F]`` in the units of the AIF (1/s).
    area:
        ``E[F·∫(C_a ⊗ R_θ)(t − δ) dt]``, the area of the fitted curve over the
        acquired frames (trapezoidal, the units of the curve times seconds).
    shape_posterior:
        Posterior probability of each shape of :data:`GRID_SHAPES`, ``(curves, shapes)``.
    """

    mtt_s: np.ndarray
    flow: np.ndarray
    area: np.ndarray
    shape_posterior: np.ndarray


class ResidueGrid:
    """The atoms ``(C_a ⊗ R_θ)(t − δ)`` of one AIF and the leakage regressor ``∫C_a``.

    Parameters
    ----------
    aif:
        Arterial curve (ΔR2* or concentration), shape ``(n,)``, uniformly sampled.
    dt:
        Frame interval (s).
    dtype:
        Floating-point type of the per-voxel arithmetic (float32 by default;
        float64 for checks).

    Raises
    ------
    DscInputError
        The AIF is not a finite curve with a positive area, or ``dt`` is not positive.
    """

    def __init__(self, aif: np.ndarray, dt: float, dtype: type = np.float32) -> None:
        curve = np.asarray(aif, dtype=np.float64)
        if curve.ndim != 1 or curve.size < 4 or not np.all(np.isfinite(curve)):
            raise DscInputError("the AIF must be a finite curve of at least 4 samples")
        if not dt > 0:
            raise DscInputError(f"the sampling interval must be positive, got {dt}")
        if np.trapezoid(curve, dx=dt) <= 0:
            raise DscInputError("the AIF has no positive area")
        n = curve.size
        self.dt = float(dt)
        times = np.arange(n) * dt
        fine_dt = dt / _OVERSAMPLE
        fine = np.arange(0.0, times[-1] + fine_dt / 2, fine_dt)
        arterial = np.interp(fine, times, curve)
        delays = np.arange(0.0, GRID_MAX_DELAY_S + 1e-9, dt)
        kernels, labels = [], []
        for shape in GRID_SHAPES:
            for mtt in GRID_MTT_S:
                kernels.append(1.0 - gammainc(shape, shape * fine / mtt))
                labels.append((mtt, shape))
        conv = fftconvolve(np.stack(kernels), arterial[None, :], axes=1)[:, : fine.size] * fine_dt
        atoms, mtts, log_prior = [], [], []
        for delay in delays:
            for index, (mtt, _shape) in enumerate(labels):
                log_prior.append(-delay / DELAY_PRIOR_SCALE_S)
                atoms.append(np.interp(times - delay, fine, conv[index], left=0.0))
                mtts.append(mtt)
        self.atoms = np.stack(atoms)  # (A, n)
        self.mtt_s = np.asarray(mtts)
        shape_of_atom = np.tile(np.repeat(np.arange(len(GRID_SHAPES)), len(GRID_MTT_S)), delays.size)
        self.shape_index = shape_of_atom
        self.log_prior = np.asarray(log_prior)
        self.leak_regressor = cumulative_trapezoid(curve, times, initial=0.0)
        g = self.atoms
        lr = self.leak_regressor
        self._gg = np.einsum("an,an->a", g, g)
        self._gl = g @ lr
        self._ll = float(lr @ lr)
        self._det = self._gg * self._ll - self._gl ** 2
        if np.any(self._gg <= 0) or np.any(self._det <= 1e-12 * self._gg * self._ll):
            raise DscInputError("the AIF gives degenerate model curves (no bolus)")
        self._dtype = dtype
        self._atoms32: np.ndarray = g.T.astype(dtype)  # (n, A)
        # Per-atom constants of the closed-form posterior; the half log-determinants
        # of the normal matrices are the evidence terms of F and K's flat priors.
        consts = {
            "inv_gg": 1.0 / self._gg, "ll_det": self._ll / self._det, "gl_det": self._gl / self._det,
            "gg_det": self._gg / self._det,
            "half_logdet0": 0.5 * np.log(self._gg) - np.log(self.mtt_s) - self.log_prior,
            "half_logdet1": 0.5 * np.log(self._det) - np.log(self.mtt_s) - self.log_prior,
            "log_mtt": np.log(self.mtt_s),
        }
        consts["area_gg"] = np.trapezoid(g, dx=dt, axis=1) / self._gg
        consts["gg_det_sq"] = consts["gg_det"] ** 2
        consts["gl_det_sq"] = consts["gl_det"] ** 2
        consts["gg_gl_det_sq"] = consts["gg_det"] * consts["gl_det"]
        self._consts = {key: value.astype(dtype) for key, value in consts.items()}
        self._shape_onehot = (shape_of_atom[:, None] == np.arange(len(GRID_SHAPES))).astype(dtype)

    @property
    def size(self) -> int:
        """Number of grid points (atoms)."""
        return int(self.atoms.shape[0])

    def leakage(self, curves: np.ndarray, sigma: np.ndarray | float) -> LeakageEstimate:
        """Posterior mean and standard deviation of K for every curve (two-term model).

        Parameters
        ----------
        curves:
            Tissue curves in the AIF's units, shape ``(voxels, n)``.
        sigma:
            Noise standard deviation of each curve (scalar or ``(voxels,)``), > 0.
        """
        y, noise = self._check(curves, sigma)
        k, sd = np.zeros(y.shape[0]), np.zeros(y.shape[0])
        for start in range(0, y.shape[0], _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, y.shape[0])
            k[start:stop], sd[start:stop] = self._leakage_block(y[start:stop], noise[start:stop])
        return LeakageEstimate(k=k, sd=sd)

    def transit(self, curves: np.ndarray, sigma: np.ndarray | float,
                shape_prior: np.ndarray | None = None) -> TransitEstimate:
        """Posterior transit time, flow and fitted area for every curve (one-term model).

        Parameters
        ----------
        curves:
            Tissue curves in the AIF's units (leakage already removed), ``(voxels, n)``.
        sigma:
            Noise standard deviation of each curve (scalar or ``(voxels,)``), > 0.
        shape_prior:
            Prior probability of each shape of :data:`GRID_SHAPES` per curve,
            ``(voxels, shapes)``; flat when ``None``.
        """
        y, noise = self._check(curves, sigma)
        log_shape: np.ndarray | None = None
        if shape_prior is not None:
            prior = np.asarray(shape_prior, dtype=np.float64)
            if prior.shape != (y.shape[0], len(GRID_SHAPES)) or not np.all(np.isfinite(prior)):
                raise DscInputError(f"shape_prior must be finite, shape ({y.shape[0]}, {len(GRID_SHAPES)})")
            log_shape = np.log(np.maximum(prior, _MIN_SHAPE_PRIOR)).astype(self._dtype)
        out = np.zeros((3 + len(GRID_SHAPES), y.shape[0]))
        for start in range(0, y.shape[0], _CHUNK_VOXELS):
            stop = min(start + _CHUNK_VOXELS, y.shape[0])
            block_prior = None if log_shape is None else log_shape[start:stop]
            out[:, start:stop] = self._transit_block(y[start:stop], noise[start:stop], block_prior)
        return TransitEstimate(mtt_s=out[0], flow=out[1], area=out[2], shape_posterior=out[3:].T)

    def _check(self, curves: np.ndarray, sigma: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        y = np.atleast_2d(np.asarray(curves, dtype=np.float64))
        if y.shape[1] != self.atoms.shape[1]:
            raise DscInputError(
                f"curves must have shape (voxels, {self.atoms.shape[1]}), got {y.shape}"
            )
        noise = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[0],))
        if not np.all(noise > 0):
            raise DscInputError("the noise standard deviation must be positive")
        return y, noise

    # Sums over the grid are matrix products with per-atom constants; only the
    # evidence and its exponential are evaluated element by element.
    def _transit_block(self, y: np.ndarray, sigma: np.ndarray,
                       log_shape_prior: np.ndarray | None) -> np.ndarray:
        c = self._consts
        p = y.astype(self._dtype) @ self._atoms32  # (v, A) projections on the atoms
        precision: np.ndarray = (0.5 / sigma ** 2).astype(self._dtype)[:, None]
        # RSS = |y|² − p²/gg; |y|² is the same for every atom and drops out.
        log_evidence = precision * (p * p * c["inv_gg"]) - c["half_logdet0"]
        if log_shape_prior is not None:
            log_evidence += log_shape_prior[:, self.shape_index]
        weights = _normalised(log_evidence)
        log_mtt = weights @ c["log_mtt"]
        shapes = weights @ self._shape_onehot
        wp = weights * p
        flow = wp @ c["inv_gg"]
        area = wp @ c["area_gg"]
        return np.concatenate([np.stack([np.exp(log_mtt.astype(np.float64)), flow.astype(np.float64),
                                         area.astype(np.float64)]), shapes.T.astype(np.float64)])

    def _leakage_block(self, y: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self._consts
        p = y.astype(self._dtype) @ self._atoms32
        q = (y @ self.leak_regressor).astype(self._dtype)  # projection on ∫C_a
        precision: np.ndarray = (0.5 / sigma ** 2).astype(self._dtype)[:, None]
        # RSS = |y|² − (ll·p² − 2·gl·p·q + gg·q²)/det.
        explained = p * (p * c["ll_det"] - (2.0 * q)[:, None] * c["gl_det"])
        explained += (q * q)[:, None] * c["gg_det"]
        weights = _normalised(precision * explained - c["half_logdet1"])
        wp = weights * p
        # K|θ = (gg·q − gl·p)/det with variance σ²·gg/det.
        k_mean = q * (weights @ c["gg_det"]) - wp @ c["gl_det"]
        k_square = (q * q * (weights @ c["gg_det_sq"]) - 2.0 * q * (wp @ c["gg_gl_det_sq"])
                    + (wp * p) @ c["gl_det_sq"])
        mean = k_mean.astype(np.float64)
        within = sigma ** 2 * (weights @ c["gg_det"]).astype(np.float64)
        between = np.maximum(k_square.astype(np.float64) - mean ** 2, 0.0)
        return mean, np.sqrt(within + between)


def neighbourhood_shape_prior(shape_posterior: np.ndarray, mask: np.ndarray,
                              evidence: np.ndarray | None = None,
                              size: tuple[int, int, int] = SHAPE_PRIOR_NEIGHBOURHOOD) -> np.ndarray:
    """Each voxel's prior over the shapes: the mean shape posterior of its neighbours.

    Parameters
    ----------
    shape_posterior:
        ``(voxels, shapes)`` posteriors of the voxels of ``mask`` (in the order of
        ``mask[mask]``), from :meth:`ResidueGrid.transit` with the flat prior.
    mask:
        Boolean ``(z, y, x)`` volume of the voxels.
    evidence:
        Boolean ``(voxels,)``: the voxels whose posterior informs their
        neighbours (default all; arterial voxels are not tissue).
    size:
        Neighbourhood ``(z, y, x)`` in voxels; the voxel itself is left out.

    Returns
    -------
    ``(voxels, shapes)`` probabilities; flat where a voxel has no neighbour.
    """
    posterior = np.asarray(shape_posterior, dtype=np.float64)
    volume_mask = np.asarray(mask, dtype=bool)
    if posterior.ndim != 2 or posterior.shape[0] != int(volume_mask.sum()):
        raise DscInputError("the shape posteriors and the mask must describe the same voxels")
    weight = np.ones(posterior.shape[0]) if evidence is None else np.asarray(evidence, dtype=np.float64)
    cells = float(np.prod(size))

    def neighbourhood_sum(values: np.ndarray) -> np.ndarray:
        volume = np.zeros(volume_mask.shape)
        volume[volume_mask] = values
        return np.asarray(ndimage.uniform_filter(volume, size=size, mode="constant"))[volume_mask] * cells

    count = neighbourhood_sum(weight) - weight
    prior = np.empty_like(posterior)
    for shape in range(posterior.shape[1]):
        own = weight * posterior[:, shape]
        prior[:, shape] = neighbourhood_sum(own) - own
    flat = 1.0 / posterior.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        prior = np.where(count[:, None] > 0.5, prior / count[:, None], flat)
    return prior / prior.sum(axis=1, keepdims=True)


def _normalised(log_evidence: np.ndarray) -> np.ndarray:
    """Posterior weights over the grid (rows sum to 1) from unnormalised log evidence."""
    log_evidence -= log_evidence.max(axis=1, keepdims=True)
    weights = np.exp(log_evidence, out=log_evidence)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights
