"""Feature selection of the study: z-score, ICC stability, Spearman pruning, LASSO.

Li et al. (Sci Rep 2025), "Clinical, radiomics, and DTL features selection":

1. z-score normalisation of every feature (mean and SD of the training set);
2. stability: features with an intraclass correlation coefficient ICC >= 0.8
   between two delineations are kept. The study had two readers; without a
   second reader the two versions are the ROI dilated and eroded by 1 mm
   (:func:`perturbed_rois`). ICC(2,1): two-way random effects, absolute
   agreement, single measurement (Shrout & Fleiss 1979; Koo & Li 2016);
3. redundancy: of every pair with Spearman |rho| > 0.9 only the feature with
   the better univariate AUC is kept;
4. LASSO with the penalty chosen by cross-validation; the score (rad-score,
   DTL-score) is the LASSO linear predictor ``intercept + sum(coef * z)``. As in
   the study's platform (OnekeyAI) the LASSO is a least-squares LASSO on the 0/1
   grade label (scikit-learn ``LassoCV``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.stats import spearmanr
from sklearn.linear_model import LassoCV, lasso_path
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

__all__ = [
    "LassoScore",
    "SelectionReport",
    "fit_lasso_score",
    "icc_2_1",
    "perturbed_rois",
    "spearman_prune",
    "univariate_auc",
]


def perturbed_rois(mask: sitk.Image, radius_mm: float = 1.0) -> tuple[sitk.Image, sitk.Image]:
    """The ROI dilated and eroded by ``radius_mm`` (ball, in voxels per axis).

    These stand in for a second reader's delineation when computing ICCs.
    """
    radius = [max(1, round(radius_mm / s)) for s in mask.GetSpacing()]
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    dilated = sitk.BinaryDilate(binary, radius, sitk.sitkBall, 0, 1)
    eroded = sitk.BinaryErode(binary, radius, sitk.sitkBall, 0, 1)
    if not np.any(sitk.GetArrayViewFromImage(eroded)):
        eroded = binary  # a tiny ROI erodes to nothing; keep the original instead
    return dilated, eroded


def icc_2_1(ratings: np.ndarray) -> np.ndarray:
    """ICC(2,1) per feature.

    Parameters
    ----------
    ratings:
        ``(n_subjects, k_raters, n_features)``.

    Returns
    -------
    numpy.ndarray
        ``(n_features,)``; NaN where a feature does not vary at all.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError("ratings must be (n_subjects >= 2, k_raters >= 2, n_features)")
    n, k, _ = x.shape
    grand = x.mean(axis=(0, 1))
    subject_means = x.mean(axis=1)
    rater_means = x.mean(axis=0)
    ss_rows = k * ((subject_means - grand) ** 2).sum(axis=0)
    ss_cols = n * ((rater_means - grand) ** 2).sum(axis=0)
    ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
    ss_error = ss_total - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ms_rows - ms_error) / denominator, np.nan)


def univariate_auc(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Direction-free AUC ``max(AUC, 1 - AUC)`` of every column as a score."""
    y = np.asarray(labels)
    aucs = np.array([roc_auc_score(y, column) for column in np.asarray(features).T])
    return np.maximum(aucs, 1.0 - aucs)


def spearman_prune(features: np.ndarray, labels: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Column indices kept after removing one of every pair with |rho| > ``threshold``.

    Columns are visited by decreasing univariate AUC; a column is kept when it
    is not correlated above the threshold with any column kept before it, so
    of a correlated pair the better-performing feature survives.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.shape[1] == 0:
        return np.array([], dtype=int)
    if x.shape[1] == 1:
        return np.array([0])
    statistic = spearmanr(x).statistic
    if np.ndim(statistic) == 0:  # scipy returns a scalar for two columns
        statistic = np.array([[1.0, statistic], [statistic, 1.0]])
    rho = np.abs(np.nan_to_num(statistic, nan=0.0))
    order = np.argsort(-univariate_auc(x, labels), kind="stable")
    kept: list[int] = []
    for column in order:
        if all(rho[column, other] <= threshold for other in kept):
            kept.append(int(column))
    return np.array(sorted(kept), dtype=int)


@dataclass(frozen=True)
class SelectionReport:
    """How many features survived each step, and the LASSO penalty."""

    extracted: int
    non_constant: int
    stable: int
    uncorrelated: int
    selected: int
    alpha: float
    icc_threshold: float
    rho_threshold: float


@dataclass(frozen=True)
class LassoScore:
    """A LASSO linear predictor over z-scored features (rad-score or DTL-score).

    Attributes
    ----------
    names:
        The selected features.
    means, scales:
        Training mean and SD of each selected feature (z-score).
    coefficients, intercept:
        LASSO coefficients on the z-scores and intercept.
    report:
        The selection steps.
    """

    names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    report: SelectionReport

    def __post_init__(self) -> None:
        lengths = {len(self.names), len(self.means), len(self.scales), len(self.coefficients)}
        if len(lengths) != 1:
            raise ValueError("names, means, scales and coefficients must have equal length")
        if any(s <= 0 for s in self.scales):
            raise ValueError("scales must be positive")

    def z_scores(self, features: Mapping[str, float]) -> np.ndarray:
        """The z-scored selected features of one case."""
        missing = [name for name in self.names if name not in features]
        if missing:
            raise KeyError(f"features missing for the score: {missing[:5]}")
        values = np.array([features[name] for name in self.names], dtype=np.float64)
        return (values - np.array(self.means)) / np.array(self.scales)

    def score(self, features: Mapping[str, float]) -> float:
        """The linear predictor of one case."""
        return float(self.intercept + self.z_scores(features) @ np.array(self.coefficients))

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (for the model folder)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LassoScore:
        """Inverse of :meth:`to_json`."""
        return cls(
            names=tuple(data["names"]),
            means=tuple(float(v) for v in data["means"]),
            scales=tuple(float(v) for v in data["scales"]),
            coefficients=tuple(float(v) for v in data["coefficients"]),
            intercept=float(data["intercept"]),
            report=SelectionReport(**data["report"]),
        )


@dataclass(frozen=True)
class _Standardised:
    values: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    columns: np.ndarray = field(repr=False)


def _standardise(x: np.ndarray) -> _Standardised:
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    finite = np.all(np.isfinite(x), axis=0)
    columns = np.flatnonzero(finite & (scales > 1e-12 * np.maximum(np.abs(means), 1.0)))
    z = (x[:, columns] - means[columns]) / scales[columns]
    return _Standardised(z, means[columns], scales[columns], columns)


def fit_lasso_score(
    features: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    names: Sequence[str],
    *,
    second_delineation: tuple[np.ndarray, np.ndarray] | None = None,
    icc_threshold: float = 0.8,
    rho_threshold: float = 0.9,
    folds: int = 10,
    seed: int = 0,
) -> LassoScore:
    """Run the study's selection chain and fit the score.

    Parameters
    ----------
    features:
        ``(n_cases, n_features)`` training features.
    labels:
        1 = high grade (WHO 2/3), 0 = low grade.
    names:
        Feature names (columns).
    second_delineation:
        Features of the same cases (or of a subset) from two other delineations,
        each ``(n_icc_cases, n_features)``: the ICC inputs. None skips the
        stability filter (e.g. when no perturbed ROIs were computed).
    icc_threshold, rho_threshold:
        The study's 0.8 and 0.9.
    folds:
        Cross-validation folds for the LASSO penalty (fewer when a class is small).
    seed:
        Seed of the fold assignment.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if x.ndim != 2 or x.shape[0] != len(y) or x.shape[1] != len(names):
        raise ValueError("features must be (n_cases, len(names)) with one label per case")
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("labels must contain both classes 0 and 1")
    standard = _standardise(x)
    columns = standard.columns
    z = standard.values
    keep = np.arange(len(columns))
    if second_delineation is not None:
        first, second = (np.asarray(a, dtype=np.float64) for a in second_delineation)
        ratings = np.stack([first[:, columns], second[:, columns]], axis=1)
        icc = icc_2_1(ratings)
        keep = np.flatnonzero(np.nan_to_num(icc, nan=-1.0) >= icc_threshold)
    stable = len(keep)
    if stable == 0:
        raise ValueError("no feature passed the ICC stability filter")
    pruned = keep[spearman_prune(z[:, keep], y, rho_threshold)]
    minority = int(min(np.bincount(y)))
    splitter = StratifiedKFold(n_splits=max(2, min(folds, minority)), shuffle=True, random_state=seed)
    lasso = LassoCV(cv=splitter, random_state=seed, max_iter=20000).fit(z[:, pruned], y)
    coefficients = lasso.coef_
    alpha = float(lasso.alpha_)
    if not np.any(coefficients):
        # The CV optimum can be the empty model on weak data; take the largest
        # penalty on the path that keeps at least one feature instead.
        alphas, path, _ = lasso_path(z[:, pruned], y - y.mean(), max_iter=20000)
        first_nonzero = int(np.argmax(np.any(path != 0, axis=0)))
        alpha = float(alphas[first_nonzero])
        coefficients = path[:, first_nonzero]
    chosen = np.flatnonzero(coefficients)
    selected = pruned[chosen]
    # The z-scored columns have zero training mean, so the intercept is the event rate.
    intercept = float(y.mean())
    report = SelectionReport(
        extracted=x.shape[1],
        non_constant=len(columns),
        stable=stable,
        uncorrelated=len(pruned),
        selected=len(selected),
        alpha=alpha,
        icc_threshold=icc_threshold,
        rho_threshold=rho_threshold,
    )
    return LassoScore(
        names=tuple(names[columns[i]] for i in selected),
        means=tuple(float(v) for v in standard.means[selected]),
        scales=tuple(float(v) for v in standard.scales[selected]),
        coefficients=tuple(float(v) for v in coefficients[chosen]),
        intercept=intercept,
        report=report,
    )
