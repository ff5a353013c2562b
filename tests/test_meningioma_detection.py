"""Meningioma detection: phantoms without meningioma, candidates, the detection model, "nothing found" SRs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput, SeriesInput, UnsuitableInput
from analyzers.meningioma.analyzer import REFERENCE_MODEL_FOLDER, MeningiomaAnalyzer, MeningiomaSettings
from analyzers.meningioma.candidates import (
    CANDIDATE_FEATURES,
    find_candidates,
    intracranial_space,
    white_matter_level,
)
from analyzers.meningioma.detection import (
    CaseCandidates,
    DetectionModel,
    fit_detection,
    label_candidates,
)
from analyzers.meningioma.preprocessing import N4Settings, n4_bias_correction
from analyzers.phantoms.mimics import MIMIC_CODES
from analyzers.phantoms.model import PhantomError
from analyzers.phantoms.t1c import T1C_NEGATIVE_LABELS, generate_t1c, simulate_t1c
from sr_templates import codes as c

SMALL = {"matrix": 64, "slices": 24, "pixel_mm": 3.0, "slice_mm": 6.0}
#: The reference model's training grid.
REFERENCE_GRID = {"matrix": 96, "slices": 48, "pixel_mm": 2.0, "slice_mm": 3.0}
HAS_REFERENCE_DETECTION = (REFERENCE_MODEL_FOLDER / "detection.json").is_file()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def test_phantoms_without_meningioma_carry_other_enhancing_structures() -> None:
    for label in T1C_NEGATIVE_LABELS:
        case = simulate_t1c(3, 0, label=label, **SMALL)
        maps = case.truth_maps
        assert not case.truth["meningioma"] and case.label_rows[0]["meningioma"] == 0
        assert not maps["tumour_mask"].any() and case.truth["lesions"] == []
        codes = set(np.unique(maps["mimic_labels"]).tolist())
        assert {MIMIC_CODES["vessel"], MIMIC_CODES["choroid_plexus"]} <= codes, (label, codes)
        expected = {"healthy": None, "metastases": "metastasis", "glioma": "glioma"}[label]
        if expected is not None:
            assert MIMIC_CODES[expected] in codes
            assert {lesion["kind"] for lesion in case.truth["other_lesions"]} == {expected}
    # The sinuses enhance: brighter than white matter on the image.
    case = simulate_t1c(3, 1, label="healthy", snr=None, **SMALL)
    image = case.series[0].pixels[0] / case.truth_maps["bias_field"]
    white = (case.truth_maps["tissue_labels"] == 3) & (case.truth_maps["mimic_labels"] == 0)
    vessels = case.truth_maps["mimic_labels"] == MIMIC_CODES["vessel"]
    assert np.median(image[vessels]) > 1.2 * np.median(image[white])


def test_mixed_cohorts_and_label_checks(tmp_path: Path) -> None:
    labels = [simulate_t1c(8, k, meningioma_fraction=0.5, **SMALL).truth["label"] for k in range(8)]
    assert {"grade1", "grade2_3"} & set(labels) and set(T1C_NEGATIVE_LABELS) & set(labels), labels
    assert all(simulate_t1c(8, k, meningioma_fraction=0.0, **SMALL).truth["label"] in T1C_NEGATIVE_LABELS
               for k in range(3))
    # Cohorts of meningiomas keep their labels: the extra draw happens only for mixed cohorts.
    assert simulate_t1c(8, 0, **SMALL).truth["label"] == simulate_t1c(8, 0, meningioma_fraction=1.0, **SMALL).truth[
        "label"]
    with pytest.raises(PhantomError, match="label must be one of"):
        simulate_t1c(8, 0, label="schwannoma", **SMALL)
    root = generate_t1c(tmp_path, seed=4, cases=1, progress=False, label="glioma", **SMALL)
    row = (root / "labels.csv").read_text().splitlines()
    assert row[0].split(",")[3] == "meningioma" and row[1].split(",")[3] == "0"


def test_white_matter_is_the_brightest_large_tissue_peak() -> None:
    rng = np.random.default_rng(1)
    csf, grey, edema, white = (rng.normal(m, 25, n) for m, n in ((180, 3000), (620, 6000), (800, 5000), (1000, 4000)))
    # Edema (0.8 of white matter) outnumbers white matter here; the peak is still white matter.
    assert white_matter_level(np.concatenate([csf, grey, edema, white])) == pytest.approx(1000, abs=30)


def _candidates(label: str, seed: int) -> tuple[list, np.ndarray]:
    case = simulate_t1c(seed, 0, label=label, **SMALL)
    series = case.series[0]
    image = sitk.GetImageFromArray(series.pixels[0].astype(np.float32))
    dz, dy, dx = series.grid.spacing
    image.SetSpacing((dx, dy, dz))
    corrected, _ = n4_bias_correction(image, N4Settings(shrink_factor=2, iterations=(20,)))
    # The phantom's true brain stands in for the registered MNI152 brain the analyzer uses.
    brain = case.truth_maps["tissue_labels"] > 0
    return find_candidates(corrected, intracranial_space(corrected, brain)), case.truth_maps["tumour_mask"] > 0


def test_candidates_find_the_meningioma_and_measure_it() -> None:
    candidates, truth = _candidates("grade2_3", 6)
    labels = label_candidates(candidates, truth)
    assert 1 in labels.tolist()
    meningioma = candidates[labels.tolist().index(1)]
    assert set(meningioma.features) == set(CANDIDATE_FEATURES)
    assert meningioma.features["boundary_distance_min_mm"] <= 0.0  # it reaches the dura
    assert 1.15 < meningioma.features["enhancement_ratio"] < 1.8  # against the series' own white matter
    # A healthy brain's enhancing sinuses and choroid plexus give no candidate that overlaps a tumour.
    healthy, none = _candidates("healthy", 6)
    assert not none.any() and set(label_candidates(healthy, none).tolist()) <= {0}


def _synthetic_cases(n: int, seed: int) -> list[CaseCandidates]:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        positive = k % 2 == 0
        rows, labels = [], []
        if positive:
            rows.append(rng.normal(1.0, 0.4, len(CANDIDATE_FEATURES)))
            labels.append(1)
        for _ in range(int(rng.integers(0, 3))):
            rows.append(rng.normal(-1.0, 0.4, len(CANDIDATE_FEATURES)))
            labels.append(0)
        cases.append(CaseCandidates(f"c{k}", positive, np.array(rows).reshape(-1, len(CANDIDATE_FEATURES)),
                                    np.array(labels, dtype=int)))
    return cases


def test_detection_model_fits_decides_and_round_trips(tmp_path: Path) -> None:
    cases = _synthetic_cases(40, 2)
    model, oof, score = fit_detection(cases, target_sensitivity=0.95)
    y = np.array([c.has_meningioma for c in cases])
    assert oof.shape == score.shape == (40,) and np.all((oof >= 0) & (oof <= 1))
    assert ((score >= model.score_threshold) & y).sum() >= 0.95 * y.sum()
    # Separated classes: the threshold sits in the gap between them, no negative above it.
    assert ((score >= model.score_threshold) & ~y).sum() == 0
    without = [c for c in cases if len(c.labels) == 0]
    # No candidate at all: the rule-of-succession rate of meningiomas among such training cases.
    assert model.no_candidate_probability == pytest.approx(
        (sum(c.has_meningioma for c in without) + 1) / (len(without) + 2))
    assert model.detect([]).found is False
    model.save(tmp_path)
    assert DetectionModel.load(tmp_path) == model
    json.loads((tmp_path / "detection.json").read_text())
    (tmp_path / "detection.json").unlink()
    with pytest.raises(Exception, match="retrain"):
        DetectionModel.load(tmp_path)
    with pytest.raises(ValueError, match="with and without meningioma"):
        fit_detection([c for c in cases if c.has_meningioma])


def _job(files: tuple[Path, ...], tmp_path: Path, settings: MeningiomaSettings) -> AnalysisInput:
    return AnalysisInput(job_id="job-nothing", series=SeriesInput("1.2.3", "1.2.4", files, {}), related={},
                         priors=(), settings=settings, scratch=tmp_path)


def _container(sr: pydicom.Dataset) -> tuple[list[tuple[str, str]], list[str]]:
    items = sr.ContentSequence[-1].ContentSequence
    coded = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"]
    return coded, [str(i.TextValue) for i in items if i.ValueType == "TEXT"]


@pytest.mark.skipif(not HAS_REFERENCE_DETECTION, reason="the reference model has no detection stage")
@pytest.mark.parametrize("label", ["healthy", "glioma"])
def test_reference_model_reports_nothing_found_on_brains_without_meningioma(label: str, tmp_path: Path) -> None:
    root = generate_t1c(tmp_path, seed=900, cases=1, progress=False, label=label, **REFERENCE_GRID)
    files = tuple(sorted((root / "case-0001" / "t1c").glob("*.dcm")))
    result = MeningiomaAnalyzer().analyze(_job(files, tmp_path, MeningiomaSettings(threads=1)))
    assert [ds.Modality for ds in result.datasets] == ["SR"]  # no SEG, no grade
    findings = result.findings
    assert findings["meningioma_found"] is False and findings["grade"] is None
    probability = findings["detection"]["probability"]
    assert probability < findings["detection"]["threshold"]
    sr = result.datasets[0]
    coded, texts = _container(sr)
    assert coded == [(c.MENINGIOMA.value, c.ABSENT.value)]
    assert "No meningioma found." in texts and NOT_FOR_CLINICAL_USE in texts
    assert any("calibrated and validated on" in t for t in texts)
    study = [m for g in sr.ContentSequence if g.get("ValueType") == "CONTAINER"
             for m in g.get("ContentSequence", []) if m.get("ValueType") == "CONTAINER"]
    values = [float(i.MeasuredValueSequence[0].NumericValue) for g in study for i in g.get("ContentSequence", [])
              if i.get("ValueType") == "NUM"]
    assert len(values) == 1 and 0.0 < values[0] < 100.0


def test_without_a_detection_stage_the_analyzer_does_not_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = generate_t1c(tmp_path, seed=901, cases=1, progress=False, label="healthy", **SMALL)
    files = tuple(sorted((root / "case-0001" / "t1c").glob("*.dcm")))
    monkeypatch.setattr("analyzers.meningioma.analyzer.REFERENCE_MODEL_FOLDER", tmp_path / "none")
    with pytest.raises(UnsuitableInput, match="no tumour SEG in the study and no meningioma detection model"):
        MeningiomaAnalyzer().analyze(_job(files, tmp_path, MeningiomaSettings()))
    with pytest.raises(UnsuitableInput, match="meningioma model cannot be loaded"):
        MeningiomaAnalyzer().analyze(_job(files, tmp_path, MeningiomaSettings(model_folder=str(tmp_path / "empty"))))


@pytest.mark.skipif(not HAS_REFERENCE_DETECTION, reason="the reference model has no detection stage")
def test_evaluate_command_scores_the_detection_stage_on_labelled_series(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsnode evaluate meningioma``: one series with and one without meningioma, the analyzer's
    own path, sensitivity and specificity with exact CIs printed and written."""
    from analyzers.meningioma.evaluate import main as evaluate

    with_tumour = generate_t1c(tmp_path / "a", seed=901, cases=1, progress=False, label="grade1", **REFERENCE_GRID)
    without = generate_t1c(tmp_path / "b", seed=902, cases=1, progress=False, label="healthy", **REFERENCE_GRID)
    out = tmp_path / "evaluation.json"
    assert evaluate(["--labels", str(with_tumour / "labels.csv"), "--labels", str(without / "labels.csv"),
                     "--processes", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["true_positives"] + report["false_negatives"] == 1
    assert report["true_negatives"] + report["false_positives"] == 1
    assert len(report["errors"]) == report["false_negatives"] + report["false_positives"]
    assert {e["label"] for e in report["errors"]} <= {"grade1", "healthy"}
    found, kept = report["true_positives"], report["true_negatives"]
    # Exact (Clopper-Pearson) 95 % CI of 1/1 is 0.025-1, of 0/1 0-0.975.
    assert report["sensitivity_ci95"] == pytest.approx([0.025, 1.0] if found else [0.0, 0.975], abs=1e-3)
    printed = capsys.readouterr().out
    assert f"sensitivity {found:.3f} (95 % CI {0.025 if found else 0.0:.3f}-{1.0 if found else 0.975:.3f}), " \
           f"{found}/1 meningiomas found" in printed
    assert f"specificity {kept:.3f}" in printed and f"{kept}/1 series without meningioma" in printed
    with pytest.raises(SystemExit):
        evaluate(["--labels", str(tmp_path / "missing.csv")])
    assert "labels CSV not found" in capsys.readouterr().err


def test_detection_training_turns_series_and_truth_to_the_analyzers_axes(tmp_path: Path) -> None:
    """Training labels candidates where the analyzer finds them: a decubitus copy of a case (its
    axial images turned by 90 degrees, the phantom's truth kept on the original grid) gives the same
    candidates, with the meningioma labelled, as the supine case."""
    from analyzers.meningioma.train_detection import load_detection_cases

    cases = {}
    for position in ("HFS", "HFDL"):
        root = generate_t1c(tmp_path / position, seed=903, cases=1, progress=False, label="grade1",
                            patient_position=position, **REFERENCE_GRID)
        [cases[position]], _ = load_detection_cases(root / "labels.csv")
    supine, decubitus = cases["HFS"], cases["HFDL"]
    assert int((supine.labels == 1).sum()) == 1 and int((decubitus.labels == 1).sum()) == 1, \
        (supine.labels, decubitus.labels)
    np.testing.assert_allclose(decubitus.features[decubitus.labels == 1], supine.features[supine.labels == 1],
                               rtol=0.05, atol=0.05)
