"""Arterial input functions: the Parker population AIF and automatic detection in the image.

* Population AIF: Parker et al., "Experimentally-derived functional form for a
  population-averaged high-temporal-resolution arterial input function for dynamic
  contrast-enhanced MRI", MRM 2006;56:993 (doi:10.1002/mrm.21066), Eq. 1 with the
  Table 1 parameters; whole-blood concentration, converted to plasma with ``1 - Hct``
  as in the OSIPI DCE-DSC-MRI code collection.
* Image AIF: arterial voxels are those whose concentration curve peaks early, high and
  narrow (the criteria of Mouridsen et al., MRM 2006;55:524, applied to DCE
  concentration curves: candidates among the highest peaks, then the earliest arrival
  and the smallest width). Partial volume of the small arteries is corrected by the
  venous-output scaling when a dural sinus is in the field of view: the arterial curve
  is scaled so that its area equals the area of the venous output function
  (Sourbron et al., MRM 2009;62:205; Knutsson et al., MRM 2010;64:1225), which is
  larger and less affected by partial volume. When no voxel set passes the criteria,
  the Parker AIF is the fallback, and the reason is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers.dce.errors import DceInputError

__all__ = [
    "PARKER_PARAMETERS",
    "AifResult",
    "ImageAifSettings",
    "align_parker_delay",
    "detect_image_aif",
    "parker_aif",
]

#: Parker et al. MRM 2006 Table 1 (A in mM·min, σ and T in min, α in mM, β and s in 1/min).
PARKER_PARAMETERS: dict[str, float] = {
    "A1": 0.809, "sigma1": 0.0563, "T1": 0.17046,
    "A2": 0.330, "sigma2": 0.132, "T2": 0.365,
    "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483,
}


def parker_aif(t: ArrayLike, *, delay: float = 0.0, hematocrit: float = 0.0) -> NDArray[np.float64]:
    """Parker population AIF.

    Parameters
    ----------
    t:
        Times in seconds.
    delay:
        Bolus arrival delay in seconds; the curve is evaluated at ``t - delay`` and is
        zero before the delay (the OSIPI convention).
    hematocrit:
        Large-vessel hematocrit. 0 returns the whole-blood curve of the paper; a value
        such as 0.45 returns the plasma curve ``Cb / (1 - Hct)`` used by tracer-kinetic fits.

    Returns
    -------
    numpy.ndarray
        Concentration in mM, same shape as ``t``.
    """
    if not 0.0 <= hematocrit < 1.0:
        raise DceInputError(f"hematocrit must be in [0, 1), got {hematocrit}")
    p = PARKER_PARAMETERS
    t_arr = np.asarray(t, dtype=np.float64)
    tm = (t_arr - delay) / 60.0
    gauss1 = p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(
        -((tm - p["T1"]) ** 2) / (2 * p["sigma1"] ** 2))
    gauss2 = p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(
        -((tm - p["T2"]) ** 2) / (2 * p["sigma2"] ** 2))
    sigmoid = p["alpha"] * np.exp(-p["beta"] * tm) / (1 + np.exp(-p["s"] * (tm - p["tau"])))
    cb = gauss1 + gauss2 + sigmoid
    cb = np.where(t_arr < delay, 0.0, cb)
    return cb / (1.0 - hematocrit)


@dataclass(frozen=True)
class ImageAifSettings:
    """Criteria of the automatic AIF detection.

    Parameters
    ----------
    peak_percentile:
        Candidates are voxels whose peak concentration is above this percentile of the
        peaks of all voxels considered.
    n_voxels:
        Number of arterial voxels averaged into the AIF.
    min_peak_mM:
        Smallest plausible arterial peak (whole-blood, mM); below it detection fails.
    max_arrival_s:
        The arterial peak must come within this many seconds of the earliest bolus
        arrival; a later peak is venous or tissue.
    venous_min_delay_s:
        A venous output voxel peaks at least this much later than the arteries.
    max_venous_scale:
        Upper limit on the partial-volume scale factor (guards against a wrong sinus).
    """

    peak_percentile: float = 99.0
    n_voxels: int = 10
    min_peak_mM: float = 1.0
    max_arrival_s: float = 20.0
    venous_min_delay_s: float = 2.0
    max_venous_scale: float = 5.0

    def __post_init__(self) -> None:
        if not 50.0 <= self.peak_percentile < 100.0:
            raise DceInputError("peak_percentile must be in [50, 100)")
        if self.n_voxels < 1:
            raise DceInputError("n_voxels must be >= 1")
        if self.max_venous_scale < 1.0:
            raise DceInputError("max_venous_scale must be >= 1")


@dataclass(frozen=True)
class AifResult:
    """The AIF used for the fit.

    Attributes
    ----------
    plasma:
        Plasma concentration (mM) per frame.
    source:
        ``"image"`` or ``"parker"``.
    voxels:
        Flat indices (into the voxel array given to detection) of the arterial voxels;
        empty for Parker.
    venous_scale:
        Partial-volume scale factor applied (1.0 when none was applied).
    venous_voxels:
        Flat indices of the venous output voxels used for the scaling.
    reason:
        Why this AIF was chosen (fallback reasons included), for the report.
    """

    plasma: NDArray[np.float64]
    source: str
    voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    venous_scale: float = 1.0
    venous_voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    reason: str = ""


def _width_fwhm(curves: NDArray[np.float64], t: NDArray[np.float64]) -> NDArray[np.float64]:
    """Time spent above half the peak (s), a robust width for sampled curves."""
    peak = curves.max(axis=1, keepdims=True)
    above = curves >= 0.5 * peak
    dt = np.gradient(t)
    return np.sum(above * dt, axis=1)


def detect_image_aif(t: ArrayLike, conc: ArrayLike, *, bolus_arrival_s: float,
                     hematocrit: float = 0.45,
                     settings: ImageAifSettings | None = None) -> AifResult:
    """Find arterial voxels among concentration curves and build the plasma AIF.

    Parameters
    ----------
    t:
        Frame times (s), shape (T,).
    conc:
        Concentration curves of the voxels considered (mM), shape (N, T); curves with
        non-finite values are ignored.
    bolus_arrival_s:
        Bolus arrival time of the series (s), from baseline detection.
    hematocrit:
        Large-vessel hematocrit for blood → plasma.
    settings:
        Detection criteria.

    Returns
    -------
    AifResult
        The image AIF, or the Parker AIF (delayed to the bolus arrival) with the reason
        when no arterial voxels qualify.
    """
    cfg = settings or ImageAifSettings()
    t_arr = np.asarray(t, dtype=np.float64)
    curves = np.asarray(conc, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] != t_arr.size:
        raise DceInputError(f"conc must be (N, {t_arr.size}), got {curves.shape}")

    def fallback(reason: str) -> AifResult:
        return AifResult(plasma=parker_aif(t_arr, delay=bolus_arrival_s, hematocrit=hematocrit),
                         source="parker", reason=reason)

    finite = np.flatnonzero(np.all(np.isfinite(curves), axis=1))
    if finite.size < cfg.n_voxels:
        return fallback("too few voxels with finite concentration for an image AIF")
    sub = curves[finite]
    peaks = sub.max(axis=1)
    ttp = t_arr[np.argmax(sub, axis=1)]
    threshold = np.percentile(peaks, cfg.peak_percentile)
    early = ttp <= bolus_arrival_s + cfg.max_arrival_s
    cand = np.flatnonzero((peaks >= threshold) & early & (peaks >= cfg.min_peak_mM))
    if cand.size < cfg.n_voxels:
        return fallback(f"fewer than {cfg.n_voxels} voxels with an early peak above "
                        f"{cfg.min_peak_mM} mM (found {cand.size}); Parker population AIF used")
    # Among high early peaks keep the earliest and narrowest: rank by TTP, then by width.
    widths = _width_fwhm(sub[cand], t_arr)
    order = np.lexsort((-peaks[cand], widths, ttp[cand]))
    chosen = cand[order[: cfg.n_voxels]]
    blood = sub[chosen].mean(axis=0)
    arterial_ttp = float(np.median(ttp[chosen]))

    # Venous output: high, later-peaking, large-area voxels (a sinus), when present.
    auc = np.asarray(np.trapezoid(sub, t_arr, axis=1), dtype=np.float64)
    aif_auc = float(np.trapezoid(blood, t_arr))
    venous = np.flatnonzero((ttp >= arterial_ttp + cfg.venous_min_delay_s)
                            & (ttp <= arterial_ttp + 3 * cfg.max_arrival_s)
                            & (peaks >= np.percentile(peaks, cfg.peak_percentile)))
    scale = 1.0
    venous_sel = np.zeros(0, np.int64)
    reason = f"image AIF: mean of {chosen.size} early, high, narrow-peaked voxels"
    if venous.size >= cfg.n_voxels and aif_auc > 0:
        venous_sel = venous[np.argsort(-auc[venous])[: cfg.n_voxels]]
        vof_auc = float(np.mean(auc[venous_sel]))
        if vof_auc > aif_auc:
            scale = min(vof_auc / aif_auc, cfg.max_venous_scale)
            reason += f"; scaled x{scale:.2f} to the venous-output area (sinus found)"
        else:
            venous_sel = np.zeros(0, np.int64)
            reason += "; no partial-volume scaling (venous area not above arterial area)"
    else:
        reason += "; no sinus found, no partial-volume scaling"
    return AifResult(plasma=blood * scale / (1.0 - hematocrit), source="image",
                     voxels=finite[chosen].astype(np.int64), venous_scale=scale,
                     venous_voxels=finite[venous_sel].astype(np.int64), reason=reason)


def align_parker_delay(t: ArrayLike, curve: ArrayLike, *, max_delay_s: float | None = None,
                       step_s: float = 0.25) -> float:
    """Delay (s) that best aligns the Parker AIF with an early-enhancing curve.

    The Parker curve, scaled by its least-squares factor, is compared with ``curve``
    (e.g. the mean concentration of the earliest, highest-peaking voxels) up to a few
    frames after the curve's peak, for delays on a ``step_s`` grid; the delay with the
    smallest residual wins. This aligns the population AIF with the bolus arrival in
    the image when no image AIF is used.

    Parameters
    ----------
    t:
        Frame times (s).
    curve:
        Concentration (or enhancement) curve with a first-pass peak.
    max_delay_s:
        Largest delay tried; defaults to the curve's time to peak.
    step_s:
        Grid step of the delay search.

    Returns
    -------
    float
        The delay in seconds.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if y.shape != t_arr.shape or not np.all(np.isfinite(y)):
        raise DceInputError("delay alignment needs a finite curve with one value per frame")
    peak = int(np.argmax(y))
    end = min(t_arr.size, peak + 4)
    limit = t_arr[peak] if max_delay_s is None else max_delay_s
    delays = np.arange(-10.0, max(limit, 0.0) + step_s, step_s)
    window, target = t_arr[:end], y[:end]
    shapes = np.stack([parker_aif(window, delay=d) for d in delays])
    norms = np.einsum("dt,dt->d", shapes, shapes)
    scale = np.where(norms > 0, shapes @ target / np.where(norms > 0, norms, 1.0), 0.0)
    sse = np.sum((target - np.maximum(scale, 0.0)[:, np.newaxis] * shapes) ** 2, axis=1)
    return float(delays[int(np.argmin(sse))])
