"""Discrimination, calibration and clinical-utility metrics for binary classifiers.

The metrics are the ones the papers in ``../shared/papers`` report:

* ROC-AUC (Mann-Whitney form, ties counted one half), Brier score, binned
  calibration curve, calibration slope and calibration-in-the-large (logistic
  recalibration, Cox 1958 / Steyerberg, *Clinical Prediction Models*), and the
  threshold giving at least a target sensitivity (85 % for metastasis in the
  dural-lesion DSC study) with sensitivity, specificity, PPV, NPV and accuracy at it;
* the Hosmer-Lemeshow goodness-of-fit test (Hosmer & Lemeshow 1980; reported by
  the meningioma-grade nomogram study);
* decision-curve analysis, net benefit against treat-all / treat-none
  (Vickers & Elkin 2006; the nomogram study's DCA figure).

Scores are "higher means positive"; a case is called positive when its score is
``>= threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from analyzers._shared.stats._validation import StatsInputError, as_binary_labels, as_scores

__all__ = [
    "BinaryMetrics",
    "CalibrationCurve",
    "CalibrationFit",
    "DecisionCurve",
    "HosmerLemeshowResult",
    "binary_metrics",
    "brier_score",
    "calibration_curve",
    "calibration_slope_intercept",
    "decision_curve",
    "hosmer_lemeshow",
    "roc_auc",
    "threshold_for_sensitivity",
]

_EPS = 1e-12


def roc_auc(y: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve as the Mann-Whitney probability P(score+ > score-).

    Ties between a positive and a negative count one half, which equals the
    trapezoidal area of the empirical ROC curve (Hanley & McNeil 1982).

    Parameters
    ----------
    y:
        Labels coded 0/1; both classes must be present.
    scores:
        Scores, higher meaning more likely positive.

    Returns
    -------
    float
        The AUC in [0, 1].
    """
    labels = as_binary_labels(y)
    s = as_scores(scores, labels.size)
    return _auc_unchecked(labels, s)


def midranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks of ``x`` with ties sharing the mean of their ranks (Sun & Xu's midranks)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    change = np.empty(xs.size, dtype=bool)
    change[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], xs.size)
    ranks = np.empty(xs.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(change) - 1]
    return ranks


def _auc_unchecked(labels: NDArray[np.int_], s: NDArray[np.float64]) -> float:
    # Midranks give the tie-corrected Mann-Whitney U in O(n log n); NaN for one class.
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = midranks(s)[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def brier_score(y: ArrayLike, probabilities: ArrayLike) -> float:
    """Mean squared difference between predicted probability and outcome (0 is perfect)."""
    labels = as_binary_labels(y, need_both=False)
    p = as_scores(probabilities, labels.size, "probabilities", probability=True)
    return float(np.mean((p - labels) ** 2))


@dataclass(frozen=True)
class CalibrationCurve:
    """Binned reliability diagram.

    Attributes
    ----------
    bin_edges:
        ``n_bins + 1`` edges of the probability bins.
    mean_predicted, observed_fraction, counts:
        Per non-empty bin: mean predicted probability, fraction of positives and
        number of cases (empty bins are dropped).
    strategy:
        ``"uniform"`` (equal-width bins) or ``"quantile"`` (equal-count bins).
    """

    bin_edges: NDArray[np.float64]
    mean_predicted: NDArray[np.float64]
    observed_fraction: NDArray[np.float64]
    counts: NDArray[np.int_]
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def calibration_curve(
    y: ArrayLike,
    probabilities: ArrayLike,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> CalibrationCurve:
    """Observed fraction of positives against mean predicted probability per bin.

    Parameters
    ----------
    y, probabilities:
        Labels (0/1) and predicted probabilities of the positive class.
    n_bins:
        Number of bins (>= 1).
    strategy:
        ``"uniform"``: equal-width bins on [0, 1]; ``"quantile"``: bins holding
        about the same number of cases.
    """
    labels = as_binary_labels(y, need_both=False)
    p = as_scores(probabilities, labels.size, "probabilities", probability=True)
    if n_bins < 1:
        raise StatsInputError("n_bins must be >= 1")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise StatsInputError(f"unknown strategy {strategy!r}; use 'uniform' or 'quantile'")
    # Right-closed last bin so that p == 1 falls into it.
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=labels, minlength=n_bins)
    keep = counts > 0
    return CalibrationCurve(
        bin_edges=edges,
        mean_predicted=sum_p[keep] / counts[keep],
        observed_fraction=sum_y[keep] / counts[keep],
        counts=counts[keep],
        strategy=strategy,
    )


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of predicted probabilities.

    Attributes
    ----------
    slope:
        ``b`` of ``logit P(y=1) = a + b * logit(p)``; 1 is ideal, < 1 means
        predictions too extreme (over-fitting).
    intercept:
        Calibration-in-the-large: ``a`` of ``logit P(y=1) = a + logit(p)`` (slope
        fixed at 1); 0 is ideal, > 0 means risks are under-estimated on average.
    converged:
        False when the maximum-likelihood fit did not converge (e.g. perfect
        separation); the values are then NaN.
    """

    slope: float
    intercept: float
    converged: bool


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    q = np.clip(p, 1e-10, 1 - 1e-10)
    return np.log(q / (1 - q))


def _logistic_mle(
    design: NDArray[np.float64], y: NDArray[np.float64], offset: NDArray[np.float64]
) -> tuple[NDArray[np.float64], bool]:
    """Newton-Raphson maximum likelihood of an unpenalised logistic model with an offset."""
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        eta = offset + design @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1 - mu)
        grad = design.T @ (y - mu)
        hess = design.T @ (design * w[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return beta, False
        beta = beta + step
        if not np.isfinite(beta).all() or np.abs(beta).max() > 1e6:
            return beta, False
        if np.abs(step).max() < 1e-10:
            return beta, True
    return beta, False


def calibration_slope_intercept(y: ArrayLike, probabilities: ArrayLike) -> CalibrationFit:
    """Calibration slope and calibration-in-the-large by logistic recalibration.

    Follows Cox (1958) as used in Steyerberg's validation framework: the slope
    comes from regressing the outcome on the logit of the prediction, the
    intercept from the same model with the slope fixed at 1 (logit as offset).
    """
    labels = as_binary_labels(y)
    p = as_scores(probabilities, labels.size, "probabilities", probability=True)
    lp = _logit(p)
    yf = labels.astype(float)
    ones = np.ones((labels.size, 1))
    beta_slope, ok_slope = _logistic_mle(np.column_stack([ones, lp]), yf, np.zeros_like(lp))
    beta_citl, ok_citl = _logistic_mle(ones, yf, lp)
    ok = ok_slope and ok_citl
    return CalibrationFit(
        slope=float(beta_slope[1]) if ok else float("nan"),
        intercept=float(beta_citl[0]) if ok else float("nan"),
        converged=ok,
    )


@dataclass(frozen=True)
class HosmerLemeshowResult:
    """Hosmer-Lemeshow goodness-of-fit test.

    Attributes
    ----------
    statistic:
        ``sum_g (O_g - E_g)^2 / (E_g (1 - E_g / n_g))`` over the risk groups.
    dof:
        Degrees of freedom, ``n_groups - 2``.
    p_value:
        Upper tail of chi-square(dof); small values mean poor fit.
    observed, expected, sizes:
        Per group: observed positives, expected positives (sum of p), cases.
    """

    statistic: float
    dof: int
    p_value: float
    observed: NDArray[np.float64]
    expected: NDArray[np.float64]
    sizes: NDArray[np.int_]


def hosmer_lemeshow(y: ArrayLike, probabilities: ArrayLike, n_groups: int = 10) -> HosmerLemeshowResult:
    """Hosmer-Lemeshow test over ``n_groups`` groups of increasing predicted risk.

    Cases are sorted by predicted probability (stable sort) and cut into
    ``n_groups`` groups of as-equal-as-possible size ("deciles of risk" for 10).

    Parameters
    ----------
    y, probabilities:
        Labels (0/1) and predicted probabilities of the positive class.
    n_groups:
        Number of risk groups, >= 3 and <= number of cases.
    """
    labels = as_binary_labels(y, need_both=False)
    p = as_scores(probabilities, labels.size, "probabilities", probability=True)
    if n_groups < 3 or n_groups > labels.size:
        raise StatsInputError(f"n_groups must be in [3, {labels.size}], got {n_groups}")
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, n_groups)
    observed = np.array([labels[ix].sum() for ix in parts], dtype=float)
    expected = np.array([p[ix].sum() for ix in parts], dtype=float)
    sizes = np.array([ix.size for ix in parts], dtype=int)
    denom = expected * (1 - expected / sizes)
    diff2 = (observed - expected) ** 2
    # A group whose predictions are all exactly 0 or 1 has zero variance: it adds
    # nothing when it matches, and makes the fit infinitely bad when it does not.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(denom > _EPS, diff2 / np.where(denom > _EPS, denom, 1.0), 0.0)
    terms = np.where((denom <= _EPS) & (diff2 > _EPS), np.inf, terms)
    statistic = float(terms.sum())
    dof = n_groups - 2
    return HosmerLemeshowResult(
        statistic=statistic,
        dof=dof,
        p_value=float(sps.chi2.sf(statistic, dof)),
        observed=observed,
        expected=expected,
        sizes=sizes,
    )


@dataclass(frozen=True)
class BinaryMetrics:
    """Confusion-matrix metrics at one threshold (positive when score >= threshold).

    Ratios with an empty denominator (e.g. PPV when nothing is called positive) are NaN.
    """

    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    accuracy: float
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN kept as None)."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def binary_metrics(y: ArrayLike, scores: ArrayLike, threshold: float) -> BinaryMetrics:
    """Sensitivity, specificity, PPV, NPV and accuracy when calling ``score >= threshold`` positive."""
    labels = as_binary_labels(y, need_both=False)
    s = as_scores(scores, labels.size)
    pred = s >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    return BinaryMetrics(
        threshold=float(threshold),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        accuracy=_ratio(tp + tn, labels.size),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def threshold_for_sensitivity(y: ArrayLike, scores: ArrayLike, target_sensitivity: float = 0.85) -> BinaryMetrics:
    """The highest threshold whose sensitivity is at least ``target_sensitivity``.

    Among all thresholds reaching the target this one has the best specificity
    (sensitivity falls and specificity rises as the threshold rises). This is the
    dural-lesion DSC study's "clinically relevant threshold ... minimum
    sensitivity of 85 % for metastasis detection"; choose it on training (or
    pooled out-of-fold) predictions, never on the test cases it is reported for.

    Returns
    -------
    BinaryMetrics
        The chosen threshold (one of the observed scores) and the metrics at it.
    """
    labels = as_binary_labels(y)
    s = as_scores(scores, labels.size)
    if not 0.0 < target_sensitivity <= 1.0:
        raise StatsInputError("target_sensitivity must be in (0, 1]")
    candidates = np.unique(s)
    pos_sorted = np.sort(s[labels == 1])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, candidates, side="left")
    sens = tp / pos_sorted.size
    # sens is non-increasing in the threshold; the smallest score always gives 1.0.
    ok = np.nonzero(sens >= target_sensitivity - 1e-12)[0]
    return binary_metrics(labels, s, float(candidates[ok[-1]]))


@dataclass(frozen=True)
class DecisionCurve:
    """Net benefit over threshold probabilities (Vickers & Elkin 2006).

    ``net_benefit = TP/n - FP/n * pt / (1 - pt)`` for the model (positive when
    ``p >= pt``); ``treat_all = prevalence - (1 - prevalence) * pt / (1 - pt)``;
    treat-none is 0 everywhere.
    """

    thresholds: NDArray[np.float64]
    net_benefit: NDArray[np.float64]
    treat_all: NDArray[np.float64]
    treat_none: NDArray[np.float64]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {k: v.tolist() for k, v in asdict(self).items()}


def decision_curve(y: ArrayLike, probabilities: ArrayLike, thresholds: ArrayLike | None = None) -> DecisionCurve:
    """Decision-curve analysis of predicted probabilities.

    Parameters
    ----------
    y, probabilities:
        Labels (0/1) and predicted probabilities of the positive class.
    thresholds:
        Threshold probabilities in (0, 1); default 0.01, 0.02, ..., 0.99.
    """
    labels = as_binary_labels(y, need_both=False)
    p = as_scores(probabilities, labels.size, "probabilities", probability=True)
    pt = np.arange(1, 100) / 100.0 if thresholds is None else np.asarray(thresholds, dtype=float)
    if pt.ndim != 1 or pt.size == 0 or (pt <= 0).any() or (pt >= 1).any():
        raise StatsInputError("thresholds must be a non-empty 1-D array in (0, 1)")
    n = labels.size
    called = p[None, :] >= pt[:, None]
    tp = (called & (labels[None, :] == 1)).sum(axis=1)
    fp = (called & (labels[None, :] == 0)).sum(axis=1)
    odds = pt / (1 - pt)
    prevalence = labels.mean()
    return DecisionCurve(
        thresholds=pt,
        net_benefit=tp / n - fp / n * odds,
        treat_all=prevalence - (1 - prevalence) * odds,
        treat_none=np.zeros_like(pt),
    )
