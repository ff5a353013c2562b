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

The issue's bar (voxel CBV and CBF within 10 %, lesion ratios within 10 %) is
not met by every quantity; the tests below assert what is achieved and mark
the unmet part as an expected failure with the measured numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("analyzers.phantoms.dsc", reason="the dsc phantom generator is not installed")

from scipy import ndimage

from analyzers.dsc.candidates import find_candidates
from analyzers.dsc.maps import compute_maps
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
                                            exclude=maps.aif_mask)
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
        # oSVD at OI 0.035 underestimates CBF with 60 frames of 1.5 s (about -30 to
        # -40 % here, -25 to -36 % on noise-free curves in test_dsc_maps): the
        # oscillation-index regularisation, not noise (region curves average it out).
        assert -0.45 <= row["roi_cbf_error"] <= 0.05, (name, row)
        assert row["cbv_error"] <= 0.25, (name, row)


def test_lesion_ratios(phantom: dict[str, Any]) -> None:
    """Ratios within 35 % (rCBV) and 40 % (rCBF): what the methods reach here.

    The errors follow the lesion's transit time relative to white matter: a short
    MTT lowers rCBF (oSVD underestimates CBF more for short transits), a long MTT
    lowers rCBV (the BSW fit takes part of the slower tissue curve for leakage).
    """
    for row in phantom["lesions"]:
        assert row["rcbv"] == pytest.approx(row["rcbv_true"], rel=0.35), row["id"]
        assert row["rcbf"] == pytest.approx(row["rcbf_true"], rel=0.40), row["id"]


@pytest.mark.xfail(strict=True, reason=(
    "issue bar not met: voxel CBF is biased low by oSVD (OI 0.035) at 1.5 s sampling and SNR 60 "
    "(median |error| about 0.5; region curves about -0.3 to -0.4), voxel CBV of white matter "
    "is noisy (median |error| about 0.2), and lesion rCBV/rCBF errors reach about 30 %"))
def test_issue_accuracy_bar(phantom: dict[str, Any]) -> None:
    for row in phantom["tissue"].values():
        assert row["cbv_error"] <= 0.10 and row["cbf_error"] <= 0.10
    for row in phantom["lesions"]:
        assert abs(row["rcbv"] / row["rcbv_true"] - 1) <= 0.10
        assert abs(row["rcbf"] / row["rcbf_true"] - 1) <= 0.10


def test_candidates_find_the_lesions(phantom: dict[str, Any]) -> None:
    candidates = phantom["candidates"]
    hits = [any((c & row["mask"]).any() for c in candidates) for row in phantom["lesions"]]
    lesion_any = phantom["truth"]["lesion_fraction"] > 0
    false = sum(not (c & lesion_any).any() for c in candidates)
    print(f"\ncandidates: {len(candidates)}, lesions hit {sum(hits)} of {len(hits)}, false {false}")
    assert all(hits)
    assert false <= 2
