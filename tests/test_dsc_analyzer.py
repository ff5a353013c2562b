"""The ``dsc`` analyzer end to end on a DSC phantom case (DICOM in, DICOM + findings out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("analyzers.phantoms.dsc", reason="the dsc phantom generator is not installed")

from analyzers._shared import outputs as out
from analyzers._shared.volume import load_series
from analyzers.contract import (
    NOT_FOR_CLINICAL_USE,
    AnalysisInput,
    AnalysisResult,
    Analyzer,
    AnalyzerSettings,
    SeriesInput,
    UnsuitableInput,
)
from analyzers.dsc.analyzer import DscAnalyzer, DscSettings
from analyzers.dsc.model import FEATURE_SETS, fit_classifier
from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.dsc import simulate_dsc
from sr_templates.dsc import TEMPLATE

GEOMETRY = {"matrix": 56, "slices": 8, "pixel_mm": 4.0, "slice_mm": 7.0}


def _series(folder: Path) -> SeriesInput:
    return SeriesInput(series_instance_uid=folder.name, study_instance_uid="study",
                       files=tuple(sorted(p for p in folder.iterdir() if p.is_file())))


def _write_truth_seg(case_dir: Path, mask: np.ndarray) -> Path:
    dynamic = load_series(sorted((case_dir / "dsc").iterdir()))
    seg = out.build_segmentation(dynamic, [out.Segment(TEMPLATE.segment_classes["lesion"], mask,
                                                       tracking_id="truth")],
                                 out.Algorithm(name="phantom truth", version="1"))
    folder = case_dir / "seg"
    folder.mkdir()
    seg.save_as(folder / "seg.dcm")
    return folder


def _model_folder(folder: Path) -> Path:
    """A small LDA trained on feature rows drawn like the phantom's lesions."""
    rng = np.random.default_rng(0)
    metastasis = np.column_stack([rng.lognormal(np.log(2.8), 0.45, 40),
                                  rng.lognormal(np.log(3.2), 0.4, 40)])
    meningioma = np.column_stack([rng.lognormal(np.log(5.5), 0.4, 40),
                                  rng.lognormal(np.log(6.0), 0.35, 40)])
    x = np.vstack([metastasis, meningioma])
    y = np.r_[np.ones(40, int), np.zeros(40, int)]
    fit_classifier(x, y, FEATURE_SETS["reduced"]).save(folder)
    return folder


def _run(case_dir: Path, settings: AnalyzerSettings, use_seg: bool, tmp: Path) -> AnalysisResult:
    related = {"roi": [_series(case_dir / "seg")]} if use_seg else {}
    job = AnalysisInput(job_id=f"job-{case_dir.name}-{use_seg}", series=_series(case_dir / "dsc"),
                        related=related, priors=(), settings=settings, scratch=tmp)
    return DscAnalyzer().analyze(job)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    case = simulate_dsc(seed=3, case_index=0, label="meningioma", lesions=1, snr=80.0, **GEOMETRY)
    case_dir = tmp_path_factory.mktemp("dsc-case")
    write_case(case, case_dir)
    _write_truth_seg(case_dir, case.truth_maps["lesion_labels"] > 0)
    model = _model_folder(tmp_path_factory.mktemp("dsc-model"))
    tmp = tmp_path_factory.mktemp("scratch")
    with_seg = _run(case_dir, DscSettings(model=str(model)), True, tmp)
    automatic = _run(case_dir, DscSettings(model=str(model)), False, tmp)
    return {"case": case, "dir": case_dir, "seg": with_seg, "auto": automatic, "model": model}


def _texts(dataset: Any) -> list[str]:
    """Every TextValue in an SR content tree."""
    found = []
    for item in dataset.get("ContentSequence", []):
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found.extend(_texts(item))
    return found


def _pm_label(dataset: Any) -> str | None:
    if dataset.Modality in ("SR", "SEG"):
        return None
    shared = dataset.SharedFunctionalGroupsSequence[0]
    return str(shared.RealWorldValueMappingSequence[0].LUTLabel)


def test_contract() -> None:
    assert isinstance(DscAnalyzer(), Analyzer)
    assert DscAnalyzer.name == "dsc"
    assert DscAnalyzer.needs == {"roi": "seg?"}
    assert DscAnalyzer.settings_model is DscSettings
    defaults = DscSettings()
    assert (defaults.method, defaults.oi_target, defaults.svd_threshold) == ("osvd", 0.035, 0.2)
    assert defaults.leakage_correction and defaults.psr_delay_s == 90.0
    with pytest.raises(ValueError):
        DscSettings(oi_target=0.0)
    with pytest.raises(ValueError):
        DscSettings(method="fft")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DscSettings(unknown=1)  # type: ignore[call-arg]


def test_outputs_with_seg(runs: dict[str, Any]) -> None:
    result = runs["seg"]
    modalities = sorted(d.Modality for d in result.datasets)
    assert modalities.count("SR") == 1 and modalities.count("SEG") == 1
    labels = {_pm_label(d) for d in result.datasets} - {None}
    assert labels == {"CBV", "CBF", "MTT", "PSR", "K2", "rCBV", "rCBF"}
    sr = next(d for d in result.datasets if d.Modality == "SR")
    texts = _texts(sr)
    assert NOT_FOR_CLINICAL_USE in texts
    assert any("AIF" in text for text in texts)
    assert "Relative Regional Blood Volume" in str(sr)
    seg = next(d for d in result.datasets if d.Modality == "SEG")
    segment_labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert segment_labels == ["Dural lesion", "Contralateral NAWM", "Arterial input function voxels"]
    findings = result.findings
    json.dumps(findings)
    assert findings["clinical_use"] == NOT_FOR_CLINICAL_USE
    assert findings["lesion_source"] == "SEG of the study"
    assert findings["aif"]["voxels"] >= 2
    lesion = findings["lesions"][0]
    assert 0.0 <= lesion["probability_dural_metastasis"] <= 1.0
    assert lesion["class"] in {"meningioma", "dural_metastasis"}


def test_ratios_against_truth(runs: dict[str, Any]) -> None:
    truth = runs["case"].truth["lesions"][0]
    lesion = runs["seg"].findings["lesions"][0]
    print(f"\nrCBV {lesion['rCBV']} (truth {truth['rcbv']}), rCBF {lesion['rCBF']} "
          f"(truth {truth['rcbf']}), K2 {lesion['k2_per_s']} (truth {truth['k2_per_s']})")
    # Coarse 3.6 x 3.6 x 6 mm voxels: the SEG ROI includes partial volume at the rim.
    assert lesion["rCBV"] == pytest.approx(truth["rcbv"], rel=0.35)
    assert lesion["rCBF"] == pytest.approx(truth["rcbf"], rel=0.35)
    assert lesion["k2_per_s"] < 0  # T2*-dominant leakage of the phantom's meningioma


def test_automatic_candidates_find_the_lesion(runs: dict[str, Any]) -> None:
    findings = runs["auto"].findings
    assert findings["lesion_source"].startswith("automatic")
    truth = runs["case"].truth_maps["lesion_labels"] > 0
    seg = next(d for d in runs["auto"].datasets if d.Modality == "SEG")
    assert int(seg.NumberOfFrames) >= 1
    assert findings["lesions"], "no candidate found"
    dynamic = load_series(sorted((runs["dir"] / "dsc").iterdir()))
    from analyzers._shared.volume import load_segmentation

    masks = load_segmentation(seg, dynamic)
    lesion_masks = [m for label, m in masks.items() if label.startswith("Dural lesion")]
    assert any((m & truth).any() for m in lesion_masks)


def test_static_series_is_unsuitable(runs: dict[str, Any], tmp_path: Path) -> None:
    first_frame = sorted((runs["dir"] / "dsc").iterdir())[:1]
    job = AnalysisInput(job_id="static", related={}, priors=(), settings=DscSettings(),
                        series=SeriesInput("s", "study", tuple(first_frame)), scratch=tmp_path)
    with pytest.raises(UnsuitableInput):
        DscAnalyzer().analyze(job)


def test_missing_site_model_is_unsuitable(runs: dict[str, Any], tmp_path: Path) -> None:
    settings = DscSettings(model=str(tmp_path / "nowhere"))
    with pytest.raises(UnsuitableInput, match="model"):
        _run(runs["dir"], settings, True, tmp_path)
