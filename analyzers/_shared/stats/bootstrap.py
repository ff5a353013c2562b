"""Patient-level (cluster) bootstrap confidence intervals.

When a patient contributes several lesions, lesions are not independent; the
dural-lesion DSC study therefore derives its 95 % CIs by "cluster-based
bootstrap resampling at the patient level". Here whole patients (clusters) are
drawn with replacement and every lesion of a drawn patient enters the resample.
With ``stratified=True`` patients with at least one positive lesion and patients
with none are resampled separately, keeping the number of patients of each kind
fixed, so that small cohorts do not produce resamples without one class
(pROC's ``boot.stratified`` does the same with cases). Percentile intervals
(Efron & Tibshirani 1993). Resamples on which a metric is undefined (a single
class) are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_curve

from analyzers._shared.stats._validation import (
    StatsInputError,
    as_binary_labels,
    as_groups,
    as_scores,
)
from analyzers._shared.stats.metrics import _auc_unchecked, binary_metrics, roc_auc

__all__ = [
    "BootstrapCI",
    "BootstrapDifference",
    "Metric",
    "RocBand",
    "UnivariateAUC",
    "bootstrap_binary_metrics",
    "cluster_bootstrap_ci",
    "paired_bootstrap_difference",
    "roc_curve_band",
    "univariate_aucs",
]

Metric = Callable[[NDArray[np.int_], NDArray[np.float64]], float]
"""A metric ``(y, scores) -> float``; it may raise ``StatsInputError`` when undefined."""


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its bootstrap percentile interval.

    Attributes
    ----------
    estimate:
        The metric on the original data.
    lower, upper:
        Percentile bounds of the interval.
    confidence:
        Its level (0.95 for a 95 % CI).
    std:
        Standard deviation of the bootstrap distribution (a standard error).
    n_boot:
        Resamples drawn.
    n_used:
        Resamples on which the metric was defined.
    """

    estimate: float
    lower: float
    upper: float
    confidence: float
    std: float
    n_boot: int
    n_used: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def format(self, decimals: int = 3) -> str:
        """``"0.866 (95% CI 0.798-0.934)"`` (``" to "`` between bounds when one is negative)."""
        pct = round(self.confidence * 100)
        sep = " to " if min(self.lower, self.upper) < 0 else "-"
        return f"{self.estimate:.{decimals}f} ({pct}% CI {self.lower:.{decimals}f}{sep}{self.upper:.{decimals}f})"


def _check_options(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise StatsInputError("n_boot must be >= 1")
    if not 0.0 < confidence < 1.0:
        raise StatsInputError("confidence must be in (0, 1)")


def _resamples(
    labels: NDArray[np.int_], codes: NDArray[np.int_], n_boot: int, stratified: bool, seed: int
) -> Iterator[NDArray[np.int_]]:
    """Yield row indices of ``n_boot`` cluster-bootstrap resamples.

    A resample repeats every row of a patient as often as the patient was drawn;
    rows come out in their original order (metrics do not depend on order).
    """
    n_clusters = int(codes.max()) + 1
    if stratified:
        has_pos = np.bincount(codes, weights=labels, minlength=n_clusters) > 0
        strata = [np.nonzero(has_pos)[0], np.nonzero(~has_pos)[0]]
        strata = [s for s in strata if s.size]
    else:
        strata = [np.arange(n_clusters)]
    rows = np.arange(codes.size)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        drawn = np.concatenate([s[rng.integers(0, s.size, size=s.size)] for s in strata])
        times = np.bincount(drawn, minlength=n_clusters)
        yield np.repeat(rows, times[codes])


def _interval(values: NDArray[np.float64], confidence: float) -> tuple[float, float, float]:
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _safe(metric: Metric, y: NDArray[np.int_], s: NDArray[np.float64]) -> float:
    if metric is roc_auc:
        # Inputs were validated once; skip per-resample validation for the common case.
        return _auc_unchecked(y, s)
    try:
        value = float(metric(y, s))
    except StatsInputError:
        return float("nan")
    return value


def cluster_bootstrap_ci(
    y: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike | None = None,
    metric: Metric = roc_auc,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    stratified: bool = True,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile CI of ``metric`` by resampling whole patients.

    Parameters
    ----------
    y:
        Labels coded 0/1.
    scores:
        Scores or probabilities, one per row.
    groups:
        Patient (cluster) identifier per row; ``None`` resamples rows.
    metric:
        ``(y, scores) -> float``; default ROC-AUC. Any metric works, e.g.
        ``lambda y, p: binary_metrics(y, p, t).sensitivity``.
    n_boot, confidence, stratified, seed:
        Number of resamples, interval level, whether to keep the number of
        patients with and without positives fixed, and the random seed (the same
        seed gives the same interval).
    """
    _check_options(n_boot, confidence)
    labels = as_binary_labels(y, need_both=False)
    s = as_scores(scores, labels.size)
    codes = as_groups(groups, labels.size)
    estimate = _safe(metric, labels, s)
    values = np.array([_safe(metric, labels[ix], s[ix]) for ix in _resamples(labels, codes, n_boot, stratified, seed)])
    values = values[np.isfinite(values)]
    lo, hi, sd = _interval(values, confidence)
    return BootstrapCI(estimate, lo, hi, confidence, sd, n_boot, int(values.size))


@dataclass(frozen=True)
class BootstrapDifference:
    """Paired bootstrap of ``metric(A) - metric(B)`` on the same resampled patients.

    ``p_value`` is the two-sided bootstrap p-value ``2 * min(P(d <= 0), P(d >= 0))``
    (capped at 1); ``variance`` the bootstrap variance of the difference.
    """

    ci: BootstrapCI
    variance: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"ci": self.ci.to_dict(), "variance": self.variance, "p_value": self.p_value}


def paired_bootstrap_difference(
    y: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    groups: ArrayLike | None = None,
    metric: Metric = roc_auc,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    stratified: bool = True,
    seed: int = 0,
) -> BootstrapDifference:
    """Compare two models on the same patients by a paired (cluster) bootstrap.

    Use it instead of DeLong's test when patients contribute several lesions.
    """
    _check_options(n_boot, confidence)
    labels = as_binary_labels(y, need_both=False)
    a = as_scores(scores_a, labels.size, "scores_a")
    b = as_scores(scores_b, labels.size, "scores_b")
    codes = as_groups(groups, labels.size)
    estimate = _safe(metric, labels, a) - _safe(metric, labels, b)
    diffs = np.array(
        [
            _safe(metric, labels[ix], a[ix]) - _safe(metric, labels[ix], b[ix])
            for ix in _resamples(labels, codes, n_boot, stratified, seed)
        ]
    )
    diffs = diffs[np.isfinite(diffs)]
    lo, hi, sd = _interval(diffs, confidence)
    p = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))) if diffs.size else float("nan")
    ci = BootstrapCI(float(estimate), lo, hi, confidence, sd, n_boot, int(diffs.size))
    return BootstrapDifference(ci=ci, variance=sd**2, p_value=p)


def bootstrap_binary_metrics(
    y: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    groups: ArrayLike | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    stratified: bool = True,
    seed: int = 0,
) -> dict[str, BootstrapCI]:
    """CIs of sensitivity, specificity, PPV, NPV and accuracy at a fixed threshold.

    The threshold is not re-chosen inside the resamples (it was fixed beforehand,
    e.g. on training data), as for the nomogram study's Table 3.
    """
    _check_options(n_boot, confidence)
    labels = as_binary_labels(y, need_both=False)
    s = as_scores(scores, labels.size)
    codes = as_groups(groups, labels.size)
    names = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
    point = binary_metrics(labels, s, threshold)
    rows = []
    for ix in _resamples(labels, codes, n_boot, stratified, seed):
        m = binary_metrics(labels[ix], s[ix], threshold)
        rows.append([getattr(m, k) for k in names])
    table = np.asarray(rows, dtype=float)
    out = {}
    for j, name in enumerate(names):
        col = table[:, j][np.isfinite(table[:, j])]
        lo, hi, sd = _interval(col, confidence)
        out[name] = BootstrapCI(float(getattr(point, name)), lo, hi, confidence, sd, n_boot, int(col.size))
    return out


@dataclass(frozen=True)
class RocBand:
    """Empirical ROC curve on a fixed false-positive-rate grid with a bootstrap band."""

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    auc: BootstrapCI

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "fpr": self.fpr.tolist(),
            "tpr": self.tpr.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "auc": self.auc.to_dict(),
        }


def _tpr_on_grid(y: NDArray[np.int_], s: NDArray[np.float64], grid: NDArray[np.float64]) -> NDArray[np.float64]:
    # Vertical averaging (Fawcett 2006): at each FPR the best TPR the empirical
    # step curve reaches, so vertical segments are taken at their top.
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return tpr[np.searchsorted(fpr, grid, side="right") - 1]


def roc_curve_band(
    y: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    n_points: int = 101,
    n_boot: int = 1000,
    confidence: float = 0.95,
    stratified: bool = True,
    seed: int = 0,
) -> RocBand:
    """ROC curve with a pointwise (vertical) cluster-bootstrap confidence band and the AUC CI."""
    _check_options(n_boot, confidence)
    labels = as_binary_labels(y)
    s = as_scores(scores, labels.size)
    codes = as_groups(groups, labels.size)
    grid = np.linspace(0.0, 1.0, n_points)
    curves = []
    aucs = []
    for ix in _resamples(labels, codes, n_boot, stratified, seed):
        yy = labels[ix]
        if yy.min() == yy.max():
            continue
        curves.append(_tpr_on_grid(yy, s[ix], grid))
        aucs.append(roc_auc(yy, s[ix]))
    alpha = 1.0 - confidence
    band = np.asarray(curves)
    lower, upper = np.quantile(band, [alpha / 2, 1 - alpha / 2], axis=0)
    lo, hi, sd = _interval(np.asarray(aucs), confidence)
    auc = BootstrapCI(roc_auc(labels, s), lo, hi, confidence, sd, n_boot, len(aucs))
    return RocBand(grid, _tpr_on_grid(labels, s, grid), lower, upper, auc)


@dataclass(frozen=True)
class UnivariateAUC:
    """Discrimination of one raw feature.

    ``direction`` is ``"higher"`` when larger values point to the positive class
    (AUC >= 0.5 on the raw values) and ``"lower"`` otherwise; ``auc`` is given in
    that direction, so it is always >= 0.5.
    """

    feature: str
    direction: str
    auc: BootstrapCI

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"feature": self.feature, "direction": self.direction, "auc": self.auc.to_dict()}


def univariate_aucs(
    X: ArrayLike,
    y: ArrayLike,
    feature_names: Sequence[str],
    groups: ArrayLike | None = None,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[UnivariateAUC]:
    """ROC-AUC with cluster-bootstrap CI of each feature on its own (e.g. rCBV, rCBF).

    Rows with a missing value of a feature are left out for that feature only.
    """
    mat = np.asarray(X, dtype=float)
    labels = as_binary_labels(y)
    if mat.ndim != 2 or mat.shape[0] != labels.size or mat.shape[1] != len(feature_names):
        raise StatsInputError(f"X must have shape ({labels.size}, {len(feature_names)}), got {mat.shape}")
    codes = as_groups(groups, labels.size)
    out = []
    for j, name in enumerate(feature_names):
        ok = np.isfinite(mat[:, j])
        col, yy, gg = mat[ok, j], labels[ok], codes[ok]
        raw = roc_auc(yy, col)
        direction = "higher" if raw >= 0.5 else "lower"
        oriented = col if direction == "higher" else -col
        ci = cluster_bootstrap_ci(yy, oriented, gg, n_boot=n_boot, confidence=confidence, seed=seed)
        out.append(UnivariateAUC(feature=name, direction=direction, auc=ci))
    return out
