"""A DCE-MRI digital reference object with noise, written from the physics.

Design after the QIBA DCE-MRI DRO (Barboriak lab, "Dynamic_v3"/v6: a grid of 10 × 10
voxel patches of constant extended-Tofts parameters, a vascular region carrying the AIF,
SPGR signal, VFA series for T10; see ``../shared/reference-data/qiba_dce_dro/PROVENANCE.md``),
on a brain-like time axis:

* **Patches**: Ktrans × ve × vp on every slice, one T10 per slice (the QIBA grid's
  Ktrans {0.01 … 0.35} /min plus Ktrans = 0, ve {0.1, 0.2, 0.5}, vp from 0.001 to 0.1).
  ve is undefined where Ktrans = 0 and is not scored there.
* **Normal tissue** around and between the patches: Ktrans = 0 (intact barrier), vp 0.01,
  T10 1.0 s. It fills the right half of the object, where a lesion on the left half
  finds its contralateral reference, so a ratio against it has a reference of Ktrans 0.
* **Vessels**: an artery and a venous sinus running through all slices, each a disc
  whose edge voxels hold blood and normal tissue in proportion to the area they cover
  (their signals add: the two do not exchange water within the voxel's imaging time).
* **Blood curve** (whole blood, mM), from the bolus arrival ``t_a`` on: a first pass
  ``A (τ/τp)^α exp(α (1 − τ/τp))`` (the gamma variate as parametrised by Madsen, Phys
  Med Biol 1992;37:1597) with a peak of 6 mM at τp = 7 s (α = 3), a recirculation pass of
  the same form 15 s later at 20 % of the first pass's peak and 1.5 times its width, and
  the slow phase of the plasma clearance of Weinmann et al. (Physiol Chem Phys Med NMR
  1984;16:167; the curve Tofts & Kermode, MRM 1991;17:357 used) for 0.1 mmol/kg,
  ``D (a1 e^(−m1 τ) + a2 e^(−m2 τ))`` with a1 3.99 kg/l, m1 0.144 /min, a2 4.78 kg/l,
  m2 0.0111 /min, times (1 − Hct) for whole blood, rising in with a 10 s time constant.
  Plasma: blood / (1 − Hct). Venous sinus: the blood curve convolved with a gamma
  transit-time density (mean 7 s, shape 4) delayed by 3 s (area kept).
* **Tissue**: extended Tofts, ``C = vp Cp + Ktrans ∫ Cp(s) exp(−kep (t − s)) ds``,
  evaluated on a 0.02 s grid by FFT convolution with the trapezoidal rule, sampled at the
  frame times (no bolus delay or dispersion between artery and tissue, as in QIBA).
* **Signal**: SPGR steady state, fast water exchange, ``R1 = R10 + r1 C``,
  ``S = M0 sin α (1 − E1) / (1 − cos α E1)``, one M0 for all tissues and blood (as QIBA).
  Defaults: 3 T, TR 5 ms, α 25° (QIBA v3), 80 frames of 4 s, VFA 3/6/10/15/25°,
  gadobutrol r1 5.0 /mM/s (Rohrer et al., Invest Radiol 2005;40:715, plasma, 3 T),
  Hct 0.45 (QIBA), blood T10 1.664 s (Lu et al., MRM 2004;52:679, 3 T).
* **Noise**: Rician magnitude noise, one σ for every series (one receiver):
  σ = (pre-contrast dynamic signal of tissue with T10 1.0 s) / SNR.

The forward model is checked against ``dcmri`` (``dcmri.conc_tissue`` with the "HF"
kinetics, i.e. extended Tofts) in ``tests/test_dce_dro.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from scipy.signal import fftconvolve

from bench.dro.scoring import Patch

__all__ = ["DceDesign", "DceObject", "blood_curve", "build", "extended_tofts_fine", "spgr"]

_FINE_S = 0.02  # forward-model grid (s)
_WEINMANN = (3.99, 0.144, 4.78, 0.0111)  # a1 (kg/l), m1 (1/min), a2 (kg/l), m2 (1/min)


@dataclass(frozen=True)
class DceDesign:
    """Every number of the object (see the module documentation for the sources)."""

    ktrans: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35)
    ve: tuple[float, ...] = (0.1, 0.2, 0.5)
    vp: tuple[float, ...] = (0.001, 0.01, 0.03, 0.1)
    t10_s: tuple[float, ...] = (0.8, 1.0, 1.3, 1.6)
    patch: int = 5
    gap: int = 1
    border: int = 4
    pixel_mm: float = 2.0
    slice_mm: float = 5.0
    frames: int = 80
    frame_s: float = 4.0
    arrival_s: float = 30.7
    tr_ms: float = 5.0
    flip_deg: float = 25.0
    vfa_flip_deg: tuple[float, ...] = (3.0, 6.0, 10.0, 15.0, 25.0)
    field_t: float = 3.0
    r1_per_mm_s: float = 5.0
    hematocrit: float = 0.45
    blood_t10_s: float = 1.664
    normal_t10_s: float = 1.0
    normal_vp: float = 0.01
    peak_blood_mM: float = 6.0
    dose_mmol_kg: float = 0.1
    artery_diameter_mm: float = 7.0
    sinus_diameter_mm: float = 8.0
    lesion: tuple[float, float, float] = (0.2, 0.2, 0.03)
    """(Ktrans, ve, vp) of the patch drawn as the lesion SEG (on the slice nearest 1.0 s)."""

    @property
    def times_s(self) -> NDArray[np.float64]:
        """Frame times (s)."""
        return np.arange(self.frames, dtype=np.float64) * self.frame_s


def blood_curve(tau_s: NDArray[np.float64], design: DceDesign) -> NDArray[np.float64]:
    """Whole-blood concentration (mM) at times ``tau_s`` after the bolus arrival."""
    tau = np.maximum(np.asarray(tau_s, dtype=np.float64), 0.0)

    def gamma(peak: float, tp: float, shift: float) -> NDArray[np.float64]:
        x = np.maximum(tau - shift, 0.0) / tp
        return peak * x**3 * np.exp(3.0 * (1.0 - x))

    first = gamma(design.peak_blood_mM, 7.0, 0.0)
    second = gamma(0.2 * design.peak_blood_mM, 10.5, 15.0 - 3.5)  # peaks 15 s after the first
    a1, m1, a2, m2 = _WEINMANN
    minutes = tau / 60.0
    slow = design.dose_mmol_kg * (a1 * np.exp(-m1 * minutes) + a2 * np.exp(-m2 * minutes))
    slow = slow * (1.0 - design.hematocrit) * (1.0 - np.exp(-tau / 10.0))
    return np.where(np.asarray(tau_s) > 0, first + second + slow, 0.0)


def _venous(blood: NDArray[np.float64]) -> NDArray[np.float64]:
    tau = np.arange(blood.size) * _FINE_S
    shape, mean, delay = 4.0, 7.0, 3.0
    x = np.maximum(tau - delay, 0.0)
    density = x ** (shape - 1) * np.exp(-x * shape / mean)
    density /= np.trapezoid(density, dx=_FINE_S)
    return fftconvolve(blood, density)[: blood.size] * _FINE_S


def extended_tofts_fine(cp_fine: NDArray[np.float64], ktrans: float, ve: float,
                        vp: float) -> NDArray[np.float64]:
    """Extended Tofts tissue curve on the fine grid (``cp_fine`` sampled every 0.02 s)."""
    if ktrans == 0.0:
        return vp * cp_fine
    tau = np.arange(cp_fine.size) * _FINE_S
    kernel = np.exp(-(ktrans / ve) / 60.0 * tau)
    full = fftconvolve(cp_fine, kernel)[: cp_fine.size]
    # Trapezoidal rule: the end points of each integral count half.
    conv = _FINE_S * (full - 0.5 * cp_fine[0] * kernel - 0.5 * cp_fine * kernel[0])
    return vp * cp_fine + ktrans / 60.0 * conv


def spgr(m0: float | NDArray[np.float64], r1: NDArray[np.float64] | float, tr_s: float,
         flip_deg: float) -> NDArray[np.float64]:
    """SPGR steady-state signal."""
    alpha = np.deg2rad(flip_deg)
    e1 = np.exp(-tr_s * np.asarray(r1, dtype=np.float64))
    return np.asarray(m0 * np.sin(alpha) * (1 - e1) / (1 - np.cos(alpha) * e1), dtype=np.float64)


def _disc_fraction(shape: tuple[int, int], centre: tuple[float, float], radius_px: float,
                   supersample: int = 8) -> NDArray[np.float64]:
    """Fraction of each pixel inside a disc (supersampled)."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    rows, cols = np.indices(shape)
    inside = np.zeros(shape)
    for dy in offsets:
        for dx in offsets:
            inside += ((rows + dy - centre[0]) ** 2 + (cols + dx - centre[1]) ** 2) <= radius_px**2
    return inside / supersample**2


@dataclass
class DceObject:
    """The noise-free object: signals, truth and the regions to score.

    Attributes
    ----------
    design:
        The numbers it was built from.
    dynamic:
        Signal (T, z, y, x), M0 = 1.
    vfa:
        Flip angle → signal (z, y, x).
    patches:
        Scored regions with their truth (ktrans, ve, vp, r1).
    plasma_aif:
        True plasma AIF at the frame times (mM).
    artery, sinus, lesion, tissue:
        Masks (z, y, x): blood fraction > 0.99 of the artery and sinus, the lesion patch,
        and every voxel of the object.
    vessel_fraction:
        Blood fraction of the artery and the sinus per voxel (z, y, x).
    """

    design: DceDesign
    dynamic: NDArray[np.float64]
    vfa: dict[float, NDArray[np.float64]]
    patches: list[Patch]
    plasma_aif: NDArray[np.float64]
    artery: NDArray[np.bool_]
    sinus: NDArray[np.bool_]
    lesion: NDArray[np.bool_]
    tissue: NDArray[np.bool_]
    vessel_fraction: NDArray[np.float64]
    truth_maps: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    def noise_sigma(self, snr: float) -> float:
        """σ of the Rician noise at ``snr`` (relative to M0 = 1)."""
        d = self.design
        reference = float(spgr(1.0, 1.0 / 1.0, d.tr_ms / 1000.0, d.flip_deg))
        return reference / snr

    def with_noise(self, snr: float | None, seed: int) -> DceObject:
        """A copy with Rician noise at ``snr`` on every series (None: noise-free)."""
        if snr is None:
            return self
        sigma = self.noise_sigma(snr)
        rng = np.random.default_rng(seed)

        def rician(signal: NDArray[np.float64]) -> NDArray[np.float64]:
            real = signal + rng.normal(0.0, sigma, signal.shape)
            imaginary = rng.normal(0.0, sigma, signal.shape)
            return np.hypot(real, imaginary)

        return replace(self, dynamic=rician(self.dynamic),
                       vfa={angle: rician(image) for angle, image in self.vfa.items()})


def _patch_origin(design: DceDesign, row: int, col: int) -> tuple[int, int]:
    pitch = design.patch + design.gap
    return design.border + design.gap + row * pitch, design.border + design.gap + col * pitch


def build(design: DceDesign | None = None) -> DceObject:
    """The noise-free object of ``design``."""
    d = design or DceDesign()
    pitch = d.patch + d.gap
    combos = [(ve, vp) for ve in d.ve for vp in d.vp]
    grid_h = len(d.ktrans) * pitch + d.gap
    grid_w = len(combos) * pitch + d.gap
    rows, cols = grid_h + 2 * d.border, 2 * grid_w + 2 * d.border
    n_slices = len(d.t10_s)
    shape3 = (n_slices, rows, cols)

    tissue = np.zeros(shape3, dtype=bool)
    tissue[:, d.border:rows - d.border, d.border:cols - d.border] = True
    ktrans = np.zeros(shape3)
    ve = np.full(shape3, 0.2)
    vp = np.where(tissue, d.normal_vp, 0.0)
    t10 = np.full(shape3, d.normal_t10_s)
    patches: list[Patch] = []
    lesion = np.zeros(shape3, dtype=bool)
    lesion_slice = int(np.argmin([abs(t - 1.0) for t in d.t10_s]))
    for z, slice_t10 in enumerate(d.t10_s):
        for i, k in enumerate(d.ktrans):
            for j, (e, p) in enumerate(combos):
                r0, c0 = _patch_origin(d, i, j)
                mask = np.zeros(shape3, dtype=bool)
                mask[z, r0:r0 + d.patch, c0:c0 + d.patch] = True
                ktrans[mask], ve[mask], vp[mask], t10[mask] = k, e, p, slice_t10
                truth = {"ktrans": k, "vp": p, "r1": 1.0 / slice_t10}
                if k > 0:
                    truth["ve"] = e
                patches.append(Patch(f"K{k:g} ve{e:g} vp{p:g} T10 {slice_t10:g}", mask, truth,
                                     {"t10": f"{slice_t10:g}", "ktrans": f"{k:g}"}))
                if z == lesion_slice and (k, e, p) == d.lesion:
                    lesion |= mask

    # Vessels in the right half: artery near the top, sinus near the bottom.
    half = d.border + grid_w
    artery_frac = _disc_fraction((rows, cols), (d.border + grid_h * 0.25, half + grid_w * 0.3),
                                 0.5 * d.artery_diameter_mm / d.pixel_mm)
    sinus_frac = _disc_fraction((rows, cols), (d.border + grid_h * 0.75, half + grid_w * 0.7),
                                0.5 * d.sinus_diameter_mm / d.pixel_mm)
    artery_frac = np.broadcast_to(artery_frac, shape3).copy()
    sinus_frac = np.broadcast_to(sinus_frac, shape3).copy()

    t_fine = np.arange(0.0, d.times_s[-1] + 30.0, _FINE_S)
    blood_fine = blood_curve(t_fine - d.arrival_s, d)
    cp_fine = blood_fine / (1.0 - d.hematocrit)
    venous_fine = _venous(blood_fine)
    frame_index = np.rint(d.times_s / _FINE_S).astype(int)
    tr = d.tr_ms / 1000.0

    conc = np.zeros((d.frames, *shape3))
    for params in {(float(a), float(b), float(c)) for a, b, c in
                   zip(ktrans[tissue], ve[tissue], vp[tissue], strict=True)}:
        where = tissue & (ktrans == params[0]) & (ve == params[1]) & (vp == params[2])
        curve = extended_tofts_fine(cp_fine, *params)[frame_index]
        conc[:, where] = curve[:, np.newaxis]
    r1_tissue = np.where(tissue, 1.0 / t10, 0.0)
    tissue_signal = np.where(tissue, spgr(1.0, r1_tissue + d.r1_per_mm_s * conc, tr, d.flip_deg), 0.0)

    def blood_signal(curve: NDArray[np.float64]) -> NDArray[np.float64]:
        return spgr(1.0, 1.0 / d.blood_t10_s + d.r1_per_mm_s * curve, tr, d.flip_deg)

    arterial = blood_signal(blood_fine[frame_index])[:, None, None, None]
    venous = blood_signal(venous_fine[frame_index])[:, None, None, None]
    vessel = np.clip(artery_frac + sinus_frac, 0.0, 1.0)
    dynamic = (artery_frac * arterial + sinus_frac * venous + (1.0 - vessel) * tissue_signal)
    vfa = {}
    for angle in d.vfa_flip_deg:
        blood = spgr(1.0, 1.0 / d.blood_t10_s, tr, angle)
        vfa[angle] = vessel * blood + (1.0 - vessel) * np.where(tissue, spgr(1.0, r1_tissue, tr, angle), 0.0)
    truth_maps = {"ktrans": ktrans, "ve": ve, "vp": vp, "t10": t10}
    return DceObject(design=d, dynamic=dynamic, vfa=vfa, patches=patches,
                     plasma_aif=cp_fine[frame_index], artery=artery_frac > 0.99,
                     sinus=sinus_frac > 0.99, lesion=lesion, tissue=tissue,
                     vessel_fraction=vessel, truth_maps=truth_maps)
