"""Whole-series DSC map computation: signal (t, z, y, x) → S0, ΔR2*, AIF, K2, CBV, CBF, MTT, PSR.

The steps follow the methods of the ``dsc`` analyzer (DESIGN.md, issue text):

1. brain mask from the baseline signal (Otsu threshold, largest component, holes
   filled), then restricted to voxels that show the bolus (ΔR2* area at least
   10 % of the median) with a baseline of at least 20 % of the median, which
   removes scalp, skull and noise at the edge of the head;
2. bolus arrival and baseline on the whole-brain mean curve, S0 per voxel,
   ΔR2* = −ln(S/S0)/TE (:mod:`analyzers.dsc.signal`);
3. automatic AIF, Mouridsen-style clustering (:mod:`analyzers.dsc.aif`), or the
   mean curve of a given arterial mask; the baseline is then shortened to end one
   frame before the arterial arrival (arteries fill first) and S0/ΔR2* recomputed,
   so the bolus arrival used by PSR and wash-in time is the arterial one;
4. noise: the standard deviation of the baseline signal (pooled over the brain)
   gives each voxel's ΔR2* noise, σ_S/(S0·TE) (:func:`noise_sd`);
5. leakage: the model-based fit of :mod:`analyzers.dsc.bayes` (gamma
   transit-time residue plus Bjørnerud's extravasation term ``K·∫C_a``) gives K
   per voxel; K is removed only where the 3 × 3 × 3 neighbourhood shows leakage
   (:func:`analyzers.dsc.leakage.gated_leakage`), so non-leaky tissue keeps its
   curve and a long or short transit time is not taken for leakage. K2 is
   reported on the scale of Boxerman et al. (relative to the whole-brain
   non-enhancing curve, positive for T1-dominant leakage);
6. deconvolution of the corrected curves: CBV as the area ratio with hematocrit
   and density correction; CBF by oSVD (default), sSVD
   (:mod:`analyzers.dsc.deconvolution`) or the Bayesian model-based estimate
   (``"bayes"``: the posterior mean of F, with each voxel's prior over the
   residue shape taken from its neighbours' shape posteriors unless
   ``shape_prior = "flat"``, :func:`analyzers.dsc.bayes.neighbourhood_shape_prior`);
   MTT = CBV/CBF;
7. voxels whose CBV, CBF or MTT is not a positive number (noise, or leakage the
   correction did not remove) are masked (NaN) in all three maps and counted by
   reason in ``DscMaps.masked``;
8. wash-in time, PSR and wash-out slope from the signal curves.

Every per-voxel step is a vectorised array operation over all brain voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from scipy import ndimage, stats

from analyzers.dsc.aif import AifSelection, select_aif
from analyzers.dsc.bayes import ResidueGrid, neighbourhood_shape_prior
from analyzers.dsc.deconvolution import (
    BRAIN_DENSITY_G_PER_ML,
    HEMATOCRIT_FACTOR,
    SvdDeconvolver,
)
from analyzers.dsc.errors import DscInputError
from analyzers.dsc.leakage import gated_leakage, non_enhancing_reference
from analyzers.dsc.signal import (
    BolusTiming,
    baseline_signal,
    bolus_timing,
    delta_r2star,
    dynamic_parameters,
)

__all__ = [
    "METHODS",
    "MIN_COVERAGE_S",
    "DscMaps",
    "MapMethod",
    "MapOptions",
    "ShapePrior",
    "brain_mask_from_signal",
    "compute_maps",
    "noise_sd",
    "perfusion_maps",
]

MapMethod = Literal["osvd", "ssvd", "bayes"]
ShapePrior = Literal["neighbourhood", "flat"]
#: Deconvolution methods: oSVD (default), sSVD, Bayesian model-based (:mod:`analyzers.dsc.bayes`).
METHODS: tuple[MapMethod, ...] = ("osvd", "ssvd", "bayes")

# Arterial voxels must have a baseline of at least this fraction of the brain median.
_AIF_MIN_S0_FRACTION = 0.3
# A DSC series needs enough frames for a baseline, a first pass and recovery.
_MIN_FRAMES = 10
#: Seconds a series must cover after the bolus arrives: the first pass and its recirculation.
MIN_COVERAGE_S = 30.0
# Noise floor of ΔR2* as a fraction of the AIF peak (noise-free data would make the
# posterior of the model-based fit a single grid point and every K "significant").
_NOISE_FLOOR_FRACTION = 1e-3


@dataclass(frozen=True)
class MapOptions:
    """Parameters of the map computation (defaults follow the issue and the cited papers).

    Attributes
    ----------
    method:
        ``"osvd"`` (block-circulant, OI-regularised, default), ``"ssvd"`` or
        ``"bayes"`` (model-based, :mod:`analyzers.dsc.bayes`).
    oi_target:
        Oscillation index target of oSVD (Wu 2003).
    svd_threshold:
        Relative singular-value threshold of sSVD.
    shape_prior:
        Prior of the Bayesian method over the residue shape: ``"neighbourhood"``
        (each voxel's from its 3 × 3 × 3 neighbours' shape posteriors) or ``"flat"``.
    leakage_correction:
        Remove leakage where the data show it (:func:`analyzers.dsc.leakage.gated_leakage`).
    leakage_z:
        Evidence (the neighbourhood's mean K over its standard error) above
        which a voxel's leakage is removed.
    leakage_min_effect:
        Smallest change of the neighbourhood's CBV (fraction) worth a correction.
    psr_delay_s:
        S1 of PSR and wash-out slope is read this long after bolus arrival.
    skip_frames:
        Leading frames excluded from the baseline (before steady state).
    arrival_fraction:
        Fraction of the signal drop that ends the baseline.
    aif_auc_fraction, aif_roughness_fraction, aif_clusters, aif_max_voxels:
        Automatic AIF parameters (:func:`analyzers.dsc.aif.select_aif`).
    k_h, density:
        Hematocrit factor (0.55/0.75) and brain density (1.04 g/ml).
    """

    method: MapMethod = "osvd"
    oi_target: float = 0.035
    svd_threshold: float = 0.2
    shape_prior: ShapePrior = "neighbourhood"
    leakage_correction: bool = True
    leakage_z: float = 3.0
    leakage_min_effect: float = 0.05
    psr_delay_s: float = 90.0
    skip_frames: int = 0
    arrival_fraction: float = 0.1
    aif_auc_fraction: float = 0.1
    aif_roughness_fraction: float = 0.25
    aif_clusters: int = 5
    aif_max_voxels: int = 20
    k_h: float = HEMATOCRIT_FACTOR
    density: float = BRAIN_DENSITY_G_PER_ML

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DscInputError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.shape_prior not in ("neighbourhood", "flat"):
            raise DscInputError(f"shape_prior must be 'neighbourhood' or 'flat', got {self.shape_prior!r}")
        if not (0 < self.oi_target < 1 and 0 < self.svd_threshold < 1):
            raise DscInputError("oi_target and svd_threshold must lie in (0, 1)")
        if self.leakage_z <= 0 or not 0 <= self.leakage_min_effect < 1:
            raise DscInputError("leakage_z must be positive and 0 <= leakage_min_effect < 1")
        if self.psr_delay_s <= 0 or self.skip_frames < 0 or not 0 < self.arrival_fraction < 1:
            raise DscInputError("psr_delay_s > 0, skip_frames >= 0, 0 < arrival_fraction < 1")
        if self.k_h <= 0 or self.density <= 0:
            raise DscInputError("k_h and density must be positive")


@dataclass(frozen=True)
class DscMaps:
    """Maps of one DSC series; voxels outside the brain mask are NaN.

    Attributes
    ----------
    brain_mask:
        Boolean ``(z, y, x)``.
    s0:
        Baseline signal.
    cbv, cbf, mtt:
        ml/100 g, ml/100 g/min, s.
    k2:
        Leakage coefficient in 1/s on the scale of Boxerman et al. (relative to
        ``leakage_reference``; > 0 T1-dominant, < 0 T2*-dominant), 0 where no
        correction was applied or leakage correction is off.
    leak_k:
        The removed term's coefficient relative to the AIF, ``corrected = ΔR2* − leak_k·∫C_a``.
    wash_in_s, psr_percent, washout_slope:
        Dynamic signal parameters.
    aif_mask:
        Boolean ``(z, y, x)`` of the voxels that form the AIF.
    aif_curve:
        Arterial ΔR2* curve (1/s).
    leakage_reference:
        Whole-brain non-enhancing ΔR2* curve (the scale of K2).
    noise_signal_sd:
        Standard deviation of the baseline signal, pooled over the brain.
    masked:
        Number of brain voxels masked in the CBV/CBF/MTT maps, by reason.
    timing:
        Bolus timing of the whole-brain curve.
    times:
        Frame times (s).
    psr_t1_s:
        Time at which S1 was read (earlier than arrival + delay if the series is shorter).
    te_s:
        Echo time (s).
    deconvolver:
        The SVD of the AIF matrix, reused for region curves.
    residue_grid:
        The model-based fit's grid for this AIF, reused for region curves.
    """

    brain_mask: np.ndarray
    s0: np.ndarray
    cbv: np.ndarray
    cbf: np.ndarray
    mtt: np.ndarray
    k2: np.ndarray
    leak_k: np.ndarray
    wash_in_s: np.ndarray
    psr_percent: np.ndarray
    washout_slope: np.ndarray
    aif_mask: np.ndarray
    aif_curve: np.ndarray
    leakage_reference: np.ndarray
    noise_signal_sd: float
    masked: dict[str, int]
    timing: BolusTiming
    times: np.ndarray
    psr_t1_s: float
    te_s: float
    deconvolver: SvdDeconvolver
    residue_grid: ResidueGrid
    options: MapOptions = field(default_factory=MapOptions)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    total = (hist * centres).sum()
    mean1 = (total - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def brain_mask_from_signal(baseline: np.ndarray) -> np.ndarray:
    """Head/brain mask of a baseline image ``(z, y, x)``: Otsu, largest component, holes filled."""
    image = np.asarray(baseline, dtype=np.float64)
    finite = np.isfinite(image)
    if not finite.any() or np.ptp(image[finite]) == 0:
        raise DscInputError("the baseline image is empty or constant: no brain to analyse")
    mask = finite & (image > _otsu_threshold(image[finite]))
    labels, count = ndimage.label(mask)
    if count == 0:
        raise DscInputError("no tissue above the background in the baseline image")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in largest])
    return np.asarray(filled, dtype=bool)


def _perfused_brain(
    mask: np.ndarray, delta_r2: np.ndarray, times: np.ndarray, s0: np.ndarray
) -> np.ndarray:
    """Largest connected region of voxels with a bolus, holes filled slice by slice.

    A voxel shows the bolus when its ΔR2* area is at least 10 % of the median
    area of the intensity mask (scalp, skull and air show none) and its baseline
    signal is at least 20 % of the median (below that, at the edge of the head,
    noise dominates −ln(S/S0) and mimics a huge bolus).
    """
    area = np.trapezoid(delta_r2, times, axis=1)
    perfused = np.zeros_like(mask)
    perfused[mask] = (area > 0.1 * float(np.median(area))) & (s0 >= 0.2 * float(np.median(s0)))
    labels, count = ndimage.label(perfused)
    if count == 0:
        raise DscInputError("no voxel shows the contrast bolus")
    sizes = ndimage.sum_labels(perfused, labels, index=np.arange(1, count + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in largest])
    return np.asarray(filled & mask, dtype=bool)


def _check_times(times: np.ndarray, frames: int) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.shape != (frames,):
        raise DscInputError(f"expected {frames} frame times, got shape {t.shape}")
    steps = np.diff(t)
    dt = float(np.median(steps))
    if dt <= 0 or np.max(np.abs(steps - dt)) > 0.05 * dt:
        raise DscInputError(
            "DSC frames are not uniformly spaced in time (needed by SVD deconvolution)"
        )
    return t


def compute_maps(
    signal: np.ndarray,
    times: np.ndarray,
    te_s: float,
    options: MapOptions | None = None,
    brain_mask: np.ndarray | None = None,
    aif_mask: np.ndarray | None = None,
) -> DscMaps:
    """Compute every DSC map of a series.

    Parameters
    ----------
    signal:
        Magnitude signal, shape ``(t, z, y, x)``.
    times:
        Frame times in seconds, shape ``(t,)``, uniformly spaced.
    te_s:
        Echo time in seconds.
    options:
        Method parameters; defaults when ``None``.
    brain_mask:
        Voxels to analyse; found from the baseline signal when ``None``.
    aif_mask:
        Arterial voxels given by a reader; chosen automatically when ``None``.

    Raises
    ------
    DscInputError
        Wrong shape, too few frames, no bolus, irregular timing, empty masks.
    """
    opts = options or MapOptions()
    data = np.asarray(signal)
    if data.ndim != 4:
        raise DscInputError(f"a DSC series must be 4-D (t, z, y, x), got shape {data.shape}")
    if data.shape[0] < _MIN_FRAMES:
        raise DscInputError(f"a DSC series needs at least {_MIN_FRAMES} frames, got {data.shape[0]}")
    t = _check_times(times, data.shape[0])
    spatial = data.shape[1:]
    head = data[opts.skip_frames : opts.skip_frames + 3].mean(axis=0)
    mask = brain_mask_from_signal(head) if brain_mask is None else np.asarray(brain_mask, bool)
    if mask.shape != spatial or not mask.any():
        raise DscInputError("the brain mask is empty or does not match the series")
    curves = data[:, mask].T.astype(np.float64)  # (voxels, frames)
    timing = bolus_timing(
        curves.mean(axis=0), t, skip_frames=opts.skip_frames, arrival_fraction=opts.arrival_fraction
    )
    s0 = baseline_signal(curves, timing)
    dr2 = delta_r2star(curves, s0, te_s)
    dr2[:, : timing.baseline_start] = 0.0
    if brain_mask is None:
        # The intensity mask also holds scalp and other tissue outside the brain;
        # only perfused brain shows the bolus, so keep the voxels that do.
        perfused = _perfused_brain(mask, dr2, t, s0)
        keep = perfused[mask]
        mask, curves, dr2 = perfused, curves[keep], dr2[keep]
        timing = bolus_timing(curves.mean(axis=0), t, opts.skip_frames, opts.arrival_fraction)
        s0 = baseline_signal(curves, timing)
        dr2 = delta_r2star(curves, s0, te_s)
        dr2[:, : timing.baseline_start] = 0.0

    aif_in_mask = np.zeros(mask.sum(), dtype=bool)
    if aif_mask is None:
        # Arteries are searched only where the baseline is well above the noise:
        # near-zero S0 (signal voids, holes filled in the mask) turns noise into
        # huge, narrow ΔR2* spikes that look arterial.
        searchable = np.nonzero(s0 >= _AIF_MIN_S0_FRACTION * float(np.median(s0)))[0]
        selection: AifSelection = select_aif(
            dr2[searchable],
            t,
            auc_fraction=opts.aif_auc_fraction,
            roughness_fraction=opts.aif_roughness_fraction,
            n_clusters=opts.aif_clusters,
            max_voxels=opts.aif_max_voxels,
            baseline_frames=timing.baseline_end + 1,
        )
        aif_in_mask[searchable[selection.indices]] = True
        aif_curve = selection.curve
    else:
        given = np.asarray(aif_mask, dtype=bool)
        if given.shape != spatial:
            raise DscInputError("the AIF mask does not match the series")
        aif_in_mask = given[mask]
        if not aif_in_mask.any():
            raise DscInputError("the AIF mask has no voxel inside the brain mask")
        aif_curve = dr2[aif_in_mask].mean(axis=0)

    # Arteries fill before the brain average drops: end every voxel's baseline one
    # frame before the arterial arrival so that no S0 (above all the AIF's own)
    # includes contrast, then recompute ΔR2* with it.
    try:
        arterial_end = bolus_timing(
            curves[aif_in_mask].mean(axis=0), t, opts.skip_frames, opts.arrival_fraction
        ).baseline_end
    except DscInputError:
        # A given arterial ROI without a clear drop keeps the whole-brain baseline.
        arterial_end = timing.baseline_end + 1
    baseline_end = max(timing.baseline_start + 1, arterial_end - 1)
    if baseline_end < timing.baseline_end:
        timing = replace(
            timing,
            baseline_end=baseline_end,
            arrival_index=baseline_end + 1,
            arrival_time_s=float(t[baseline_end + 1]),
        )
        s0 = baseline_signal(curves, timing)
        dr2 = delta_r2star(curves, s0, te_s)
        dr2[:, : timing.baseline_start] = 0.0
        aif_curve = dr2[aif_in_mask].mean(axis=0)

    reference, _ = non_enhancing_reference(dr2[~aif_in_mask], timing.arrival_index)
    dt = float(np.median(np.diff(t)))
    noise_signal = _baseline_noise(curves, timing)
    sigma = noise_sd(s0, noise_signal, te_s, float(np.max(aif_curve)))
    grid = ResidueGrid(aif_curve, dt)
    deconvolver = SvdDeconvolver(
        aif_curve, dt, method="ssvd" if opts.method == "ssvd" else "osvd",
        oi_target=opts.oi_target, threshold=opts.svd_threshold,
    )
    corrected, leak_k = dr2, np.zeros(dr2.shape[0])
    if opts.leakage_correction:
        estimate = grid.leakage(dr2, sigma)
        gated = gated_leakage(dr2, estimate.k, estimate.sd, grid.leak_regressor, mask, t,
                              z_threshold=opts.leakage_z, min_effect=opts.leakage_min_effect,
                              evidence=~aif_in_mask)
        corrected, leak_k = gated.corrected, gated.k
    shape_prior = None
    if opts.method == "bayes" and opts.shape_prior == "neighbourhood":
        flat = grid.transit(corrected, sigma)
        shape_prior = neighbourhood_shape_prior(flat.shape_posterior, mask, evidence=~aif_in_mask)
    cbv, cbf, mtt = perfusion_maps(corrected, aif_curve, t, sigma, opts, deconvolver, grid,
                                   shape_prior=shape_prior)
    masked = _mask_invalid(cbv, cbf, mtt, ~aif_in_mask)
    # K2 on the scale of Boxerman et al.: the leak term over ∫(non-enhancing curve).
    reference_area = float(np.trapezoid(reference, t))
    k2 = -leak_k * float(np.trapezoid(aif_curve, t)) / reference_area if reference_area > 0 else leak_k * 0
    dynamic = dynamic_parameters(curves, t, s0, timing, psr_delay_s=opts.psr_delay_s)

    def volume(values: np.ndarray) -> np.ndarray:
        out = np.full(spatial, np.nan, dtype=np.float32)
        out[mask] = values
        return out

    coverage = float(t[-1] - timing.arrival_time_s)
    if coverage < MIN_COVERAGE_S:
        frames_needed = int(np.ceil((timing.arrival_time_s + MIN_COVERAGE_S - t[0]) / dt)) + 1
        raise DscInputError(
            f"the DSC series ends {coverage:.0f} s after the bolus arrives; CBV and CBF need the first "
            f"pass and its recirculation, at least {MIN_COVERAGE_S:.0f} s after arrival "
            f"(acquire at least {frames_needed} frames of {dt:g} s)")
    aif_volume = np.zeros(spatial, dtype=bool)
    aif_volume[mask] = aif_in_mask
    return DscMaps(
        brain_mask=mask,
        s0=volume(s0),
        cbv=volume(cbv),
        cbf=volume(cbf),
        mtt=volume(mtt),
        k2=volume(k2),
        leak_k=volume(leak_k),
        wash_in_s=volume(dynamic.wash_in_s),
        psr_percent=volume(dynamic.psr_percent),
        washout_slope=volume(dynamic.washout_slope),
        aif_mask=aif_volume,
        aif_curve=aif_curve,
        leakage_reference=reference,
        noise_signal_sd=noise_signal,
        masked=masked,
        timing=timing,
        times=t,
        psr_t1_s=dynamic.t1_s,
        te_s=float(te_s),
        deconvolver=deconvolver,
        residue_grid=grid,
        options=opts,
    )


def _baseline_noise(curves: np.ndarray, timing: BolusTiming) -> float:
    """Standard deviation of the baseline signal, pooled over voxels (median of variances)."""
    baseline = curves[:, timing.baseline_start : timing.baseline_end + 1]
    frames = baseline.shape[1]
    if frames < 2:
        return 0.0
    variance = baseline.var(axis=1, ddof=1)
    # The median of a variance from k = frames − 1 degrees of freedom is σ²·χ²_k(median)/k.
    return float(np.sqrt(np.median(variance) * (frames - 1) / stats.chi2.median(frames - 1)))


def noise_sd(s0: np.ndarray, signal_sd: float, te_s: float, aif_peak: float) -> np.ndarray:
    """Noise standard deviation of each voxel's ΔR2*, ``σ_S/(S0·TE)``, with a floor.

    The floor (0.1 % of the AIF peak) stands for the quantisation and model
    error that noise-free data still have.
    """
    base = np.maximum(np.asarray(s0, dtype=np.float64), 1e-12)
    return np.maximum(signal_sd / (base * te_s), _NOISE_FLOOR_FRACTION * aif_peak)


def perfusion_maps(
    curves: np.ndarray,
    aif: np.ndarray,
    times: np.ndarray,
    sigma: np.ndarray | float,
    options: MapOptions,
    deconvolver: SvdDeconvolver,
    grid: ResidueGrid,
    shape_prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CBV (ml/100 g), CBF (ml/100 g/min) and MTT (s) of leakage-corrected ΔR2* curves.

    CBV is the area ratio; CBF comes from ``options.method``; MTT = CBV/CBF
    (NaN where CBF is not positive). ``shape_prior`` (``(curves, shapes)``)
    replaces the model-based fit's flat prior over the residue shapes.
    """
    fit = grid.transit(curves, sigma, shape_prior)
    aif_area = float(np.trapezoid(aif, times))
    if aif_area <= 0:
        raise DscInputError("the AIF has no positive area")
    cbv = 100.0 * (options.k_h / options.density) * fit.area / aif_area
    scale = 100.0 * 60.0 * (options.k_h / options.density)
    cbf = scale * (fit.flow if options.method == "bayes" else deconvolver.flow(curves))
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(cbf > 0, 60.0 * cbv / np.where(cbf > 0, cbf, 1.0), np.nan)
    return cbv, cbf, mtt


def _mask_invalid(cbv: np.ndarray, cbf: np.ndarray, mtt: np.ndarray,
                  counted: np.ndarray) -> dict[str, int]:
    """Set CBV, CBF and MTT to NaN together where any is not a positive number (in place).

    ``counted`` selects the voxels that are counted (the AIF voxels are not tissue).
    """
    reasons = {
        "cbv_not_positive": ~(cbv > 0),
        "cbf_not_positive": (cbv > 0) & ~(cbf > 0),
        "mtt_not_finite": (cbv > 0) & (cbf > 0) & ~np.isfinite(mtt),
    }
    invalid = ~((cbv > 0) & (cbf > 0) & np.isfinite(mtt) & (mtt > 0))
    cbv[invalid] = np.nan
    cbf[invalid] = np.nan
    mtt[invalid] = np.nan
    return {reason: int(np.count_nonzero(where & counted)) for reason, where in reasons.items()}
