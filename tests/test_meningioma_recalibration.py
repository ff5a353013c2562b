"""``pacsnode train meningioma --recalibrate-on``: the recalibration a model folder stores and reports.

The cohorts' nomogram probabilities are drawn here (an over-confident score of
known calibration slope 0.25) so the test needs no image processing; the model
folder is a copy of the reference model's JSON files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from analyzers._shared.modelcard import load_model_card
from analyzers._shared.probability import ProbabilityCalibration
from analyzers.meningioma.analyzer import REFERENCE_MODEL_FOLDER, _grade_calibration
from analyzers.meningioma.model import MeningiomaModel
from analyzers.meningioma.recalibrate import CohortPredictions, predict_cohort, recalibrate, write_recalibration
from analyzers.meningioma.trainer import main

pytestmark = pytest.mark.skipif(not (REFERENCE_MODEL_FOLDER / "model_card.json").is_file(),
                                reason="no reference model committed")


def _cohort(name: str, n: int, seed: int) -> CohortPredictions:
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 2.0, n)
    high_grade = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    over_confident = 1.0 / (1.0 + np.exp(-4.0 * logit))  # the true probability's logit times 4
    return CohortPredictions(name, tuple(f"case-{i:04d}" for i in range(n)), high_grade, over_confident)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ("model.json", "model_card.json", "evaluation.json"):
        shutil.copy(REFERENCE_MODEL_FOLDER / name, tmp_path / name)
    return tmp_path


def test_recalibration_fitted_on_a_cohort_is_what_the_folder_then_holds(folder: Path) -> None:
    model = MeningiomaModel.load(folder)
    major, _, minor = str(model.provenance["version"]).partition(".")
    bumped = [f"{major}.{int(minor or 0) + step}" for step in (1, 2)]
    calibration, test = _cohort("cal.csv", 300, 1), _cohort("test.csv", 300, 2)
    result = recalibrate(model, calibration, test, operating_threshold=0.8)
    assert result.recalibration.b == pytest.approx(0.25, abs=0.07)  # undoes the factor 4
    record = result.calibration
    assert record.validation == ("external test cohort test.csv (300 meningiomas, 140 WHO grade 2/3; ROIs: tumour "
                                 "SEG or automatic segmentation)") and record.n_cases == 300
    assert record.slope is not None and 0.7 < record.slope < 1.4
    assert result.slope_ci is not None and result.slope_ci[0] < record.slope < result.slope_ci[1]
    write_recalibration(folder, result, calibration, test)

    stored = MeningiomaModel.load(folder)
    assert stored.recalibration == result.recalibration
    assert stored.provenance["version"] == bumped[0] and result.model_identity == stored.identity
    predictors = np.array([1.0, 0.0, 1.0, 0.0, 0.3, 0.4])
    raw = stored.nomogram.probability(predictors)
    assert stored.probability(predictors) == pytest.approx(float(result.recalibration(np.array([raw]))[0]))
    card = load_model_card(folder / "model_card.json")
    assert ProbabilityCalibration.from_model_card(card) == record
    assert card.extra["recalibration"]["operating_threshold"] == pytest.approx(result.operating_threshold)
    assert card.version == bumped[0] and "fitted on the final model's predictions" in card.validation
    slope_row = next(m for m in card.metrics if m.name == "external test, reported grade probability: "
                     "calibration slope")
    assert slope_row.value == record.slope and slope_row.ci_lower == result.slope_ci[0]
    assert not any(m.name == "external test, nomogram: Brier score" for m in card.metrics)  # superseded scale
    printed = next(m for m in card.metrics if m.name == "external test, printed grade probability: Brier score")
    assert printed.value == pytest.approx(result.printed[2]) and 0.0 < printed.value < 0.25
    # The analyzer reads the record back and names the calibration cohort in the SR.
    read_back = _grade_calibration(folder)
    assert read_back == record
    assert "recalibrated on the final model's predictions on calibration cohort cal.csv (300 meningiomas" \
        in read_back.statement()
    assert any(p.startswith("recalibrated on: ") for p in read_back.algorithm_parameters())
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert len(evaluation["recalibration"]["calibration_cohort"]["cases"]) == 300
    assert evaluation["grade_calibration"] == record.to_dict()
    # A second recalibration replaces the rows of the first.
    again = recalibrate(stored, calibration, test, operating_threshold=result.operating_threshold)
    write_recalibration(folder, again, calibration, test)
    assert MeningiomaModel.load(folder).provenance["version"] == bumped[1]
    assert load_model_card(folder / "model_card.json").metrics == card.metrics
    assert (folder / "report_recalibration.html").is_file() and (folder / "report_recalibration_calibration.png")\
        .is_file()


def test_without_a_test_cohort_calibration_is_measured_out_of_fold(folder: Path) -> None:
    result = recalibrate(MeningiomaModel.load(folder), _cohort("cal.csv", 200, 3), None, operating_threshold=0.8)
    assert result.calibration.validation.startswith("out-of-fold")
    assert result.calibration.n_cases == 200
    assert result.calibration.slope is not None and 0.6 < result.calibration.slope < 1.6


def test_recalibrate_on_needs_the_model_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--recalibrate-on", "cal.csv"])
    assert "--model-folder" in capsys.readouterr().err


def test_cohorts_with_rois_of_different_sources_are_not_pooled() -> None:
    detected = CohortPredictions("a.csv", ("case-1",), np.array([1]), np.array([0.7]), roi="detected",
                                 not_graded=("case-2 (not detected)",))
    truth = CohortPredictions("b.csv", ("case-1",), np.array([0]), np.array([0.2]), roi="truth")
    with pytest.raises(ValueError, match="different sources"):
        CohortPredictions.pooled([detected, truth])
    pooled = CohortPredictions.pooled([detected, replace(detected, labels_csv="c.csv")])
    assert pooled.roi == "detected" and pooled.not_graded == ("a.csv:case-2 (not detected)",
                                                              "c.csv:case-2 (not detected)")
    assert "1 not graded" not in pooled.describe() and "2 not graded: not detected" in pooled.describe()
    assert pooled.to_dict()["not_graded"] == list(pooled.not_graded)


def test_training_takes_one_test_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--labels", "train.csv", "--out", "model", "--test-labels", "a.csv", "--test-labels", "b.csv"])
    assert "one --test-labels cohort" in capsys.readouterr().err


def test_an_unknown_roi_source_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="not one of training, truth, detected"):
        predict_cohort(folder, folder / "labels.csv", roi="manual")
