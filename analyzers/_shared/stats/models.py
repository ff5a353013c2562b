"""The candidate classifiers of the dural-lesion DSC study and their comparison.

Every candidate is a pipeline median imputation -> standardisation -> classifier
(as in the study) with a small Optuna search space:

* ``lda``: linear discriminant analysis (lsqr solver, shrinkage tuned in [0, 1]);
* ``logistic_l2``: L2-regularised logistic regression (C tuned, log scale);
* ``linear_svm``: linear SVM, probabilities by Platt scaling
  (``CalibratedClassifierCV``, 3-fold sigmoid) (C tuned);
* ``decision_tree``: depth and minimum leaf size tuned;
* ``knn``: number of neighbours and weighting tuned.

:func:`compare_models` runs each through the same nested CV (same outer folds by
seed) and adds the study's soft-voting ensemble of the two best base models by
pooled OOF AUC: the average of their OOF probabilities, which is exactly what a
soft-voting classifier of the two fold-wise tuned pipelines predicts. As in the
study, the two members are picked on the same OOF predictions the ensemble is
scored on, which flatters the ensemble slightly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from optuna.trial import BaseTrial
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from analyzers._shared.stats._validation import StatsInputError
from analyzers._shared.stats.bootstrap import BootstrapCI, cluster_bootstrap_ci
from analyzers._shared.stats.cv import (
    CVScheme,
    EstimatorFactory,
    NestedCVResult,
    nested_cross_validate,
    tune_and_fit,
)
from analyzers._shared.stats.metrics import BinaryMetrics, brier_score, threshold_for_sensitivity

__all__ = [
    "FinalModel",
    "ModelComparison",
    "ModelRow",
    "SoftVotingEnsemble",
    "compare_models",
    "decision_tree_factory",
    "default_candidates",
    "fit_final_model",
    "knn_factory",
    "lda_factory",
    "linear_svm_factory",
    "logistic_l2_factory",
    "make_pipeline",
]


def make_pipeline(classifier: BaseEstimator) -> Pipeline:
    """Median imputation, standardisation, then ``classifier`` (the study's preprocessing)."""
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("model", classifier),
        ]
    )


def lda_factory(trial: BaseTrial) -> BaseEstimator:
    """LDA with tuned shrinkage (0 = the classical LDA)."""
    shrinkage = trial.suggest_float("shrinkage", 0.0, 1.0)
    return make_pipeline(LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage))


def logistic_l2_factory(trial: BaseTrial) -> BaseEstimator:
    """L2-regularised logistic regression with tuned inverse strength C."""
    c = trial.suggest_float("C", 1e-3, 1e3, log=True)
    return make_pipeline(LogisticRegression(C=c, l1_ratio=0.0, max_iter=2000))


def linear_svm_factory(trial: BaseTrial) -> BaseEstimator:
    """Linear SVM with Platt-scaled probabilities and tuned C."""
    c = trial.suggest_float("C", 1e-3, 1e2, log=True)
    svm = LinearSVC(C=c, max_iter=20000)
    return make_pipeline(CalibratedClassifierCV(svm, method="sigmoid", cv=3))


def decision_tree_factory(trial: BaseTrial) -> BaseEstimator:
    """Decision tree with tuned depth and minimum leaf size."""
    depth = trial.suggest_int("max_depth", 1, 6)
    leaf = trial.suggest_int("min_samples_leaf", 1, 10)
    return make_pipeline(DecisionTreeClassifier(max_depth=depth, min_samples_leaf=leaf))


def knn_factory(trial: BaseTrial) -> BaseEstimator:
    """k-nearest neighbours with tuned k (3-15) and weighting; needs >= 15 cases per inner fit."""
    k = trial.suggest_int("n_neighbors", 3, 15)
    weights = trial.suggest_categorical("weights", ["uniform", "distance"])
    return make_pipeline(KNeighborsClassifier(n_neighbors=k, weights=weights))


def default_candidates() -> dict[str, EstimatorFactory]:
    """The study's five base models, in its order."""
    return {
        "lda": lda_factory,
        "logistic_l2": logistic_l2_factory,
        "linear_svm": linear_svm_factory,
        "decision_tree": decision_tree_factory,
        "knn": knn_factory,
    }


@dataclass(frozen=True)
class ModelRow:
    """One line of the comparison table (pooled OOF predictions of one model)."""

    model: str
    auc: BootstrapCI
    brier: float
    at_threshold: BinaryMetrics

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able row."""
        row: dict[str, Any] = {
            "model": self.model,
            "auc": self.auc.estimate,
            "auc_ci_lower": self.auc.lower,
            "auc_ci_upper": self.auc.upper,
            "brier": self.brier,
        }
        row.update(self.at_threshold.to_dict())
        return row


@dataclass(frozen=True)
class ModelComparison:
    """Result of :func:`compare_models`.

    Attributes
    ----------
    rows:
        One row per model (base models in the given order, then ``ensemble``).
    results:
        The nested-CV result of each base model by name.
    ensemble_members:
        The two base models averaged in the ensemble (empty when none was built).
    ensemble_probability:
        The ensemble's OOF probabilities (None when none was built).
    target_sensitivity:
        Sensitivity the thresholds were chosen for.
    """

    rows: tuple[ModelRow, ...]
    results: dict[str, NestedCVResult]
    ensemble_members: tuple[str, ...]
    ensemble_probability: np.ndarray | None
    target_sensitivity: float

    def best(self) -> ModelRow:
        """The row with the highest pooled OOF AUC (first one on ties)."""
        return max(self.rows, key=lambda r: r.auc.estimate)

    def table(self) -> list[dict[str, Any]]:
        """Rows as flat dicts (JSON-able)."""
        return [r.to_dict() for r in self.rows]

    def to_markdown(self, decimals: int = 3) -> str:
        """The comparison as a Markdown table."""
        pct = round(self.target_sensitivity * 100)
        head = (
            f"| model | AUC (95% CI) | Brier | threshold (sens >= {pct}%) | sensitivity "
            "| specificity | PPV | NPV | accuracy |\n|---|---|---|---|---|---|---|---|---|\n"
        )

        def f(v: float) -> str:
            return "n/a" if v is None or np.isnan(v) else f"{v:.{decimals}f}"

        lines = [
            f"| {r.model} | {r.auc.format(decimals)} | {f(r.brier)} | {f(r.at_threshold.threshold)} "
            f"| {f(r.at_threshold.sensitivity)} | {f(r.at_threshold.specificity)} "
            f"| {f(r.at_threshold.ppv)} | {f(r.at_threshold.npv)} | {f(r.at_threshold.accuracy)} |"
            for r in self.rows
        ]
        return head + "\n".join(lines) + "\n"


def _row(
    name: str,
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    target: float,
    n_boot: int,
    seed: int,
) -> ModelRow:
    return ModelRow(
        model=name,
        auc=cluster_bootstrap_ci(y, p, groups, n_boot=n_boot, seed=seed),
        brier=brier_score(y, p),
        at_threshold=threshold_for_sensitivity(y, p, target),
    )


def compare_models(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    candidates: Mapping[str, EstimatorFactory] | None = None,
    *,
    outer: CVScheme | None = None,
    inner_splits: int = 5,
    n_trials: int = 25,
    ensemble: bool = True,
    target_sensitivity: float = 0.85,
    n_boot: int = 2000,
    seed: int = 0,
) -> ModelComparison:
    """Nested CV of each candidate on identical outer folds, plus the best-two soft vote.

    Parameters
    ----------
    X, y, groups:
        Features, 0/1 labels and patient identifiers (see :func:`nested_cross_validate`).
    candidates:
        ``{name: factory}``; default :func:`default_candidates`.
    outer, inner_splits, n_trials, seed:
        Passed to :func:`nested_cross_validate` (same seed: same outer folds for all).
    ensemble:
        Add the soft-voting ensemble of the two best base models (needs >= 2).
    target_sensitivity:
        Each row's threshold is the highest one reaching this sensitivity on the
        pooled OOF probabilities.
    n_boot:
        Patient-level bootstrap resamples for each AUC CI.
    """
    cands = dict(candidates or default_candidates())
    if not cands:
        raise StatsInputError("no candidate models given")
    if "ensemble" in cands:
        raise StatsInputError("'ensemble' is reserved for the soft-voting ensemble")
    results = {
        name: nested_cross_validate(
            X, y, groups, fac, outer=outer, inner_splits=inner_splits, n_trials=n_trials, seed=seed
        )
        for name, fac in cands.items()
    }
    first = next(iter(results.values()))
    yv, gv = first.y, first.groups
    rows = [_row(name, yv, r.oof_probability, gv, target_sensitivity, n_boot, seed) for name, r in results.items()]
    members: tuple[str, ...] = ()
    ens_p = None
    if ensemble and len(rows) >= 2:
        ranked = sorted(rows, key=lambda r: -r.auc.estimate)
        members = (ranked[0].model, ranked[1].model)
        ens_p = (results[members[0]].oof_probability + results[members[1]].oof_probability) / 2
        rows.append(_row("ensemble", yv, ens_p, gv, target_sensitivity, n_boot, seed))
    return ModelComparison(
        rows=tuple(rows),
        results=results,
        ensemble_members=members,
        ensemble_probability=ens_p,
        target_sensitivity=target_sensitivity,
    )


class SoftVotingEnsemble(ClassifierMixin, BaseEstimator):
    """Average of the positive-class probabilities of already fitted classifiers.

    scikit-learn's ``VotingClassifier`` refits its members; this one keeps
    members that were tuned and fitted one by one (:func:`fit_final_model`).
    Picklable like any scikit-learn estimator.

    Parameters
    ----------
    estimators:
        ``(name, fitted classifier)`` pairs, each with ``predict_proba`` and
        ``classes_ == [0, 1]``.
    """

    def __init__(self, estimators: Sequence[tuple[str, BaseEstimator]]) -> None:
        self.estimators = estimators

    def _check(self) -> None:
        if len(self.estimators) < 2:
            raise StatsInputError("a soft-voting ensemble needs at least two members")
        for name, est in self.estimators:
            if list(getattr(est, "classes_", [])) != [0, 1]:
                raise StatsInputError(f"ensemble member {name!r} is not a fitted 0/1 classifier")

    def fit(self, X: ArrayLike, y: ArrayLike) -> SoftVotingEnsemble:
        """Check the members (they are already fitted; nothing is refitted)."""
        self._check()
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """Mean of the members' class probabilities, shape ``(n, 2)``."""
        self._check()
        return np.mean([np.asarray(est.predict_proba(X)) for _, est in self.estimators], axis=0)

    def predict(self, X: ArrayLike) -> NDArray[np.int_]:
        """Class with the higher mean probability (ties go to 1)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


@dataclass
class FinalModel:
    """The model that ships: chosen by the comparison, tuned and fitted on all data.

    Attributes
    ----------
    name:
        Row name in the comparison (a candidate name or ``"ensemble"``).
    estimator:
        The fitted classifier (a :class:`SoftVotingEnsemble` for ``"ensemble"``).
    best_params:
        Tuned hyper-parameters by member name.
    threshold:
        Operating threshold chosen on the pooled OOF probabilities of the nested
        CV for the comparison's target sensitivity.
    """

    name: str
    estimator: BaseEstimator
    best_params: dict[str, dict[str, Any]]
    threshold: float


def fit_final_model(
    comparison: ModelComparison,
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    candidates: Mapping[str, EstimatorFactory] | None = None,
    *,
    model: str | None = None,
    cv_splits: int = 5,
    n_trials: int = 25,
    seed: int = 0,
) -> FinalModel:
    """Tune and fit the chosen model (default: best pooled OOF AUC) on all data.

    Parameters
    ----------
    comparison:
        Result of :func:`compare_models` on the same data.
    X, y, groups:
        The training data.
    candidates:
        The factories the comparison used (default :func:`default_candidates`).
    model:
        Row to fit; default the comparison's best. ``"ensemble"`` fits both members.
    cv_splits, n_trials, seed:
        Grouped CV folds and Optuna trials of the final tuning.
    """
    cands = dict(candidates or default_candidates())
    rows = {r.model: r for r in comparison.rows}
    chosen = model or comparison.best().model
    if chosen not in rows:
        raise StatsInputError(f"no model {chosen!r} in the comparison ({', '.join(rows)})")
    members = comparison.ensemble_members if chosen == "ensemble" else (chosen,)
    fitted = {}
    for name in members:
        if name not in cands:
            raise StatsInputError(f"no factory for {name!r} among the candidates")
        fitted[name] = tune_and_fit(X, y, groups, cands[name], cv_splits=cv_splits, n_trials=n_trials, seed=seed)
    if chosen == "ensemble":
        mat = np.asarray(X, dtype=float)
        estimator: BaseEstimator = SoftVotingEnsemble([(n, t.estimator) for n, t in fitted.items()]).fit(mat, y)
    else:
        estimator = fitted[chosen].estimator
    return FinalModel(
        name=chosen,
        estimator=estimator,
        best_params={n: t.best_params for n, t in fitted.items()},
        threshold=rows[chosen].at_threshold.threshold,
    )
