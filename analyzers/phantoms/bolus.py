"""Contrast-agent kinetics and signal models shared by the perfusion phantoms.

* DSC bolus: gamma variate first pass (Thompson et al., Radiology 1964; Rempp et
  al., Radiology 1994) plus a delayed, dispersed gamma variate for recirculation
  and a slow leak-free steady state.
* DCE arterial input: the Parker population AIF (Parker et al., MRM 2006;56:993),
  blood concentration in mM with the published parameters.
* Tissue concentration: indicator-dilution convolution with an exponential
  residue (DSC; Østergaard et al., MRM 1996) and the extended Tofts model
  (Tofts et al., JMRI 1999), both vectorised over voxels by exact recursive
  integration of a piecewise-linear input on a fine time grid.
* Noise: Rician magnitude noise (Gudbjartsson & Patz, MRM 1995).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "PARKER",
    "GammaVariate",
    "ParkerAIF",
    "dsc_aif",
    "exponential_convolution",
    "extended_tofts",
    "indicator_dilution",
    "rician",
    "spgr_signal",
]


@dataclass(frozen=True)
class GammaVariate:
    """C(t) = A·(t−t0)^α·exp(−(t−t0)/β) for t > t0 (A scaled so the peak equals ``peak``)."""

    t0: float
    alpha: float
    beta: float
    peak: float

    def __call__(self, t: np.ndarray) -> np.ndarray:
        s = np.clip(np.asarray(t, dtype=np.float64) - self.t0, 0.0, None)
        t_max = self.alpha * self.beta
        shape = (s / t_max) ** self.alpha * np.exp(self.alpha - s / self.beta)
        return self.peak * shape


def dsc_aif(t: np.ndarray, arrival_s: float, peak_mM: float = 8.0, alpha: float = 3.0, beta: float = 1.5) -> np.ndarray:
    """Arterial concentration (mM) of a DSC bolus: first pass, recirculation, steady state.

    The recirculation is a second gamma variate 8 s later, broader and 15 % as
    high; the steady state rises smoothly to 5 % of the first-pass peak, which
    gives the plateau every real AIF has after the first pass.
    """
    first = GammaVariate(arrival_s, alpha, beta, peak_mM)(t)
    second = GammaVariate(arrival_s + 8.0, alpha, 2.0 * beta, 0.15 * peak_mM)(t)
    s = np.asarray(t, dtype=np.float64) - arrival_s
    plateau = 0.05 * peak_mM / (1.0 + np.exp(-(s - 10.0) / 2.0))
    return first + second + plateau


@dataclass(frozen=True)
class ParkerAIF:
    """Parker et al. (MRM 2006) population AIF; times in minutes, concentration in mM (blood)."""

    a1: float = 0.809
    a2: float = 0.330
    t1: float = 0.17046
    t2: float = 0.365
    sigma1: float = 0.0563
    sigma2: float = 0.132
    alpha: float = 1.050
    beta: float = 0.1685
    s: float = 38.078
    tau: float = 0.483

    def blood(self, t_min: np.ndarray) -> np.ndarray:
        """Whole-blood concentration (mM) at ``t_min`` minutes after injection (0 before)."""
        t = np.asarray(t_min, dtype=np.float64)
        g1 = self.a1 / (self.sigma1 * np.sqrt(2 * np.pi)) * np.exp(-((t - self.t1) ** 2) / (2 * self.sigma1**2))
        g2 = self.a2 / (self.sigma2 * np.sqrt(2 * np.pi)) * np.exp(-((t - self.t2) ** 2) / (2 * self.sigma2**2))
        tail = self.alpha * np.exp(-self.beta * t) / (1.0 + np.exp(-self.s * (t - self.tau)))
        return np.where(t >= 0, g1 + g2 + tail, 0.0)

    def plasma(self, t_min: np.ndarray, hematocrit: float = 0.42) -> np.ndarray:
        """Plasma concentration Cp = Cb / (1 − Hct)."""
        return self.blood(t_min) / (1.0 - hematocrit)

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


PARKER = ParkerAIF()


def _exp_weights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g0 = ∫₀¹e^(−xu)du and g1 = ∫₀¹u·e^(−xu)du, stable for small x."""
    x = np.asarray(x, dtype=np.float64)
    small = x < 1e-4
    xs = np.where(small, 1.0, x)
    g0 = np.where(small, 1 - x / 2 + x**2 / 6, -np.expm1(-xs) / xs)
    g1 = np.where(small, 0.5 - x / 3 + x**2 / 8, (1 - np.exp(-xs) * (1 + xs)) / xs**2)
    return g0, g1


def exponential_convolution(t: np.ndarray, c_in: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """∫₀ᵗ c_in(τ)·exp(−rate·(t−τ)) dτ for a piecewise-linear input, exactly.

    Parameters
    ----------
    t:
        Sample times, shape ``(n,)``, increasing (any unit; ``rate`` in its inverse).
    c_in:
        Input samples, shape ``(n,)``.
    rate:
        Decay rates, shape ``(m,)`` (one per voxel); 0 gives the running integral.

    Returns
    -------
    numpy.ndarray
        Shape ``(m, n)``.
    """
    t = np.asarray(t, dtype=np.float64)
    c = np.asarray(c_in, dtype=np.float64)
    k = np.atleast_1d(np.asarray(rate, dtype=np.float64))
    out = np.zeros((k.size, t.size))
    for i in range(1, t.size):
        dt = t[i] - t[i - 1]
        x = k * dt
        g0, g1 = _exp_weights(x)
        out[:, i] = out[:, i - 1] * np.exp(-x) + dt * (c[i - 1] * g1 + c[i] * (g0 - g1))
    return out


def indicator_dilution(
    t_s: np.ndarray, c_artery: np.ndarray, cbv: np.ndarray, cbf: np.ndarray, density: float, k_h: float
) -> np.ndarray:
    """Tissue concentration for an exponential residue, R(t) = exp(−t/MTT).

    Ct(t) = (ρ/k_H)·F·∫Ca(τ)R(t−τ)dτ with F = CBF/6000 (ml/g/s) and
    MTT = CBV/CBF; so that CBV (ml/100 g) = 100·(k_H/ρ)·∫Ct/∫Ca, the convention
    of DSC software (Rempp et al. 1994).

    Parameters
    ----------
    t_s:
        Times in seconds, shape ``(n,)``.
    c_artery:
        Arterial concentration (mM), shape ``(n,)``.
    cbv, cbf:
        ml/100 g and ml/100 g/min per voxel, shape ``(m,)``.
    density, k_h:
        Brain density (g/ml) and hematocrit ratio (1 − Hct_large)/(1 − Hct_small).
    """
    cbv = np.asarray(cbv, dtype=np.float64)
    cbf = np.asarray(cbf, dtype=np.float64)
    flow = cbf / 6000.0
    mtt_s = np.where(cbf > 0, cbv / np.where(cbf > 0, cbf, 1.0) * 60.0, 1.0)
    conv = exponential_convolution(t_s, c_artery, 1.0 / mtt_s)
    return (density / k_h) * flow[:, None] * conv


def extended_tofts(t_min: np.ndarray, cp: np.ndarray, ktrans: np.ndarray, ve: np.ndarray, vp: np.ndarray) -> np.ndarray:
    """Extended Tofts model: Ct = vp·Cp + Ktrans·∫Cp(τ)·exp(−kep(t−τ))dτ, kep = Ktrans/ve.

    ``t_min`` in minutes, ``ktrans`` in 1/min; returns shape ``(voxels, times)``.
    """
    ktrans = np.asarray(ktrans, dtype=np.float64)
    ve = np.asarray(ve, dtype=np.float64)
    kep = np.where(ve > 0, ktrans / np.where(ve > 0, ve, 1.0), 0.0)
    conv = exponential_convolution(t_min, cp, kep)
    return np.asarray(vp, dtype=np.float64)[:, None] * np.asarray(cp)[None, :] + ktrans[:, None] * conv


def spgr_signal(m0: np.ndarray, r1: np.ndarray, tr_s: float, flip_deg: float) -> np.ndarray:
    """Steady-state spoiled gradient echo: M0·sinα·(1−E1)/(1−cosα·E1), E1 = exp(−TR·R1)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_s * np.asarray(r1, dtype=np.float64))
    return np.asarray(m0) * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    signal = np.asarray(signal, dtype=np.float32)
    if sigma <= 0:
        return signal.copy()
    # In place on the drawn arrays: the same draws and float32 arithmetic as
    # sqrt((S + σ·n1)² + (σ·n2)²) without four volume-sized temporaries.
    scale = np.float32(sigma)
    magnitude = rng.standard_normal(size=signal.shape, dtype=np.float32)
    magnitude *= scale
    magnitude += signal
    magnitude *= magnitude
    imaginary = rng.standard_normal(size=signal.shape, dtype=np.float32)
    imaginary *= scale
    imaginary *= imaginary
    magnitude += imaginary
    return np.sqrt(magnitude, out=magnitude)
