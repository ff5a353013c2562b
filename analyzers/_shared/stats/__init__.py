"""Shared evaluation toolkit of ``pacsnode train``.

Patient-grouped nested cross-validation with Optuna tuning, patient-level
cluster-bootstrap confidence intervals, ROC-AUC, Brier score, calibration
(curve, slope, intercept, Hosmer-Lemeshow), sensitivity-targeted thresholds,
DeLong's test, decision-curve analysis, paired tests and table summaries.
Each submodule's docstring names the paper or standard it follows.

Everything is pure numpy / scipy / scikit-learn / Optuna and deterministic for a
given ``seed``.

Typical use in a trainer (rows are lesions, ``groups`` the patient of each row)::

    from analyzers._shared import stats

    cmp = stats.compare_models(X, y, groups, seed=0)            # nested CV of 5 models + ensemble
    print(cmp.to_markdown())
    final = stats.fit_final_model(cmp, X, y, groups, model="lda")  # the model that ships
    oof = cmp.results["lda"].oof_probability
    ev = stats.evaluate_predictions(y, oof, groups)                 # AUC CI, calibration, HL, DCA
    uni = stats.univariate_aucs(X, y, ["rCBF_mean", "rCBV_mean"], groups)

Model cards and HTML reports are written from these results by
:mod:`analyzers._shared.modelcard` and :mod:`analyzers._shared.report`.
"""

from __future__ import annotations

from analyzers._shared.stats._validation import StatsInputError
from analyzers._shared.stats.bootstrap import (
    BootstrapCI,
    BootstrapDifference,
    Metric,
    RocBand,
    UnivariateAUC,
    bootstrap_binary_metrics,
    cluster_bootstrap_ci,
    paired_bootstrap_difference,
    roc_curve_band,
    univariate_aucs,
)
from analyzers._shared.stats.cv import (
    CVScheme,
    EstimatorFactory,
    FoldResult,
    GroupLeakageError,
    NestedCVResult,
    TunedModel,
    nested_cross_validate,
    tune_and_fit,
)
from analyzers._shared.stats.delong import (
    DeLongResult,
    delong_covariance,
    delong_pairwise,
    delong_test,
)
from analyzers._shared.stats.evaluation import Evaluation, evaluate_predictions
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
    roc_auc,
    threshold_for_sensitivity,
)
from analyzers._shared.stats.models import (
    FinalModel,
    ModelComparison,
    ModelRow,
    SoftVotingEnsemble,
    compare_models,
    decision_tree_factory,
    default_candidates,
    fit_final_model,
    knn_factory,
    lda_factory,
    linear_svm_factory,
    logistic_l2_factory,
    make_pipeline,
)
from analyzers._shared.stats.summaries import (
    PairedTestResult,
    Summary,
    TwoSampleTestResult,
    cohens_d,
    mann_whitney_u,
    model_summary_table,
    summarize,
    wilcoxon_signed_rank,
)

__all__ = [
    "BinaryMetrics",
    "BootstrapCI",
    "BootstrapDifference",
    "CVScheme",
    "CalibrationCurve",
    "CalibrationFit",
    "DeLongResult",
    "DecisionCurve",
    "EstimatorFactory",
    "Evaluation",
    "FinalModel",
    "FoldResult",
    "GroupLeakageError",
    "HosmerLemeshowResult",
    "Metric",
    "ModelComparison",
    "ModelRow",
    "NestedCVResult",
    "PairedTestResult",
    "RocBand",
    "SoftVotingEnsemble",
    "StatsInputError",
    "Summary",
    "TunedModel",
    "TwoSampleTestResult",
    "UnivariateAUC",
    "binary_metrics",
    "bootstrap_binary_metrics",
    "brier_score",
    "calibration_curve",
    "calibration_slope_intercept",
    "cluster_bootstrap_ci",
    "cohens_d",
    "compare_models",
    "decision_curve",
    "decision_tree_factory",
    "default_candidates",
    "delong_covariance",
    "delong_pairwise",
    "delong_test",
    "evaluate_predictions",
    "fit_final_model",
    "hosmer_lemeshow",
    "knn_factory",
    "lda_factory",
    "linear_svm_factory",
    "logistic_l2_factory",
    "make_pipeline",
    "mann_whitney_u",
    "model_summary_table",
    "nested_cross_validate",
    "paired_bootstrap_difference",
    "roc_auc",
    "roc_curve_band",
    "summarize",
    "threshold_for_sensitivity",
    "tune_and_fit",
    "univariate_aucs",
    "wilcoxon_signed_rank",
]
