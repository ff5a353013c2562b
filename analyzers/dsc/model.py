"""Dural metastasis vs meningioma classifier of the ``dsc`` analyzer.

Follows the machine-learning design of the dural-lesion DSC study
(../shared/papers/dsc-dural-metastasis-vs-meningioma.txt, section 2.5): a
pipeline of median imputation, standardisation and a linear classifier;

* ``"lda"`` (default): linear discriminant analysis on (rCBF_mean, rCBV_mean),
  the study's best interpretable model;
* ``"logistic"``: L2-regularised logistic regression;
* ``"linear_svm"``: linear support vector machine with sigmoid (Platt)
  calibrated probabilities.

Feature sets: ``"reduced"`` (rCBF_mean, rCBV_mean) and ``"extended"`` (seven:
adds ADC_mean, rWiT, rPSR, washout_slope and sex_female; ADC is missing, and
imputed by the training median, when the study has no ADC series).

The output is the probability of dural metastasis and the class at a
threshold chosen on the training data so that sensitivity for metastasis is at
least 85 % (out-of-fold probabilities of a patient-grouped cross-validation when
the training data allow it).

All three models reduce to ``p = 1 / (1 + exp(−(w·z + b)))`` on the imputed,
standardised features ``z`` (for the SVM, ``w`` and ``b`` include the Platt
calibration), so a trained model is saved as plain JSON (``model.json``): no
pickles, nothing executable in a model folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import expit

from analyzers.dsc.errors import DscModelError

__all__ = [
    "FEATURE_SETS",
    "MODEL_FILE",
    "NEGATIVE_LABEL",
    "POSITIVE_LABEL",
    "ClassifierKind",
    "DscClassifier",
    "build_pipeline",
    "fit_classifier",
    "sensitivity_threshold",
]

ClassifierKind = Literal["lda", "logistic", "linear_svm"]
POSITIVE_LABEL = "dural_metastasis"
NEGATIVE_LABEL = "meningioma"
FEATURE_SETS: Mapping[str, tuple[str, ...]] = {
    "reduced": ("rCBF_mean", "rCBV_mean"),
    "extended": (
        "rCBF_mean",
        "rCBV_mean",
        "ADC_mean",
        "rWiT",
        "rPSR",
        "washout_slope",
        "sex_female",
    ),
}
MODEL_FILE = "model.json"
_SCHEMA = "pacsnode-dsc-classifier/1"
_KINDS = ("lda", "logistic", "linear_svm")


@dataclass(frozen=True)
class DscClassifier:
    """A trained linear classifier with its imputation, scaling and threshold.

    Attributes
    ----------
    kind:
        ``"lda"``, ``"logistic"`` or ``"linear_svm"``.
    features:
        Feature names in input order.
    medians, means, scales:
        Imputation values and standardisation (per feature).
    weights, intercept:
        Logit of the probability of metastasis on standardised features.
    threshold:
        Probability at or above which a lesion is called metastasis.
    training_sensitivity, training_specificity:
        At ``threshold`` on the probabilities used to choose it.
    hyperparameters:
        E.g. ``{"C": 1.0}``.
    acquisition_range:
        The acquisitions the model was validated on (``pixel_mm_max``,
        ``slice_mm_max``, ``coverage_s_min``: seconds the series covers after bolus
        arrival); empty when unknown (a site's cohort). Lesion ratios depend on
        partial volume and on how much of the bolus the series covers, so a
        probability outside this range is not reported (:meth:`outside_range`).
    """

    kind: ClassifierKind
    features: tuple[str, ...]
    medians: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    intercept: float
    threshold: float
    training_sensitivity: float = float("nan")
    training_specificity: float = float("nan")
    hyperparameters: Mapping[str, float] = field(default_factory=dict)
    acquisition_range: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise DscModelError(f"unknown classifier kind {self.kind!r} (use one of {_KINDS})")
        n = len(self.features)
        for name in ("medians", "means", "scales", "weights"):
            array = np.asarray(getattr(self, name), dtype=np.float64)
            if array.shape != (n,) or not np.all(np.isfinite(array)):
                raise DscModelError(f"{name} must hold {n} finite values")
            object.__setattr__(self, name, array)
        if np.any(self.scales <= 0):
            raise DscModelError("feature scales must be positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise DscModelError(f"threshold must lie in [0, 1], got {self.threshold}")

    def matrix(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix of ``rows`` (missing or non-numeric values become NaN)."""
        out = np.full((len(rows), len(self.features)), np.nan)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.features):
                value = row.get(name)
                if isinstance(value, bool):
                    out[i, j] = float(value)
                elif isinstance(value, int | float) and np.isfinite(value):
                    out[i, j] = float(value)
        return out

    def probability(self, features: np.ndarray) -> np.ndarray:
        """Probability of dural metastasis for rows of ``features`` ``(n, len(features))``."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != len(self.features):
            raise DscModelError(f"expected {len(self.features)} features, got {x.shape[1]}")
        filled = np.where(np.isfinite(x), x, self.medians)
        z = (filled - self.means) / self.scales
        return expit(z @ self.weights + self.intercept)

    def outside_range(self, pixel_mm: float, slice_mm: float, coverage_s: float) -> str | None:
        """Why a series with this acquisition is outside :attr:`acquisition_range`, or None."""
        limits = self.acquisition_range
        reasons = []
        if "pixel_mm_max" in limits and pixel_mm > limits["pixel_mm_max"] + 1e-6:
            reasons.append(f"in-plane voxel {pixel_mm:.1f} mm > {limits['pixel_mm_max']:.1f} mm")
        if "slice_mm_max" in limits and slice_mm > limits["slice_mm_max"] + 1e-6:
            reasons.append(f"slice {slice_mm:.1f} mm > {limits['slice_mm_max']:.1f} mm")
        if "coverage_s_min" in limits and coverage_s < limits["coverage_s_min"] - 1e-6:
            reasons.append(f"{coverage_s:.0f} s after bolus arrival < {limits['coverage_s_min']:.0f} s")
        return "; ".join(reasons) or None

    def predict(self, features: np.ndarray) -> np.ndarray:
        """1 (metastasis) where the probability reaches the threshold, else 0."""
        return (self.probability(features) >= self.threshold).astype(int)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``model.json`` holds)."""
        return {
            "schema": _SCHEMA,
            "kind": self.kind,
            "positive_label": POSITIVE_LABEL,
            "negative_label": NEGATIVE_LABEL,
            "features": list(self.features),
            "medians": self.medians.tolist(),
            "means": self.means.tolist(),
            "scales": self.scales.tolist(),
            "weights": self.weights.tolist(),
            "intercept": float(self.intercept),
            "threshold": float(self.threshold),
            "training_sensitivity": _json_float(self.training_sensitivity),
            "training_specificity": _json_float(self.training_specificity),
            "hyperparameters": {k: float(v) for k, v in self.hyperparameters.items()},
            "acquisition_range": {k: float(v) for k, v in self.acquisition_range.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DscClassifier:
        """Inverse of :meth:`to_dict`; raises :class:`DscModelError` on a wrong schema."""
        if data.get("schema") != _SCHEMA:
            raise DscModelError(f"not a DSC classifier (schema {data.get('schema')!r})")
        try:
            return cls(
                kind=data["kind"],
                features=tuple(data["features"]),
                medians=np.asarray(data["medians"], dtype=np.float64),
                means=np.asarray(data["means"], dtype=np.float64),
                scales=np.asarray(data["scales"], dtype=np.float64),
                weights=np.asarray(data["weights"], dtype=np.float64),
                intercept=float(data["intercept"]),
                threshold=float(data["threshold"]),
                training_sensitivity=_float_or_nan(data.get("training_sensitivity")),
                training_specificity=_float_or_nan(data.get("training_specificity")),
                hyperparameters=dict(data.get("hyperparameters", {})),
                acquisition_range={k: float(v) for k, v in data.get("acquisition_range", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DscModelError(f"incomplete DSC classifier: {exc}") from exc

    def save(self, folder: Path) -> Path:
        """Write ``model.json`` into ``folder`` (created) and return its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> DscClassifier:
        """Read ``model.json`` from a model folder."""
        path = Path(folder) / MODEL_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DscModelError(f"no {MODEL_FILE} in model folder {folder}") from exc
        except json.JSONDecodeError as exc:
            raise DscModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _float_or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def sensitivity_threshold(
    y: np.ndarray, probability: np.ndarray, target: float = 0.85
) -> tuple[float, float, float]:
    """Highest threshold with sensitivity ≥ ``target``; returns (threshold, sensitivity, specificity).

    A case is called positive when its probability is at or above the threshold.
    """
    labels = np.asarray(y, dtype=int)
    p = np.asarray(probability, dtype=np.float64)
    positives = np.sort(p[labels == 1])
    if positives.size == 0 or not np.any(labels == 0):
        raise DscModelError("threshold selection needs both classes")
    # At most floor((1 - target)·n) positives may fall below the threshold.
    allowed_misses = int(np.floor((1.0 - target) * positives.size + 1e-9))
    threshold = float(positives[allowed_misses])
    called = p >= threshold
    sensitivity = float(called[labels == 1].mean())
    specificity = float((~called[labels == 0]).mean())
    return threshold, sensitivity, specificity


def _estimator(kind: ClassifierKind, c_value: float, seed: int) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "lda":
        return LinearDiscriminantAnalysis()
    if kind == "logistic":
        return LogisticRegression(C=c_value, max_iter=1000)
    svm = LinearSVC(C=c_value, random_state=seed)
    return CalibratedClassifierCV(svm, method="sigmoid", cv=3, ensemble=False)


def build_pipeline(kind: ClassifierKind, c_value: float = 1.0, seed: int = 0) -> Any:
    """Unfitted scikit-learn pipeline: median imputation, standardisation, classifier."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("classify", _estimator(kind, c_value, seed)),
        ]
    )


def _linear_parts(kind: ClassifierKind, fitted: Any) -> tuple[np.ndarray, float]:
    classifier = fitted.named_steps["classify"]
    if kind == "linear_svm":
        calibrated = classifier.calibrated_classifiers_[0]
        svm = calibrated.estimator
        sigmoid = calibrated.calibrators[0]
        # Platt: p = 1 / (1 + exp(a·f + b)) with f = w·z + c.
        weights = -sigmoid.a_ * svm.coef_[0]
        intercept = -(sigmoid.a_ * svm.intercept_[0] + sigmoid.b_)
        return np.asarray(weights, dtype=np.float64), float(intercept)
    return np.asarray(classifier.coef_[0], dtype=np.float64), float(classifier.intercept_[0])


def fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    feature_names: Sequence[str] = FEATURE_SETS["reduced"],
    kind: ClassifierKind = "lda",
    groups: np.ndarray | None = None,
    target_sensitivity: float = 0.85,
    c_value: float = 1.0,
    seed: int = 0,
) -> DscClassifier:
    """Train one classifier and choose its threshold.

    Parameters
    ----------
    features:
        ``(n, len(feature_names))``, NaN for missing values.
    labels:
        1 = dural metastasis, 0 = meningioma.
    groups:
        Patient of each row. With at least 5 patients of each class the
        threshold is chosen on out-of-fold probabilities of a 5-fold
        ``StratifiedGroupKFold``; otherwise on the training fit itself.
    target_sensitivity:
        Minimum sensitivity for metastasis at the threshold (0.85 in the study).
    c_value:
        Inverse regularisation strength of logistic regression and SVM.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    names = tuple(feature_names)
    if x.ndim != 2 or x.shape != (y.size, len(names)):
        raise DscModelError(f"features must have shape ({y.size}, {len(names)}), got {x.shape}")
    if set(np.unique(y)) != {0, 1}:
        raise DscModelError("labels must contain both classes (1 = metastasis, 0 = meningioma)")
    if kind not in _KINDS:
        raise DscModelError(f"unknown classifier kind {kind!r} (use one of {_KINDS})")
    pipeline = build_pipeline(kind, c_value, seed).fit(x, y)
    weights, intercept = _linear_parts(kind, pipeline)
    imputer, scaler = pipeline.named_steps["impute"], pipeline.named_steps["scale"]
    scales = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = DscClassifier(
        kind=kind,
        features=names,
        medians=np.nan_to_num(imputer.statistics_),
        means=scaler.mean_,
        scales=scales,
        weights=weights,
        intercept=intercept,
        threshold=0.5,
        hyperparameters={} if kind == "lda" else {"C": c_value},
    )
    probability = _threshold_probabilities(model, pipeline, x, y, groups, kind, c_value, seed)
    threshold, sensitivity, specificity = sensitivity_threshold(y, probability, target_sensitivity)
    return DscClassifier(
        **{**model.__dict__, "threshold": threshold, "training_sensitivity": sensitivity,
           "training_specificity": specificity}
    )


def _threshold_probabilities(
    model: DscClassifier,
    pipeline: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    kind: ClassifierKind,
    c_value: float,
    seed: int,
) -> np.ndarray:
    if groups is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        g = np.asarray(groups)
        per_class = [np.unique(g[y == label]).size for label in (0, 1)]
        if min(per_class) >= 5:
            splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
            oof = np.empty(y.size)
            for train, test in splitter.split(x, y, g):
                if np.unique(y[train]).size < 2:
                    return model.probability(x)
                fold = build_pipeline(kind, c_value, seed).fit(x[train], y[train])
                oof[test] = fold.predict_proba(x[test])[:, 1]
            return oof
    del pipeline
    return model.probability(x)
