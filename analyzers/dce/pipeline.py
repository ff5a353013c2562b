"""From a dynamic SPGR series (numpy arrays) to pharmacokinetic maps.

Head mask → bolus arrival and pre-bolus baseline (:mod:`analyzers.dce.concentration`)
→ T10 (VFA map, else the fixed literature value) → concentration → AIF (image AIF from
the pooled arterial signal, :mod:`analyzers.dce.arterial`, with the Parker AIF as
fallback or by setting, :mod:`analyzers.dce.aif`) → extended Tofts (or Patlak) fit of
every head voxel (:mod:`analyzers.dce.tofts`) → for extended Tofts, the nested test for
leakage (:mod:`analyzers.dce.selection`). No DICOM here: the analyzer reads the series
and writes the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from analyzers.dce.aif import AifResult, align_parker_delay, parker_aif
from analyzers.dce.arterial import ArterialSettings, VfaSignals, find_arterial_input
from analyzers.dce.concentration import (
    BolusArrival,
    detect_bolus_arrival,
    relaxivity,
    signal_to_concentration,
)
from analyzers.dce.errors import DceInputError
from analyzers.dce.regions import head_mask
from analyzers.dce.selection import select_leakage
from analyzers.dce.t1 import default_t10
from analyzers.dce.tofts import fit_extended_tofts, fit_patlak

__all__ = ["Acquisition", "DceMaps", "PipelineSettings", "compute_maps"]

_TOP_FRACTION = 0.005  # most-enhancing voxels whose mean curve times the bolus


@dataclass(frozen=True)
class Acquisition:
    """Acquisition parameters of the dynamic series.

    Parameters
    ----------
    flip_deg:
        Flip angle (degrees).
    tr_s:
        Repetition time (s).
    field_t:
        Main field (T).
    """

    flip_deg: float
    tr_s: float
    field_t: float

    def __post_init__(self) -> None:
        for name in ("flip_deg", "tr_s", "field_t"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise DceInputError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class PipelineSettings:
    """Method choices (the analyzer's settings map onto these).

    Parameters
    ----------
    model:
        ``"extended_tofts"`` or ``"patlak"``.
    aif:
        ``"auto"``: image AIF with the Parker AIF as fallback; ``"parker"``: always Parker.
    hematocrit:
        Large-vessel hematocrit (blood → plasma).
    t10_s:
        Fixed T10 used without a VFA map; None = white matter at the field strength
        (:data:`analyzers.dce.t1.DEFAULT_T10_S`).
    r1_per_mm_s:
        Relaxivity; None = plasma r1 of ``agent`` at the field strength.
    agent:
        Contrast agent for the r1 table.
    leakage_test_alpha:
        Level of the F-test for leakage (extended Tofts); None fits extended Tofts
        everywhere without the test.
    arterial:
        Criteria of the image AIF.
    """

    model: Literal["extended_tofts", "patlak"] = "extended_tofts"
    aif: Literal["auto", "parker"] = "auto"
    hematocrit: float = 0.45
    t10_s: float | None = None
    r1_per_mm_s: float | None = None
    agent: str = "gadobutrol"
    leakage_test_alpha: float | None = 0.05
    arterial: ArterialSettings = field(default_factory=ArterialSettings)


@dataclass(frozen=True)
class DceMaps:
    """Maps (z, y, x) and what was used to make them.

    ``ktrans``/``kep`` in 1/min, ``ve``/``vp`` in ml/ml; NaN outside the head mask and
    where the fit failed. ``ve``/``kep`` are NaN for Patlak and where no leakage was
    detected (``no_leakage``; Ktrans is 0 there). ``aif_voxels`` and ``venous_voxels`` are
    (slice, row, column) indices of the arterial and venous voxels of the image AIF.
    """

    ktrans: NDArray[np.float64]
    ve: NDArray[np.float64]
    vp: NDArray[np.float64]
    kep: NDArray[np.float64]
    r2: NDArray[np.float64]
    t10: NDArray[np.float64]
    t10_source: str
    conc: NDArray[np.float32]
    mask: NDArray[np.bool_]
    failed: NDArray[np.bool_]
    aif: AifResult
    aif_voxels: NDArray[np.int64]
    venous_voxels: NDArray[np.int64]
    arrival: BolusArrival
    r1_per_mm_s: float
    model: str
    no_leakage: NDArray[np.bool_]
    kep_limit_per_min: float | None = None

    @property
    def n_failed(self) -> int:
        """Voxels of the head mask whose fit failed (NaN in the maps)."""
        return int(np.count_nonzero(self.failed))

    @property
    def n_no_leakage(self) -> int:
        """Voxels where the plasma-only model was kept (Ktrans 0, ve and kep undefined)."""
        return int(np.count_nonzero(self.no_leakage))

    @property
    def n_fitted(self) -> int:
        """Voxels of the head mask that were fitted."""
        return int(np.count_nonzero(self.mask))


def _top_curve(curves: NDArray[np.float64], score: NDArray[np.float64]) -> NDArray[np.float64]:
    count = max(10, int(_TOP_FRACTION * score.size))
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf))[:count]
    return np.nanmean(curves[order], axis=0)


def compute_maps(signal: NDArray[np.floating], times_s: NDArray[np.floating], acq: Acquisition,
                 *, t10_map: NDArray[np.floating] | None = None, vfa: VfaSignals | None = None,
                 settings: PipelineSettings | None = None) -> DceMaps:
    """Pharmacokinetic maps of a dynamic SPGR series.

    Parameters
    ----------
    signal:
        Dynamic signal, shape (T, z, y, x).
    times_s:
        Frame times (s), shape (T,).
    acq:
        Flip angle, TR and field strength of the dynamic.
    t10_map:
        T10 (s) on the same grid from a VFA series, or None for the fixed T10.
    vfa:
        The VFA signals on the same grid, ``signals`` of shape (z, y, x, n_angles): the
        image AIF fits the blood T10 of its pooled arterial voxels from them.
    settings:
        Method choices.

    Returns
    -------
    DceMaps
        The maps and the AIF, baseline and constants used.
    """
    cfg = settings or PipelineSettings()
    sig = np.asarray(signal, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if sig.ndim != 4 or sig.shape[0] != t.size:
        raise DceInputError(f"signal must be (T, z, y, x) with T = {t.size}, got {sig.shape}")
    if t.size < 10:
        raise DceInputError(f"{t.size} time points are too few for a DCE fit (at least 10)")
    if not 0.0 <= cfg.hematocrit < 1.0:
        raise DceInputError("hematocrit must be in [0, 1)")
    spatial = sig.shape[1:]
    if vfa is not None and vfa.signals.shape[:3] != spatial:
        raise DceInputError(f"VFA signals have shape {vfa.signals.shape}, the dynamic {spatial}")
    mask = head_mask(sig[:2].mean(axis=0))
    curves = sig[:, mask].T  # (N, T)

    enhancement = np.nanmax(curves, axis=1) - curves[:, :2].mean(axis=1)
    arrival = detect_bolus_arrival(t, _top_curve(curves, enhancement))

    if t10_map is not None:
        t10 = np.asarray(t10_map, dtype=np.float64)
        if t10.shape != spatial:
            raise DceInputError(f"T10 map has shape {t10.shape}, the dynamic {spatial}")
        t10_vox, source = t10[mask], "variable flip angle"
    else:
        fixed = cfg.t10_s if cfg.t10_s is not None else default_t10(acq.field_t)
        t10_vox = np.full(curves.shape[0], fixed)
        source = (f"fixed {fixed:.3f} s (setting)" if cfg.t10_s is not None else
                  f"fixed {fixed:.3f} s (white matter at {acq.field_t:g} T, Stanisz et al. 2005; "
                  "no VFA series)")
    r1 = cfg.r1_per_mm_s if cfg.r1_per_mm_s is not None else relaxivity(cfg.agent, acq.field_t)
    conc = signal_to_concentration(curves, t10_s=t10_vox, flip_deg=acq.flip_deg, tr_s=acq.tr_s,
                                   r1_per_mm_s=r1, baseline=arrival.baseline_frames)
    vfa_vox = None if vfa is None else VfaSignals(vfa.signals[mask], vfa.flip_deg, vfa.tr_s)
    aif = _choose_aif(t, conc, curves, arrival, acq, r1, vfa_vox, cfg)
    no_leak = np.zeros(curves.shape[0], dtype=bool)
    kep_limit = None
    if cfg.model == "patlak":
        pat = fit_patlak(t, aif.plasma, conc)
        ktrans, vp, r2, failed = pat.ktrans, pat.vp, pat.r2, pat.failed
        ve = kep = np.full(ktrans.shape, np.nan)
    else:
        fit = fit_extended_tofts(t, aif.plasma, conc)
        if cfg.leakage_test_alpha is not None:
            selected = select_leakage(t, aif.plasma, conc, fit, alpha=cfg.leakage_test_alpha)
            fit, no_leak, kep_limit = selected.fit, selected.no_leakage, selected.kep_limit_per_min
        ktrans, ve, vp, kep, r2, failed = fit.ktrans, fit.ve, fit.vp, fit.kep, fit.r2, fit.failed

    def volume(values: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.full(spatial, np.nan)
        out[mask] = values
        return out

    def flags(values: NDArray[np.bool_]) -> NDArray[np.bool_]:
        out = np.zeros(spatial, dtype=bool)
        out[mask] = values
        return out

    conc_map = np.full((t.size, *spatial), np.nan, dtype=np.float32)
    conc_map[:, mask] = conc.T
    positions = np.argwhere(mask)

    def where(index: NDArray[np.int64]) -> NDArray[np.int64]:
        return positions[index].astype(np.int64) if index.size else np.zeros((0, 3), np.int64)

    return DceMaps(ktrans=volume(ktrans), ve=volume(ve), vp=volume(vp), kep=volume(kep),
                   r2=volume(r2), t10=volume(t10_vox), t10_source=source, conc=conc_map,
                   mask=mask, failed=flags(failed), aif=aif, aif_voxels=where(aif.voxels),
                   venous_voxels=where(aif.venous_voxels), arrival=arrival, r1_per_mm_s=r1,
                   model=cfg.model, no_leakage=flags(no_leak), kep_limit_per_min=kep_limit)


def _choose_aif(t: NDArray[np.float64], conc: NDArray[np.float64], signal: NDArray[np.float64],
                arrival: BolusArrival, acq: Acquisition, r1: float, vfa: VfaSignals | None,
                cfg: PipelineSettings) -> AifResult:
    """The image AIF from the pooled arterial signal, or the aligned Parker AIF."""

    def parker(reason: str) -> AifResult:
        # Earliest quarter (by time to peak) of the highest peaks: arteries before sinuses.
        safe = np.where(np.isfinite(conc), conc, 0.0)
        peaks = safe.max(axis=1)
        count = max(40, int(4 * _TOP_FRACTION * peaks.size))
        top = np.argsort(-peaks)[:count]
        ttp = np.argmax(safe[top], axis=1)
        early = top[ttp <= np.percentile(ttp, 25)]
        delay = align_parker_delay(t, safe[early].mean(axis=0))
        return AifResult(plasma=parker_aif(t, delay=delay, hematocrit=cfg.hematocrit),
                         source="parker", reason=f"{reason}; Parker delay {delay:.2f} s aligned "
                                                 "to the earliest-enhancing voxels")

    if cfg.aif == "parker":
        return parker("Parker population AIF (setting)")
    found = find_arterial_input(t, signal, baseline=arrival.baseline_frames, arrival_s=arrival.time_s,
                                flip_deg=acq.flip_deg, tr_s=acq.tr_s, r1_per_mm_s=r1,
                                field_t=acq.field_t, vfa=vfa, settings=cfg.arterial)
    if found.blood is None:
        return parker(f"Parker population AIF: no artery found in the image ({found.reason})")
    return AifResult(plasma=found.blood / (1.0 - cfg.hematocrit), source="image", voxels=found.voxels,
                     venous_scale=found.venous_scale, venous_voxels=found.venous_voxels,
                     reason=found.reason, blood_t10_s=found.blood_t10_s,
                     blood_t10_source=found.blood_t10_source, quality=found.quality)
