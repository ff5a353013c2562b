"""The meningioma analyzer end to end: training a small model, model folder, DICOM outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom import Dataset

from analyzers._shared import outputs as out
from analyzers._shared.volume import load_series
from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput, Analyzer, SeriesInput
from analyzers.meningioma.analyzer import REFERENCE_MODEL_FOLDER, MeningiomaAnalyzer, MeningiomaSettings
from analyzers.meningioma.deep_features import BackboneConfig, FineTuneConfig
from analyzers.meningioma.model import MODEL_CARD_FILE, NOMOGRAM_FIGURE, MeningiomaModel
from analyzers.meningioma.preprocessing import N4Settings
from analyzers.meningioma.radiomics_features import RadiomicsSettings
from analyzers.meningioma.train import TrainingCase, extract_training_features, fit_models
from bench.meningioma_case import synthetic_case
from sr_templates.meningioma import TEMPLATE


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A small model: 10 synthetic cases, original-image features on a 2 mm grid,
    a width-reduced ResNet (same 2,048 pooled features), one epoch of fine-tuning.

    No ICC subset here: on a 2 mm grid the 1 mm ROI perturbation is a whole voxel
    and removes every radiomics feature of these tiny ROIs; the stability filter
    is tested in test_meningioma_features.py.
    """
    torch.set_num_threads(1)
    cases = []
    for seed in range(10):
        case = synthetic_case(
            seed, high_grade=bool(seed % 2), shape=(14, 64, 64), spacing_mm=(4.0, 2.0, 2.0), head_scale=0.45
        )
        cases.append(TrainingCase(case.image, case.mask, {"PatientSex": case.sex}, case.high_grade, str(seed)))
    settings = RadiomicsSettings.from_file().with_settings(resampledPixelSpacing=[2, 2, 2])
    settings = settings.with_image_types({"Original": {}})
    features = extract_training_features(
        cases, settings=settings, icc_cases=0, n4=N4Settings(shrink_factor=2, iterations=(10,))
    )
    folder = tmp_path_factory.mktemp("men-model")
    result = fit_models(
        features,
        folder,
        backbone=BackboneConfig(layers=(1, 1, 1, 1), width_per_group=4),
        fine_tune_config=FineTuneConfig(epochs=1, batch_size=5),
        provenance={"data": "10 synthetic cases (test)"},
    )
    return folder, result


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    t1c = pytest.importorskip("analyzers.phantoms.t1c", reason="t1c phantom not installed")
    root = t1c.generate_t1c(
        tmp_path_factory.mktemp("t1c"), seed=5, cases=1, progress=False,
        matrix=80, slices=40, pixel_mm=2.2, slice_mm=3.5,
    )
    return tuple(sorted((root / "case-0001" / "t1c").glob("*.dcm")))


def _job(files: tuple[Path, ...], tmp_path: Path, settings: MeningiomaSettings, related=None) -> AnalysisInput:
    return AnalysisInput(
        job_id="job-men-1",
        series=SeriesInput("1.2.3", "1.2.4", files, {"SeriesDescription": "T1 POST"}),
        related=related or {},
        priors=(),
        settings=settings,
        scratch=tmp_path,
    )


def _texts(dataset: Dataset) -> list[str]:
    """Every TextValue and CodeMeaning in an SR content tree."""
    found = []
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_texts(item))
        elif element.keyword in {"TextValue", "CodeMeaning"}:
            found.append(str(element.value))
    return found


def test_analyzer_implements_the_contract() -> None:
    analyzer = MeningiomaAnalyzer()
    assert isinstance(analyzer, Analyzer)
    assert analyzer.name == "meningioma"
    assert dict(analyzer.needs) == {"roi": "seg?"}
    assert analyzer.settings_model is MeningiomaSettings


def test_training_writes_a_loadable_model_folder(trained: tuple[Path, object]) -> None:
    folder, result = trained
    for name in ("model.json", "dtl_resnet50.pt", NOMOGRAM_FIGURE, MODEL_CARD_FILE):
        assert (folder / name).is_file(), name
    model = MeningiomaModel.load(folder)
    assert model.rad_score == result.model.rad_score
    assert model.nomogram == result.model.nomogram
    assert len(model.nomogram.predictors) == 6
    assert model.rad_score.report.selected >= 1 and model.dtl_score.report.selected >= 1
    assert model.rad_score.report.stable <= model.rad_score.report.non_constant
    card = (folder / MODEL_CARD_FILE).read_text()
    assert NOT_FOR_CLINICAL_USE in card and "random initialisation" in card
    with open(folder / NOMOGRAM_FIGURE, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    for probabilities in result.training_probabilities.values():
        assert probabilities.shape == (10,)
        assert np.all((probabilities >= 0) & (probabilities <= 1))


@pytest.mark.skipif(not (REFERENCE_MODEL_FOLDER / "detection.json").is_file(), reason="no detection model committed")
def test_end_to_end_on_a_t1c_phantom_with_automatic_roi(
    trained: tuple[Path, object], phantom_series, tmp_path: Path
) -> None:
    folder, _ = trained
    # The small grade model borrows the reference model's detection stage (trained on t1c phantoms).
    shutil.copy(REFERENCE_MODEL_FOLDER / "detection.json", folder / "detection.json")
    files = phantom_series
    result = MeningiomaAnalyzer().analyze(_job(files, tmp_path, MeningiomaSettings(model_folder=str(folder))))
    modalities = sorted(ds.Modality for ds in result.datasets)
    assert modalities == ["SEG", "SR"]
    findings = result.findings
    json.dumps(findings)  # JSON-able
    assert findings["notice"] == NOT_FOR_CLINICAL_USE
    assert findings["roi_source"] == "automatic segmentation" and findings["meningioma_found"] is True
    assert findings["radiomics_feature_count"] == 1130
    grade = findings["grade"]
    assert 0.0 <= grade["probability_high_grade"] <= 1.0
    assert grade["predicted_class"] in {"WHO grade 1", "WHO grade 2/3"}
    assert set(findings["rad_score_features"]) == set(MeningiomaModel.load(folder).rad_score.names)
    sr = next(ds for ds in result.datasets if ds.Modality == "SR")
    text = " ".join(_texts(sr))
    assert "NOT FOR CLINICAL USE" in text
    for meaning in ("Peritumoral edema", "Tumour shape", "Indistinct margin", "Deep transfer learning score"):
        assert meaning in text, (meaning, text)
    assert sr.StudyInstanceUID == load_series(files).study_instance_uid
    # The features the rad-score uses are reported by name.
    for name in MeningiomaModel.load(folder).rad_score.names:
        assert name[:64] in text


def test_seg_in_the_study_is_used_and_no_model_gives_no_probability(
    phantom_series, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = phantom_series
    # No reference model installed: the analyzer still reports volume and clinical signs.
    monkeypatch.setattr("analyzers.meningioma.analyzer.REFERENCE_MODEL_FOLDER", tmp_path / "none")
    volume = load_series(files)
    # A SEG of the study: the tumour segmented once, stored as DICOM SEG.
    from analyzers.meningioma.preprocessing import n4_bias_correction
    from analyzers.meningioma.segmentation import segment_enhancing_mass

    corrected, _ = n4_bias_correction(volume.to_sitk())
    mask = sitk.GetArrayFromImage(segment_enhancing_mass(corrected)).astype(bool)
    seg = out.build_segmentation(
        volume, [out.Segment(TEMPLATE.segment_classes["tumour"], mask)], out.Algorithm("reader", "1")
    )
    seg_file = tmp_path / "seg.dcm"
    seg.save_as(seg_file)
    related = {"roi": [SeriesInput(str(seg.SeriesInstanceUID), volume.study_instance_uid, (seg_file,))]}
    settings = MeningiomaSettings(model_folder=None)
    result = MeningiomaAnalyzer().analyze(_job(files, tmp_path, settings, related))
    assert [ds.Modality for ds in result.datasets] == ["SR"]
    assert result.findings["roi_source"] == "SEG of the study"
    assert result.findings["grade"] is None
    assert "no model installed" in result.findings["model"]
    expected_ml = mask.sum() * np.prod(volume.spacing) / 1000.0
    assert result.findings["tumour_volume_ml"] == pytest.approx(expected_ml, rel=1e-3)
