"""Instance matching and the study's metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyzers.brainmets.metrics import (
    MetricsInputError,
    compare_models,
    connected_components,
    evaluate_case,
    format_table,
    pooled_metrics,
    summarize_cases,
)


def _box(shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


SHAPE = (10, 20, 20)


def test_26_connectivity_joins_diagonal_voxels() -> None:
    m = np.zeros((3, 3, 3), dtype=bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True
    assert connected_components(m)[1] == 1


def test_perfect_and_partial_match() -> None:
    gt = _box(SHAPE, (0, 0, 0), (2, 2, 2)) | _box(SHAPE, (5, 10, 10), (7, 12, 12))
    # lesion 1 exact; lesion 2 predicted as 2x2x1 (half): Dice = 2*4/(8+4) = 2/3
    pred = _box(SHAPE, (0, 0, 0), (2, 2, 2)) | _box(SHAPE, (5, 10, 10), (6, 12, 12))
    c = evaluate_case(gt, pred, "p1")
    assert (c.true_positives, c.false_positives, c.false_negatives) == (2, 0, 0)
    assert c.instance_f1 == 1.0
    assert c.lesion_dice == pytest.approx((1.0 + 2 / 3) / 2)
    assert c.lesion_sensitivity == pytest.approx((1.0 + 0.5) / 2)
    assert c.lesion_ppv == pytest.approx(1.0)


def test_merged_prediction_covering_two_lesions() -> None:
    # two 1x2x2 lesions separated by a 1-voxel gap; the prediction covers both and the gap (3x2x2 = 12)
    gt = _box(SHAPE, (0, 0, 0), (1, 2, 2)) | _box(SHAPE, (2, 0, 0), (3, 2, 2))
    pred = _box(SHAPE, (0, 0, 0), (3, 2, 2))
    c = evaluate_case(gt, pred)
    # Dice with each lesion = 2*4/(4+12) = 0.5 > 0.1; one-to-one: one matched, one missed
    assert (c.n_gt, c.n_pred, c.true_positives, c.false_positives, c.false_negatives) == (2, 1, 1, 0, 1)
    assert c.instance_ppv == 1.0 and c.instance_sensitivity == 0.5
    assert c.instance_f1 == pytest.approx(2 / 3)
    assert c.lesion_dice == pytest.approx((0.5 + 0.0) / 2)
    assert c.lesion_ppv == pytest.approx(4 / 12)
    assert c.lesion_sensitivity == pytest.approx((1.0 + 0.0) / 2)


def test_split_lesion() -> None:
    gt = _box(SHAPE, (0, 0, 0), (3, 2, 2))  # 12 voxels
    pred = _box(SHAPE, (0, 0, 0), (1, 2, 2)) | _box(SHAPE, (2, 0, 0), (3, 2, 2))  # two parts of 4
    c = evaluate_case(gt, pred)
    # each part Dice = 8/16 = 0.5; one part matched, the other is a false positive
    assert (c.true_positives, c.false_positives, c.false_negatives) == (1, 1, 0)
    assert c.instance_ppv == 0.5 and c.instance_sensitivity == 1.0
    assert c.instance_f1 == pytest.approx(2 / 3)
    assert c.lesion_dice == pytest.approx(0.5)
    assert c.lesion_sensitivity == pytest.approx(4 / 12)
    assert c.lesion_ppv == pytest.approx((1.0 + 0.0) / 2)


def test_dice_at_threshold_is_not_a_detection() -> None:
    gt = _box(SHAPE, (0, 0, 0), (1, 1, 19))  # 19 voxels
    pred = _box(SHAPE, (0, 0, 18), (1, 1, 19))  # 1 voxel inside: Dice = 2/20 = 0.1, not > 0.1
    c = evaluate_case(gt, pred)
    assert (c.true_positives, c.false_positives, c.false_negatives) == (0, 1, 1)
    assert c.instance_f1 == 0.0


def test_empty_cases() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    c = evaluate_case(empty, empty, "none")
    assert all(math.isnan(v) for v in (c.instance_f1, c.instance_ppv, c.instance_sensitivity, c.lesion_dice))
    fp_only = evaluate_case(empty, _box(SHAPE, (0, 0, 0), (1, 1, 1)))
    assert fp_only.instance_ppv == 0.0 and math.isnan(fp_only.instance_sensitivity)
    assert fp_only.instance_f1 == 0.0
    missed = evaluate_case(_box(SHAPE, (0, 0, 0), (1, 1, 1)), empty)
    assert missed.instance_sensitivity == 0.0 and math.isnan(missed.instance_ppv)
    assert missed.lesion_dice == 0.0
    assert c.to_dict()["instance_f1"] is None


def test_pooled_summary_and_wilcoxon() -> None:
    gt = _box(SHAPE, (0, 0, 0), (1, 2, 2)) | _box(SHAPE, (2, 0, 0), (3, 2, 2))
    good = [evaluate_case(gt, gt, f"c{i}") for i in range(6)]
    merged = [evaluate_case(gt, _box(SHAPE, (0, 0, 0), (3, 2, 2)), f"c{i}") for i in range(6)]
    pooled = pooled_metrics(merged)
    assert (pooled.true_positives, pooled.false_positives, pooled.false_negatives) == (6, 0, 6)
    assert pooled.f1 == pytest.approx(2 * 6 / (12 + 6))
    s = summarize_cases(merged)["instance_f1"]
    assert s.mean == pytest.approx(2 / 3) and s.sd == pytest.approx(0.0)
    p = compare_models(good, merged)
    # six equal positive differences: exact two-sided Wilcoxon p = 2 / 2**6
    assert p["instance_f1"] == pytest.approx(2 / 64)
    assert math.isnan(p["instance_ppv"])  # identical (1.0) for both models
    table = format_table({"A": good, "B": merged})
    assert "Instance F1 score" in table and "66.7 ± 0.0" in table and "3.12E-02" in table
    with pytest.raises(MetricsInputError):
        compare_models(good, merged[:5])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(MetricsInputError):
        evaluate_case(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
