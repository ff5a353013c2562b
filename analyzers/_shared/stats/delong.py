"""DeLong's test for two (or more) correlated ROC AUCs.

DeLong, DeLong & Clarke-Pearson (1988), *Biometrics* 44:837-845, with the fast
O(k n log n) computation of the structural components by midranks from Sun & Xu
(2014), *IEEE Signal Processing Letters* 21(11):1389-1393. The meningioma-grade
nomogram study compares its clinical, radiomics, DTL and nomogram models with
this test (its Table 4).

The test assumes independent cases (one row per patient). With several lesions
per patient use :func:`analyzers._shared.stats.paired_bootstrap_difference` with
``groups`` instead, which resamples patients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as sps

from analyzers._shared.stats._validation import StatsInputError, as_binary_labels, as_scores
from analyzers._shared.stats.metrics import midranks

__all__ = ["DeLongResult", "delong_covariance", "delong_pairwise", "delong_test"]


def delong_covariance(y: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """AUCs and their DeLong covariance matrix for ``k`` score vectors on the same cases.

    Parameters
    ----------
    y:
        Labels coded 0/1 (both classes present), length ``n``.
    scores:
        Array of shape ``(k, n)`` (or ``(n,)`` for one score), higher meaning positive.

    Returns
    -------
    aucs:
        Shape ``(k,)``.
    covariance:
        Shape ``(k, k)``: ``S10 / m + S01 / n`` with the structural components of
        DeLong et al. computed from midranks (Sun & Xu 2014).
    """
    labels = as_binary_labels(y)
    mat = np.atleast_2d(np.asarray(scores, dtype=float))
    if mat.ndim != 2 or mat.shape[1] != labels.size:
        raise StatsInputError(f"scores must have shape (k, {labels.size}), got {mat.shape}")
    for row in mat:
        as_scores(row, labels.size)
    pos = mat[:, labels == 1]
    neg = mat[:, labels == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.apply_along_axis(midranks, 1, pos)
    ty = np.apply_along_axis(midranks, 1, neg)
    tz = np.apply_along_axis(midranks, 1, np.hstack([pos, neg]))
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # placement of each positive among the negatives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # one minus placement of each negative among positives
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((mat.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((mat.shape[0],) * 2)
    return aucs, s10 / m + s01 / n


@dataclass(frozen=True)
class DeLongResult:
    """DeLong comparison of model A against model B on the same cases.

    Attributes
    ----------
    auc_a, auc_b:
        The two AUCs.
    difference:
        ``auc_a - auc_b``.
    variance_a, variance_b, covariance:
        DeLong (co)variances of the AUC estimates.
    z:
        ``difference / sqrt(var_a + var_b - 2 cov)``; 0 when both curves are identical.
    p_value:
        Two-sided normal p-value.
    ci_lower, ci_upper, confidence:
        Normal confidence interval of the difference.
    """

    auc_a: float
    auc_b: float
    difference: float
    variance_a: float
    variance_b: float
    covariance: float
    z: float
    p_value: float
    ci_lower: float
    ci_upper: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def delong_test(y: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, confidence: float = 0.95) -> DeLongResult:
    """Two-sided DeLong test of equal AUCs for two models scored on the same cases.

    Parameters
    ----------
    y:
        Labels coded 0/1.
    scores_a, scores_b:
        The two models' scores for the same cases in the same order.
    confidence:
        Level of the confidence interval of the AUC difference.
    """
    if not 0.0 < confidence < 1.0:
        raise StatsInputError("confidence must be in (0, 1)")
    labels = as_binary_labels(y)
    a = as_scores(scores_a, labels.size, "scores_a")
    b = as_scores(scores_b, labels.size, "scores_b")
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        # Identical rankings: no difference and no variance (pROC reports Z = 0, p = 1).
        z = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf)
        se = 0.0
    else:
        se = float(np.sqrt(var))
        z = diff / se
    q = float(sps.norm.ppf(0.5 + confidence / 2))
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        difference=diff,
        variance_a=float(cov[0, 0]),
        variance_b=float(cov[1, 1]),
        covariance=float(cov[0, 1]),
        z=z,
        p_value=float(2 * sps.norm.sf(abs(z))),
        ci_lower=diff - q * se,
        ci_upper=diff + q * se,
        confidence=confidence,
    )


def delong_pairwise(
    y: ArrayLike, scores: Mapping[str, ArrayLike], confidence: float = 0.95
) -> dict[tuple[str, str], DeLongResult]:
    """DeLong test for every pair of named models (the nomogram study's Table 4).

    Returns
    -------
    dict
        ``{(name_a, name_b): DeLongResult}`` for each unordered pair, in the
        order the names are given.
    """
    if len(scores) < 2:
        raise StatsInputError("need at least two models to compare")
    return {(a, b): delong_test(y, scores[a], scores[b], confidence) for a, b in combinations(list(scores), 2)}
