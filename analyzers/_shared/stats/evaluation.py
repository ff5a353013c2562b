"""One call that evaluates a set of predictions the way the papers report a model.

:func:`evaluate_predictions` gathers ROC-AUC with its patient-level bootstrap CI,
Brier score, binned calibration curve, calibration slope / intercept,
Hosmer-Lemeshow test, the threshold for the target sensitivity with the
confusion-matrix metrics (and their bootstrap CIs) at it, and the decision
curve. Model cards (:mod:`analyzers._shared.modelcard`) and HTML reports
(:mod:`analyzers._shared.report`) are written from its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers._shared.stats._validation import as_binary_labels, as_groups, as_scores
from analyzers._shared.stats.bootstrap import (
    BootstrapCI,
    bootstrap_binary_metrics,
    cluster_bootstrap_ci,
)
from analyzers._shared.stats.metrics import (
    BinaryMetrics,
    CalibrationCurve,
    CalibrationFit,
    DecisionCurve,
    HosmerLemeshowResult,
    binary_metrics,
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    decision_curve,
    hosmer_lemeshow,
    threshold_for_sensitivity,
)

__all__ = ["Evaluation", "evaluate_predictions"]


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass(frozen=True)
class Evaluation:
    """Everything measured on one set of predictions.

    Attributes
    ----------
    y, probability, groups:
        The labels, predicted probabilities and patient codes evaluated.
    n_cases, n_patients, n_positive:
        Counts.
    auc:
        ROC-AUC with patient-level cluster-bootstrap CI.
    brier:
        Brier score.
    calibration:
        Binned calibration curve.
    calibration_fit:
        Calibration slope and intercept.
    hosmer_lemeshow:
        Hosmer-Lemeshow test (None when there are too few cases for its groups).
    target_sensitivity:
        The sensitivity the threshold was chosen for (None when the threshold was given).
    at_threshold:
        Metrics at the operating threshold.
    at_threshold_ci:
        Bootstrap CIs of sensitivity, specificity, PPV, NPV and accuracy there.
    dca:
        Decision curve.
    """

    y: NDArray[np.int_]
    probability: NDArray[np.float64]
    groups: NDArray[np.int_]
    n_cases: int
    n_patients: int
    n_positive: int
    auc: BootstrapCI
    brier: float
    calibration: CalibrationCurve
    calibration_fit: CalibrationFit
    hosmer_lemeshow: HosmerLemeshowResult | None
    target_sensitivity: float | None
    at_threshold: BinaryMetrics
    at_threshold_ci: dict[str, BootstrapCI]
    dca: DecisionCurve

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-case arrays)."""
        hl = self.hosmer_lemeshow
        return {
            "n_cases": self.n_cases,
            "n_patients": self.n_patients,
            "n_positive": self.n_positive,
            "auc": self.auc.to_dict(),
            "brier": self.brier,
            "calibration": self.calibration.to_dict(),
            "calibration_slope": _nan_to_none(self.calibration_fit.slope),
            "calibration_intercept": _nan_to_none(self.calibration_fit.intercept),
            "hosmer_lemeshow": None
            if hl is None
            else {"statistic": hl.statistic, "dof": hl.dof, "p_value": hl.p_value},
            "target_sensitivity": self.target_sensitivity,
            "at_threshold": self.at_threshold.to_dict(),
            "at_threshold_ci": {
                k: {kk: _nan_to_none(vv) for kk, vv in v.to_dict().items()} for k, v in self.at_threshold_ci.items()
            },
            "dca": self.dca.to_dict(),
        }


def evaluate_predictions(
    y: ArrayLike,
    probability: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    target_sensitivity: float = 0.85,
    threshold: float | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    calibration_bins: int = 10,
    hl_groups: int = 10,
    seed: int = 0,
) -> Evaluation:
    """Evaluate predicted probabilities against labels.

    Parameters
    ----------
    y, probability, groups:
        Labels (0/1), predicted probability of the positive class, patient id per
        row (None: one patient per row).
    target_sensitivity:
        Used to choose the threshold on these predictions when ``threshold`` is
        None (appropriate for pooled OOF predictions of a training cohort).
    threshold:
        A threshold fixed beforehand (e.g. chosen on the training cohort, applied
        to an external test set); overrides ``target_sensitivity``.
    n_boot, confidence, seed:
        Patient-level bootstrap settings for every CI.
    calibration_bins, hl_groups:
        Bins of the calibration curve and groups of the Hosmer-Lemeshow test.
    """
    labels = as_binary_labels(y)
    p = as_scores(probability, labels.size, "probability", probability=True)
    codes = as_groups(groups, labels.size)
    if threshold is None:
        at = threshold_for_sensitivity(labels, p, target_sensitivity)
        target: float | None = target_sensitivity
    else:
        at = binary_metrics(labels, p, threshold)
        target = None
    return Evaluation(
        y=labels,
        probability=p,
        groups=codes,
        n_cases=int(labels.size),
        n_patients=int(np.unique(codes).size),
        n_positive=int(labels.sum()),
        auc=cluster_bootstrap_ci(labels, p, codes, n_boot=n_boot, confidence=confidence, seed=seed),
        brier=brier_score(labels, p),
        calibration=calibration_curve(labels, p, calibration_bins),
        calibration_fit=calibration_slope_intercept(labels, p),
        hosmer_lemeshow=hosmer_lemeshow(labels, p, hl_groups) if labels.size >= hl_groups >= 3 else None,
        target_sensitivity=target,
        at_threshold=at,
        at_threshold_ci=bootstrap_binary_metrics(
            labels, p, at.threshold, codes, n_boot=n_boot, confidence=confidence, seed=seed
        ),
        dca=decision_curve(labels, p),
    )
