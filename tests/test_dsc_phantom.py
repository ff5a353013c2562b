"""Accuracy of the ``dsc`` map library on the project's DSC phantom (ground truth known).

One phantom case (128 × 128 × 20 voxels of 1.8 × 1.8 × 5 mm, 60 frames of 1.5 s,
TE 30 ms, SNR 60, two dural metastases with BSW leakage), simulated in memory.
Measured against the truth maps:

* tissue: pure grey and white matter voxels (≥ 95 % one class, no lesion,
  edema or artery), median absolute relative error of the voxel CBV and CBF
  maps, and the region values (mean curve of all such voxels) of each class;
* lesions: rCBV and rCBF of each lesion's solid part (voxels ≥ 90 % lesion,
  as a reader places an ROI in the enhancing solid portion) against
  contralateral normal-appearing white matter found automatically, vs the
  phantom's rCBV/rCBF (lesion over pure white matter);
* automatic dural-lesion candidates: which lesions they hit, how many false ones.

The accuracy bar (voxel CBV and CBF within 10 %, lesion ratios within 10 %) is
met for CBV of tissue regions and for lesion rCBV; not for CBF with the
default oSVD (its truncation bias, shown on noise-free curves with the true
AIF; the Bayesian method brings region CBF to -11 %/-7 %, see
``test_bayes_method_on_the_phantom``) nor for voxel CBV (noise-limited: GM
0.11, WM 0.28 median error; the whole-curve BSW fit used before gave 0.09/0.20
because it projected every voxel on the brain's mean curve shape, the same
projection that cost slow lesions 23-32 % of their CBV). The tests assert what
is achieved and keep the unmet part as a strict expected failure with the
measured numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("analyzers.phantoms.dsc", reason="the dsc phantom generator is not installed")

from scipy import ndimage

from analyzers.dsc.candidates import find_candidates
from analyzers.dsc.maps import MapOptions, compute_maps
from analyzers.dsc.reference import (
    contralateral_reference,
    measure_region,
    midsagittal_position,
    relative_values,
    white_matter_mask,
)
from analyzers.phantoms.dsc import simulate_dsc


@pytest.fixture(scope="module")
def phantom() -> dict[str, Any]:
    case = simulate_dsc(seed=11, case_index=0, label="dural_metastasis", lesions=2, snr=60.0)
    series, maps_truth, truth = case.series[0], case.truth_maps, case.truth
    maps = compute_maps(series.pixels, series.times_s, truth["constants"]["te_s"])
    clean = ((maps_truth["lesion_fraction"] == 0) & (maps_truth["artery_fraction"] == 0)
             & ~maps_truth["edema"] & maps.brain_mask)
    tissue = {}
    for name in ("gm", "wm"):
        pure = clean & (maps_truth[f"{name}_fraction"] >= 0.95)
        region = measure_region(maps, series.pixels, pure)
        tissue[name] = {
            "voxels": int(pure.sum()),
            "cbv_error": float(np.nanmedian(np.abs(maps.cbv[pure] / maps_truth["cbv"][pure] - 1))),
            "cbf_error": float(np.nanmedian(np.abs(maps.cbf[pure] / maps_truth["cbf"][pure] - 1))),
            "roi_cbv_error": region.cbv / truth["tissue"][name]["cbv"] - 1,
            "roi_cbf_error": region.cbf / truth["tissue"][name]["cbf"] - 1,
        }
    spacing = tuple(float(v) for v in series.grid.spacing)
    lesion_any = maps_truth["lesion_fraction"] > 0
    white = white_matter_mask(maps, exclude=ndimage.binary_dilation(lesion_any, iterations=2)
                              | maps_truth["edema"])
    plane = midsagittal_position(maps.s0, maps.brain_mask, 2)
    lesions = []
    for item in truth["lesions"]:
        solid = (maps_truth["lesion_labels"] == item["id"]) & (maps_truth["lesion_fraction"] >= 0.9)
        reference = contralateral_reference(solid, white, plane, 2, spacing,
                                            edema=maps_truth["edema"] | lesion_any,
                                            exclude=maps.aif_mask, baseline=maps.s0)
        ratios = relative_values(measure_region(maps, series.pixels, solid),
                                 measure_region(maps, series.pixels, reference))
        lesions.append({"id": item["id"], "rcbv": ratios["rCBV"], "rcbf": ratios["rCBF"],
                        "rcbv_true": item["rcbv"], "rcbf_true": item["rcbf"],
                        "mask": maps_truth["lesion_labels"] == item["id"]})
    candidates = find_candidates(maps, white_matter_mask(maps), spacing)
    print("\ntissue  voxels  voxel|dCBV|  voxel|dCBF|  ROI dCBV  ROI dCBF")
    for name, row in tissue.items():
        print(f"{name:<7}{row['voxels']:>7}{row['cbv_error']:>12.3f}{row['cbf_error']:>12.3f}"
              f"{row['roi_cbv_error']:>+10.3f}{row['roi_cbf_error']:>+10.3f}")
    for row in lesions:
        print(f"lesion {row['id']}: rCBV {row['rcbv']:.2f} (truth {row['rcbv_true']:.2f}), "
              f"rCBF {row['rcbf']:.2f} (truth {row['rcbf_true']:.2f})")
    return {"maps": maps, "truth": maps_truth, "tissue": tissue, "lesions": lesions,
            "candidates": candidates}


def test_automatic_aif_is_arterial(phantom: dict[str, Any]) -> None:
    fractions = phantom["truth"]["artery_fraction"][phantom["maps"].aif_mask]
    assert fractions.size >= 2
    assert np.all(fractions >= 0.5), fractions


def test_tissue_cbv_and_cbf_of_regions(phantom: dict[str, Any]) -> None:
    for name, row in phantom["tissue"].items():
        assert abs(row["roi_cbv_error"]) <= 0.10, (name, row)
        # oSVD at OI 0.035 underestimates CBF with 60 frames of 1.5 s (-38 % grey, -31 %
        # white matter here; -39 % and -35 % on noise-free curves with the true AIF, see
        # test_osvd_cbf_bias_is_the_truncation_not_the_data): the truncation, not noise.
        assert -0.45 <= row["roi_cbf_error"] <= -0.20, (name, row)
    # Voxel CBV is the area of the fitted curve: median error 0.11 (GM) and 0.28 (WM, a 4 %
    # signal drop at SNR 60); noise-free 0.005 and 0.02.
    assert phantom["tissue"]["gm"]["cbv_error"] <= 0.13
    assert phantom["tissue"]["wm"]["cbv_error"] <= 0.32


def test_lesion_rcbv_meets_the_issue_bar(phantom: dict[str, Any]) -> None:
    """rCBV of each lesion's solid part within 10 % of truth (measured: +5.3 % and +7.4 %).

    Needs a leakage correction that does not take lesion 2's slow transit (MTT 10 s)
    for leakage (the whole-curve BSW fit gave -31 %) and the purest-white-matter
    reference (the full white-matter class carries 5 % grey matter into the ratio's
    denominator).
    """
    for row in phantom["lesions"]:
        assert row["rcbv"] == pytest.approx(row["rcbv_true"], rel=0.10), row["id"]


def test_lesion_rcbf(phantom: dict[str, Any]) -> None:
    """rCBF within 40 %: oSVD's CBF bias depends on the transit time, so it does not cancel in the ratio.

    Lesion 1 (MTT 3.1 s) loses about 50 % of its CBF, the white-matter reference
    (4.8 s) about 35 %: rCBF -24 %; lesion 2 (MTT 10 s) loses about 17 %: rCBF +31 %.
    """
    for row in phantom["lesions"]:
        assert row["rcbf"] == pytest.approx(row["rcbf_true"], rel=0.40), row["id"]


def test_osvd_cbf_bias_is_the_truncation_not_the_data() -> None:
    """Noise-free phantom curves with the phantom's own AIF: the CBF deficit is oSVD's alone.

    The phantom's truth is consistent with its residue (R(0) = 1, so CBF = F, and
    CBV comes back within 2 %), the hematocrit and density factors are applied
    on both sides, there is no delay or dispersion; yet the residue peak that
    oSVD (OI 0.035) returns is 61 % (grey matter, MTT 4 s) and 65 % (white
    matter, 4.8 s) of F at 1.5 s sampling. The truncation that keeps the
    oscillation index under 0.035 low-pass filters the exponential residue,
    whose peak is a step at t = 0.
    """
    from analyzers.dsc.deconvolution import perfusion_from_concentration
    from analyzers.phantoms.bolus import dsc_aif, indicator_dilution

    times = np.arange(60) * 1.5
    fine = np.arange(0.0, times[-1] + 0.05, 0.1)
    arterial = dsc_aif(fine, 12.3, 8.0)
    cbv, cbf = np.array([4.0, 2.0]), np.array([60.0, 25.0])
    tissue = indicator_dilution(fine, arterial, cbv, cbf, 1.04, 0.55 / 0.75)
    sample = np.rint(times / 0.1).astype(int)
    perfusion = perfusion_from_concentration(10.0 * tissue[:, sample], 10.0 * arterial[sample], times)
    np.testing.assert_allclose(perfusion.cbv, cbv, rtol=0.03)
    cbf_error = perfusion.cbf / cbf - 1.0
    assert np.all((cbf_error > -0.42) & (cbf_error < -0.30)), cbf_error


@pytest.mark.xfail(strict=True, reason=(
    "accuracy bar not met for CBF and voxel CBV. Measured on this case (SNR 60) with the default "
    "oSVD: voxel CBF median |error| 0.51 (GM) and 0.53 (WM), region CBF -38 % and -32 %: oSVD "
    "(OI 0.035) truncation bias on the exponential residue at 1.5 s sampling (-39 %/-35 % even "
    "noise-free with the true AIF); voxel CBV median |error| 0.11 (GM) and 0.28 (WM): noise-limited "
    "(4 % signal drop in WM at SNR 60, the region values are within 4 %); lesion rCBF -24 % and +31 %. "
    "Met: region CBV (-3 %, -1 %), lesion rCBV (+5 %, +7 %). The Bayesian method: region CBF -11 %/-7 %, "
    "voxel CBF 0.19/0.34, lesion rCBF -9 %/+11 % (test_bayes_method_on_the_phantom)"))
def test_issue_accuracy_bar(phantom: dict[str, Any]) -> None:
    for row in phantom["tissue"].values():
        assert row["cbv_error"] <= 0.10 and row["cbf_error"] <= 0.10
    for row in phantom["lesions"]:
        assert abs(row["rcbv"] / row["rcbv_true"] - 1) <= 0.10
        assert abs(row["rcbf"] / row["rcbf_true"] - 1) <= 0.10


def test_bayes_method_on_the_phantom() -> None:
    """The Bayesian model-based method on the same case: region CBF within 15 % (measured
    -11 % grey, -7 % white matter), where oSVD loses 32-38 %."""
    case = simulate_dsc(seed=11, case_index=0, label="dural_metastasis", lesions=2, snr=60.0)
    series, maps_truth, truth = case.series[0], case.truth_maps, case.truth
    maps = compute_maps(series.pixels, series.times_s, truth["constants"]["te_s"],
                        MapOptions(method="bayes"))
    clean = ((maps_truth["lesion_fraction"] == 0) & (maps_truth["artery_fraction"] == 0)
             & ~maps_truth["edema"] & maps.brain_mask)
    for name in ("gm", "wm"):
        region = measure_region(maps, series.pixels, clean & (maps_truth[f"{name}_fraction"] >= 0.95))
        assert region.cbf == pytest.approx(truth["tissue"][name]["cbf"], rel=0.15), name
        assert region.cbv == pytest.approx(truth["tissue"][name]["cbv"], rel=0.10), name


def test_candidates_find_the_lesions(phantom: dict[str, Any]) -> None:
    candidates = phantom["candidates"]
    hits = [any((c & row["mask"]).any() for c in candidates) for row in phantom["lesions"]]
    lesion_any = phantom["truth"]["lesion_fraction"] > 0
    false = sum(not (c & lesion_any).any() for c in candidates)
    print(f"\ncandidates: {len(candidates)}, lesions hit {sum(hits)} of {len(hits)}, false {false}")
    assert all(hits)
    assert false <= 2
