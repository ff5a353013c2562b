"""Tests of the model card and HTML report writers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from analyzers._shared.modelcard import (
    CardMetric,
    DataDescription,
    ModelCard,
    ModelCardError,
    load_model_card,
    metrics_from_evaluation,
    write_model_card,
)
from analyzers._shared.report import write_report
from analyzers._shared.stats import (
    CVScheme,
    delong_pairwise,
    evaluate_predictions,
    lda_factory,
    nested_cross_validate,
    univariate_aucs,
)
from analyzers.contract import NOT_FOR_CLINICAL_USE


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange(40), rng.integers(1, 3, 40))
    y = (np.arange(40) % 3 == 0).astype(int)[pid]
    x = rng.normal(size=y.size) + 1.5 * y
    p_a = 1 / (1 + np.exp(-(x - 1)))
    p_b = 1 / (1 + np.exp(-(0.5 * x + rng.normal(size=y.size) - 0.5)))
    return y, pid, p_a, p_b


def _card(**changes: object) -> ModelCard:
    fields: dict[str, object] = {
        "name": "dsc-dural-lda",
        "version": "1.0.0",
        "analyzer": "dsc",
        "model_description": "LDA on (rCBF_mean, rCBV_mean), median imputation, standardisation.",
        "intended_use": "Research: dural metastasis vs meningioma on DSC perfusion.",
        "data": DataDescription(
            source="phantom cohort, seed 0",
            n_cases=60,
            n_patients=50,
            n_positive=20,
            positive_label="dural metastasis",
            negative_label="meningioma",
            features=("rCBF_mean", "rCBV_mean"),
        ),
        "validation": "nested CV, outer 5-fold GroupKFold by patient, inner 5-fold, 25 Optuna trials",
        "metrics": (CardMetric("ROC-AUC", 0.9, 0.85, 0.95, 0.95), CardMetric("PPV", float("nan"))),
        "references": ("dsc-dural-metastasis-vs-meningioma (2.5, ML analysis)",),
        "limitations": ("trained on phantoms only",),
        "created": "2026-01-01",
        "extra": {"threshold": 0.31},
    }
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_card_round_trips_and_always_says_not_for_clinical_use(tmp_path: Path) -> None:
    card = _card()
    paths = write_model_card(card, tmp_path / "model")
    md = paths.markdown.read_text(encoding="utf-8")
    raw = json.loads(paths.json.read_text(encoding="utf-8"))
    assert md.count(NOT_FOR_CLINICAL_USE) == 2  # top and bottom
    assert raw["clinical_use"] == NOT_FOR_CLINICAL_USE
    assert "| ROC-AUC | 0.900 (95% CI 0.850-0.950) |" in md
    assert "| PPV | n/a |" in md
    assert raw["data"]["n_negative"] == 40
    assert load_model_card(paths.json) == card


def test_card_refuses_incomplete_or_inconsistent_content(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="paper or standard"):
        _card(references=())
    with pytest.raises(ModelCardError, match="at least one"):
        _card(metrics=())
    with pytest.raises(ModelCardError, match="infinite"):
        CardMetric("AUC", float("inf"))
    with pytest.raises(ModelCardError, match="both CI bounds"):
        CardMetric("AUC", 0.9, 0.8, None, 0.95)
    with pytest.raises(ModelCardError, match="n_patients"):
        DataDescription("x", n_cases=3, n_patients=5, n_positive=1, positive_label="a", negative_label="b")
    path = write_model_card(_card(), tmp_path).json
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["clinical_use"] = "fine for clinical use"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ModelCardError, match="not-for-clinical-use"):
        load_model_card(path)


def test_metrics_from_evaluation(predictions: tuple[np.ndarray, ...]) -> None:
    y, pid, p_a, _ = predictions
    ev = evaluate_predictions(y, p_a, pid, n_boot=100)
    metrics = {m.name: m for m in metrics_from_evaluation(ev, prefix="OOF ")}
    assert metrics["OOF ROC-AUC"].value == pytest.approx(ev.auc.estimate)
    assert metrics["OOF ROC-AUC"].ci_lower == pytest.approx(ev.auc.lower)
    assert metrics["OOF sensitivity at threshold"].value >= 0.85  # type: ignore[operator]
    assert "OOF Hosmer-Lemeshow p" in metrics and "OOF calibration slope" in metrics


def test_report_is_self_contained_html_with_three_plots(tmp_path: Path, predictions: tuple[np.ndarray, ...]) -> None:
    y, pid, p_a, p_b = predictions
    evs = {
        "model A": evaluate_predictions(y, p_a, pid, n_boot=100),
        "model <B>": evaluate_predictions(y, p_b, pid, n_boot=100),
    }
    cv = nested_cross_validate(
        np.column_stack([p_a, p_b]), y, pid, lda_factory, outer=CVScheme.group_kfold(3), inner_splits=2, n_trials=2
    )
    uni = univariate_aucs(np.column_stack([p_a, -p_b]), y, ["rCBV_mean", "rCBF_mean"], pid, n_boot=50)
    paths = write_report(
        tmp_path / "report",
        title="dsc training report",
        evaluations=evs,
        comparison_table=[{"model": "model A", "auc": 0.9}],
        delong=delong_pairwise(y, {"model A": p_a, "model <B>": p_b}),
        cv_results={"lda": cv},
        univariate=uni,
        model_card=_card(),
        n_boot=100,
    )
    page = paths.html.read_text(encoding="utf-8")
    assert NOT_FOR_CLINICAL_USE in page
    assert "<h2>Outer folds</h2>" in page and "shrinkage=" in page
    assert "rCBF_mean</td><td>lower values favour positive" in page
    assert "model &lt;B&gt;" in page and "model <B>" not in page  # names are escaped
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    # Nothing is fetched from elsewhere: no remote scripts, styles or images.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for png in (paths.roc_png, paths.calibration_png, paths.dca_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.parent == paths.html.parent
