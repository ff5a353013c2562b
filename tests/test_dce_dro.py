"""The ``dce`` analyzer on the independent DCE reference object (``bench/dro``).

* In process, noise-free: every patch within the OSIPI tolerances (the pipeline itself,
  without DICOM, so a failure points at the method).
* Through the chain: studies of the object at SNR 50 and 20 with VFA and at SNR 50 without
  VFA are sent with storescu to a node with the shipped routes; the maps and the SR are read
  back from Orthanc. The bars are those of docs/analyzers/dce.md: at SNR 50 Ktrans, ve and vp
  in tolerance in >= 95 % of patches with |bias| <= 5 %, R1 in 100 %; the SR's AIF within
  10 % of the true peak and area at SNR 20; without VFA the SR states the fallback T10 and
  which AIF was used, and gives no ratio from a reference below the floor and no probability.
  ``python -m bench.dce_dro`` runs the full table (noise-free and four noise levels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analyzers.dce.arterial import VfaSignals
from analyzers.dce.pipeline import Acquisition, compute_maps
from analyzers.dce.t1 import fit_vfa_nonlinear
from bench.dro.dce_object import DceDesign, build
from bench.dro.dce_run import DceCase, markdown_table, run_cases
from bench.dro.harness import peers_missing
from bench.dro.scoring import score_patches, summarize

#: The object as the benchmark builds it (four T10 slices, 336 patches per study).
DESIGN = DceDesign()


def test_noise_free_object_is_recovered_in_every_patch() -> None:
    obj = build(DceDesign(t10_s=(1.0,)))
    design = obj.design
    angles = sorted(obj.vfa)
    stack = np.stack([obj.vfa[a] for a in angles], axis=-1) * 1000.0
    t10 = fit_vfa_nonlinear(stack.reshape(-1, len(angles)), angles, design.tr_ms / 1000.0)
    maps = compute_maps(obj.dynamic * 1000.0, design.times_s,
                        Acquisition(design.flip_deg, design.tr_ms / 1000.0, design.field_t),
                        t10_map=t10.t1.reshape(stack.shape[:3]),
                        vfa=VfaSignals(stack, tuple(angles), design.tr_ms / 1000.0))
    summary = summarize(score_patches({"ktrans": maps.ktrans, "ve": maps.ve, "vp": maps.vp,
                                       "r1": 1.0 / maps.t10}, obj.patches))
    for parameter, result in summary.items():
        assert result.n_in_tolerance == result.n_patches, (parameter, result)
    assert maps.aif.source == "image"
    assert maps.aif.plasma.max() == pytest.approx(obj.plasma_aif.max(), rel=0.01)


@pytest.mark.peers
@pytest.mark.slow
def test_reference_object_through_the_node(tmp_path: Path) -> None:
    reason = peers_missing()
    if reason:
        pytest.skip(reason)
    cases = [DceCase("SNR 50", 50.0), DceCase("SNR 20", 20.0, seed=2),
             DceCase("SNR 50, no VFA", 50.0, seed=3, with_vfa=False)]
    results = {r.case.label: r for r in run_cases(build(DESIGN), cases, tmp_path)}
    print("\n" + markdown_table(list(results.values())))

    snr50 = results["SNR 50"].summary
    for parameter in ("ktrans", "ve", "vp"):
        assert snr50[parameter].fraction >= 0.95, snr50[parameter]
        assert abs(snr50[parameter].bias) <= 0.05, snr50[parameter]
    assert snr50["r1"].fraction == 1.0
    for label in ("SNR 50", "SNR 20"):
        aif = results[label].results.aif
        assert aif is not None and abs(aif.peak_error) <= 0.10 and abs(aif.area_error) <= 0.10, (label, aif)
        t10_line = results[label].results.sr_line("T10 of tissue")
        assert "variable flip angle" in t10_line and "VFA fit of the pooled arterial signal" in t10_line

    no_vfa = results["SNR 50, no VFA"].results
    t10_line = no_vfa.sr_line("T10 of tissue")
    assert "fixed 1.084 s (white matter at 3 T" in t10_line and "literature blood T1 at 3 T" in t10_line
    assert no_vfa.sr_line("AIF: image AIF: pooled signal")
    assert "T1" not in no_vfa.maps  # no T1 map without VFA
    impression = no_vfa.sr_line("lesion 1:")
    # The lesion's contralateral reference is normal tissue with Ktrans 0: below the floor.
    assert "rKtrans not computable: reference Ktrans" in impression and "below the floor" in impression
    assert "None" not in impression and "probability of recurrence" not in impression
    assert "probability not reported" in impression
    lesion = results["SNR 50, no VFA"].job.findings["lesions"][0]
    assert lesion["r_ktrans"] is None and lesion["probability_recurrence"] is None
    assert lesion["r_vp"] == pytest.approx(0.03 / DESIGN.normal_vp, rel=0.2)
