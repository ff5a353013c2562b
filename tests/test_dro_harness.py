"""The reference-object toolkit of ``bench/dro``: its forward model against dcmri, its
scoring, its DICOM writer read back by the product's loader, and the Parametric Map reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analyzers._shared import outputs as out
from analyzers._shared.volume import load_series
from bench.dro.dce_object import DceDesign, blood_curve, build, extended_tofts_fine
from bench.dro.dce_study import write_study
from bench.dro.harness import read_parametric_maps, shipped_routes
from bench.dro.scoring import OSIPI_TOLERANCE, Patch, score_patches, summarize
from sr_templates.dce import TEMPLATE


@pytest.mark.parametrize(("ktrans", "ve", "vp"), [(0.01, 0.5, 0.001), (0.1, 0.2, 0.03), (0.35, 0.1, 0.1)])
def test_tissue_model_agrees_with_dcmri(ktrans: float, ve: float, vp: float) -> None:
    dcmri = pytest.importorskip("dcmri")
    design = DceDesign()
    step = 0.02
    t = np.arange(0.0, 330.0, step)
    blood = blood_curve(t - design.arrival_s, design)
    ours = extended_tofts_fine(blood / (1 - design.hematocrit), ktrans, ve, vp)
    # dcmri's "HF" kinetics (extended Tofts): blood input, PS in 1/s, vi = ve, vb = vp / (1 - H).
    theirs = dcmri.conc_tissue(blood, dt=step, kinetics="HF", H=design.hematocrit, vi=ve,
                               vb=vp / (1 - design.hematocrit), PS=ktrans / 60.0)
    assert np.max(np.abs(ours - theirs)) <= 2e-3 * np.max(np.abs(theirs))


def test_object_layout_and_truth() -> None:
    obj = build(DceDesign(t10_s=(1.0,)))
    design = obj.design
    assert len(obj.patches) == len(design.ktrans) * len(design.ve) * len(design.vp)
    masks = np.stack([p.mask for p in obj.patches])
    assert masks.sum(axis=0).max() == 1, "patches overlap"
    assert not np.any(masks.any(axis=0) & (obj.vessel_fraction > 0)), "a patch touches a vessel"
    zero = [p for p in obj.patches if p.truth["ktrans"] == 0]
    assert zero and all("ve" not in p.truth for p in zero)
    assert obj.lesion.sum() == design.patch**2 and obj.artery.sum() >= 4
    # The object's own truth reproduces its signal: the plasma AIF peaks where the blood curve does.
    assert obj.plasma_aif.max() == pytest.approx(design.peak_blood_mM / (1 - design.hematocrit), rel=0.2)
    noisy = obj.with_noise(50, seed=0)
    background = obj.tissue & ~masks.any(axis=0) & (obj.vessel_fraction == 0)
    baseline = noisy.dynamic[:5][:, background & obj.tissue]
    assert np.std(baseline) == pytest.approx(obj.noise_sigma(50), rel=0.1)


def test_scoring_counts_tolerance_and_bias() -> None:
    mask = np.zeros((1, 4, 4), dtype=bool)
    first, second = mask.copy(), mask.copy()
    first[0, :2], second[0, 2:] = True, True
    patches = [Patch("a", first, {"ktrans": 0.1}), Patch("b", second, {"ktrans": 0.0})]
    ktrans = np.where(first, 0.12, 0.004)
    ktrans[0, 3, 3] = np.nan
    scores = score_patches({"ktrans": ktrans}, patches)
    assert [s.in_tolerance for s in scores] == [False, True]  # 0.12 > 0.1 + 0.005 + 0.01
    summary = summarize(scores)["ktrans"]
    assert summary.n_in_tolerance == 1 and summary.bias == pytest.approx(0.2)
    assert OSIPI_TOLERANCE["ve"].accepts(0.54, 0.5) and not OSIPI_TOLERANCE["ve"].accepts(0.56, 0.5)


def test_written_study_reads_back_and_maps_round_trip(tmp_path: Path) -> None:
    obj = build(DceDesign(t10_s=(1.0, 1.6), frames=12))
    files = write_study(obj, tmp_path / "study", name="round trip")
    dynamic = load_series(files.dynamic)
    assert dynamic.data.shape == obj.dynamic.shape
    assert np.allclose(dynamic.times, obj.design.times_s, atol=1e-3)
    assert np.allclose(dynamic.data / 150_000.0, obj.dynamic, atol=1e-5)
    assert float(dynamic.headers[0].FlipAngle) == obj.design.flip_deg
    vfa = load_series(files.vfa, single_series=False)
    assert vfa.data.shape[0] == len(obj.design.vfa_flip_deg)
    # A Parametric Map the product writes comes back with its values and slice order.
    truth = obj.truth_maps["ktrans"]
    pm = out.build_parametric_map(dynamic, truth, TEMPLATE.quantities["ktrans"],
                                  out.Algorithm(name="test", version="1"))
    pm.save_as(tmp_path / "pm.dcm")
    maps = read_parametric_maps([tmp_path / "pm.dcm", *files.seg])
    assert set(maps) == {"Ktrans"} and maps["Ktrans"].code_value == "126312"
    assert np.allclose(maps["Ktrans"].values, truth, atol=1e-6)


def test_shipped_routes_with_settings() -> None:
    text = shipped_routes(("vfa", "seg", "dce"), {"dce": {"aif": "parker", "hematocrit": 0.42}})
    assert text.count("[[route]]") == 3
    assert 'settings = { aif = "parker", hematocrit = 0.42 }' in text
