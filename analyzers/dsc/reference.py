"""Contralateral normal-appearing white matter and lesion measurements.

Follows the reference method of the dural-lesion DSC study
(../shared/papers/dsc-dural-metastasis-vs-meningioma.txt, section 2.4): lesion
values are normalised to contralateral normal-appearing white matter (NAWM).

* Mid-sagittal plane: the left–right position that makes the baseline image
  most symmetric (correlation of the image with its mirror), searched around
  the brain's centre of mass.
* White matter: a three-class tissue model (k-means on log S0 and log CBV of
  brain voxels). On T2*-weighted EPI white matter has the lowest baseline
  signal and the lowest blood volume, grey matter a higher CBV, CSF the
  highest S0 with almost no CBV; the class with the lowest summed standardised
  log S0 and log CBV (among classes of at least 5 % of the voxels) is white
  matter. Voxels with S0 below half the median (edge partial volume) and CBV
  outside its 2nd-98th percentiles are left out first. The class is eroded by
  one voxel in-plane to avoid partial volume.
* Reference region: white-matter voxels of the other hemisphere within a
  radius of the lesion's mirror image, excluding the lesion, its edema (given,
  or the lesion grown by ``edema_margin_mm``) and arterial voxels; the radius
  grows until ``min_voxels`` are found (up to the whole hemisphere). When the
  baseline image is given, only the half of those voxels with the lowest
  baseline signal is kept: white matter has the lowest S0 of brain tissue on
  T2*-weighted EPI, so voxels mixed with grey matter or CSF (thick slices)
  have a higher one. The median is taken locally, so a smooth coil-sensitivity
  bias does not move the region. On the project's phantom (1.8 × 1.8 × 5 mm)
  this raises the white-matter fraction of the white-matter class from 0.95 to
  0.99 and brings its mean CBV from 3.8 % to 0.6 % above pure white matter's.
* Relative values: rCBV, rCBF, rPSR, rWiT = lesion / reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from analyzers.dsc.errors import DscInputError
from analyzers.dsc.maps import DscMaps, noise_sd, perfusion_maps
from analyzers.dsc.signal import delta_r2star, dynamic_parameters

__all__ = [
    "RegionMeasurement",
    "contralateral_reference",
    "measure_region",
    "midsagittal_position",
    "mirror_mask",
    "relative_values",
    "white_matter_mask",
]

# Half-width (voxels) of the search for the mid-sagittal plane around the centre of mass.
_MIDLINE_SEARCH_VOXELS = 12
# Voxels used to fit the tissue model (every voxel is then assigned).
_TISSUE_SAMPLE = 5000
# Radius growth factor and number of steps when the reference region is too small.
_RADIUS_GROWTH = 1.5
_RADIUS_STEPS = 6


def midsagittal_position(image: np.ndarray, brain_mask: np.ndarray, lr_axis: int) -> float:
    """Array position (possibly half-integer) of the mid-sagittal plane along ``lr_axis``.

    Parameters
    ----------
    image:
        Baseline image ``(z, y, x)``.
    brain_mask:
        Boolean ``(z, y, x)``.
    lr_axis:
        Array axis (0, 1 or 2) that runs left–right.
    """
    mask = np.asarray(brain_mask, dtype=bool)
    if not mask.any():
        raise DscInputError("empty brain mask: no mid-sagittal plane")
    values = np.where(mask, np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0)
    size = mask.shape[lr_axis]
    centre = float(ndimage.center_of_mass(mask)[lr_axis])
    best, best_score = centre, -np.inf
    # Mirror position 2c - i must be a whole index, so c moves in half voxels.
    search = 2 * _MIDLINE_SEARCH_VOXELS
    for twice in range(int(2 * centre) - search, int(2 * centre) + search + 1):
        index = np.arange(size)
        mirrored = twice - index
        inside = (mirrored >= 0) & (mirrored < size)
        if inside.sum() < size // 2:
            continue
        original = np.take(values, index[inside], axis=lr_axis)
        flipped = np.take(values, mirrored[inside], axis=lr_axis)
        score = float(np.corrcoef(original.ravel(), flipped.ravel())[0, 1])
        if np.isfinite(score) and score > best_score:
            best, best_score = twice / 2.0, score
    return best


def mirror_mask(mask: np.ndarray, plane: float, lr_axis: int) -> np.ndarray:
    """Mirror a boolean mask across the plane at array position ``plane`` along ``lr_axis``."""
    source = np.asarray(mask, dtype=bool)
    size = source.shape[lr_axis]
    index = np.arange(size)
    mirrored = np.rint(2.0 * plane - index).astype(int)
    inside = (mirrored >= 0) & (mirrored < size)
    out = np.zeros_like(source)
    target = [slice(None)] * source.ndim
    target[lr_axis] = index[inside]
    out[tuple(target)] = np.take(source, mirrored[inside], axis=lr_axis)
    return out


def white_matter_mask(maps: DscMaps, exclude: np.ndarray | None = None) -> np.ndarray:
    """White matter from a three-class tissue model of log S0 and log CBV (see module notes).

    Parameters
    ----------
    maps:
        Maps of the series.
    exclude:
        Voxels never counted as white matter (lesion, edema, arteries).
    """
    valid = maps.brain_mask & np.isfinite(maps.s0) & np.isfinite(maps.cbv)
    valid &= (maps.s0 > 0) & (maps.cbv > 0) & ~maps.aif_mask
    if exclude is not None:
        valid &= ~np.asarray(exclude, dtype=bool)
    if valid.sum() < 30:
        raise DscInputError("too few brain voxels to model grey and white matter")
    # Partial volume with the background at the edge and noisy extremes would
    # form their own classes: keep S0 above half the median and CBV inside its
    # 2nd-98th percentiles.
    s0_floor = 0.5 * float(np.median(maps.s0[valid]))
    low, high = np.percentile(maps.cbv[valid], [2.0, 98.0])
    valid &= (maps.s0 >= s0_floor) & (maps.cbv >= low) & (maps.cbv <= high)
    features = np.stack([np.log(maps.s0[valid]), np.log(maps.cbv[valid])], axis=1)
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    # Three classes in two dimensions are fitted well by a fixed subsample.
    sample = features[:: max(1, features.shape[0] // _TISSUE_SAMPLE)]
    with threadpool_limits(limits=1):
        model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(sample)
        labels = model.predict(features)
    sizes = np.bincount(labels, minlength=3)
    score = np.where(sizes >= 0.05 * sizes.sum(), model.cluster_centers_.sum(axis=1), np.inf)
    white = int(np.argmin(score))
    wm = np.zeros_like(valid)
    wm[valid] = labels == white
    # In-plane erosion keeps voxels whose neighbours are white matter too.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(wm, structure=structure)
    return eroded if eroded.sum() >= 10 else wm


def contralateral_reference(
    lesion: np.ndarray,
    white_matter: np.ndarray,
    plane: float,
    lr_axis: int,
    spacing_mm: tuple[float, float, float],
    edema: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    radius_mm: float = 25.0,
    edema_margin_mm: float = 10.0,
    min_voxels: int = 20,
    baseline: np.ndarray | None = None,
) -> np.ndarray:
    """Reference NAWM mask in the hemisphere opposite ``lesion`` (see module notes).

    ``baseline`` (S0, ``(z, y, x)``) keeps the lower-S0 half of the region
    (purest white matter); None keeps every white-matter voxel.

    Raises
    ------
    DscInputError
        The lesion mask is empty or no white matter is found on the other side.
    """
    lesion = np.asarray(lesion, dtype=bool)
    if not lesion.any():
        raise DscInputError("empty lesion mask: no contralateral reference")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    grown = ndimage.distance_transform_edt(~lesion, sampling=spacing) <= edema_margin_mm
    excluded = grown | lesion
    if edema is not None:
        excluded |= np.asarray(edema, dtype=bool)
    if exclude is not None:
        excluded |= np.asarray(exclude, dtype=bool)
    mirrored = mirror_mask(lesion, plane, lr_axis)
    if not mirrored.any():
        raise DscInputError("the lesion's mirror image falls outside the series")
    centre = float(ndimage.center_of_mass(lesion)[lr_axis])
    positions = np.arange(lesion.shape[lr_axis])
    side = positions > plane if centre < plane else positions < plane
    shape = [1, 1, 1]
    shape[lr_axis] = -1
    other_side = np.broadcast_to(side.reshape(shape), lesion.shape)
    distance = ndimage.distance_transform_edt(~mirrored, sampling=spacing)
    candidates = np.asarray(white_matter, dtype=bool) & other_side & ~excluded
    s0 = None if baseline is None else np.asarray(baseline, dtype=np.float64)

    def purest(region: np.ndarray) -> np.ndarray:
        if s0 is None or not region.any():
            return region
        return region & (s0 <= float(np.median(s0[region])))

    radius = radius_mm
    for _ in range(_RADIUS_STEPS):
        region = purest(candidates & (distance <= radius))
        if region.sum() >= min_voxels:
            return region
        radius *= _RADIUS_GROWTH
    if candidates.sum() == 0:
        raise DscInputError("no normal-appearing white matter found in the other hemisphere")
    return purest(candidates)


@dataclass(frozen=True)
class RegionMeasurement:
    """Values of one region.

    CBV and CBF come from the region's mean ΔR2* curve, leakage-corrected and
    deconvolved like a voxel's: averaging the curves first raises the
    contrast-to-noise ratio, so the oSVD truncation is not driven by voxel noise
    (the mean of voxel CBF maps of low-CNR white matter is biased low by it).
    The region's leakage is judged on the region's own mean curve (its K more
    than ``leakage_z`` standard deviations from zero and changing its CBV by at
    least ``leakage_min_effect``), so its CBV can differ from the mean of the
    voxel CBV map, whose leakage is judged per neighbourhood.
    Wash-in time, PSR and wash-out slope come from the region's mean signal
    curve (the study's time–signal intensity curves). ``cbf_voxel_mean`` is the
    mean of the voxel CBF map, for comparison.
    """

    voxels: int
    s0: float
    cbv: float
    cbf: float
    mtt: float
    k2: float
    wash_in_s: float
    psr_percent: float
    washout_slope: float
    cbf_voxel_mean: float


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def measure_region(maps: DscMaps, signal: np.ndarray, region: np.ndarray) -> RegionMeasurement:
    """Measure ``region`` (boolean ``(z, y, x)``) of ``signal`` ``(t, z, y, x)`` (see the class)."""
    mask = np.asarray(region, dtype=bool) & maps.brain_mask & np.isfinite(maps.s0)
    if not mask.any():
        raise DscInputError("the region has no voxel inside the analysed brain")
    timing = maps.timing
    curves = np.asarray(signal)[:, mask].astype(np.float64).T
    mean_curve = curves.mean(axis=0)
    s0 = float(mean_curve[timing.baseline_start : timing.baseline_end + 1].mean())
    dynamic = dynamic_parameters(
        mean_curve[None], maps.times, np.array([s0]), timing, maps.options.psr_delay_s
    )
    voxel_s0 = maps.s0[mask].astype(np.float64)
    dr2 = delta_r2star(curves, voxel_s0, maps.te_s)
    dr2[:, : timing.baseline_start] = 0.0
    region_curve = dr2.mean(axis=0)[None]
    aif_peak = float(np.max(maps.aif_curve))
    sigma = float(np.sqrt(np.mean(noise_sd(voxel_s0, maps.noise_signal_sd, maps.te_s, aif_peak) ** 2)
                          / curves.shape[0]))
    sigma = max(sigma, 1e-3 * aif_peak)
    region_curve, k2 = _region_leakage(maps, region_curve, sigma)
    cbv, cbf, mtt = perfusion_maps(region_curve, maps.aif_curve, maps.times, sigma, maps.options,
                                   maps.deconvolver, maps.residue_grid)
    return RegionMeasurement(
        voxels=int(mask.sum()),
        s0=s0,
        cbv=float(cbv[0]),
        cbf=float(cbf[0]),
        mtt=float(mtt[0]),
        k2=k2,
        wash_in_s=float(dynamic.wash_in_s[0]),
        psr_percent=float(dynamic.psr_percent[0]),
        washout_slope=float(dynamic.washout_slope[0]),
        cbf_voxel_mean=_mean(maps.cbf[mask]),
    )


def _region_leakage(maps: DscMaps, curve: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
    """The region's curve with its leakage removed where it shows any, and K2 (BSW scale, 1/s)."""
    options = maps.options
    if not options.leakage_correction:
        return curve, 0.0
    grid = maps.residue_grid
    estimate = grid.leakage(curve, sigma)
    k, sd = float(estimate.k[0]), float(estimate.sd[0])
    regressor = grid.leak_regressor
    effect = abs(k) * float(np.trapezoid(regressor, maps.times))
    area = abs(float(np.trapezoid(curve[0], maps.times)))
    if not (sd > 0 and abs(k) > options.leakage_z * sd and effect >= options.leakage_min_effect * area):
        return curve, 0.0
    reference_area = float(np.trapezoid(maps.leakage_reference, maps.times))
    k2 = -k * float(np.trapezoid(maps.aif_curve, maps.times)) / reference_area if reference_area > 0 else 0.0
    return curve - k * regressor[None, :], k2


def relative_values(lesion: RegionMeasurement, reference: RegionMeasurement) -> dict[str, float]:
    """rCBV, rCBF, rPSR and rWiT = lesion / reference (NaN where the reference is not positive)."""

    def ratio(a: float, b: float) -> float:
        return float(a / b) if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")

    return {
        "rCBV": ratio(lesion.cbv, reference.cbv),
        "rCBF": ratio(lesion.cbf, reference.cbf),
        "rPSR": ratio(lesion.psr_percent, reference.psr_percent),
        "rWiT": ratio(lesion.wash_in_s, reference.wash_in_s),
    }
