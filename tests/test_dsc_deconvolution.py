"""Deconvolution core of the ``dsc`` analyzer against the OSIPI DSC tolerances.

The OSIPI DSC-MRI code collection tests CBV within 1 ml/100 ml + 10 % and CBF
within 15 ml/100 ml/min + 10 % (atol + rtol·|reference|) on noise-free or
CNR-200 curves with a known AIF. Here the same bar is applied to the OSIPI
reference curves (when the reference data is present) and to curves made from
the published forward model (gamma-variate AIF, exponential residue).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from analyzers.dsc.deconvolution import (
    BRAIN_DENSITY_G_PER_ML,
    HEMATOCRIT_FACTOR,
    SvdDeconvolver,
    cbv_area_ratio,
    oscillation_index,
    perfusion_from_concentration,
)
from analyzers.dsc.errors import DscInputError
from analyzers.dsc.loop import perfusion_loop
from analyzers.dsc.simulate import tissue_curves

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data"
OSIPI_DSC = REFERENCE / "osipi_dce_dsc" / "dsc" / "dsc_data.csv"

CBV_ATOL, CBV_RTOL = 1.0, 0.10
CBF_ATOL, CBF_RTOL = 15.0, 0.10


def _within(measured: np.ndarray, truth: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    return np.abs(measured - truth) <= atol + rtol * np.abs(truth)


def _osipi_rows() -> list[dict[str, str]]:
    if not OSIPI_DSC.is_file():
        pytest.skip(f"OSIPI DSC reference curves not found at {OSIPI_DSC}")
    with OSIPI_DSC.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", ["osvd", "ssvd"])
def test_osipi_reference_curves_meet_tolerances(method: str) -> None:
    rows = _osipi_rows()
    assert len(rows) == 14
    tissue = np.stack([np.array(row["C_tis"].split(), dtype=float) for row in rows])
    aifs = np.stack([np.array(row["C_aif"].split(), dtype=float) for row in rows])
    # Every row shares one AIF and sampling interval, so all rows are solved together.
    np.testing.assert_array_equal(aifs, np.broadcast_to(aifs[0], aifs.shape))
    assert len({row["tr"] for row in rows}) == 1
    times = np.arange(tissue.shape[1]) * float(rows[0]["tr"])
    # OSIPI convention: no hematocrit or density correction (ml/100 ml).
    result = perfusion_from_concentration(tissue, aifs[0], times, method=method, k_h=1.0, density=1.0)
    cbv = np.array([float(row["cbv"]) for row in rows])
    cbf = np.array([float(row["cbf"]) for row in rows])
    assert _within(result.cbv, cbv, CBV_ATOL, CBV_RTOL).all(), result.cbv
    assert _within(result.cbf, cbf, CBF_ATOL, CBF_RTOL).all(), result.cbf
    np.testing.assert_allclose(result.mtt, 60.0 * result.cbv / result.cbf)


_GRID_CBV = np.repeat([2.0, 4.0, 6.0], 3)
_GRID_CBF = np.array([10.0, 20.0, 40.0, 20.0, 40.0, 60.0, 30.0, 60.0, 90.0])  # MTT 3-12 s


@pytest.mark.parametrize("dt", [1.0, 1.5])
def test_forward_model_curves_meet_tolerances_osvd(dt: float) -> None:
    """Gamma-variate AIF, exponential residue, physiological CBV/CBF grid (MTT 3-12 s)."""
    times = np.arange(80) * dt
    aif, tissue = tissue_curves(times, _GRID_CBV, _GRID_CBF, aif_peak=50.0, recirculation=False)
    result = perfusion_from_concentration(tissue, aif, times, method="osvd")
    assert _within(result.cbv, _GRID_CBV, CBV_ATOL, CBV_RTOL).all(), result.cbv
    assert _within(result.cbf, _GRID_CBF, CBF_ATOL, CBF_RTOL).all(), result.cbf


def test_forward_model_curves_ssvd() -> None:
    """sSVD at threshold 0.2 meets the tolerances for MTT >= 6 s and underestimates below.

    The fixed 0.2 truncation smooths the residue peak away for short transit
    times (Østergaard 1996 reported the same); the measured values are below the
    truth there, never above.
    """
    times = np.arange(80) * 1.0
    aif, tissue = tissue_curves(times, _GRID_CBV, _GRID_CBF, aif_peak=50.0, recirculation=False)
    result = perfusion_from_concentration(tissue, aif, times, method="ssvd")
    assert _within(result.cbv, _GRID_CBV, CBV_ATOL, CBV_RTOL).all(), result.cbv
    mtt = _GRID_CBV / _GRID_CBF * 60.0
    long_transit = mtt >= 6.0
    assert _within(result.cbf[long_transit], _GRID_CBF[long_transit], CBF_ATOL, CBF_RTOL).all()
    assert np.all(result.cbf[~long_transit] < _GRID_CBF[~long_transit])


def test_cbv_uses_hematocrit_and_density() -> None:
    times = np.arange(60) * 1.0
    aif, tissue = tissue_curves(times, np.array([4.0]), np.array([60.0]), aif_peak=50.0, recirculation=False)
    corrected = cbv_area_ratio(tissue, aif, times)
    plain = cbv_area_ratio(tissue, aif, times, k_h=1.0, density=1.0)
    assert HEMATOCRIT_FACTOR == pytest.approx(0.55 / 0.75)
    assert BRAIN_DENSITY_G_PER_ML == 1.04
    assert corrected[0] / plain[0] == pytest.approx(HEMATOCRIT_FACTOR / 1.04)
    assert corrected[0] == pytest.approx(4.0, rel=0.02)


def test_osvd_is_insensitive_to_tissue_delay() -> None:
    """Block-circulant SVD: a tissue curve arriving 3 s late keeps its CBF (Wu 2003)."""
    times = np.arange(80) * 1.0
    aif, tissue = tissue_curves(times, np.array([4.0]), np.array([60.0]), aif_peak=50.0, recirculation=False)
    delayed = np.concatenate([np.zeros(3), tissue[0, :-3]])[None]
    on_time = perfusion_from_concentration(tissue, aif, times, method="osvd").cbf[0]
    late = perfusion_from_concentration(delayed, aif, times, method="osvd").cbf[0]
    assert late == pytest.approx(on_time, rel=0.05)


def test_vectorised_osvd_matches_per_voxel_loop() -> None:
    rng = np.random.default_rng(3)
    times = np.arange(50) * 1.5
    cbv = rng.uniform(1.5, 8.0, 40)
    cbf = cbv / rng.uniform(3.0, 8.0, 40) * 60.0
    aif, tissue = tissue_curves(times, cbv, cbf, aif_peak=60.0, recirculation=False)
    noisy = tissue + rng.normal(0.0, 0.02, tissue.shape)
    fast = perfusion_from_concentration(noisy, aif, times, method="osvd")
    cbv_loop, cbf_loop = perfusion_loop(noisy, aif, times)
    np.testing.assert_allclose(fast.cbv, cbv_loop, rtol=1e-9)
    # float32 sweep vs float64 loop: equal truncation choice, tiny rounding differences.
    np.testing.assert_allclose(fast.cbf, cbf_loop, rtol=2e-3)


def test_oscillation_index_of_smooth_and_noisy_residues() -> None:
    smooth = np.exp(-np.arange(100) / 5.0)
    noisy = smooth + np.random.default_rng(0).normal(0.0, 0.2, 100)
    assert float(oscillation_index(smooth)) < 0.035 < float(oscillation_index(noisy))


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(DscInputError):
        SvdDeconvolver(np.zeros(20), 1.0)
    with pytest.raises(DscInputError):
        SvdDeconvolver(np.ones(20), 1.0, method="fft")  # type: ignore[arg-type]
    times = np.array([0.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    with pytest.raises(DscInputError, match="uniformly"):
        perfusion_from_concentration(np.ones((1, 6)), np.ones(6), times)
