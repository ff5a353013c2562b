"""A DSC-MRI digital reference object (DRO): signal series with known CBV, CBF and MTT per patch.

Written from the tracer-kinetic and MR-signal literature, independently of the
project's phantoms (``analyzers.phantoms``) and of the analyzer's own forward
model (``analyzers.dsc.simulate``), so that it can check them. Every step and
its source:

* **Arterial input function** (whole-blood gadolinium concentration, mM): a
  gamma-variate first pass (Thompson et al., Radiology 1964) with α = 3 and
  β = 1.5 s, the parameters of the DSC simulations of Østergaard et al. (MRM
  1996;36:715) and Wu et al. (MRM 2003;50:164), peak 8 mM; recirculation as the
  first pass delayed by 8 s and dispersed by an exponential kernel of 6 s (a
  fraction 0.3 of its area), plus a slow plateau (the first pass delayed by
  12 s and dispersed over 300 s, fraction 0.5), which keeps the blood at about
  7 % of its peak for the rest of the series, as in measured AIFs.
* **Tissue blood**: indicator dilution, ``C_iv(t) = (ρ/k_H)·CBF·(C_a ⊗ R)(t)``
  (Østergaard 1996) with the hematocrit factor ``k_H = (1 − 0.45)/(1 − 0.25)``
  and density ``ρ = 1.04 g/ml`` (Rempp et al., Radiology 1994), so CBV in
  ml/100 g is ``100·(k_H/ρ)·∫C_iv/∫C_a``. Two residue functions: exponential,
  ``R = exp(−t/MTT)``, and the residue of a gamma distribution of transit times
  with shape 3 (``R = 1 − P(3, 3t/MTT)``, the physiological model of Mouridsen et
  al., NeuroImage 2006;33:570, and the transit-time model of the OSIPI DSC test
  curves of Chakwizira et al., MAGMA 2022). The convolution is evaluated on a
  0.05 s grid and sampled at the frame times.
* **Leakage**: extravascular-extracellular concentration by the Tofts–Kety model,
  ``dC_e/dt = Ktrans·C_p − k_ep·C_e`` with plasma ``C_p = C_a/(1 − 0.45)``.
* **Signal** (the DSC signal model of Boxerman et al., AJNR 2006;27:859 and of
  the DSC DRO of Semmineh et al., Tomography 2017;3:41):
  ``S = S0·[SPGR(R1(t))/SPGR(R10)]·exp(−TE·ΔR2*(t))`` with
  ``ΔR2* = r2*·C_iv + r2e*·C_e`` and ``R1 = R10 + r1·C_e``; SPGR is the spoiled
  gradient-echo steady state ``sin α (1 − E1)/(1 − cos α E1)``, ``E1 = exp(−TR·R1)``.
  Intravascular T1 shortening is neglected (slow transcapillary water exchange,
  Boxerman 2006). The artery has no T1 term (inflow).
  *Tissue relaxivity* (``tissue_relaxivity``): ``"blood"`` (default) gives
  tissue blood the arterial blood's linear susceptibility relaxivity, the
  convention under which standard DSC analysis measures absolute CBV (Rosen et
  al., MRM 1990); a tissue of CBV 1-2 ml/100 g then drops the signal by only
  1-3 % at the bolus peak. ``"literature"`` scales the tissue term so that grey
  matter (CBV 4 ml/100 g, CBF 60 ml/100 g/min, exponential residue) drops the
  signal by 40 % at the bolus peak at this TE, the tissue relaxivity of the DSC
  simulations of Chakwizira et al. (MAGMA 2022, the source of the OSIPI DSC
  test curves; their ``simulate_dsc_data.m``: "gives 40 % signal drop when
  CBV = 4 % and CBF = 60 ml/100 g/min", TE 29 ms, the arterial curve keeping
  its own relaxivity): the extravascular field gradients around vessels make a
  tissue's ΔR2* per unit of blood concentration larger than blood's own
  (the two relaxivities differ; Kiselev, JMRI 2005;22:693; Kjølby et al., MRM
  2006;56:187).
  The truth stays the physiological CBV, CBF and MTT; an analysis that assumes
  equal relaxivities reads CBV and CBF multiplied by
  :attr:`DscDroCase.relaxivity_ratio` and MTT unchanged, so CBV and CBF are
  scored after dividing by that ratio (as Chakwizira et al. rescale their SVD
  CBF by κ_a/κ_s) and MTT as it is.
  *T1-dominant leakage*: flip angle 90°, r1 = 4.5 /mM/s, no extravascular
  susceptibility term; *T2\\*-dominant*: flip angle 30° and r2e* = 10 × the
  blood's r2* (T1 sensitivity low, extravascular susceptibility effect of densely
  packed cells, Quarles et al., MRM 2009;62:1042). The leakage relaxivities are
  the same with either tissue relaxivity.
* **Noise**: complex Gaussian of standard deviation ``S0/SNR`` on both channels,
  magnitude taken (Rician; Gudbjartsson & Patz, MRM 1995;34:910).

Layout: an 80 × 80 × 6 head-sized disc of normal tissue (CBV 3 ml/100 g, CBF
40 ml/100 g/min, MTT 4.5 s, exponential residue, no leak), a 3 × 3-voxel artery
through every slice, and 32 patches of 6 × 6 voxels (all slices): 16 with the
exponential and 16 with the gamma residue, each set spanning MTT 2-12 s, CBV
1-8 ml/100 g and CBF 10-80 ml/100 g/min (:data:`PATCH_GRID`). In a leaky case
every patch leaks (Ktrans 0.05/min, ve 0.3) and the normal tissue does not.
60 frames of 1.5 s, TE 30 ms, TR 1.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import gammainc

__all__ = [
    "GREY_MATTER_PEAK_DROP",
    "LEAKS",
    "PATCH_GRID",
    "TISSUE_RELAXIVITIES",
    "DscDroCase",
    "Patch",
    "arterial_concentration",
    "make_case",
    "residue",
]

Leak = Literal["none", "t1", "t2star"]
Residue = Literal["exponential", "gamma"]
TissueRelaxivity = Literal["blood", "literature"]
#: Tissue relaxivity conventions of the object.
TISSUE_RELAXIVITIES: tuple[TissueRelaxivity, ...] = ("blood", "literature")

#: Leak conditions of the object.
LEAKS: tuple[Leak, ...] = ("none", "t1", "t2star")
#: (MTT s, CBV ml/100 g) of the 16 patches of each residue; CBF = 60·CBV/MTT spans 10-80.
PATCH_GRID: tuple[tuple[float, float], ...] = (
    (2.0, 1.0), (2.0, 2.5), (3.0, 1.5), (3.0, 4.0), (4.0, 1.0), (4.0, 5.0), (5.0, 2.0), (5.0, 6.0),
    (6.0, 1.5), (6.0, 8.0), (8.0, 2.0), (8.0, 8.0), (10.0, 2.0), (10.0, 8.0), (12.0, 2.0), (12.0, 8.0),
)

HEMATOCRIT_LARGE, HEMATOCRIT_SMALL, DENSITY = 0.45, 0.25, 1.04
K_H = (1.0 - HEMATOCRIT_LARGE) / (1.0 - HEMATOCRIT_SMALL)
#: Susceptibility relaxivity of blood and tissue blood, 1/s per mM (arterial peak ΔR2* ≈ 70 /s).
R2STAR = 8.0
#: Peak signal drop of grey matter (CBV 4 ml/100 g, CBF 60 ml/100 g/min) with the
#: literature tissue relaxivity (Chakwizira et al., MAGMA 2022).
GREY_MATTER_PEAK_DROP = 0.40
#: T1 relaxivity of the extravasated agent, 1/s per mM (gadobutrol-like at 1.5 T).
R1 = 4.5
#: Blood concentration after mixing, as a fraction of the first-pass peak.
PLATEAU_FRACTION = 0.1
TE_S, TR_S, FRAMES, ARRIVAL_S = 0.030, 1.5, 60, 12.0
MATRIX, SLICES, PIXEL_MM, SLICE_MM = 80, 6, 2.5, 5.0
PATCH, PITCH = 6, 8
TISSUE = {"cbv": 3.0, "cbf": 40.0, "t10_s": 1.0, "s0": 1000.0}
PATCH_T10_S, PATCH_S0, ARTERY_S0 = 1.4, 1000.0, 1000.0
KTRANS_PER_MIN, KEP_PER_MIN = 0.003, 0.2
# Leak acquisition/tissue settings: flip angle (deg), extravascular susceptibility relaxivity.
_LEAK_SETTINGS: dict[str, tuple[float, float]] = {
    "none": (90.0, 0.0), "t1": (90.0, 0.0), "t2star": (30.0, 10.0 * R2STAR),
}
_FINE_DT = 0.05
_GAMMA_SHAPE = 3.0


@dataclass(frozen=True)
class Patch:
    """One patch of the object and its truth."""

    index: int
    residue: Residue
    mtt_s: float
    cbv: float
    leaky: bool
    rows: slice
    columns: slice

    @property
    def cbf(self) -> float:
        """ml/100 g/min (central volume theorem)."""
        return 60.0 * self.cbv / self.mtt_s


@dataclass(frozen=True)
class DscDroCase:
    """One series of the object.

    Attributes
    ----------
    signal:
        Magnitude signal ``(t, z, y, x)``.
    times:
        Frame times (s).
    truth:
        ``cbv``, ``cbf``, ``mtt`` volumes ``(z, y, x)`` (NaN outside the object) and
        ``patch`` (patch index + 1, 0 elsewhere), ``artery`` (boolean).
    patches:
        The patches in index order.
    tissue_relaxivity:
        ``"blood"`` or ``"literature"`` (see the module notes).
    relaxivity_ratio:
        Tissue-blood over arterial-blood susceptibility relaxivity (1 with
        ``tissue_relaxivity="blood"``): an analysis assuming equal relaxivities
        reads CBV and CBF this many times the truth.
    """

    signal: np.ndarray
    times: np.ndarray
    truth: dict[str, np.ndarray]
    patches: tuple[Patch, ...]
    leak: Leak
    snr: float | None
    flip_deg: float
    te_s: float = TE_S
    tr_s: float = TR_S
    spacing_mm: tuple[float, float, float] = (SLICE_MM, PIXEL_MM, PIXEL_MM)
    aif: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tissue_relaxivity: TissueRelaxivity = "blood"
    relaxivity_ratio: float = 1.0


def _gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    s = np.clip(t - t0, 0.0, None)
    return (s / (alpha * beta)) ** alpha * np.exp(alpha - s / beta)


def _delayed_dispersed(fine_t: np.ndarray, curve: np.ndarray, delay: float, tau: float) -> np.ndarray:
    """``curve`` delayed by ``delay`` and convolved with a unit-area exponential of time constant ``tau``."""
    kernel = np.exp(-fine_t / tau) / tau
    spread = np.convolve(curve, kernel)[: fine_t.size] * _FINE_DT
    shift = round(delay / _FINE_DT)
    out = np.zeros_like(spread)
    out[shift:] = spread[: spread.size - shift]
    return out


def arterial_concentration(fine_t: np.ndarray, peak_mm: float = 8.0) -> np.ndarray:
    """Whole-blood concentration (mM) on the fine grid ``fine_t`` (see the module notes)."""
    first = peak_mm * _gamma_variate(fine_t, ARRIVAL_S, 3.0, 1.5)
    mixing = np.clip(fine_t - ARRIVAL_S - 6.0, 0.0, None)
    plateau = PLATEAU_FRACTION * peak_mm * (1.0 - np.exp(-mixing / 10.0)) * np.exp(-mixing / 600.0)
    return first + 0.3 * _delayed_dispersed(fine_t, first, 8.0, 6.0) + plateau


def residue(fine_t: np.ndarray, kind: Residue, mtt_s: float) -> np.ndarray:
    """Residue function ``R(t)`` with ``R(0) = 1`` and ``∫R = MTT``."""
    if kind == "exponential":
        return np.exp(-fine_t / mtt_s)
    return 1.0 - gammainc(_GAMMA_SHAPE, _GAMMA_SHAPE * fine_t / mtt_s)


def _tissue_blood(fine_t: np.ndarray, arterial: np.ndarray, kind: Residue, cbv: float,
                  mtt_s: float) -> np.ndarray:
    flow_per_s = cbv / 100.0 / mtt_s  # CBF in ml/g/s = CBV/MTT
    conv = np.convolve(arterial, residue(fine_t, kind, mtt_s))[: fine_t.size] * _FINE_DT
    return (DENSITY / K_H) * flow_per_s * conv


def _extravascular(fine_t: np.ndarray, arterial: np.ndarray, ktrans_per_min: float) -> np.ndarray:
    plasma = arterial / (1.0 - HEMATOCRIT_LARGE)
    ktrans = ktrans_per_min / 60.0
    kernel = np.exp(-(KEP_PER_MIN / 60.0) * fine_t)
    return ktrans * np.convolve(plasma, kernel)[: fine_t.size] * _FINE_DT


def _spgr(r1: np.ndarray, flip_deg: float) -> np.ndarray:
    e1 = np.exp(-TR_S * r1)
    alpha = np.deg2rad(flip_deg)
    return np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1)


def _signal(s0: float, t10_s: float, c_iv: np.ndarray, c_e: np.ndarray, flip_deg: float,
            r2e: float, r2_tissue: float) -> np.ndarray:
    r10 = 1.0 / t10_s
    t1_factor = _spgr(r10 + R1 * c_e, flip_deg) / _spgr(np.asarray(r10), flip_deg)
    return s0 * t1_factor * np.exp(-TE_S * (r2_tissue * c_iv + r2e * c_e))


def _relaxivity_ratio(fine_t: np.ndarray, arterial: np.ndarray, tissue_relaxivity: TissueRelaxivity
                      ) -> float:
    """Tissue-blood over arterial relaxivity: 1, or grey matter's literature peak signal drop."""
    if tissue_relaxivity == "blood":
        return 1.0
    grey_matter = _tissue_blood(fine_t, arterial, "exponential", 4.0, 60.0 * 4.0 / 60.0)
    peak_delta_r2 = -np.log(1.0 - GREY_MATTER_PEAK_DROP) / TE_S
    return float(peak_delta_r2 / (R2STAR * grey_matter.max()))


def _layout() -> tuple[np.ndarray, np.ndarray, list[tuple[Residue, float, float, slice, slice]]]:
    y, x = np.mgrid[:MATRIX, :MATRIX]
    centre = (MATRIX - 1) / 2.0
    disc = (y - centre) ** 2 + (x - centre) ** 2 <= 36.0 ** 2
    artery = np.zeros_like(disc)
    artery[14:17, 38:41] = True
    cells = []
    left, top = (MATRIX - 8 * PITCH) // 2 + 1, (MATRIX - 4 * PITCH) // 2 + 1
    for number, (mtt, cbv) in enumerate(PATCH_GRID * 2):
        kind: Residue = "exponential" if number < len(PATCH_GRID) else "gamma"
        row, column = divmod(number, 8)
        r0, c0 = top + row * PITCH, left + column * PITCH
        cells.append((kind, mtt, cbv, slice(r0, r0 + PATCH), slice(c0, c0 + PATCH)))
    return disc, artery, cells


def make_case(leak: Leak = "none", snr: float | None = 50.0, seed: int = 0,
              tissue_relaxivity: TissueRelaxivity = "blood") -> DscDroCase:
    """One series of the object: a leak condition at one SNR (``None``: noise-free).

    ``tissue_relaxivity`` chooses the tissue blood's susceptibility relaxivity
    (see the module notes): ``"blood"`` (the arterial blood's) or ``"literature"``
    (grey matter drops the signal by :data:`GREY_MATTER_PEAK_DROP` at the bolus peak).

    Raises
    ------
    ValueError
        Unknown leak condition or tissue relaxivity, or a non-positive SNR.
    """
    if leak not in LEAKS:
        raise ValueError(f"leak must be one of {LEAKS}, got {leak!r}")
    if tissue_relaxivity not in TISSUE_RELAXIVITIES:
        raise ValueError(f"tissue_relaxivity must be one of {TISSUE_RELAXIVITIES}, got {tissue_relaxivity!r}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be positive or None, got {snr}")
    flip_deg, r2e = _LEAK_SETTINGS[leak]
    times = np.arange(FRAMES) * TR_S
    fine_t = np.arange(0.0, times[-1] + _FINE_DT / 2, _FINE_DT)
    sample = np.rint(times / _FINE_DT).astype(int)
    arterial = arterial_concentration(fine_t)
    ratio = _relaxivity_ratio(fine_t, arterial, tissue_relaxivity)
    no_leak = np.zeros_like(fine_t)
    leak_curve = _extravascular(fine_t, arterial, KTRANS_PER_MIN) if leak != "none" else no_leak

    disc, artery, cells = _layout()
    signal = np.zeros((FRAMES, SLICES, MATRIX, MATRIX))
    truth = {name: np.full((SLICES, MATRIX, MATRIX), np.nan) for name in ("cbv", "cbf", "mtt")}
    patch_map = np.zeros((SLICES, MATRIX, MATRIX), dtype=np.int16)

    tissue_mtt = 60.0 * TISSUE["cbv"] / TISSUE["cbf"]
    background = _signal(TISSUE["s0"], TISSUE["t10_s"],
                         _tissue_blood(fine_t, arterial, "exponential", TISSUE["cbv"], tissue_mtt),
                         no_leak, flip_deg, r2e, ratio * R2STAR)[sample]
    signal[:, :, disc] = background[:, None, None]
    for name, value in (("cbv", TISSUE["cbv"]), ("cbf", TISSUE["cbf"]), ("mtt", tissue_mtt)):
        truth[name][:, disc] = value
    patches = []
    for index, (kind, mtt, cbv, rows, columns) in enumerate(cells):
        patch = Patch(index, kind, mtt, cbv, leak != "none", rows, columns)
        curve = _signal(PATCH_S0, PATCH_T10_S, _tissue_blood(fine_t, arterial, kind, cbv, mtt),
                        leak_curve, flip_deg, r2e, ratio * R2STAR)[sample]
        signal[:, :, rows, columns] = curve[:, None, None, None]
        truth["cbv"][:, rows, columns] = cbv
        truth["cbf"][:, rows, columns] = patch.cbf
        truth["mtt"][:, rows, columns] = mtt
        patch_map[:, rows, columns] = index + 1
        patches.append(patch)
    arterial_signal = ARTERY_S0 * np.exp(-TE_S * R2STAR * arterial[sample])
    signal[:, :, artery] = arterial_signal[:, None, None]
    for name in truth:
        truth[name][:, artery] = np.nan
    if snr is not None:
        rng = np.random.default_rng(seed)
        sigma = TISSUE["s0"] / snr
        real = signal + rng.normal(0.0, sigma, signal.shape)
        imaginary = rng.normal(0.0, sigma, signal.shape)
        signal = np.hypot(real, imaginary)
    truth["patch"] = patch_map
    truth["artery"] = np.broadcast_to(artery, (SLICES, MATRIX, MATRIX)).copy()
    return DscDroCase(signal=signal, times=times, truth=truth, patches=tuple(patches), leak=leak,
                      snr=snr, flip_deg=flip_deg, aif=R2STAR * arterial[sample],
                      tissue_relaxivity=tissue_relaxivity, relaxivity_ratio=ratio)
