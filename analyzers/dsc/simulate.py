"""Synthetic DSC curves and series from the published forward model, for tests and benchmarks.

* AIF: gamma variate first pass (Thompson et al., Radiology 1964; Rempp et al.,
  Radiology 1994), ΔR2*-scaled, optionally with recirculation (a second, broader
  gamma variate 8 s later at 15 % height) and a steady-state plateau at 5 % of
  the peak, the shape every measured AIF has after the first pass.
* Tissue: indicator dilution with an exponential residue (Østergaard et al.,
  MRM 1996): C_t = (ρ/k_H)·F·(C_a ⊗ exp(−t/MTT)), MTT = CBV/CBF.
* Leakage: the Boxerman–Schmainda–Weisskoff term −K2·∫C_ref (AJNR 2006).
* Signal: S = S0·exp(−TE·ΔR2*) plus Rician noise of standard deviation S0/SNR.

This is not the project's DSC phantom (``analyzers.phantoms``), which adds
anatomy and DICOM; it is the small analytical forward model that the map
library is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid

from analyzers.dsc.deconvolution import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR

__all__ = [
    "SyntheticSeries",
    "arterial_curve",
    "gamma_variate",
    "synthetic_series",
    "tissue_curves",
]

# Oversampling of the analytical convolution relative to the frame interval.
_FINE_STEPS = 20


def gamma_variate(
    times: np.ndarray, t0: float = 10.0, alpha: float = 3.0, beta: float = 1.5, peak: float = 1.0
) -> np.ndarray:
    """Gamma variate ``peak·(s/(αβ))^α·exp(α − s/β)``, ``s = t − t0`` (0 before ``t0``)."""
    s = np.clip(np.asarray(times, dtype=np.float64) - t0, 0.0, None)
    return peak * (s / (alpha * beta)) ** alpha * np.exp(alpha - s / beta)


def arterial_curve(
    times: np.ndarray, t0: float = 10.0, peak: float = 1.0, recirculation: bool = True
) -> np.ndarray:
    """First-pass gamma variate, plus recirculation and plateau when ``recirculation``."""
    first = gamma_variate(times, t0=t0, peak=peak)
    if not recirculation:
        return first
    second = gamma_variate(times, t0=t0 + 8.0, beta=3.0, peak=0.15 * peak)
    plateau = 0.05 * peak / (1.0 + np.exp(-(np.asarray(times, dtype=np.float64) - t0 - 10.0) / 2.0))
    return first + second + plateau


def tissue_curves(
    times: np.ndarray,
    cbv: np.ndarray,
    cbf: np.ndarray,
    aif_t0: float = 10.0,
    aif_peak: float = 1.0,
    recirculation: bool = True,
    k_h: float = HEMATOCRIT_FACTOR,
    density: float = BRAIN_DENSITY_G_PER_ML,
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-variate AIF and exponential-residue tissue curves at ``times``.

    The convolution is evaluated on a grid 20 times finer than the frames and
    sampled, so the curves are exact up to that resolution. The AIF includes
    recirculation and a plateau unless ``recirculation`` is False.

    Parameters
    ----------
    times:
        Frame times in seconds, uniform, shape ``(n,)``.
    cbv, cbf:
        ml/100 g and ml/100 g/min per voxel, shape ``(m,)``.

    Returns
    -------
    aif, tissue:
        ``(n,)`` and ``(m, n)`` in the units of ``aif_peak``.
    """
    t = np.asarray(times, dtype=np.float64)
    cbv = np.atleast_1d(np.asarray(cbv, dtype=np.float64))
    cbf = np.atleast_1d(np.asarray(cbf, dtype=np.float64))
    dt = float(t[1] - t[0]) / _FINE_STEPS
    fine = np.arange(t[0], t[-1] + dt / 2, dt)
    aif_fine = arterial_curve(fine, t0=aif_t0, peak=aif_peak, recirculation=recirculation)
    mtt = cbv / cbf * 60.0
    tissue = np.empty((cbv.size, t.size))
    lags = fine - fine[0]
    for i in range(cbv.size):
        residue = np.exp(-lags / mtt[i])
        conv = np.convolve(aif_fine, residue)[: fine.size] * dt
        curve = (density / k_h) * cbf[i] / 6000.0 * conv
        tissue[i] = np.interp(t, fine, curve)
    return arterial_curve(t, t0=aif_t0, peak=aif_peak, recirculation=recirculation), tissue


@dataclass(frozen=True)
class SyntheticSeries:
    """A synthetic DSC series with its ground truth.

    Attributes
    ----------
    signal:
        ``(t, z, y, x)`` magnitude signal.
    times:
        Frame times (s).
    te_s:
        Echo time (s).
    labels:
        ``(z, y, x)`` int: 0 background, 1 white matter, 2 grey matter, 3 artery, 4 lesion.
    cbv, cbf, k2:
        Ground-truth maps (ml/100 g, ml/100 g/min, 1/s).
    """

    signal: np.ndarray
    times: np.ndarray
    te_s: float
    labels: np.ndarray
    cbv: np.ndarray
    cbf: np.ndarray
    k2: np.ndarray


def synthetic_series(
    shape: tuple[int, int, int] = (4, 48, 48),
    frames: int = 60,
    dt: float = 1.5,
    te_s: float = 0.025,
    snr: float | None = 100.0,
    lesion_k2: float = 0.0,
    seed: int = 0,
) -> SyntheticSeries:
    """A head of two hemispheres (WM core, GM rim), arteries and one lesion.

    Tissue values: WM CBV 2, CBF 22; GM CBV 4, CBF 60; lesion CBV 8, CBF 90
    (ml/100 g, ml/100 g/min). The arterial ΔR2* peaks at 100 1/s (92 % signal
    drop at TE 25 ms), S0 is 1000 in grey matter and 900 in white matter. The
    lesion leaks with ``lesion_k2`` (1/s) against the mean curve of normal
    tissue (BSW model).
    """
    rng = np.random.default_rng(seed)
    _, ny, nx = shape
    t = np.arange(frames) * dt
    rows = (np.arange(ny) - ny / 2 + 0.5) / (ny / 2)
    columns = (np.arange(nx) - nx / 2 + 0.5) / (nx / 2)
    plane_rows, plane_columns = np.meshgrid(rows, columns, indexing="ij")
    yy = np.broadcast_to(plane_rows, shape)
    xx = np.broadcast_to(plane_columns, shape)
    radius = np.hypot(yy / 0.9, xx / 0.75)
    labels = np.zeros(shape, dtype=np.int16)
    labels[radius < 1.0] = 2
    labels[radius < 0.75] = 1
    arteries = (np.abs(xx) < 1.5 / nx * 2) & (np.abs(yy + 0.1) < 2.0 / ny * 2)
    labels[arteries & (radius < 1.0)] = 3
    lesion = np.hypot(yy - 0.35, xx - 0.45) < 0.18
    labels[lesion & (radius < 1.0)] = 4
    cbv = np.zeros(shape)
    cbf = np.zeros(shape)
    k2 = np.zeros(shape)
    values = {1: (2.0, 22.0), 2: (4.0, 60.0), 4: (8.0, 90.0)}
    aif_peak = 100.0
    aif, _ = tissue_curves(t, np.array([1.0]), np.array([60.0]), aif_peak=aif_peak)
    dr2 = np.zeros((frames, *shape))
    for label, (v, f) in values.items():
        _, curve = tissue_curves(t, np.array([v]), np.array([f]), aif_peak=aif_peak)
        dr2[:, labels == label] = curve[0][:, None]
        cbv[labels == label] = v
        cbf[labels == label] = f
    dr2[:, labels == 3] = aif[:, None]
    if lesion_k2:
        normal = dr2[:, (labels == 1) | (labels == 2)].mean(axis=1)
        integral = cumulative_trapezoid(normal, t, initial=0.0)
        dr2[:, labels == 4] -= lesion_k2 * integral[:, None]
        k2[labels == 4] = lesion_k2
    s0 = np.where(labels > 0, 1000.0, 0.0)
    s0[labels == 1] = 900.0
    signal = s0[None] * np.exp(-te_s * dr2)
    if snr is not None:
        sigma = 1000.0 / snr
        re = signal + rng.normal(0.0, sigma, signal.shape)
        im = rng.normal(0.0, sigma, signal.shape)
        signal = np.hypot(re, im)
    return SyntheticSeries(
        signal=signal.astype(np.float32), times=t, te_s=te_s, labels=labels, cbv=cbv, cbf=cbf, k2=k2
    )
