"""``pacsnode train dsc`` on a lesion CSV (the site path; the phantom path makes the reference model)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from analyzers.contract import NOT_FOR_CLINICAL_USE
from analyzers.dsc.decision import load_calibration
from analyzers.dsc.errors import DscModelError
from analyzers.dsc.model import DscClassifier
from analyzers.dsc.train import load_cohort_csv, main


def _cohort_csv(path: Path, patients: int = 40) -> Path:
    rng = np.random.default_rng(5)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "label", "rCBF_mean", "rCBV_mean"])
        for patient in range(patients):
            metastasis = patient % 2 == 1
            for _ in range(1 + int(metastasis and rng.random() < 0.4)):
                median = (2.8, 3.2) if metastasis else (5.5, 6.0)
                value = rng.lognormal(np.log(median), 0.45)
                writer.writerow([f"P{patient}", "dural_metastasis" if metastasis else "meningioma",
                                 f"{value[0]:.4f}", "" if patient == 3 else f"{value[1]:.4f}"])
    return path


def test_train_writes_model_card_and_report(tmp_path: Path) -> None:
    cohort = _cohort_csv(tmp_path / "lesions.csv")
    out = tmp_path / "model"
    status = main(["--cohort", str(cohort), "--out", str(out), "--trials", "2", "--folds", "3",
                   "--n-boot", "50", "--version", "7"])
    assert status == 0
    model = DscClassifier.load(out)
    assert model.kind == "lda" and model.features == ("rCBF_mean", "rCBV_mean")
    card = json.loads((out / "model_card.json").read_text())
    assert card["clinical_use"] == NOT_FOR_CLINICAL_USE
    assert card["version"] == "7"
    assert card["data"]["n_patients"] == 40
    names = {m["name"] for m in card["metrics"]}
    assert {"ROC-AUC", "sensitivity at threshold", "Brier score"} <= names
    auc = next(m for m in card["metrics"] if m["name"] == "ROC-AUC")
    assert auc["value"] > 0.75  # the two classes are well separated in this cohort
    assert {row["model"] for row in card["extra"]["comparison"]} >= {"lda", "logistic_l2",
                                                                      "linear_svm", "ensemble"}
    assert (out / "report.html").is_file() and (out / "report_roc.png").is_file()


def test_cohort_csv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,label\nP1,meningioma\n")
    with pytest.raises(DscModelError, match="columns"):
        load_cohort_csv(bad, ("rCBF_mean", "rCBV_mean"))
    x, y, groups = load_cohort_csv(_cohort_csv(tmp_path / "ok.csv", 6), ("rCBF_mean", "rCBV_mean"))
    assert x.shape[1] == 2 and set(y) == {0, 1} and np.isnan(x).sum() >= 1
    assert len(groups) == len(y)


def test_held_out_cohort_is_evaluated_once_with_bootstrap_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    train_csv = _cohort_csv(tmp_path / "train.csv", 30)
    held = tmp_path / "held.csv"
    with _cohort_csv(tmp_path / "other.csv", 24).open() as source, held.open("w") as target:
        # Other patients: rename P<n> to H<n>.
        for line in source:
            target.write(line.replace("P", "H", 1) if line.startswith("P") else line)
    out = tmp_path / "model"
    assert main(["--cohort", str(train_csv), "--holdout", str(held), "--out", str(out), "--trials", "2",
                 "--folds", "3", "--n-boot", "200"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    metrics = {m["name"]: m for m in card["metrics"]}
    auc = metrics["held-out: ROC-AUC"]
    assert auc["ci_lower"] <= auc["value"] <= auc["ci_upper"] and auc["ci_upper"] - auc["ci_lower"] > 0
    assert auc["value"] > 0.75
    model = DscClassifier.load(out)
    assert metrics["held-out: operating threshold"]["value"] == pytest.approx(model.threshold)
    assert "held-out test" in card["validation"]
    # The calibration the SR's probability comes from was measured on the held-out cohort.
    calibration = load_calibration(out)[0]
    held_rows = len(held.read_text().strip().splitlines()) - 1
    assert calibration is not None and calibration.n_cases == held_rows
    assert calibration.validation.startswith("held-out site cohort held.csv")
    assert 0.0 < calibration.lower <= calibration.upper < 1.0 and calibration.brier < 0.25
    assert metrics["reported probability: Brier score"]["value"] == pytest.approx(calibration.brier)
    assert DscClassifier.load(out).acquisition_range == {}  # a site cohort's acquisitions are unknown
    printed = capsys.readouterr().out
    assert f"ROC-AUC {auc['value']:.3f} (95% CI" in printed
    # A held-out cohort that shares patients with the training cohort is refused.
    with pytest.raises(DscModelError, match="also in the training cohort"):
        main(["--cohort", str(train_csv), "--holdout", str(train_csv), "--out", str(tmp_path / "m2"),
              "--trials", "2", "--folds", "3", "--n-boot", "20"])
