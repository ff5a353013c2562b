"""Signal-time curves of a DSC (T2*-weighted GRE-EPI) series.

* Bolus arrival and baseline: the first-pass signal drop is located on a curve
  and the baseline ends at the last frame before the minimum whose drop is
  still below ``arrival_fraction`` of the full drop; S0 is the mean of the
  baseline frames.
* ΔR2*(t) = −ln(S(t)/S0)/TE (Rosen et al., MRM 1990), proportional to the
  contrast-agent concentration.
* Dynamic parameters of the dural-lesion DSC study
  (../shared/papers/dsc-dural-metastasis-vs-meningioma.txt, section 2.4):
  wash-in time from the end of the baseline to the signal minimum,
  PSR = (S1 − Smin)/(S0 − Smin)·100 with S1 at a fixed delay (90 s) after
  bolus arrival, and wash-out slope = (S1 − Smin)/(t1 − tmin).

All functions work on ``(voxels, frames)`` arrays and are vectorised over voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analyzers.dsc.errors import DscInputError

__all__ = [
    "BolusTiming",
    "DynamicParameters",
    "baseline_signal",
    "bolus_timing",
    "delta_r2star",
    "dynamic_parameters",
]

# Fewest baseline frames from which S0 is estimated.
_MIN_BASELINE_FRAMES = 2
# A bolus must drop the curve by this many noise standard deviations.
_MIN_DROP_SNR = 5.0
# Signals at or below this fraction of S0 are clipped before the logarithm (no
# voxel of a DSC series loses 99.9 % of its signal; it avoids −ln(0)).
_SIGNAL_FLOOR_FRACTION = 1e-3


@dataclass(frozen=True)
class BolusTiming:
    """Timing of the first pass of the bolus on one curve.

    Attributes
    ----------
    baseline_start, baseline_end:
        Frame indices of the first and last baseline frame (inclusive).
    arrival_index:
        First frame of the bolus (``baseline_end + 1``).
    minimum_index:
        Frame of the signal minimum.
    arrival_time_s:
        Time of bolus arrival in seconds (time of ``arrival_index``).
    """

    baseline_start: int
    baseline_end: int
    arrival_index: int
    minimum_index: int
    arrival_time_s: float


def bolus_timing(
    curve: np.ndarray,
    times: np.ndarray,
    skip_frames: int = 0,
    arrival_fraction: float = 0.1,
) -> BolusTiming:
    """Find the baseline and the bolus arrival on a signal curve (e.g. the whole-brain mean).

    Parameters
    ----------
    curve:
        Signal, shape ``(n,)``.
    times:
        Frame times in seconds, shape ``(n,)``.
    skip_frames:
        Leading frames left out of the baseline (before the steady state).
    arrival_fraction:
        Fraction of the full signal drop that marks the end of the baseline.

    Raises
    ------
    DscInputError
        No signal drop (no bolus) or too few baseline frames.
    """
    s = np.asarray(curve, dtype=np.float64)
    n = s.size
    if s.ndim != 1 or n != np.asarray(times).size:
        raise DscInputError("curve and times must be 1-D of the same length")
    if not 0 <= skip_frames < n - 3:
        raise DscInputError(f"skip_frames={skip_frames} leaves no frames to analyse")
    # First guess of S0 from the first frames; refined once the baseline is known.
    head = s[skip_frames : skip_frames + max(_MIN_BASELINE_FRAMES, (n - skip_frames) // 10)]
    s0_guess = float(np.median(head))
    minimum = skip_frames + int(np.argmin(s[skip_frames:]))
    drop = s0_guess - s[minimum]
    # Noise from frame-to-frame differences (robust to the bolus itself).
    steps = np.diff(s[skip_frames:])
    noise = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / np.sqrt(2.0)
    if drop <= 0 or drop <= _MIN_DROP_SNR * noise:
        raise DscInputError(
            "no first-pass signal drop found: the series does not look like a DSC bolus"
        )
    limit = s0_guess - arrival_fraction * drop
    before = np.nonzero(s[skip_frames:minimum] >= limit)[0]
    if before.size == 0:
        raise DscInputError("the bolus arrives before the first analysed frame: no baseline")
    # The last frame before the minimum still above the limit ends the baseline;
    # noise dips earlier in the baseline cannot end it too soon.
    baseline_end = skip_frames + int(before[-1])
    if baseline_end - skip_frames + 1 < _MIN_BASELINE_FRAMES:
        raise DscInputError(
            f"only {baseline_end - skip_frames + 1} baseline frame(s) before the bolus; "
            f"at least {_MIN_BASELINE_FRAMES} are needed"
        )
    arrival = min(baseline_end + 1, n - 1)
    return BolusTiming(
        baseline_start=skip_frames,
        baseline_end=baseline_end,
        arrival_index=arrival,
        minimum_index=minimum,
        arrival_time_s=float(np.asarray(times, dtype=np.float64)[arrival]),
    )


def baseline_signal(signal: np.ndarray, timing: BolusTiming) -> np.ndarray:
    """S0 of every voxel: mean of the baseline frames of ``signal`` ``(voxels, n)``."""
    s = np.asarray(signal, dtype=np.float64)
    return s[..., timing.baseline_start : timing.baseline_end + 1].mean(axis=-1)


def delta_r2star(signal: np.ndarray, s0: np.ndarray, te_s: float) -> np.ndarray:
    """ΔR2*(t) = −ln(S(t)/S0)/TE in 1/s, shape of ``signal``.

    Voxels with S0 ≤ 0 give zeros; signals are floored at 0.1 % of S0.
    """
    if not te_s > 0:
        raise DscInputError(f"echo time must be positive, got {te_s} s")
    s = np.asarray(signal, dtype=np.float64)
    base = np.asarray(s0, dtype=np.float64)[..., None]
    valid = base > 0
    safe_base = np.where(valid, base, 1.0)
    ratio = np.clip(s / safe_base, _SIGNAL_FLOOR_FRACTION, None)
    return np.where(valid, -np.log(ratio) / te_s, 0.0)


@dataclass(frozen=True)
class DynamicParameters:
    """Signal-curve parameters of the dural-lesion DSC study, one value per voxel.

    Attributes
    ----------
    wash_in_s:
        Time from the end of the baseline to the signal minimum (s).
    psr_percent:
        Percentage of signal recovery, (S1 − Smin)/(S0 − Smin)·100.
    washout_slope:
        (S1 − Smin)/(t1 − tmin), signal units per second.
    s_min, t_min_s, s1:
        Minimum signal, its time, and the late signal S1.
    t1_s:
        Time at which S1 was read (s); earlier than requested when the series ends first.
    """

    wash_in_s: np.ndarray
    psr_percent: np.ndarray
    washout_slope: np.ndarray
    s_min: np.ndarray
    t_min_s: np.ndarray
    s1: np.ndarray
    t1_s: float


def dynamic_parameters(
    signal: np.ndarray,
    times: np.ndarray,
    s0: np.ndarray,
    timing: BolusTiming,
    psr_delay_s: float = 90.0,
) -> DynamicParameters:
    """Wash-in time, PSR and wash-out slope of every curve.

    Parameters
    ----------
    signal:
        Shape ``(voxels, n)``.
    times:
        Shape ``(n,)`` in seconds.
    s0:
        Baseline signal per voxel, shape ``(voxels,)``.
    timing:
        Bolus timing (normally of the whole-brain curve), which fixes the end of
        the baseline and the arrival time.
    psr_delay_s:
        S1 is read at ``arrival + psr_delay_s`` (linear interpolation); when the
        series is shorter, at the last frame (``t1_s`` says which).
    """
    s = np.atleast_2d(np.asarray(signal, dtype=np.float64))
    t = np.asarray(times, dtype=np.float64)
    base = np.atleast_1d(np.asarray(s0, dtype=np.float64))
    start = timing.baseline_end
    t1 = min(timing.arrival_time_s + psr_delay_s, float(t[-1]))
    # The minimum is searched between the end of the baseline and t1.
    stop = int(np.searchsorted(t, t1, side="right"))
    window = s[:, start:stop]
    offset = np.argmin(window, axis=1)
    min_index = start + offset
    s_min = np.take_along_axis(s, min_index[:, None], axis=1)[:, 0]
    t_min = t[min_index]
    upper = int(np.clip(np.searchsorted(t, t1, side="left"), 1, t.size - 1))
    weight = (t1 - t[upper - 1]) / (t[upper] - t[upper - 1])
    s1 = (1.0 - weight) * s[:, upper - 1] + weight * s[:, upper]
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = base - s_min
        psr = np.where(depth > 0, (s1 - s_min) / np.where(depth > 0, depth, 1.0) * 100.0, np.nan)
        span = t1 - t_min
        slope = np.where(span > 0, (s1 - s_min) / np.where(span > 0, span, 1.0), np.nan)
    return DynamicParameters(
        wash_in_s=t_min - t[timing.baseline_end],
        psr_percent=psr,
        washout_slope=slope,
        s_min=s_min,
        t_min_s=t_min,
        s1=s1,
        t1_s=float(t1),
    )
