"""Dural metastasis vs meningioma classifier of the ``dsc`` analyzer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analyzers.dsc.errors import DscModelError
from analyzers.dsc.model import (
    FEATURE_SETS,
    MODEL_FILE,
    DscClassifier,
    build_pipeline,
    fit_classifier,
    sensitivity_threshold,
)


def _cohort(seed: int = 0, patients: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion rows like the study's: meningiomas with higher rCBF/rCBV, some patients with 2 lesions."""
    rng = np.random.default_rng(seed)
    rows, labels, groups = [], [], []
    for patient in range(patients):
        label = patient % 2
        for _ in range(1 + int(label == 1 and rng.random() < 0.4)):
            median = (2.8, 3.2) if label == 1 else (5.5, 6.0)
            rows.append(rng.lognormal(np.log(median), 0.45))
            labels.append(label)
            groups.append(patient)
    return np.array(rows), np.array(labels), np.array(groups)


@pytest.mark.parametrize("kind", ["lda", "logistic", "linear_svm"])
def test_linear_form_reproduces_the_sklearn_pipeline(kind: str) -> None:
    x, y, groups = _cohort()
    model = fit_classifier(x, y, kind=kind, groups=groups)  # type: ignore[arg-type]
    reference = build_pipeline(kind, 1.0, 0).fit(x, y)  # type: ignore[arg-type]
    np.testing.assert_allclose(model.probability(x), reference.predict_proba(x)[:, 1], atol=1e-9)
    # Metastases (label 1) have lower perfusion: higher probability at lower rCBF/rCBV.
    low, high = model.probability(np.array([[2.0, 2.0], [8.0, 8.0]]))
    assert low > 0.5 > high


def test_threshold_meets_the_sensitivity_target_out_of_fold() -> None:
    x, y, groups = _cohort(seed=1, patients=60)
    model = fit_classifier(x, y, groups=groups, target_sensitivity=0.85)
    assert model.training_sensitivity >= 0.85
    assert 0.0 < model.threshold < 1.0
    # On the training fit itself the threshold keeps at least the target sensitivity too.
    called = model.predict(x)
    assert called[y == 1].mean() >= 0.8


def test_sensitivity_threshold_is_the_highest_meeting_the_target() -> None:
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.1, 0.3, 0.2, 0.05, 0.5])
    threshold, sensitivity, specificity = sensitivity_threshold(y, p, 0.85)
    assert threshold == pytest.approx(0.4)  # 9 of 10 metastases at or above it
    assert sensitivity == pytest.approx(0.9)
    assert specificity == pytest.approx(0.75)


def test_json_round_trip_and_missing_values(tmp_path: Path) -> None:
    x, y, groups = _cohort(seed=2)
    extended = np.column_stack([
        x, np.full(len(y), np.nan), np.ones(len(y)), np.ones(len(y)), np.zeros(len(y)),
        (groups % 3 == 0).astype(float),
    ])
    model = fit_classifier(extended, y, FEATURE_SETS["extended"], kind="logistic", groups=groups)
    path = model.save(tmp_path)
    assert path.name == MODEL_FILE
    data = json.loads(path.read_text())
    assert data["features"] == list(FEATURE_SETS["extended"])
    loaded = DscClassifier.load(tmp_path)
    np.testing.assert_allclose(loaded.probability(extended), model.probability(extended))
    # A missing ADC (no ADC series) is imputed with the training median.
    row = loaded.matrix([{"rCBF_mean": 3.0, "rCBV_mean": 3.5, "rWiT": 1.0, "rPSR": 1.0,
                          "washout_slope": 0.0, "sex_female": True}])
    assert np.isnan(row[0, 2]) and row[0, 6] == 1.0
    assert np.isfinite(loaded.probability(row)).all()


def test_invalid_models_are_rejected(tmp_path: Path) -> None:
    x, y, _ = _cohort()
    with pytest.raises(DscModelError):
        fit_classifier(x, np.zeros(len(y), int))
    with pytest.raises(DscModelError):
        fit_classifier(x, y, kind="forest")  # type: ignore[arg-type]
    with pytest.raises(DscModelError, match=r"no model\.json"):
        DscClassifier.load(tmp_path)
    (tmp_path / MODEL_FILE).write_text(json.dumps({"schema": "other"}))
    with pytest.raises(DscModelError, match="schema"):
        DscClassifier.load(tmp_path)
