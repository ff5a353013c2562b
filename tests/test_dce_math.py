"""Accuracy of the DCE library against OSIPI reference data and curves from the published equations.

Tolerances are the OSIPI DCE-DSC-MRI code collection's (see
``reference-data/osipi_dce_dsc/PROVENANCE.md``): Ktrans 0.005 /min + 10 %, ve 0.05,
vp 0.025; R1 0.05 /s + 5 %; signal → concentration 1e-5 absolute and relative.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from analyzers.dce.aif import PARKER_PARAMETERS, parker_aif
from analyzers.dce.concentration import (
    detect_bolus_arrival,
    relaxivity,
    signal_to_concentration,
)
from analyzers.dce.errors import DceInputError
from analyzers.dce.t1 import default_t10, fit_vfa_linear, fit_vfa_nonlinear, spgr_signal
from analyzers.dce.tofts import (
    FitBounds,
    ToftsFit,
    extended_tofts,
    fit_extended_tofts,
    fit_patlak,
    murase_initialisation,
    patlak,
)

OSIPI = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data" / "osipi_dce_dsc"


def _osipi_rows(relative: str) -> list[dict[str, str]]:
    path = OSIPI / relative
    if not path.is_file():
        pytest.skip(f"OSIPI reference data not found at {path} (clone without ../shared)")
    with path.open(encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _arr(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=float)


def _within(measured: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    return np.abs(measured - reference) <= atol + rtol * np.abs(reference)


def _published_etm_curves(dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """QIBA-DRO-like grid of extended Tofts curves from the model equation.

    The convolution is done on a 0.05 s grid with the Parker AIF (Parker 2006 Eq. 1,
    Hct 0.45) and sampled every ``dt`` seconds: the fit sees sampled curves, as in a scan.
    """
    fine = np.arange(0.0, 300.0, 0.05)
    cp_fine = parker_aif(fine, delay=20.0, hematocrit=0.45)
    grid = np.array(list(itertools.product([0.01, 0.02, 0.05, 0.1, 0.2, 0.35], [0.1, 0.2, 0.5],
                                           [0.001, 0.005, 0.01, 0.02, 0.05, 0.1])))
    curves = np.empty((grid.shape[0], fine.size))
    for i, (k, v, p) in enumerate(grid):
        residue = np.exp(-(k / v) * fine / 60.0)
        curves[i] = p * cp_fine + k / 60.0 * np.convolve(cp_fine, residue)[: fine.size] * 0.05
    step = round(dt / 0.05)
    return fine[::step], cp_fine[::step], curves[:, ::step], grid


# --- population AIF --------------------------------------------------------------------------


def test_parker_aif_matches_osipi_reference() -> None:
    params = _osipi_rows("population_aif/ParkerAIF.csv")[0]
    for key, value in PARKER_PARAMETERS.items():
        assert float(params[key]) == pytest.approx(value)
    rows = _osipi_rows("population_aif/ParkerAIF_ref.csv")
    t_s = np.array([float(r["time"]) for r in rows]) * 60.0
    ref = np.array([float(r["Cb"]) for r in rows])
    np.testing.assert_allclose(parker_aif(t_s), ref, rtol=0.01, atol=1e-4)


def test_parker_aif_with_delay_matches_osipi_reference() -> None:
    rows = _osipi_rows("population_aif/ParkerAIF_ref_with_delay.csv")
    t_s = np.array([float(r["time"]) for r in rows]) * 60.0
    delay = np.array([float(r["delay"]) for r in rows])
    ref = np.array([float(r["Cb"]) for r in rows])
    got = np.array([parker_aif(ts, delay=d) for ts, d in zip(t_s, delay, strict=True)])
    np.testing.assert_allclose(got, ref, rtol=0.1, atol=0.1)


def test_parker_plasma_conversion_and_validation() -> None:
    t = np.arange(0, 300, 2.0)
    np.testing.assert_allclose(parker_aif(t, hematocrit=0.45), parker_aif(t) / 0.55)
    with pytest.raises(DceInputError):
        parker_aif(t, hematocrit=1.0)


# --- extended Tofts ---------------------------------------------------------------------------


def test_extended_tofts_osipi_dro_within_tolerance() -> None:
    rows = _osipi_rows("dce/dce_DRO_data_extended_tofts.csv")
    # Each row carries its own (noisy) AIF, so each curve is fitted with its own.
    fits = [fit_extended_tofts(_arr(r["t"]), _arr(r["ca"]), _arr(r["C"])) for r in rows]
    fit = ToftsFit(**{name: np.concatenate([getattr(f, name) for f in fits])
                      for name in ("ktrans", "ve", "vp", "kep", "rss", "r2", "failed")})
    ref = {k: np.array([float(r[k]) for r in rows]) for k in ("Ktrans", "ve", "vp")}
    assert fit.n_failed == 0
    assert np.all(_within(fit.ktrans, ref["Ktrans"], 0.005, 0.1))
    assert np.all(_within(fit.ve, ref["ve"], 0.05, 0.0))
    assert np.all(_within(fit.vp, ref["vp"], 0.025, 0.0))
    np.testing.assert_allclose(fit.kep, fit.ktrans / fit.ve)


def test_standard_tofts_qiba_curves_fit_with_small_vp() -> None:
    """QIBA v11 Tofts curves (vp = 0) are fitted by the extended model with vp ≈ 0."""
    rows = [r for r in _osipi_rows("dce/dce_DRO_data_tofts.csv") if "highSNR" in r["label"]]
    t, ca = _arr(rows[0]["t"]), _arr(rows[0]["ca"])
    fit = fit_extended_tofts(t, ca, np.stack([_arr(r["C"]) for r in rows]))
    assert np.all(_within(fit.ktrans, np.array([float(r["Ktrans"]) for r in rows]), 0.005, 0.1))
    assert np.all(_within(fit.ve, np.array([float(r["ve"]) for r in rows]), 0.05, 0.0))
    assert np.all(fit.vp <= 0.025)


@pytest.mark.parametrize("dt", [1.0, 4.0])
def test_extended_tofts_published_equation_curves(dt: float) -> None:
    t, cp, curves, grid = _published_etm_curves(dt)
    fit = fit_extended_tofts(t, cp, curves)
    assert fit.n_failed == 0
    assert np.all(_within(fit.ktrans, grid[:, 0], 0.005, 0.1))
    assert np.all(_within(fit.ve, grid[:, 1], 0.05, 0.0))
    assert np.all(_within(fit.vp, grid[:, 2], 0.025, 0.0))
    assert np.all(fit.r2 > 0.999)


def test_forward_model_matches_fine_grid_convolution() -> None:
    t, cp, curves, grid = _published_etm_curves(1.0)
    model = extended_tofts(t, cp, grid[:, 0], grid[:, 1], grid[:, 2])
    assert np.max(np.abs(model - curves)) < 0.01 * np.max(curves)


def test_murase_is_exact_on_dense_noise_free_curves() -> None:
    t, cp, curves, grid = _published_etm_curves(0.5)
    ktrans, ve, vp = murase_initialisation(t, cp, curves[::9])
    sub = grid[::9]
    assert np.all(_within(ktrans, sub[:, 0], 0.005, 0.1))
    assert np.all(_within(ve, sub[:, 1], 0.05, 0.0))
    assert np.all(_within(vp, sub[:, 2], 0.025, 0.0))


def test_fit_failures_are_nan_and_counted() -> None:
    t, cp, curves, _ = _published_etm_curves(4.0)
    bad = curves[:3].copy()
    bad[0, 5] = np.nan
    bad[1, :] = np.inf
    fit = fit_extended_tofts(t, cp, bad)
    assert fit.n_failed == 2
    assert np.all(np.isnan(fit.ktrans[:2])) and np.all(np.isnan(fit.vp[:2]))
    assert np.isfinite(fit.ktrans[2])


def test_bounds_are_respected_and_validated() -> None:
    t, cp, curves, _ = _published_etm_curves(4.0)
    fit = fit_extended_tofts(t, cp, curves * 50.0, bounds=FitBounds(ktrans=(0.0, 1.0)))
    ok = ~fit.failed
    assert np.all(fit.ktrans[ok] <= 1.0) and np.all(fit.ve[ok] <= 1.0) and np.all(fit.vp[ok] <= 1.0)
    with pytest.raises(DceInputError):
        FitBounds(ve=(0.0, 1.0))
    with pytest.raises(DceInputError):
        fit_extended_tofts(t[::-1], cp, curves)


def test_patlak_osipi_cases_within_tolerance() -> None:
    rows = _osipi_rows("dce/patlak_sd_0.02_delay_0.csv")
    t, cp = _arr(rows[0]["t"]), _arr(rows[0]["cp_aif"])
    fit = fit_patlak(t, cp, np.stack([_arr(r["C_t"]) for r in rows]))
    assert np.all(_within(fit.ktrans, np.array([float(r["ps"]) for r in rows]), 0.005, 0.1))
    assert np.all(_within(fit.vp, np.array([float(r["vp"]) for r in rows]), 0.025, 0.0))


def test_patlak_own_curves() -> None:
    t = np.arange(0, 300, 3.0)
    cp = parker_aif(t, delay=15.0, hematocrit=0.45)
    k, v = np.array([0.0, 0.02, 0.1]), np.array([0.01, 0.05, 0.1])
    fit = fit_patlak(t, cp, patlak(t, cp, k, v))
    np.testing.assert_allclose(fit.ktrans, k, atol=1e-9)
    np.testing.assert_allclose(fit.vp, v, atol=1e-9)


# --- VFA T1 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "r1_factor", "tr_factor", "column"), [
    ("t1_brain_data.csv", 1.0, 1.0, "R1"),
    ("t1_quiba_data.csv", 1000.0, 1.0, "R1"),
    ("t1_prostate_data.csv", None, 1e-3, " T1 nonlinear"),
])
def test_vfa_t1_osipi(name: str, r1_factor: float | None, tr_factor: float, column: str) -> None:
    rows = _osipi_rows(f"t1_vfa/{name}")
    for row in rows:
        fa, tr, s = _arr(row["FA"]), _arr(row["TR"])[0] * tr_factor, _arr(row["s"])
        ref = float(row[column]) * r1_factor if r1_factor else 1000.0 / float(row[column])
        assert _within(fit_vfa_nonlinear(s, fa, tr).r1[0], ref, 0.05, 0.05), row["label"]
        # OSIPI marks this low-SNR voxel xfail for the linear fit only.
        if row["label"] != "Pat5_voxel5_prostaat":
            assert _within(fit_vfa_linear(s, fa, tr).r1[0], ref, 0.05, 0.05), row["label"]


def test_vfa_t1_own_curves_vectorised() -> None:
    t1 = np.geomspace(0.2, 4.0, 40)
    fa = np.array([2.0, 5.0, 10.0, 15.0, 25.0])
    s = spgr_signal(1000.0, 1.0 / t1[:, None], 0.005, fa[None, :])
    for fit in (fit_vfa_linear(s, fa, 0.005), fit_vfa_nonlinear(s, fa, 0.005)):
        assert fit.n_failed == 0
        assert np.all(_within(fit.r1, 1.0 / t1, 0.05, 0.05))
    s[0, 0] = np.nan
    assert fit_vfa_nonlinear(s, fa, 0.005).n_failed == 1
    with pytest.raises(DceInputError):
        fit_vfa_linear(s, [10.0, 10.0, 10.0, 10.0, 10.0], 0.005)


def test_default_t10_and_relaxivity_tables() -> None:
    assert default_t10(3.0) == pytest.approx(1.084)
    assert default_t10(1.494) == pytest.approx(0.884)
    assert default_t10(2.89, blood=True) == pytest.approx(1.65)  # Alsop et al. 2015 consensus
    assert default_t10(1.5, blood=True) == pytest.approx(1.35)
    assert relaxivity("gadobutrol", 3.0) == pytest.approx(5.0)
    assert relaxivity("gadobutrol", 1.5) == pytest.approx(5.2)
    with pytest.raises(DceInputError):
        relaxivity("unknownium", 3.0)


# --- signal → concentration -------------------------------------------------------------------


def test_signal_to_concentration_osipi() -> None:
    for row in _osipi_rows("si_to_conc/SI2Conc_data.csv"):
        # The reference averages frames 1..n-1 as baseline (its first frame is not used).
        conc = signal_to_concentration(
            _arr(row["s"]), t10_s=float(row["T1base"]), flip_deg=float(row["FA"]),
            tr_s=float(row["TR"]), r1_per_mm_s=float(row["r1"]),
            baseline=slice(1, int(row["numbaselinepts"])))
        np.testing.assert_allclose(conc, _arr(row["conc"]), rtol=1e-5, atol=1e-5)


def test_signal_to_concentration_round_trip_and_bolus_detection() -> None:
    t = np.arange(0, 240, 4.0)
    cp = parker_aif(t, delay=40.0, hematocrit=0.45)
    conc = extended_tofts(t, cp, [0.05, 0.2], [0.2, 0.4], [0.02, 0.08])
    t10, r1 = 1.084, relaxivity("gadobutrol", 3.0)
    signal = spgr_signal(500.0, 1.0 / t10 + r1 * conc, 0.005, 25.0)
    arrival = detect_bolus_arrival(t, signal.mean(axis=0))
    assert 32.0 <= arrival.time_s <= 44.0
    back = signal_to_concentration(signal, t10_s=t10, flip_deg=25.0, tr_s=0.005,
                                   r1_per_mm_s=r1, baseline=arrival.baseline_frames)
    np.testing.assert_allclose(back, conc, atol=1e-9)
    with pytest.raises(DceInputError):
        detect_bolus_arrival(t, -t)
