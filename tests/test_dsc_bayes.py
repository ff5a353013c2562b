"""The Bayesian model-based deconvolution of the ``dsc`` analyzer (``method = "bayes"``).

Checked where oSVD is known to fail (CBF at short transit times, see
docs/analyzers/dsc.md) and on curves whose residue is not on the model's grid.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.special import gammainc

from analyzers.dsc.bayes import GRID_SHAPES, ResidueGrid, neighbourhood_shape_prior
from analyzers.dsc.deconvolution import BRAIN_DENSITY_G_PER_ML, HEMATOCRIT_FACTOR, SvdDeconvolver
from analyzers.dsc.errors import DscInputError
from analyzers.dsc.simulate import arterial_curve

TIMES = np.arange(60) * 1.5
FINE = np.arange(0.0, TIMES[-1] + 0.025, 0.05)
SCALE = 100.0 * 60.0 * HEMATOCRIT_FACTOR / BRAIN_DENSITY_G_PER_ML
REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data"
OSIPI_DSC = REFERENCE / "osipi_dce_dsc" / "dsc" / "dsc_data.csv"


def _tissue(residue: np.ndarray, cbf: float, delay_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """AIF and tissue curve (ΔR2*, AIF peak 60/s) for a residue sampled on FINE."""
    aif_fine = arterial_curve(FINE, t0=10.0, peak=60.0)
    conv = np.convolve(aif_fine, residue)[: FINE.size] * 0.05
    curve = cbf / SCALE * np.interp(TIMES - delay_s, FINE, conv, left=0.0)
    return np.interp(TIMES, FINE, aif_fine), curve


@pytest.mark.parametrize("mtt", [2.0, 3.0, 4.0, 8.0, 12.0])
def test_cbf_at_every_transit_time_where_osvd_loses_it(mtt: float) -> None:
    """Noise-free curves: posterior CBF within 10 % (exponential residue) and 15 % (gamma
    transit times of shape 3, which is not on the grid) for MTT 2-12 s; oSVD returns
    36-63 % of it at MTT 2-4 s (measured: exponential 0.93-1.06, gamma 0.86-0.97)."""
    cbv = 4.0
    cbf = 60.0 * cbv / mtt
    residues = {"exponential": (np.exp(-FINE / mtt), 0.10),
                "gamma shape 3": (1.0 - gammainc(3.0, 3.0 * FINE / mtt), 0.15)}
    for name, (residue, tolerance) in residues.items():
        aif, curve = _tissue(residue, cbf)
        fit = ResidueGrid(aif, 1.5).transit(curve[None], sigma=0.01)
        osvd = SCALE * SvdDeconvolver(aif, 1.5).flow(curve[None])[0]
        assert SCALE * fit.flow[0] == pytest.approx(cbf, rel=tolerance), (name, osvd)
        area = fit.area[0] / np.trapezoid(curve, TIMES)
        assert area == pytest.approx(1.0, abs=0.02), name
        if mtt <= 4.0:
            assert osvd < 0.8 * cbf


def test_delayed_tissue_keeps_its_cbf() -> None:
    """Tissue arriving 1.5 s after the AIF: the grid's delays keep CBF within 10 %."""
    aif, curve = _tissue(np.exp(-FINE / 4.0), 60.0, delay_s=1.5)
    fit = ResidueGrid(aif, 1.5).transit(curve[None], sigma=0.01)
    assert SCALE * fit.flow[0] == pytest.approx(60.0, rel=0.10)


def test_noisy_curves_are_unbiased_on_average() -> None:
    """SNR-50-like noise on a grey-matter curve (peak ΔR2* 2.2/s, noise 0.35/s, a peak
    contrast-to-noise ratio of 6): median CBF within 20 % (measured -16 %: at low CNR the
    posterior leans to longer transit times), fitted area within 3 %."""
    rng = np.random.default_rng(5)
    aif, curve = _tissue(np.exp(-FINE / 4.0), 60.0)
    noisy = curve + rng.normal(0.0, 0.35, (400, TIMES.size))
    fit = ResidueGrid(aif, 1.5).transit(noisy, sigma=0.35)
    assert np.median(SCALE * fit.flow) == pytest.approx(60.0, rel=0.20)
    assert np.median(fit.mtt_s) == pytest.approx(4.0, rel=0.25)
    assert np.median(fit.area) == pytest.approx(np.trapezoid(curve, TIMES), rel=0.03)


def test_single_precision_matches_double() -> None:
    rng = np.random.default_rng(2)
    aif, curve = _tissue(np.exp(-FINE / 5.0), 40.0)
    curves = curve + rng.normal(0.0, 0.2, (200, TIMES.size))
    fast = ResidueGrid(aif, 1.5).transit(curves, 0.2)
    exact = ResidueGrid(aif, 1.5, dtype=np.float64).transit(curves, 0.2)
    np.testing.assert_allclose(fast.flow, exact.flow, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(fast.area, exact.area, rtol=1e-3, atol=1e-6)


def test_osipi_reference_curves() -> None:
    """The OSIPI DSC test curves within OSIPI's tolerances, all but the highest flow.

    Those curves were made with a rectangle-rule convolution at 1.24 s
    (``Δt·Σ C_a[k]·R[n−k]``): the tissue area exceeds CBV by 19 % at MTT 3.4 s,
    and the exponential residue reproduces the CBF-70 row within 4 % that way but
    misses it by 21 % as a continuous convolution. The model convolves
    continuously, so it reads that row's early rise as a higher flow (96 against
    70, beyond the 22 allowed). oSVD, whose matrix has the same kind of
    discretisation, passes all 14 (``tests/test_dsc_deconvolution.py``).
    """
    if not OSIPI_DSC.is_file():
        pytest.skip(f"OSIPI DSC reference curves not found at {OSIPI_DSC}")
    with OSIPI_DSC.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    tissue = np.stack([np.array(row["C_tis"].split(), dtype=float) for row in rows])
    aif = np.array(rows[0]["C_aif"].split(), dtype=float)
    dt = float(rows[0]["tr"])
    times = np.arange(tissue.shape[1]) * dt
    sigma = float(np.std(tissue[:, :5])) or 1e-3
    fit = ResidueGrid(aif, dt).transit(tissue, max(sigma, 1e-3 * aif.max()))
    cbf = 6000.0 * fit.flow  # OSIPI convention: no hematocrit or density factor
    cbv = 100.0 * fit.area / np.trapezoid(aif, times)
    truth_cbf = np.array([float(row["cbf"]) for row in rows])
    truth_cbv = np.array([float(row["cbv"]) for row in rows])
    assert np.all(np.abs(cbv - truth_cbv) <= 1.0 + 0.1 * truth_cbv), cbv
    within = np.abs(cbf - truth_cbf) <= 15.0 + 0.1 * truth_cbf
    assert within.sum() == 13 and not within[truth_cbf.argmax()], cbf
    row = rows[int(truth_cbf.argmax())]
    curve = np.array(row["C_tis"].split(), dtype=float)
    mtt = 60.0 * float(row["cbv"]) / float(row["cbf"])
    flow = float(row["cbf"]) / 6000.0
    rectangle = dt * flow * np.convolve(aif, np.exp(-times / mtt))[: times.size]
    assert np.abs(rectangle - curve).max() < 0.05 * curve.max()


def test_bad_input() -> None:
    with pytest.raises(DscInputError, match="positive area"):
        ResidueGrid(-np.ones(20), 1.5)
    with pytest.raises(DscInputError, match="sampling interval"):
        ResidueGrid(np.ones(20), 0.0)
    grid = ResidueGrid(arterial_curve(TIMES, peak=60.0), 1.5)
    with pytest.raises(DscInputError, match="shape"):
        grid.transit(np.ones((3, 10)), 1.0)
    with pytest.raises(DscInputError, match="positive"):
        grid.leakage(np.ones((3, TIMES.size)), 0.0)
    with pytest.raises(DscInputError, match="shape_prior"):
        grid.transit(np.ones((3, TIMES.size)), 1.0, shape_prior=np.ones((3, 2)))
    with pytest.raises(DscInputError, match="same voxels"):
        neighbourhood_shape_prior(np.ones((3, len(GRID_SHAPES))), np.ones((2, 2, 2), bool))


def test_neighbourhood_shape_prior_is_the_mean_posterior_of_the_other_voxels() -> None:
    mask = np.zeros((1, 3, 4), bool)
    mask[0, :, :3] = True
    posterior = np.tile([0.0, 1.0, 0.0, 0.0], (int(mask.sum()), 1))
    order = np.argwhere(mask)

    def voxel(position: list[int]) -> int:
        return int(np.nonzero((order == position).all(axis=1))[0][0])

    centre, corner = voxel([0, 1, 1]), voxel([0, 0, 0])
    posterior[centre] = [1.0, 0.0, 0.0, 0.0]
    prior = neighbourhood_shape_prior(posterior, mask)
    assert prior[centre] == pytest.approx([0.0, 1.0, 0.0, 0.0])  # its own posterior is left out
    assert prior[corner] == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])  # 3 neighbours, one of them the centre
    evidence = np.ones(int(mask.sum()), bool)
    evidence[centre] = False  # an arterial voxel informs no neighbour
    assert neighbourhood_shape_prior(posterior, mask, evidence)[corner] == pytest.approx([0, 1, 0, 0])
    apart = np.zeros((1, 1, 5), bool)
    apart[0, 0, [0, 4]] = True  # no neighbour within 3 x 3 x 3: the flat prior
    assert neighbourhood_shape_prior(np.tile([0.0, 1.0, 0.0, 0.0], (2, 1)), apart) == pytest.approx(0.25)


def test_neighbourhood_shape_prior_reduces_the_transit_time_bias_of_an_exponential_residue() -> None:
    """A 3 x 8 x 8 block of one tissue (exponential residue, MTT 4 s) at a peak contrast-to-noise
    ratio of 12: with the flat shape prior the median MTT is about 10 % long (shapes 2-8 fit the
    same mean residence time with a longer MTT); the neighbourhood prior about halves that
    (measured +9.7 % -> +6.3 % at this seed, +11 % -> +7 % over three seeds)."""
    mtt = 4.0
    aif, curve = _tissue(np.exp(-FINE / mtt), 60.0 * 4.0 / mtt)
    grid = ResidueGrid(aif, 1.5)
    mask = np.ones((3, 8, 8), bool)
    sigma = curve.max() / 12.0
    noisy = curve[None] + np.random.default_rng(0).normal(0.0, sigma, (int(mask.sum()), curve.size))
    flat = grid.transit(noisy, sigma)
    local = grid.transit(noisy, sigma, neighbourhood_shape_prior(flat.shape_posterior, mask))
    aif_area = np.trapezoid(aif, TIMES)
    bias_flat = np.median(flat.area / (flat.flow * aif_area)) / mtt - 1.0
    bias_local = np.median(local.area / (local.flow * aif_area)) / mtt - 1.0
    assert bias_flat > 0.08
    assert abs(bias_local) < 0.08 and bias_local < bias_flat - 0.02
    assert local.shape_posterior[:, 0].mean() > flat.shape_posterior[:, 0].mean()
    assert np.allclose(flat.shape_posterior.sum(axis=1), 1.0, atol=1e-4)
