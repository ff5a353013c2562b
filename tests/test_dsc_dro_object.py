"""The DSC reference object's two tissue relaxivity conventions (bench/dro/dsc_object.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.dro.dsc_object import (
    DENSITY,
    GREY_MATTER_PEAK_DROP,
    K_H,
    R2STAR,
    TE_S,
    arterial_concentration,
    make_case,
    residue,
)


def _grey_matter_peak_delta_r2(relaxivity_ratio: float) -> float:
    """Peak tissue ΔR2* (1/s) of grey matter (CBV 4 ml/100 g, CBF 60 ml/100 g/min, MTT 4 s)."""
    fine = np.arange(0.0, 90.0, 0.05)
    flow_per_s = 4.0 / 100.0 / 4.0
    tissue = (DENSITY / K_H) * flow_per_s * np.convolve(
        arterial_concentration(fine), residue(fine, "exponential", 4.0))[: fine.size] * 0.05
    return float(relaxivity_ratio * R2STAR * tissue.max())


def test_literature_relaxivity_gives_grey_matter_its_forty_percent_drop() -> None:
    blood = make_case("none", None)
    literature = make_case("none", None, tissue_relaxivity="literature")
    assert blood.relaxivity_ratio == 1.0 and blood.tissue_relaxivity == "blood"
    drop = 1.0 - np.exp(-TE_S * _grey_matter_peak_delta_r2(literature.relaxivity_ratio))
    assert drop == pytest.approx(GREY_MATTER_PEAK_DROP, abs=1e-6)
    assert 5.0 < literature.relaxivity_ratio < 10.0
    # The normal tissue (CBV 3, CBF 40): about 5 % with the blood's relaxivity, 30 % with the literature's.
    for case, low, high in ((blood, 0.04, 0.06), (literature, 0.25, 0.35)):
        curve = case.signal[:, 0, 40, 5]
        assert low < 1.0 - curve.min() / curve[0] < high
    # The truth and the artery do not depend on the convention.
    for name in ("cbv", "cbf", "mtt", "patch"):
        np.testing.assert_array_equal(blood.truth[name], literature.truth[name])
    np.testing.assert_array_equal(blood.aif, literature.aif)


def test_equal_relaxivity_analysis_reads_cbv_times_the_ratio() -> None:
    """The area ratio of ΔR2* (the standard CBV) is the truth times ``relaxivity_ratio``."""
    case = make_case("none", None, tissue_relaxivity="literature")
    times = case.times
    aif_area = np.trapezoid(case.aif, times)
    for patch in case.patches[::5]:
        curve = case.signal[:, 0, patch.rows.start, patch.columns.start]
        delta_r2 = -np.log(curve / curve[0]) / TE_S
        cbv = 100.0 * (K_H / DENSITY) * np.trapezoid(delta_r2, times) / aif_area
        assert cbv / case.relaxivity_ratio == pytest.approx(patch.cbv, rel=0.08), patch


def test_unknown_relaxivity_is_refused() -> None:
    with pytest.raises(ValueError, match="tissue_relaxivity"):
        make_case("none", None, tissue_relaxivity="tissue")  # type: ignore[arg-type]
