"""Tests of analyzers._shared.stats: hand-computed cases, published values, properties."""

from __future__ import annotations

import math
import pickle
from typing import Any, ClassVar

import numpy as np
import pytest
from optuna.trial import BaseTrial, FixedTrial
from scipy import stats as sps
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from analyzers._shared.stats import (
    CVScheme,
    StatsInputError,
    binary_metrics,
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    cluster_bootstrap_ci,
    cohens_d,
    compare_models,
    decision_curve,
    delong_covariance,
    delong_pairwise,
    delong_test,
    evaluate_predictions,
    fit_final_model,
    hosmer_lemeshow,
    lda_factory,
    mann_whitney_u,
    model_summary_table,
    nested_cross_validate,
    paired_bootstrap_difference,
    roc_auc,
    roc_curve_band,
    summarize,
    threshold_for_sensitivity,
    tune_and_fit,
    univariate_aucs,
    wilcoxon_signed_rank,
)

# ---------------------------------------------------------------------------
# Reference data
# ---------------------------------------------------------------------------

# aSAH (aneurysmal subarachnoid haemorrhage) data set shipped with R's pROC
# (Turck et al. 2010; Robin et al. 2011, BMC Bioinformatics 12:77): outcome
# (1 = poor), WFNS score, S100B and NDKA for 113 patients, in the package's row order.
ASAH_Y = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0,
    0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0,
    0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0,
    0,
]  # fmt: skip
ASAH_S100B = [
    0.13, 0.14, 0.1, 0.04, 0.13, 0.1, 0.47, 0.16, 0.18, 0.1, 0.12, 0.1, 0.44, 0.71,
    0.04, 0.08, 0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11,
    0.13, 0.19, 0.05, 0.16, 0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.5, 0.46,
    0.16, 0.07, 0.43, 0.45, 0.11, 0.08, 0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.1,
    0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.3, 0.03, 0.09, 0.04, 0.23, 0.7, 0.09,
    0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.1, 0.08, 0.11, 0.33, 0.11, 0.28,
    0.07, 0.1, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.1, 0.15, 0.08, 0.14, 0.1, 0.07,
    0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.5,
    0.48,
]  # fmt: skip
ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2,
    1, 1, 3, 4, 2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1,
    2, 2, 2, 1, 5, 1, 1, 2, 5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4,
    2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1,
    1,
]  # fmt: skip
ASAH_NDKA = [
    3.01, 8.54, 8.09, 10.42, 17.4, 12.75, 6.0, 13.2, 15.54, 6.01, 15.96, 17.86, 5.18,
    8.9, 13.41, 20.75, 11.6, 16.11, 32.37, 54.82, 32.41, 49.94, 40.34, 9.47, 6.29,
    12.53, 6.54, 6.3, 80.3, 12.8, 9.8, 9.81, 9.85, 18.21, 5.03, 14.04, 21.93, 8.02,
    7.42, 8.38, 6.59, 9.63, 13.12, 7.96, 14.34, 41.43, 7.63, 7.06, 12.59, 13.56, 3.87,
    9.44, 7.66, 12.98, 419.19, 27.19, 22.27, 9.95, 21.22, 11.73, 10.4, 58.83, 6.39,
    11.09, 12.22, 13.67, 17.21, 22.63, 12.9, 9.7, 21.57, 8.23, 72.57, 15.54, 10.51,
    10.6, 14.57, 5.19, 9.63, 4.61, 21.48, 17.3, 12.71, 9.44, 11.07, 19.46, 10.83, 5.37,
    11.97, 7.75, 9.83, 10.55, 28.49, 8.53, 12.57, 12.9, 46.83, 11.68, 12.67, 9.01, 9.57,
    34.06, 11.72, 14.26, 47.61, 11.67, 24.58, 10.33, 13.87, 15.89, 22.43, 6.79, 13.45,
]  # fmt: skip


def _cohort(n_patients: int = 40, seed: int = 0, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic lesion cohort: 1-3 lesions per patient, label per patient, 2 features."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    patient_label = np.zeros(n_patients, dtype=int)
    patient_label[rng.permutation(n_patients)[: int(0.4 * n_patients)]] = 1
    y = patient_label[pid]
    X = rng.normal(size=(y.size, 2)) + shift * y[:, None]
    return X, y, pid


# ---------------------------------------------------------------------------
# AUC, Brier, calibration, thresholds
# ---------------------------------------------------------------------------


def test_auc_of_perfect_reversed_and_tied_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.7, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5] * 5) == 0.5


def test_auc_of_hanley_mcneil_1982_rating_example() -> None:
    # Hanley & McNeil, Radiology 143:29 (1982), Table 1: CT ratings 1-5 of 58
    # normal and 51 abnormal cases; published area (Wilcoxon, ties 1/2) 0.893.
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    assert roc_auc(y, np.r_[normal, abnormal]) == pytest.approx(0.893, abs=5e-4)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 6, 200) + y
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_brier_score_by_hand() -> None:
    assert brier_score([1, 0], [0.8, 0.3]) == pytest.approx((0.2**2 + 0.3**2) / 2)


def test_calibration_curve_bins_by_hand() -> None:
    c = calibration_curve([0, 0, 1, 1, 1, 1], [0.05, 0.15, 0.12, 0.55, 0.95, 1.0], n_bins=10)
    np.testing.assert_allclose(c.mean_predicted, [0.05, 0.135, 0.55, 0.975])
    np.testing.assert_allclose(c.observed_fraction, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(c.counts, [1, 2, 1, 2])


def test_calibration_slope_and_intercept_recover_known_miscalibration() -> None:
    rng = np.random.default_rng(2)
    lp = rng.normal(0, 1.5, 20000)
    y = (rng.random(lp.size) < 1 / (1 + np.exp(-lp))).astype(int)
    good = calibration_slope_intercept(y, 1 / (1 + np.exp(-lp)))
    assert good.converged and good.slope == pytest.approx(1.0, abs=0.05)
    assert good.intercept == pytest.approx(0.0, abs=0.05)
    # Predictions twice as extreme on the logit scale: slope 1/2 (over-fitting).
    sharp = calibration_slope_intercept(y, 1 / (1 + np.exp(-2 * lp)))
    assert sharp.slope == pytest.approx(0.5, abs=0.03)
    # Risks shifted by -1 on the logit scale: calibration-in-the-large about +1.
    low = calibration_slope_intercept(y, 1 / (1 + np.exp(-(lp - 1))))
    assert low.intercept == pytest.approx(1.0, abs=0.06)


def test_binary_metrics_and_threshold_for_sensitivity_by_hand() -> None:
    pos = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.2]
    neg = [0.1, 0.3, 0.4, 0.55, 0.65, 0.15]
    y = [1] * 7 + [0] * 6
    m = threshold_for_sensitivity(y, pos + neg, 0.85)
    # 6/7 = 0.857 >= 0.85 reached at 0.5; 0.6 gives only 5/7.
    assert m.threshold == 0.5
    assert (m.tp, m.fn, m.fp, m.tn) == (6, 1, 2, 4)
    assert m.sensitivity == pytest.approx(6 / 7)
    assert m.specificity == pytest.approx(4 / 6)
    assert m.ppv == pytest.approx(6 / 8)
    assert m.npv == pytest.approx(4 / 5)
    assert m.accuracy == pytest.approx(10 / 13)
    assert threshold_for_sensitivity(y, pos + neg, 1.0).threshold == 0.2
    nothing = binary_metrics(y, pos + neg, 2.0)
    assert math.isnan(nothing.ppv) and nothing.to_dict()["ppv"] is None


# ---------------------------------------------------------------------------
# Hosmer-Lemeshow and decision curves
# ---------------------------------------------------------------------------


def test_hosmer_lemeshow_by_hand() -> None:
    # Three groups of three: (E, O) = (0.6, 1), (1.5, 1), (2.4, 2); each group adds
    # (O-E)^2 / (E (1 - E/3)) = 0.16/0.48 = 0.25/0.75 = 0.16/0.48 = 1/3, so chi2 = 1 on 1 df.
    y = [0, 0, 1, 0, 1, 0, 1, 1, 0]
    p = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    hl = hosmer_lemeshow(y, p, n_groups=3)
    np.testing.assert_allclose(hl.expected, [0.6, 1.5, 2.4])
    np.testing.assert_allclose(hl.observed, [1, 1, 2])
    assert hl.statistic == pytest.approx(1.0)
    assert hl.dof == 1
    assert hl.p_value == pytest.approx(2 * (1 - sps.norm.cdf(1.0)))  # chi2(1) tail at 1


def test_hosmer_lemeshow_equals_two_class_pearson_form() -> None:
    # Independent computation: sum over groups and both classes of (O - E)^2 / E.
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 200)
    y = (rng.random(200) < p).astype(int)
    hl = hosmer_lemeshow(y, p, n_groups=10)
    order = np.argsort(p, kind="stable")
    chi2 = 0.0
    for ix in np.array_split(order, 10):
        o1, e1 = y[ix].sum(), p[ix].sum()
        o0, e0 = ix.size - o1, ix.size - e1
        chi2 += (o1 - e1) ** 2 / e1 + (o0 - e0) ** 2 / e0
    assert hl.statistic == pytest.approx(chi2)
    assert hl.p_value == pytest.approx(sps.chi2.sf(chi2, 8))


def test_decision_curve_by_hand() -> None:
    y = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.6, 0.55, 0.3, 0.25, 0.2, 0.1, 0.1, 0.05, 0.05]
    dca = decision_curve(y, p, thresholds=[0.2, 0.5, 0.95])
    # pt 0.2: TP 3, FP 3 -> 0.3 - 0.3 * 0.25; pt 0.5: TP 2, FP 1 -> 0.2 - 0.1; pt 0.95: none called.
    np.testing.assert_allclose(dca.net_benefit, [0.225, 0.1, 0.0])
    # treat all: 0.3 - 0.7 * pt / (1 - pt)
    np.testing.assert_allclose(dca.treat_all, [0.125, -0.4, 0.3 - 0.7 * 19])
    np.testing.assert_array_equal(dca.treat_none, [0, 0, 0])


# ---------------------------------------------------------------------------
# DeLong
# ---------------------------------------------------------------------------


def test_delong_reproduces_proc_on_asah() -> None:
    # Expected values from pROC's own test suite (tests/testthat/test-roc.test.R and
    # test-cov.R): roc.test(wfns, s100b), roc.test(wfns, ndka), roc.test(ndka, s100b),
    # cov() with method "delong"; AUCs 0.7314 / 0.8237 / 0.6120 as in pROC's docs.
    y = np.array(ASAH_Y)
    assert (y.size, int(y.sum())) == (113, 41)
    aucs, cov = delong_covariance(y, np.vstack([ASAH_S100B, ASAH_WFNS, ASAH_NDKA]))
    np.testing.assert_allclose(aucs, [0.731368563685637, 0.823678861788618, 0.611957994579946])
    assert cov[0, 1] == pytest.approx(0.00119615567376754, rel=1e-9)
    assert cov[1, 2] == pytest.approx(-0.000532967856762438, rel=1e-9)
    assert cov[0, 2] == pytest.approx(-0.000756164938056579, rel=1e-9)
    t1 = delong_test(y, ASAH_WFNS, ASAH_S100B)
    assert t1.z == pytest.approx(2.20898359144091, rel=1e-9)
    assert t1.p_value == pytest.approx(0.0271757822291882, rel=1e-9)
    assert (t1.ci_lower, t1.ci_upper) == pytest.approx((0.0104061769564846, 0.174214419249478))
    t2 = delong_test(y, ASAH_WFNS, ASAH_NDKA)
    assert t2.z == pytest.approx(2.79777591868904, rel=1e-9)
    assert t2.p_value == pytest.approx(0.00514557970691098, rel=1e-9)
    t3 = delong_test(y, ASAH_NDKA, ASAH_S100B)
    assert t3.z == pytest.approx(-1.39077002573558, rel=1e-9)
    assert t3.p_value == pytest.approx(0.164295175223054, rel=1e-9)


def test_fast_delong_equals_the_original_pairwise_computation() -> None:
    # DeLong et al. (1988) structural components by the O(m n) double sum, with ties 1/2.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    a = np.round(rng.normal(size=60) + y, 1)
    b = np.round(0.5 * a + rng.normal(size=60) + 0.5 * y, 1)
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    comps = []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    v10 = np.vstack([c[0] for c in comps])
    v01 = np.vstack([c[1] for c in comps])
    expected = np.cov(v10) / m + np.cov(v01) / n
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, [v10[0].mean(), v10[1].mean()])
    np.testing.assert_allclose(cov, expected, rtol=1e-12)


def test_delong_variance_agrees_with_paired_bootstrap() -> None:
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(150, int), np.ones(150, int)]
    a = rng.normal(size=300) + 1.0 * y
    b = 0.6 * a + rng.normal(size=300) * 0.8 + 0.3 * y
    d = delong_test(y, a, b)
    var_delong = d.variance_a + d.variance_b - 2 * d.covariance
    boot = paired_bootstrap_difference(y, a, b, n_boot=2000, seed=1)
    assert boot.ci.estimate == pytest.approx(d.difference)
    assert boot.variance == pytest.approx(var_delong, rel=0.20)
    # The single-model variance too.
    single = cluster_bootstrap_ci(y, a, n_boot=2000, seed=2)
    assert single.std**2 == pytest.approx(d.variance_a, rel=0.20)


def test_delong_of_identical_models_and_pairwise_table() -> None:
    y = np.array(ASAH_Y)
    same = delong_test(y, ASAH_S100B, ASAH_S100B)
    assert (same.z, same.p_value, same.difference) == (0.0, 1.0, 0.0)
    table = delong_pairwise(y, {"s100b": ASAH_S100B, "wfns": ASAH_WFNS, "ndka": ASAH_NDKA})
    assert list(table) == [("s100b", "wfns"), ("s100b", "ndka"), ("wfns", "ndka")]
    assert table[("s100b", "wfns")].z == pytest.approx(-2.20898359144091, rel=1e-9)


# ---------------------------------------------------------------------------
# Cluster bootstrap
# ---------------------------------------------------------------------------


def test_cluster_bootstrap_is_deterministic_by_seed_and_keeps_both_classes() -> None:
    X, y, pid = _cohort(30, seed=6)
    one = cluster_bootstrap_ci(y, X[:, 0], pid, n_boot=300, seed=7)
    two = cluster_bootstrap_ci(y, X[:, 0], pid, n_boot=300, seed=7)
    other = cluster_bootstrap_ci(y, X[:, 0], pid, n_boot=300, seed=8)
    assert one == two
    assert (one.lower, one.upper) != (other.lower, other.upper)
    assert one.n_used == 300  # stratified: every resample has both classes
    assert one.lower <= one.estimate <= one.upper


def test_cluster_bootstrap_resamples_whole_patients() -> None:
    # Every patient contributes two identical lesions. Resampling patients must then
    # give exactly the interval of resampling the single-lesion data set case-wise
    # (the AUC does not change when every case is duplicated).
    rng = np.random.default_rng(9)
    y1 = np.r_[np.zeros(25, int), np.ones(15, int)]
    s1 = rng.normal(size=40) + y1
    ci_single = cluster_bootstrap_ci(y1, s1, None, n_boot=400, seed=3)
    ci_pairs = cluster_bootstrap_ci(np.repeat(y1, 2), np.repeat(s1, 2), np.repeat(np.arange(40), 2), n_boot=400, seed=3)
    assert ci_pairs.estimate == pytest.approx(ci_single.estimate)
    assert (ci_pairs.lower, ci_pairs.upper) == pytest.approx((ci_single.lower, ci_single.upper))
    # Treating the duplicated lesions as independent would understate the uncertainty.
    ci_naive = cluster_bootstrap_ci(np.repeat(y1, 2), np.repeat(s1, 2), None, n_boot=400, seed=3)
    assert ci_naive.std < 0.85 * ci_pairs.std


def test_cluster_bootstrap_of_any_metric_and_univariate_aucs() -> None:
    X, y, pid = _cohort(30, seed=10)
    sens = cluster_bootstrap_ci(y, X[:, 0], pid, lambda yy, pp: binary_metrics(yy, pp, 0.5).sensitivity, n_boot=200)
    assert 0.0 <= sens.lower <= sens.estimate <= sens.upper <= 1.0
    feats = np.column_stack([X[:, 0], -X[:, 1]])
    res = univariate_aucs(feats, y, ["up", "down"], pid, n_boot=200)
    assert [r.direction for r in res] == ["higher", "lower"]
    assert res[1].auc.estimate == pytest.approx(roc_auc(y, X[:, 1]))


def test_roc_band_and_clustered_paired_difference() -> None:
    X, y, pid = _cohort(40, seed=17)
    band = roc_curve_band(y, X[:, 0], pid, n_boot=200, seed=0)
    assert band.tpr[-1] == 1.0 and np.all(np.diff(band.tpr) >= 0)
    assert np.all(band.lower <= band.upper)
    assert band.auc.estimate == pytest.approx(roc_auc(y, X[:, 0]))
    # Model A (the signal) against model B (noise) on the same patients.
    noise = np.random.default_rng(0).normal(size=y.size)
    diff = paired_bootstrap_difference(y, X[:, 0], noise, pid, n_boot=300, seed=0)
    assert diff.ci.estimate == pytest.approx(roc_auc(y, X[:, 0]) - roc_auc(y, noise))
    assert diff.ci.lower > 0 and diff.p_value < 0.05  # CI excluding 0 and p agree


# ---------------------------------------------------------------------------
# Nested cross-validation
# ---------------------------------------------------------------------------


class SpyClassifier(ClassifierMixin, BaseEstimator):
    """Column 0 carries the patient id; records which patients each fit and predict saw."""

    log: ClassVar[list[tuple[frozenset[int], frozenset[int]]]] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> SpyClassifier:
        self.classes_ = np.array([0, 1])
        self.fit_ids_ = frozenset(X[:, 0].astype(int).tolist())
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        SpyClassifier.log.append((self.fit_ids_, frozenset(X[:, 0].astype(int).tolist())))
        p = 1 / (1 + np.exp(-X[:, 1]))
        return np.column_stack([1 - p, p])


def test_nested_cv_never_puts_a_patient_in_train_and_test() -> None:
    X, y, pid = _cohort(40, seed=11)
    Xs = np.column_stack([pid, X[:, 0]])
    SpyClassifier.log.clear()
    res = nested_cross_validate(Xs, y, pid, lambda trial: SpyClassifier(), inner_splits=3, seed=0)
    # 5 outer folds x (3 inner predictions + 1 outer prediction); no search space -> 1 trial.
    assert len(SpyClassifier.log) == 20
    for fit_ids, predict_ids in SpyClassifier.log:
        assert fit_ids.isdisjoint(predict_ids)
    tested: list[Any] = []
    for fold in res.folds:
        assert set(fold.train_groups).isdisjoint(fold.test_groups)
        tested += list(fold.test_groups)
    assert sorted(tested) == list(range(40))  # every patient tested exactly once
    np.testing.assert_array_equal(res.oof_probability, 1 / (1 + np.exp(-X[:, 0])))


def test_nested_cv_is_deterministic_by_seed() -> None:
    X, y, pid = _cohort(30, seed=12)
    kw: dict[str, Any] = {"inner_splits": 3, "n_trials": 3}
    a = nested_cross_validate(X, y, pid, lda_factory, seed=3, **kw)
    b = nested_cross_validate(X, y, pid, lda_factory, seed=3, **kw)
    c = nested_cross_validate(X, y, pid, lda_factory, seed=4, **kw)
    np.testing.assert_array_equal(a.oof_probability, b.oof_probability)
    assert [f.best_params for f in a.folds] == [f.best_params for f in b.folds]
    assert not np.array_equal(a.fold_of, c.fold_of)
    assert a.scheme == "5-fold GroupKFold" and 0.7 < a.pooled_auc <= 1.0


def test_leave_one_patient_out_and_ten_fold_schemes() -> None:
    X, y, pid = _cohort(14, seed=13, shift=2.0)

    def factory(trial: BaseTrial) -> BaseEstimator:
        return lda_factory(FixedTrial({"shrinkage": 0.1}))

    lopo = nested_cross_validate(X, y, pid, factory, outer=CVScheme.leave_one_patient_out(), inner_splits=3)
    assert len(lopo.folds) == 14 and all(len(f.test_groups) == 1 for f in lopo.folds)
    assert lopo.scheme == "leave-one-patient-out"
    ten = nested_cross_validate(X, y, pid, factory, outer=CVScheme.group_kfold(10), inner_splits=3)
    assert len(ten.folds) == 10
    with pytest.raises(StatsInputError, match="patients"):
        nested_cross_validate(X, y, pid, factory, outer=CVScheme.group_kfold(20))


def test_tune_and_fit_returns_a_fitted_model() -> None:
    X, y, pid = _cohort(30, seed=14)
    tuned = tune_and_fit(X, y, pid, lda_factory, cv_splits=3, n_trials=3, seed=0)
    assert set(tuned.best_params) == {"shrinkage"}
    assert tuned.estimator.predict_proba(X).shape == (y.size, 2)
    assert 0.5 < tuned.inner_auc <= 1.0


def test_compare_models_table_and_soft_voting_ensemble() -> None:
    X, y, pid = _cohort(40, seed=15)
    cmp = compare_models(X, y, pid, outer=CVScheme.group_kfold(3), inner_splits=2, n_trials=2, n_boot=100, seed=0)
    names = [r.model for r in cmp.rows]
    assert names == ["lda", "logistic_l2", "linear_svm", "decision_tree", "knn", "ensemble"]
    base = sorted(cmp.rows[:-1], key=lambda r: -r.auc.estimate)
    assert cmp.ensemble_members == (base[0].model, base[1].model)
    avg = (cmp.results[base[0].model].oof_probability + cmp.results[base[1].model].oof_probability) / 2
    assert cmp.ensemble_probability is not None
    np.testing.assert_allclose(cmp.ensemble_probability, avg)
    assert cmp.rows[-1].auc.estimate == pytest.approx(roc_auc(y, avg))
    # The same seed gives every model the same outer folds.
    folds = {tuple(r.fold_of) for r in cmp.results.values()}
    assert len(folds) == 1
    for row in cmp.table():
        assert row["sensitivity"] >= 0.85
    assert "| ensemble |" in cmp.to_markdown()
    # The shipped ensemble: both members tuned and fitted on all data, probabilities averaged.
    final = fit_final_model(cmp, X, y, pid, model="ensemble", cv_splits=2, n_trials=2)
    assert final.name == "ensemble" and set(final.best_params) == set(cmp.ensemble_members)
    assert final.threshold == cmp.rows[-1].at_threshold.threshold
    members = dict(final.estimator.estimators)
    expected = np.mean([members[n].predict_proba(X) for n in cmp.ensemble_members], axis=0)
    restored = pickle.loads(pickle.dumps(final.estimator))
    np.testing.assert_allclose(restored.predict_proba(X), expected)


def test_evaluate_predictions_bundles_the_metrics() -> None:
    X, y, pid = _cohort(40, seed=16)
    p = 1 / (1 + np.exp(-(X[:, 0] - 0.5)))
    ev = evaluate_predictions(y, p, pid, n_boot=200)
    assert ev.at_threshold.sensitivity >= 0.85
    assert ev.auc.estimate == pytest.approx(roc_auc(y, p))
    assert ev.n_patients == 40 and ev.hosmer_lemeshow is not None
    d = ev.to_dict()
    assert set(d["at_threshold_ci"]) == {"sensitivity", "specificity", "ppv", "npv", "accuracy"}
    fixed = evaluate_predictions(y, p, pid, threshold=0.5, n_boot=50)
    assert fixed.at_threshold.threshold == 0.5 and fixed.target_sensitivity is None


# ---------------------------------------------------------------------------
# Summaries and paired tests
# ---------------------------------------------------------------------------


def test_summaries_by_hand() -> None:
    s = summarize([1, 2, 3, 4, np.nan])
    assert (s.n, s.n_missing, s.mean, s.median, s.q1, s.q3) == (4, 1, 2.5, 2.5, 1.75, 3.25)
    assert s.sd == pytest.approx(math.sqrt(5 / 3))
    assert s.mean_sd(2) == "2.50 ± 1.29"
    assert s.median_iqr(2) == "2.50 (1.75-3.25)"
    assert summarize([-2, -1, 0, 1]).median_iqr(2) == "-0.50 (-1.25 to 0.25)"


def test_wilcoxon_mann_whitney_cohens_d_by_hand() -> None:
    # All five differences positive: W- = 0; exact two-sided p = 2 / 2^5.
    w = wilcoxon_signed_rank([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert (w.statistic, w.n_pairs, w.median_difference) == (0.0, 5, 3.0)
    assert w.p_value == pytest.approx(2 / 32)
    # Complete separation of 3 vs 3: U = 0; exact two-sided p = 2 / C(6, 3).
    u = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u.statistic == 0.0 and u.p_value == pytest.approx(2 / 20)
    assert cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)
    with pytest.raises(StatsInputError):
        wilcoxon_signed_rank([1, 2], [1, 2])


def test_model_summary_table_with_wilcoxon_between_models() -> None:
    table = model_summary_table(
        {
            "A": {"F1": [0.5, 0.6, 0.7, 0.8, np.nan], "PPV": [1.0, 1.0, 1.0, 1.0, 1.0]},
            "B": {"F1": [0.6, 0.8, 1.0, 1.2, 0.9], "PPV": [1.0, 1.0, 1.0, 1.0, 1.0]},
        },
        pairs=[("A", "B")],
        decimals=2,
    )
    f1, ppv = table
    assert f1["metric"] == "F1" and f1["A mean ± SD"] == "0.65 ± 0.13"
    assert f1["B median (IQR)"] == "0.90 (0.80-1.00)"
    # Four pairs (the NaN pair dropped), all differences negative: exact p = 2 / 2^4.
    assert f1["p A vs B"] == pytest.approx(2 / 16)
    assert ppv["p A vs B"] is None  # every difference zero: undefined, not "1.0"


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1, 1], [0.1, 0.2], "3 values"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
    ],
)
def test_bad_inputs_are_refused(y: list[int], s: list[float], match: str) -> None:
    with pytest.raises(StatsInputError, match=match):
        roc_auc(y, s)
