"""Patient-grouped nested cross-validation with Optuna tuning.

This is the validation design of the dural-lesion DSC study: outer GroupKFold
(5 folds; 10 folds and leave-one-patient-out as sensitivity analyses), an inner
grouped CV in each outer training set in which Optuna tunes the
hyper-parameters, performance assessed only on the outer test folds, and the
out-of-fold (OOF) probabilities of all outer folds pooled for the ROC curve,
Brier score and threshold analysis. Lesions of one patient are never split
between training and test (checked for every split; a violation raises
:class:`GroupLeakageError`).

The caller describes a model as a factory ``trial -> estimator``: it draws its
hyper-parameters with ``trial.suggest_*`` and returns an unfitted scikit-learn
classifier with ``predict_proba``. A factory that suggests nothing is fitted
once per fold without a search. Every ``random_state`` parameter of the
estimator is set from ``seed``; the same data and seed give the same result.
Fits run with a single BLAS/OpenMP thread (``threadpoolctl``): the matrices are
tiny and the node's cores are shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from numpy.typing import ArrayLike, NDArray
from optuna.trial import BaseTrial
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from analyzers._shared.stats._validation import StatsInputError, as_binary_labels
from analyzers._shared.stats.metrics import _auc_unchecked, brier_score

__all__ = [
    "CVScheme",
    "EstimatorFactory",
    "FoldResult",
    "GroupLeakageError",
    "NestedCVResult",
    "TunedModel",
    "nested_cross_validate",
    "tune_and_fit",
]

EstimatorFactory = Callable[[BaseTrial], BaseEstimator]
"""``trial -> unfitted classifier``; hyper-parameters drawn with ``trial.suggest_*``.

The trial is an ``optuna.Trial`` during the search and an ``optuna.trial.FixedTrial``
holding the best parameters when the chosen model is refitted.
"""


class GroupLeakageError(RuntimeError):
    """A patient appeared in both the training and the test part of a split."""


@dataclass(frozen=True)
class CVScheme:
    """How cases are split into folds, always by patient.

    Attributes
    ----------
    n_splits:
        Number of folds; ``None`` means leave-one-patient-out.
    stratified:
        Balance the class ratio across folds (``StratifiedGroupKFold``) instead of
        plain ``GroupKFold`` (the study's choice and the default). Useful when a
        cohort is so small or unbalanced that a fold could lack one class.
    """

    n_splits: int | None = 5
    stratified: bool = False

    def __post_init__(self) -> None:
        if self.n_splits is not None and self.n_splits < 2:
            raise StatsInputError("n_splits must be >= 2 (or None for leave-one-patient-out)")

    @classmethod
    def group_kfold(cls, n_splits: int = 5, stratified: bool = False) -> CVScheme:
        """Grouped k-fold (5 by default, as in the study; 10 for its sensitivity analysis)."""
        return cls(n_splits=n_splits, stratified=stratified)

    @classmethod
    def leave_one_patient_out(cls) -> CVScheme:
        """Leave-one-patient-out (LOPO)."""
        return cls(n_splits=None)

    @property
    def name(self) -> str:
        """Human-readable description for reports and model cards."""
        if self.n_splits is None:
            return "leave-one-patient-out"
        kind = "StratifiedGroupKFold" if self.stratified else "GroupKFold"
        return f"{self.n_splits}-fold {kind}"

    def split(
        self, y: NDArray[np.int_], groups: NDArray[Any], seed: int
    ) -> list[tuple[NDArray[np.int_], NDArray[np.int_]]]:
        """Index pairs ``(train, test)``; raises when there are fewer patients than folds."""
        n_groups = np.unique(groups).size
        if self.n_splits is None:
            splitter: Any = LeaveOneGroupOut()
        else:
            if n_groups < self.n_splits:
                raise StatsInputError(f"{self.n_splits} folds need at least {self.n_splits} patients, got {n_groups}")
            cls = StratifiedGroupKFold if self.stratified else GroupKFold
            splitter = cls(n_splits=self.n_splits, shuffle=True, random_state=seed)
        dummy = np.zeros((y.size, 1))
        splits = [(tr, te) for tr, te in splitter.split(dummy, y, groups)]
        for tr, te in splits:
            if np.intersect1d(groups[tr], groups[te]).size:
                raise GroupLeakageError("a patient is in both the training and the test fold")
        return splits


@dataclass(frozen=True)
class FoldResult:
    """One outer fold.

    ``auc`` is NaN when the test fold holds one class only (the pooled OOF AUC is
    still defined). ``inner_auc`` is the pooled inner-CV AUC of the chosen
    hyper-parameters.
    """

    fold: int
    train_groups: tuple[Any, ...]
    test_groups: tuple[Any, ...]
    n_train: int
    n_test: int
    auc: float
    brier: float
    best_params: dict[str, Any]
    inner_auc: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (group identifiers as strings)."""
        return {
            "fold": self.fold,
            "train_groups": [str(g) for g in self.train_groups],
            "test_groups": [str(g) for g in self.test_groups],
            "n_train": self.n_train,
            "n_test": self.n_test,
            "auc": None if np.isnan(self.auc) else self.auc,
            "brier": self.brier,
            "best_params": {k: _jsonable(v) for k, v in self.best_params.items()},
            "inner_auc": None if np.isnan(self.inner_auc) else self.inner_auc,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass(frozen=True)
class NestedCVResult:
    """Pooled out-of-fold predictions and per-fold results of a nested CV.

    Attributes
    ----------
    oof_probability:
        Out-of-fold probability of the positive class for every row.
    fold_of:
        Outer fold index of every row.
    folds:
        Per-fold results.
    y, groups:
        The labels and patient identifiers the CV ran on (for downstream metrics).
    scheme:
        Outer scheme name, e.g. ``"5-fold GroupKFold"``.
    inner_splits, n_trials, seed:
        The settings used.
    """

    oof_probability: NDArray[np.float64]
    fold_of: NDArray[np.int_]
    folds: tuple[FoldResult, ...]
    y: NDArray[np.int_]
    groups: NDArray[Any]
    scheme: str
    inner_splits: int
    n_trials: int
    seed: int

    @property
    def pooled_auc(self) -> float:
        """ROC-AUC of the pooled OOF probabilities."""
        return _auc_unchecked(self.y, self.oof_probability)

    @property
    def pooled_brier(self) -> float:
        """Brier score of the pooled OOF probabilities."""
        return brier_score(self.y, self.oof_probability)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-row arrays)."""
        return {
            "scheme": self.scheme,
            "inner_splits": self.inner_splits,
            "n_trials": self.n_trials,
            "seed": self.seed,
            "pooled_auc": self.pooled_auc,
            "pooled_brier": self.pooled_brier,
            "folds": [f.to_dict() for f in self.folds],
        }


@dataclass
class TunedModel:
    """An estimator tuned by grouped CV on all data and refitted on all of it."""

    estimator: BaseEstimator
    best_params: dict[str, Any] = field(default_factory=dict)
    inner_auc: float = float("nan")


@contextlib.contextmanager
def _quiet_single_threaded() -> Iterator[None]:
    # Optuna logs every trial at INFO; training output should show results, not trials.
    # BLAS/OpenMP threads only cost time on these tiny matrices (measured: logistic
    # regression fits 3-4x cheaper in CPU time with one thread on a shared 2-core host).
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def _seeded(estimator: BaseEstimator, seed: int) -> BaseEstimator:
    est = clone(estimator)
    keys = {k: seed for k in est.get_params(deep=True) if k.split("__")[-1] == "random_state"}
    return est.set_params(**keys) if keys else est


def _positive_proba(estimator: BaseEstimator, X: NDArray[np.float64]) -> NDArray[np.float64]:
    if not hasattr(estimator, "predict_proba"):
        raise StatsInputError(f"{type(estimator).__name__} has no predict_proba")
    classes = list(estimator.classes_)
    return np.asarray(estimator.predict_proba(X))[:, classes.index(1)]


def _pooled_inner_auc(
    estimator: BaseEstimator,
    X: NDArray[np.float64],
    y: NDArray[np.int_],
    splits: list[tuple[NDArray[np.int_], NDArray[np.int_]]],
) -> float:
    # Pooling the inner OOF predictions keeps the score defined when an inner
    # test fold holds one class only (small cohorts).
    oof = np.empty(y.size)
    for tr, te in splits:
        oof[te] = _positive_proba(clone(estimator).fit(X[tr], y[tr]), X[te])
    return _auc_unchecked(y, oof)


def _tune(
    factory: EstimatorFactory,
    X: NDArray[np.float64],
    y: NDArray[np.int_],
    groups: NDArray[Any],
    inner: CVScheme,
    n_trials: int,
    seed: int,
) -> tuple[BaseEstimator, dict[str, Any], float]:
    """Tune on (X, y) with grouped inner CV; return the refitted estimator, params, inner AUC."""
    n_groups = np.unique(groups).size
    if inner.n_splits is not None and n_groups < inner.n_splits:
        inner = CVScheme(n_splits=max(2, n_groups), stratified=inner.stratified)
    splits = inner.split(y, groups, seed)

    def objective(trial: optuna.Trial) -> float:
        return _pooled_inner_auc(_seeded(factory(trial), seed), X, y, splits)

    def stop_if_nothing_to_tune(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not trial.params:
            study.stop()

    with _quiet_single_threaded():
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=n_trials, callbacks=[stop_if_nothing_to_tune])
        best = dict(study.best_params)
        final = _seeded(factory(optuna.trial.FixedTrial(best)), seed).fit(X, y)
    return final, best, float(study.best_value)


def _prepare(
    X: ArrayLike, y: ArrayLike, groups: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int_], NDArray[Any]]:
    labels = as_binary_labels(y)
    mat = np.asarray(X, dtype=float)
    if mat.ndim != 2 or mat.shape[0] != labels.size:
        raise StatsInputError(f"X must have shape ({labels.size}, n_features), got {mat.shape}")
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != labels.size:
        raise StatsInputError(f"groups must be 1-D with {labels.size} values, got shape {g.shape}")
    return mat, labels, g


def nested_cross_validate(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    factory: EstimatorFactory,
    *,
    outer: CVScheme | None = None,
    inner_splits: int = 5,
    n_trials: int = 25,
    seed: int = 0,
) -> NestedCVResult:
    """Patient-grouped nested CV: Optuna tuning in the inner loop, OOF predictions outside.

    Parameters
    ----------
    X:
        Features, shape ``(n_cases, n_features)``; NaN allowed when the factory's
        pipeline imputes (the default candidates impute the median).
    y:
        Labels coded 0/1 (1 = positive class, e.g. metastasis).
    groups:
        Patient identifier per row; all rows of a patient stay on one side of
        every split, outer and inner.
    factory:
        ``trial -> unfitted classifier`` (see module docstring).
    outer:
        Outer scheme; default ``CVScheme.group_kfold(5)``.
    inner_splits:
        Folds of the inner grouped CV (reduced to the number of patients in an
        outer training set when that is smaller).
    n_trials:
        Optuna trials per outer fold (TPE sampler seeded with ``seed + fold``).
    seed:
        Seeds the splits, the sampler and every ``random_state`` of the estimator.
    """
    mat, labels, g = _prepare(X, y, groups)
    if n_trials < 1:
        raise StatsInputError("n_trials must be >= 1")
    if inner_splits < 2:
        raise StatsInputError("inner_splits must be >= 2")
    scheme = outer or CVScheme.group_kfold(5)
    inner = CVScheme(n_splits=inner_splits, stratified=scheme.stratified)
    oof = np.full(labels.size, np.nan)
    fold_of = np.full(labels.size, -1, dtype=int)
    folds = []
    for k, (tr, te) in enumerate(scheme.split(labels, g, seed)):
        if labels[tr].min() == labels[tr].max():
            raise StatsInputError(f"outer fold {k} has a training set with one class only")
        model, best, inner_auc = _tune(factory, mat[tr], labels[tr], g[tr], inner, n_trials, seed + k)
        with threadpool_limits(limits=1):
            proba = _positive_proba(model, mat[te])
        oof[te] = proba
        fold_of[te] = k
        yt = labels[te]
        folds.append(
            FoldResult(
                fold=k,
                train_groups=tuple(np.unique(g[tr]).tolist()),
                test_groups=tuple(np.unique(g[te]).tolist()),
                n_train=int(tr.size),
                n_test=int(te.size),
                auc=_auc_unchecked(yt, proba) if yt.min() != yt.max() else float("nan"),
                brier=float(np.mean((proba - yt) ** 2)),
                best_params=best,
                inner_auc=inner_auc,
            )
        )
    if np.isnan(oof).any():
        raise RuntimeError("some rows received no out-of-fold prediction")
    return NestedCVResult(
        oof_probability=oof,
        fold_of=fold_of,
        folds=tuple(folds),
        y=labels,
        groups=g,
        scheme=scheme.name,
        inner_splits=inner_splits,
        n_trials=n_trials,
        seed=seed,
    )


def tune_and_fit(
    X: ArrayLike,
    y: ArrayLike,
    groups: ArrayLike,
    factory: EstimatorFactory,
    *,
    cv_splits: int = 5,
    stratified: bool = False,
    n_trials: int = 25,
    seed: int = 0,
) -> TunedModel:
    """Tune hyper-parameters by grouped CV on all data and refit the final model on all of it.

    This makes the model that ships; its performance is the nested CV's
    (:func:`nested_cross_validate`), never the tuning score reported here.
    """
    mat, labels, g = _prepare(X, y, groups)
    if n_trials < 1:
        raise StatsInputError("n_trials must be >= 1")
    estimator, best, inner_auc = _tune(factory, mat, labels, g, CVScheme(cv_splits, stratified), n_trials, seed)
    return TunedModel(estimator=estimator, best_params=best, inner_auc=inner_auc)
