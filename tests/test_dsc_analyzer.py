"""The ``dsc`` analyzer end to end on a DSC phantom case (DICOM in, DICOM + findings out)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("analyzers.phantoms.dsc", reason="the dsc phantom generator is not installed")

from analyzers._shared import outputs as out
from analyzers._shared.modelcard import DataDescription, ModelCard, write_model_card
from analyzers._shared.probability import PROBABILITY_CARD_KEY, ProbabilityCalibration, significant
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

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
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


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    metastasis = np.column_stack([rng.lognormal(np.log(2.8), 0.45, n),
                                  rng.lognormal(np.log(3.2), 0.4, n)])
    meningioma = np.column_stack([rng.lognormal(np.log(5.5), 0.4, n),
                                  rng.lognormal(np.log(6.0), 0.35, n)])
    return np.vstack([metastasis, meningioma]), np.r_[np.ones(n, int), np.zeros(n, int)]


def _model_folder(folder: Path, *, card: bool = True, pixel_mm_max: float = 4.5) -> Path:
    """A small LDA trained on feature rows drawn like the phantom's lesions, with a model card
    whose calibration is measured on 30 + 30 other rows (as ``pacsnode train dsc`` writes it)."""
    rng = np.random.default_rng(0)
    x, y = _rows(rng, 40)
    model = replace(fit_classifier(x, y, FEATURE_SETS["reduced"]),
                    acquisition_range={"pixel_mm_max": pixel_mm_max, "slice_mm_max": 7.5,
                                       "coverage_s_min": 40.0})
    model.save(folder)
    if card:
        hx, hy = _rows(rng, 30)
        calibration = ProbabilityCalibration.measure(hy, model.probability(hx), model="test-dsc 1",
                                                     validation="60 held-out test rows",
                                                     outcome="dural metastasis")
        write_model_card(ModelCard(
            name="test-dsc", version="1", analyzer="dsc", model_description="LDA",
            intended_use="tests", validation="held-out rows",
            data=DataDescription(source="drawn rows", n_cases=80, n_patients=80, n_positive=40,
                                 positive_label="dural metastasis", negative_label="meningioma"),
            metrics=calibration.card_metrics(), references=("test",),
            extra={PROBABILITY_CARD_KEY: calibration.to_dict()}), folder)
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
    if dataset.SOPClassUID != PARAMETRIC_MAP:  # SR, SEG and the derived reference image series
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
    assert lesion["class"] in {"meningioma", "dural_metastasis"}
    # The reported probability: clipped to the validation's range, 2 significant digits.
    calibration = ProbabilityCalibration.from_dict(findings["calibration"])
    reported = lesion["probability_dural_metastasis"]
    assert calibration.lower <= reported <= calibration.upper and 0.0 < reported < 1.0
    assert reported == significant(reported)
    assert reported == calibration.reported(lesion["probability_model"])
    # The SR names the model, its validation and calibration (text and TID 4019 parameters).
    assert any(t.startswith("Probability of dural metastasis by model test-dsc 1") for t in texts)
    assert any(t.startswith("validation: 60 held-out test rows") for t in texts)  # TID 4019


def test_outputs_reference_the_derived_pre_bolus_series(runs: dict[str, Any], tmp_path: Path) -> None:
    """The pre-bolus mean is a derived 3D MR series (one instance per slice, its pixels the mean
    of the baseline time points it names) that references the dynamic frames; the maps, SEG and
    SR reference it. With ``reference_image = false`` they reference the dynamic series."""
    datasets = runs["seg"].datasets
    dynamic = load_series(sorted((runs["dir"] / "dsc").iterdir()))
    derived = [d for d in datasets if d.SOPClassUID == MR_IMAGE]
    assert len(derived) == GEOMETRY["slices"]
    derived_series = {str(d.SeriesInstanceUID) for d in derived}
    assert len(derived_series) == 1
    first, last = (int(t) for t in re.search(r"time points (\d+)-(\d+) of", derived[0].DerivationDescription).groups())
    expected = dynamic.data[first - 1:last].astype(np.float64).mean(axis=0)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in dynamic.headers[:GEOMETRY["slices"]]])
    for instance in derived:
        assert list(instance.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        here = np.array([float(v) for v in instance.ImagePositionPatient])
        k = int(np.argmin(np.linalg.norm(positions - here, axis=1)))
        assert np.linalg.norm(positions[k] - here) < 1e-3  # on a source slice
        assert np.abs(instance.pixel_array.astype(np.float64) - expected[k]).max() <= 0.5
        sources = {str(i.ReferencedSOPInstanceUID) for i in instance.SourceImageSequence}
        assert sources == {str(u) for u in dynamic.sop_instance_uids[first - 1:last, k]}
        assert str(instance.ReferencedSeriesSequence[0].SeriesInstanceUID) == dynamic.series_instance_uid
    derived_uids = {str(d.SOPInstanceUID) for d in derived}
    seg = next(d for d in datasets if d.Modality == "SEG")
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == derived_series
    pm = next(d for d in datasets if d.SOPClassUID == PARAMETRIC_MAP)
    for frame in pm.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert str(source.ReferencedSOPInstanceUID) in derived_uids

    without = _run(runs["dir"], DscSettings(model=str(runs["model"]), reference_image=False), True, tmp_path)
    assert not [d for d in without.datasets if d.SOPClassUID == MR_IMAGE]
    seg = next(d for d in without.datasets if d.Modality == "SEG")
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == {dynamic.series_instance_uid}


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


def test_model_without_validated_calibration_reports_no_probability(runs: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "uncalibrated", card=False)
    result = _run(runs["dir"], DscSettings(model=str(folder)), True, tmp_path)
    lesion = result.findings["lesions"][0]
    assert lesion["probability_dural_metastasis"] is None and lesion["class"] is None
    assert "model card" in lesion["note"]
    sr = next(d for d in result.datasets if d.Modality == "SR")
    assert not any(t.startswith("Probability of dural metastasis by model") for t in _texts(sr))
    assert any("no probability or class reported" in t for t in _texts(sr))


def test_series_outside_the_models_range_gets_no_probability(runs: dict[str, Any], tmp_path: Path) -> None:
    """A model validated on 3 mm voxels does not classify this 4 mm series (the ratios depend on it)."""
    folder = _model_folder(tmp_path / "fine", pixel_mm_max=3.0)
    result = _run(runs["dir"], DscSettings(model=str(folder)), True, tmp_path)
    lesion = result.findings["lesions"][0]
    assert lesion["probability_dural_metastasis"] is None and lesion["class"] is None
    assert "in-plane voxel 4.0 mm > 3.0 mm" in lesion["note"]
    assert result.findings["probability_withheld"] == lesion["note"].split(": ", 1)[1]


def test_small_phantom_is_rejected_or_left_unclassified(tmp_path: Path) -> None:
    """The ``--small`` phantom (32 x 32 x 4 voxels of 7.2 x 7.2 x 10 mm): with its 20 frames the
    series ends before the first pass is over, so the job is rejected with what to acquire; with 60
    frames the maps and candidates are made, but the shipped model (validated up to 4.5 mm) gives
    no probability and no class, and single noisy voxels are no longer candidates."""
    from analyzers.dsc.analyzer import REFERENCE_MODEL_DIR
    from analyzers.phantoms.cli import SMALL

    for frames in (20, 60):
        case = simulate_dsc(seed=0, case_index=0, **{**SMALL["dsc"], "time_points": frames})
        case_dir = tmp_path / f"small{frames}"
        write_case(case, case_dir)
        job = AnalysisInput(job_id=f"small{frames}", series=_series(case_dir / "dsc"), related={},
                            priors=(), settings=DscSettings(model=str(REFERENCE_MODEL_DIR)), scratch=tmp_path)
        if frames == 20:
            with pytest.raises(UnsuitableInput, match=r"after the bolus arrives.*acquire at least"):
                DscAnalyzer().analyze(job)
            continue
        findings = DscAnalyzer().analyze(job).findings
        assert findings["probability_withheld"] and "7.2 mm > 4.5 mm" in findings["probability_withheld"]
        voxel_ml = 7.2 * 7.2 * 10.0 / 1000.0
        for lesion in findings["lesions"]:
            assert lesion["class"] is None and lesion["probability_dural_metastasis"] is None
            assert lesion["volume_ml"] >= 4 * voxel_ml - 1e-6


def test_missing_site_model_is_unsuitable(runs: dict[str, Any], tmp_path: Path) -> None:
    settings = DscSettings(model=str(tmp_path / "nowhere"))
    with pytest.raises(UnsuitableInput, match="model"):
        _run(runs["dir"], settings, True, tmp_path)
