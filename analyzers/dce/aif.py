"""Arterial input functions: the Parker population AIF and automatic detection in the image.

* Population AIF: Parker et al., "Experimentally-derived functional form for a
  population-averaged high-temporal-resolution arterial input function for dynamic
  contrast-enhanced MRI", MRM 2006;56:993 (doi:10.1002/mrm.21066), Eq. 1 with the
  Table 1 parameters; whole-blood concentration, converted to plasma with ``1 - Hct``
  as in the OSIPI DCE-DSC-MRI code collection.
* Image AIF: :mod:`analyzers.dce.arterial` finds the arterial voxels and converts their
  pooled signal; :class:`AifResult` carries whichever AIF was used and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers.dce.errors import DceInputError

__all__ = [
    "PARKER_PARAMETERS",
    "AifResult",
    "align_parker_delay",
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
    blood_t10_s, blood_t10_source:
        Blood T10 that converted the image AIF, and where it came from (NaN / "" for Parker).
    quality:
        Measures of the image AIF (:func:`analyzers.dce.arterial.find_arterial_input`).
    """

    plasma: NDArray[np.float64]
    source: str
    voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    venous_scale: float = 1.0
    venous_voxels: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    reason: str = ""
    blood_t10_s: float = float("nan")
    blood_t10_source: str = ""
    quality: dict[str, Any] = field(default_factory=dict)


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
