"""Signal → concentration for SPGR DCE series, with automatic pre-bolus baseline frames.

* Relaxivity: plasma r1 at 37 °C of Rohrer et al., Invest Radiol 2005;40:715, Table 4
  (the values dcmri also tabulates); the default agent is gadobutrol.
* Conversion: the SPGR equation is inverted exactly per frame (no linear signal
  approximation). M0 comes from the mean pre-bolus signal and T10
  (the OSIPI DCE-DSC-MRI code collection's SI-to-concentration convention)::

      E1(t) = (M0 sinα - S(t)) / (M0 sinα - S(t) cosα),  R1 = -ln(E1)/TR,
      C(t) = (R1(t) - R10) / r1

  Frames where the inversion is undefined (E1 outside (0, 1)) are NaN.
* Baseline: the bolus arrival is the breakpoint of a constant-then-linear fit to the
  early part of the mean enhancement curve (Cheong et al., Phys Med Biol 2003;48:N83);
  the frames before it are the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers.dce.errors import DceInputError

__all__ = [
    "R1_PLASMA_PER_MM_S",
    "BolusArrival",
    "detect_bolus_arrival",
    "relaxivity",
    "signal_to_concentration",
]

#: Plasma r1 (1/(mM·s)) at 37 °C by agent and field strength (T): Rohrer et al. 2005, Table 4.
R1_PLASMA_PER_MM_S: dict[str, dict[float, float]] = {
    "gadobutrol": {0.47: 6.1, 1.5: 5.2, 3.0: 5.0, 4.7: 4.7},
    "gadoterate": {0.47: 4.3, 1.5: 3.6, 3.0: 3.5, 4.7: 3.3},
    "gadopentetate": {0.47: 3.8, 1.5: 4.1, 3.0: 3.7, 4.7: 3.8},
    "gadoteridol": {0.47: 4.8, 1.5: 4.1, 3.0: 3.7, 4.7: 3.7},
    "gadobenate": {0.47: 9.2, 1.5: 6.3, 3.0: 5.5, 4.7: 5.2},
    "gadodiamide": {0.47: 4.4, 1.5: 4.3, 3.0: 4.0, 4.7: 3.9},
}


def relaxivity(agent: str = "gadobutrol", field_t: float = 3.0) -> float:
    """Plasma r1 of ``agent`` at the tabulated field strength nearest to ``field_t``.

    Parameters
    ----------
    agent:
        Generic name, lower case (``"gadobutrol"``, ``"gadoterate"``, ...).
    field_t:
        Main field in tesla (``MagneticFieldStrength``).

    Returns
    -------
    float
        r1 in 1/(mM·s).
    """
    table = R1_PLASMA_PER_MM_S.get(agent.lower())
    if table is None:
        known = ", ".join(sorted(R1_PLASMA_PER_MM_S))
        raise DceInputError(f"no tabulated r1 for agent {agent!r}; known: {known}; "
                            "or set r1 explicitly")
    if not (np.isfinite(field_t) and field_t > 0):
        raise DceInputError(f"field strength must be positive (T), got {field_t}")
    nearest = min(table, key=lambda b0: abs(np.log(b0 / field_t)))
    return table[nearest]


@dataclass(frozen=True)
class BolusArrival:
    """Result of bolus-arrival detection.

    Attributes
    ----------
    frame:
        Index of the first frame after the baseline (the bolus has arrived).
    time_s:
        Estimated arrival time in seconds (the breakpoint, between frames).
    """

    frame: int
    time_s: float

    @property
    def baseline_frames(self) -> slice:
        """The pre-bolus frames, ending one frame before the arrival frame.

        The breakpoint of a straight-line rise lags the slow foot of a real bolus, so the
        frame just before it is left out of the baseline (kept when only two frames remain).
        """
        return slice(0, max(self.frame - 1, min(self.frame, 2)))


def detect_bolus_arrival(t: ArrayLike, curve: ArrayLike, *, min_baseline: int = 2) -> BolusArrival:
    """Bolus arrival by a constant-then-linear breakpoint fit up to the curve's peak.

    Parameters
    ----------
    t:
        Frame times (s), shape (T,).
    curve:
        A representative enhancement curve (e.g. the mean signal of the most-enhancing
        voxels), shape (T,).
    min_baseline:
        Fewest frames that must precede the arrival.

    Returns
    -------
    BolusArrival
        The arrival frame and time.

    Raises
    ------
    DceInputError
        If the curve does not rise after at least ``min_baseline`` frames.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if y.shape != t_arr.shape or y.ndim != 1 or not np.all(np.isfinite(y)):
        raise DceInputError("bolus detection needs a finite curve with one value per frame")
    peak = int(np.argmax(y))
    if peak < min_baseline + 1:
        raise DceInputError(f"the enhancement peaks at frame {peak}: fewer than {min_baseline} "
                            "pre-contrast frames; start the dynamic acquisition before injection")
    best_sse, best_b, best_time = np.inf, min_baseline, t_arr[min_baseline]
    seg_t, seg_y = t_arr[: peak + 1], y[: peak + 1]
    for b in range(min_baseline, peak + 1):
        base = seg_y[:b].mean()
        sse_base = np.sum((seg_y[:b] - base) ** 2)
        # Line through (t0, base) rising after the breakpoint t0, fitted on frames >= b-1.
        for t0 in (seg_t[b - 1], 0.5 * (seg_t[b - 1] + seg_t[b]) if b <= peak else seg_t[b - 1]):
            rise_t = seg_t[b:] - t0
            rise_y = seg_y[b:] - base
            slope = (rise_t @ rise_y) / (rise_t @ rise_t) if rise_t.size else 0.0
            sse = sse_base + np.sum((rise_y - max(slope, 0.0) * rise_t) ** 2)
            if sse < best_sse:
                best_sse, best_b, best_time = sse, b, float(t0)
    return BolusArrival(frame=int(best_b), time_s=best_time)


def signal_to_concentration(signal: ArrayLike, *, t10_s: ArrayLike, flip_deg: float, tr_s: float,
                            r1_per_mm_s: float, baseline: slice | int) -> NDArray[np.float64]:
    """Concentration (mM) from SPGR signal.

    Parameters
    ----------
    signal:
        Signal curves, shape (N, T) or (T,).
    t10_s:
        Pre-contrast T1 (s), scalar or shape (N,).
    flip_deg:
        Flip angle of the dynamic series (degrees).
    tr_s:
        Repetition time (s).
    r1_per_mm_s:
        Relaxivity (1/(mM·s)).
    baseline:
        Pre-bolus frames (a slice, or the number of leading frames).

    Returns
    -------
    numpy.ndarray
        Concentration, same shape as ``signal``; NaN where the inversion is undefined.
    """
    s = np.asarray(signal, dtype=np.float64)
    squeeze = s.ndim == 1
    if squeeze:
        s = s[np.newaxis, :]
    if s.ndim != 2:
        raise DceInputError(f"signal must be (N, T) or (T,), got {s.shape}")
    window = slice(0, baseline) if isinstance(baseline, int) else baseline
    if s[:, window].shape[1] < 1:
        raise DceInputError("the baseline holds no frames")
    for name, value in (("flip angle", flip_deg), ("TR", tr_s), ("r1", r1_per_mm_s)):
        if not (np.isfinite(value) and value > 0):
            raise DceInputError(f"{name} must be positive, got {value}")
    t10 = np.broadcast_to(np.asarray(t10_s, dtype=np.float64).reshape(-1), (s.shape[0],))
    alpha = np.deg2rad(flip_deg)
    with np.errstate(divide="ignore", invalid="ignore"):
        r10 = 1.0 / t10
        e10 = np.exp(-tr_s * r10)
        s_pre = s[:, window].mean(axis=1)
        m0 = s_pre * (1 - np.cos(alpha) * e10) / (np.sin(alpha) * (1 - e10))
        a = (m0 * np.sin(alpha))[:, np.newaxis]
        e1 = (a - s) / (a - s * np.cos(alpha))
        valid = (e1 > 0) & (e1 < 1)
        r1 = -np.log(np.where(valid, e1, np.nan)) / tr_s
        conc = (r1 - r10[:, np.newaxis]) / r1_per_mm_s
    return conc[0] if squeeze else conc
