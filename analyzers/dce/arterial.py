"""The image AIF, chosen and converted so that noise does not bias it.

Picking the voxels with the highest *concentration* peaks and converting each with its own
noisy baseline and T10 selects exactly the voxels whose noise raised their peak: the SPGR
inversion near blood's saturation turns a 3 % low baseline into a 9 % high peak. Here:

1. **Candidates** are the voxels with the largest early relative enhancement (area of
   ``S/S0 − 1`` in the first ``window_s`` after bolus arrival): vessels and the most
   vascular tissue.
2. **Timing**, not amplitude, separates arteries from veins: each candidate's time to half
   its maximum enhancement (interpolated between frames); the arterial voxels are those
   within ``venous_min_delay_s`` of the earliest, the venous ones later (Mouridsen et al.,
   MRM 2006;55:524 use the first moment for the same purpose).
3. **Purity**: among arterial voxels, those whose first-pass signal enhancement is at least
   ``purity`` times that of the brightest reach the blood's full enhancement; partial-volume
   voxels (blood and tissue) and vascular tissue fall below. The enhancement is averaged
   over several frames, so its noise is a fraction of a percent of it and does not decide
   the choice.
4. **Pooled before conversion**: the chosen voxels' signals are averaged frame by frame, and
   the pooled signal is converted once, with the pooled baseline and one blood T10: the
   nonlinear VFA fit of the pooled arterial VFA signals when a VFA series exists (the voxels'
   blood T10 measured), else the literature value at the field strength
   (:data:`analyzers.dce.t1.BLOOD_T1_S`).
5. **Partial volume**: when a venous sinus is found, its pooled curve (same conversion)
   bounds the arterial one from below: a venous area above the arterial area means the
   arterial voxels are diluted by tissue, and the AIF is scaled to the venous area
   (Sourbron et al., MRM 2009;62:205; Knutsson et al., MRM 2010;64:1225).
6. **Plausibility**: the pooled blood curve must peak at ``min_peak_mM`` or more and wash
   out (first-pass peak at least ``min_washout`` times the mean of the last third); a curve
   that does not is tissue, not artery, and the caller falls back to the population AIF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analyzers.dce.concentration import signal_to_concentration
from analyzers.dce.errors import DceInputError
from analyzers.dce.t1 import default_t10, fit_vfa_nonlinear

__all__ = ["ArterialInput", "ArterialSettings", "VfaSignals", "find_arterial_input"]


@dataclass(frozen=True)
class ArterialSettings:
    """Criteria of the image AIF (see the module documentation)."""

    candidate_fraction: float = 0.02
    min_candidates: int = 20
    window_s: float = 20.0
    venous_min_delay_s: float = 2.0
    max_venous_delay_s: float = 30.0
    purity: float = 0.99
    max_voxels: int = 40
    min_voxels: int = 3
    min_peak_mM: float = 1.0
    min_washout: float = 2.0
    max_venous_scale: float = 5.0
    blood_t10_range: tuple[float, float] = (0.6, 3.0)
    """Plausible fitted blood T10 (s); outside it the literature value is used."""

    def __post_init__(self) -> None:
        if not 0.0 < self.candidate_fraction <= 1.0 or not 0.0 < self.purity <= 1.0:
            raise DceInputError("candidate_fraction and purity must be in (0, 1]")
        if self.min_voxels < 1 or self.max_voxels < self.min_voxels:
            raise DceInputError("need 1 <= min_voxels <= max_voxels")
        if self.max_venous_scale < 1.0:
            raise DceInputError("max_venous_scale must be >= 1")


@dataclass(frozen=True)
class VfaSignals:
    """VFA signals of the voxels given to detection: (N, n_angles), angles (deg), TR (s)."""

    signals: NDArray[np.float64]
    flip_deg: tuple[float, ...]
    tr_s: float


@dataclass(frozen=True)
class ArterialInput:
    """Outcome of the detection.

    Attributes
    ----------
    blood:
        Whole-blood concentration (mM) per frame (after any partial-volume scaling), or
        None when no artery qualified.
    voxels, venous_voxels:
        Indices (into the curves given) of the pooled arterial and venous voxels.
    venous_scale:
        Partial-volume factor applied (1.0: none).
    blood_t10_s, blood_t10_source:
        The blood T10 used for the conversion and where it came from.
    reason:
        What was found, or why no artery qualified.
    quality:
        Measures of the AIF for the report (JSON-able).
    """

    blood: NDArray[np.float64] | None
    voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    venous_voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    venous_scale: float = 1.0
    blood_t10_s: float = float("nan")
    blood_t10_source: str = ""
    reason: str = ""
    quality: dict[str, Any] = field(default_factory=dict)


def _half_max_time(t: NDArray[np.float64], rise: NDArray[np.float64], start: int) -> NDArray[np.float64]:
    """Time each curve first reaches half its maximum (linear between frames), from ``start``."""
    curves = rise[:, start:]
    times = t[start:]
    half = 0.5 * curves.max(axis=1, keepdims=True)
    above = curves >= half
    first = np.argmax(above, axis=1)
    prev = np.maximum(first - 1, 0)
    rows = np.arange(curves.shape[0])
    y0, y1 = curves[rows, prev], curves[rows, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(first > 0, (half[:, 0] - y0) / (y1 - y0), 0.0)
    return times[prev] + np.clip(np.nan_to_num(frac), 0.0, 1.0) * (times[first] - times[prev])


def _smooth(curves: NDArray[np.float64]) -> NDArray[np.float64]:
    """Three-frame moving average (ends kept)."""
    out = curves.copy()
    out[:, 1:-1] = (curves[:, :-2] + curves[:, 1:-1] + curves[:, 2:]) / 3.0
    return out


def _pure(amplitude: NDArray[np.float64], members: NDArray[np.int64], cfg: ArterialSettings
          ) -> NDArray[np.int64]:
    """Members whose amplitude is at least ``purity`` of the brightest (top-3 median)."""
    if members.size == 0:
        return members
    top = float(np.median(np.sort(amplitude[members])[-3:]))
    ranked = members[np.argsort(-amplitude[members])]
    count = int(np.count_nonzero(amplitude[members] >= cfg.purity * top))
    # Without enough voxels that pure, the brightest few (their spread is in the quality record).
    return ranked[: min(max(count, cfg.min_voxels), cfg.max_voxels)]


def _blood_t10(vfa: VfaSignals | None, voxels: NDArray[np.int64], field_t: float,
               cfg: ArterialSettings) -> tuple[float, str]:
    literature = default_t10(field_t, blood=True)
    if vfa is None:
        return literature, f"literature blood T1 at {field_t:g} T (no VFA series)"
    pooled = np.nanmean(vfa.signals[voxels], axis=0)
    fit = fit_vfa_nonlinear(pooled, list(vfa.flip_deg), vfa.tr_s)
    value = float(fit.t1[0])
    low, high = cfg.blood_t10_range
    if np.isfinite(value) and low <= value <= high:
        return value, f"VFA fit of the pooled arterial signal ({voxels.size} voxels)"
    return literature, (f"literature blood T1 at {field_t:g} T (VFA fit of the pooled arterial "
                        f"signal gave {value:.3f} s, outside {low}-{high} s)")


def find_arterial_input(t: NDArray[np.float64], signal: NDArray[np.float64], *,
                        baseline: slice, arrival_s: float, flip_deg: float, tr_s: float,
                        r1_per_mm_s: float, field_t: float, vfa: VfaSignals | None = None,
                        settings: ArterialSettings | None = None) -> ArterialInput:
    """Arterial (and venous) voxels in the dynamic signal and the blood curve they give.

    Parameters
    ----------
    t:
        Frame times (s).
    signal:
        Signal curves of the head voxels, (N, T).
    baseline:
        Pre-bolus frames.
    arrival_s:
        Bolus arrival time (s) of the series.
    flip_deg, tr_s, r1_per_mm_s, field_t:
        Dynamic flip angle, TR, relaxivity and field strength.
    vfa:
        The voxels' VFA signals, when a VFA series exists.
    settings:
        Criteria.

    Returns
    -------
    ArterialInput
        ``blood`` is None, with the reason, when no voxel set qualifies.
    """
    cfg = settings or ArterialSettings()
    t_arr = np.asarray(t, dtype=np.float64)
    s = np.asarray(signal, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != t_arr.size:
        raise DceInputError(f"signal must be (N, {t_arr.size}), got {s.shape}")
    usable = np.flatnonzero(np.all(np.isfinite(s), axis=1) & (s[:, baseline].mean(axis=1) > 0))
    if usable.size < cfg.min_candidates:
        return ArterialInput(None, reason="too few voxels with a usable signal for an image AIF")
    sub = s[usable]
    base = sub[:, baseline].mean(axis=1)
    rise = _smooth(sub - base[:, np.newaxis])
    start = int(np.searchsorted(t_arr, arrival_s - 1e-6))
    early = (t_arr >= t_arr[max(start - 1, 0)]) & (t_arr <= arrival_s + cfg.window_s)
    if np.count_nonzero(early) < 2:
        return ArterialInput(None, reason="fewer than 2 frames in the first-pass window")
    relative_area = np.sum(rise[:, early] / base[:, np.newaxis], axis=1)
    n_cand = max(cfg.min_candidates, int(cfg.candidate_fraction * usable.size))
    cand = np.argsort(-relative_area)[:n_cand]
    # First-pass signal level itself, not its rise above the baseline: the baseline's noise
    # must not take part in the choice, because the conversion is most sensitive to it.
    amplitude = _smooth(sub)[:, early].max(axis=1)
    # Vessels: candidates enhancing at least 30 % as much as the brightest; their timing
    # is precise (large enhancement), unlike that of faint tissue.
    vessel = cand[amplitude[cand] >= 0.3 * float(np.median(np.sort(amplitude[cand])[-3:]))]
    t_half = _half_max_time(t_arr, rise[vessel], max(start - 1, 0))
    earliest = float(t_half.min())
    arterial = _pure(amplitude, vessel[t_half <= earliest + cfg.venous_min_delay_s], cfg)
    venous_timed = vessel[(t_half >= earliest + cfg.venous_min_delay_s)
                          & (t_half <= earliest + cfg.max_venous_delay_s)]
    if arterial.size < cfg.min_voxels:
        return ArterialInput(None, reason=f"fewer than {cfg.min_voxels} early, fully enhancing "
                                          f"voxels (found {arterial.size})")
    chosen = usable[arterial]
    blood_t10, t10_source = _blood_t10(vfa, chosen, field_t, cfg)

    def pooled_blood(index: NDArray[np.int64]) -> NDArray[np.float64]:
        curve = s[index].mean(axis=0)
        return np.asarray(signal_to_concentration(curve, t10_s=blood_t10, flip_deg=flip_deg, tr_s=tr_s,
                                                  r1_per_mm_s=r1_per_mm_s, baseline=baseline),
                          dtype=np.float64)

    blood = pooled_blood(chosen)
    late = float(np.mean(blood[-max(t_arr.size // 3, 1):]))
    peak = float(np.max(blood)) if np.all(np.isfinite(blood)) else float("nan")
    if not np.isfinite(peak):
        return ArterialInput(None, voxels=chosen, blood_t10_s=blood_t10, blood_t10_source=t10_source,
                             reason="the pooled arterial signal saturates the SPGR inversion")
    if peak < cfg.min_peak_mM or peak < cfg.min_washout * max(late, 0.0):
        return ArterialInput(None, voxels=chosen, blood_t10_s=blood_t10, blood_t10_source=t10_source,
                             reason=f"the earliest-enhancing voxels do not behave as an artery "
                                    f"(peak {peak:.2f} mM whole blood, late mean {late:.2f} mM)")
    scale, venous = 1.0, np.zeros(0, np.int64)
    note = "no venous sinus found, no partial-volume correction"
    venous_pure = _pure(amplitude, venous_timed, cfg)
    if venous_pure.size >= cfg.min_voxels:
        venous = usable[venous_pure]
        vof = pooled_blood(venous)
        area_a, area_v = float(np.trapezoid(blood, t_arr)), float(np.trapezoid(vof, t_arr))
        if np.isfinite(area_v) and area_v > area_a > 0:
            scale = min(area_v / area_a, cfg.max_venous_scale)
            note = f"scaled x{scale:.2f} to the venous-output area ({venous.size} sinus voxels)"
        else:
            note = f"venous area not above arterial area ({venous.size} sinus voxels): no scaling"
    blood = blood * scale
    quality = _quality(t_arr, blood, s[chosen], baseline, amplitude[arterial], scale)
    reason = (f"image AIF: pooled signal of {chosen.size} early, fully enhancing arterial voxels, "
              f"converted once with blood T10 {blood_t10:.3f} s ({t10_source}); {note}")
    return ArterialInput(blood, voxels=chosen, venous_voxels=venous, venous_scale=scale,
                         blood_t10_s=blood_t10, blood_t10_source=t10_source, reason=reason,
                         quality=quality)


def _quality(t: NDArray[np.float64], blood: NDArray[np.float64], signals: NDArray[np.float64],
             baseline: slice, amplitude: NDArray[np.float64], scale: float) -> dict[str, Any]:
    """Measures of the pooled AIF and warnings where they are outside the usual range."""
    pooled = signals.mean(axis=0)
    pre = pooled[baseline]
    snr = float(pre.mean() / pre.std(ddof=1)) if pre.size > 1 and pre.std(ddof=1) > 0 else float("inf")
    peak_index = int(np.argmax(blood))
    above = blood >= 0.5 * blood[peak_index]
    fwhm = float(np.sum(above * np.gradient(t)))
    purity_spread = float(amplitude.min() / amplitude.max()) if amplitude.size else float("nan")
    warnings = []
    if signals.shape[0] < 5:
        warnings.append(f"only {signals.shape[0]} arterial voxels")
    if snr < 20:
        warnings.append(f"pooled baseline SNR {snr:.0f} < 20")
    if fwhm > 20.0:
        warnings.append(f"broad first pass (FWHM {fwhm:.0f} s): dispersion or partial volume")
    if scale > 1.5:
        warnings.append(f"strong partial volume (venous scale {scale:.2f})")
    return {"n_voxels": int(signals.shape[0]), "baseline_snr": round(snr, 1) if np.isfinite(snr) else None,
            "peak_blood_mM": round(float(blood[peak_index]), 3), "peak_time_s": round(float(t[peak_index]), 2),
            "fwhm_s": round(fwhm, 1), "area_blood_mM_s": round(float(np.trapezoid(blood, t)), 2),
            "amplitude_min_over_max": round(purity_spread, 3), "venous_scale": round(scale, 3),
            "warnings": warnings, "verdict": "check" if warnings else "good"}
