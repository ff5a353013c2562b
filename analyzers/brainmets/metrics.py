"""The study's instance-level evaluation of brain-metastasis segmentations.

Follows the methods of "MRI cross-technique transfer learning for brain
metastasis detection" (Eur Radiol Exp 2025;9:15): ground-truth and predicted
instances are the connected components of the binary masks (26-connectivity);
a ground-truth instance is detected when the Dice similarity coefficient with
its matched prediction exceeds 0.1. Detection is measured by instance PPV,
sensitivity and F1; delineation by lesion-wise voxel Dice, PPV and
sensitivity. Values are aggregated per patient first, then across patients
(mean ± SD, median (IQR)); two models on the same patients are compared with
the Wilcoxon signed-rank test.

Matching is one-to-one and greedy by descending Dice (pairs with Dice <= 0.1
are never matched). Consequences, by design: a prediction that merges two
lesions is matched to one of them (the other is missed), and a lesion split
into two predictions matches one part while the other part is a false
positive.

Lesion-wise voxel metrics of one patient: Dice and sensitivity are averaged
over the ground-truth instances (a missed instance contributes 0); PPV is
averaged over the predicted instances (a false-positive instance contributes
0). A patient with neither lesions nor predictions has undefined (NaN) values,
which the summaries count as missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from analyzers._shared.stats.summaries import Summary, summarize, wilcoxon_signed_rank

__all__ = [
    "DETECTION_DICE_THRESHOLD",
    "METRIC_NAMES",
    "CaseMetrics",
    "InstanceMatch",
    "MetricsInputError",
    "PooledMetrics",
    "compare_models",
    "connected_components",
    "evaluate_case",
    "format_table",
    "match_instances",
    "pooled_metrics",
    "summarize_cases",
]

DETECTION_DICE_THRESHOLD = 0.1
METRIC_NAMES = (
    "instance_f1",
    "instance_ppv",
    "instance_sensitivity",
    "lesion_dice",
    "lesion_ppv",
    "lesion_sensitivity",
)
_LABELS = {
    "instance_f1": "Instance F1 score",
    "instance_ppv": "Instance PPV",
    "instance_sensitivity": "Instance sensitivity",
    "lesion_dice": "LW voxel DSC",
    "lesion_ppv": "LW voxel PPV",
    "lesion_sensitivity": "LW voxel sensitivity",
}


class MetricsInputError(ValueError):
    """The masks cannot be compared (shape mismatch, wrong dimensionality)."""


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a 3D binary mask.

    Returns
    -------
    labels, count:
        int32 array with 0 as background and 1..count for the components.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise MetricsInputError(f"expected a 3D mask, got shape {arr.shape}")
    labels, count = ndimage.label(arr > 0, structure=np.ones((3, 3, 3), dtype=bool))
    return labels.astype(np.int32, copy=False), int(count)


@dataclass(frozen=True)
class InstanceMatch:
    """Overlap of the instances of one case and the one-to-one matching.

    Attributes
    ----------
    gt_sizes, pred_sizes:
        Voxel counts of ground-truth instances 1..n and predicted instances 1..m.
    overlap:
        ``(n, m)`` voxel counts of the intersections.
    pairs:
        Matched ``(gt_index, pred_index)`` (0-based), each with Dice > 0.1.
    """

    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    overlap: np.ndarray
    pairs: tuple[tuple[int, int], ...]

    @property
    def dice(self) -> np.ndarray:
        """``(n, m)`` Dice of every ground-truth / prediction pair."""
        denom = self.gt_sizes[:, None] + self.pred_sizes[None, :]
        return np.divide(2.0 * self.overlap, denom, out=np.zeros(self.overlap.shape), where=denom > 0)


def match_instances(gt_labels: np.ndarray, pred_labels: np.ndarray, n_gt: int, n_pred: int) -> InstanceMatch:
    """Match labelled instances one-to-one, greedily by descending Dice (> 0.1)."""
    if gt_labels.shape != pred_labels.shape:
        raise MetricsInputError(f"shapes differ: {gt_labels.shape} vs {pred_labels.shape}")
    # Joint histogram of (gt label, pred label) gives every intersection in one pass.
    joint = np.bincount(
        gt_labels.ravel().astype(np.int64) * (n_pred + 1) + pred_labels.ravel(),
        minlength=(n_gt + 1) * (n_pred + 1),
    ).reshape(n_gt + 1, n_pred + 1)
    gt_sizes = joint[1:, :].sum(axis=1)
    pred_sizes = joint[:, 1:].sum(axis=0)
    overlap = joint[1:, 1:]
    match = InstanceMatch(gt_sizes, pred_sizes, overlap, ())
    dice = match.dice
    candidates = np.argwhere(dice > DETECTION_DICE_THRESHOLD)
    order: np.ndarray = (
        np.argsort(-dice[tuple(candidates.T)], kind="stable") if candidates.size else np.zeros(0, dtype=np.int64)
    )
    used_gt: set[int] = set()
    used_pred: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in order:
        g, p = (int(v) for v in candidates[k])
        if g not in used_gt and p not in used_pred:
            used_gt.add(g)
            used_pred.add(p)
            pairs.append((g, p))
    return InstanceMatch(gt_sizes, pred_sizes, overlap, tuple(sorted(pairs)))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


@dataclass(frozen=True)
class CaseMetrics:
    """Detection and delineation metrics of one patient (NaN where undefined)."""

    case_id: str
    n_gt: int
    n_pred: int
    true_positives: int
    false_positives: int
    false_negatives: int
    instance_ppv: float
    instance_sensitivity: float
    instance_f1: float
    lesion_dice: float
    lesion_ppv: float
    lesion_sensitivity: float
    matched_dice: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes None)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not np.isfinite(value):
                out[key] = None
        out["matched_dice"] = list(self.matched_dice)
        return out


def evaluate_case(gt_mask: np.ndarray, pred_mask: np.ndarray, case_id: str = "") -> CaseMetrics:
    """Evaluate one patient's predicted binary mask against its ground truth."""
    gt = np.asarray(gt_mask)
    pred = np.asarray(pred_mask)
    if gt.shape != pred.shape:
        raise MetricsInputError(f"case {case_id!r}: shapes differ: {gt.shape} vs {pred.shape}")
    gt_labels, n_gt = connected_components(gt)
    pred_labels, n_pred = connected_components(pred)
    match = match_instances(gt_labels, pred_labels, n_gt, n_pred)
    tp = len(match.pairs)
    fp = n_pred - tp
    fn = n_gt - tp
    gt_dice = np.zeros(n_gt)
    gt_sens = np.zeros(n_gt)
    pred_ppv = np.zeros(n_pred)
    for g, p in match.pairs:
        inter = float(match.overlap[g, p])
        gt_dice[g] = 2.0 * inter / float(match.gt_sizes[g] + match.pred_sizes[p])
        gt_sens[g] = inter / float(match.gt_sizes[g])
        pred_ppv[p] = inter / float(match.pred_sizes[p])
    nan = float("nan")
    return CaseMetrics(
        case_id=case_id,
        n_gt=n_gt,
        n_pred=n_pred,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        instance_ppv=_ratio(tp, n_pred),
        instance_sensitivity=_ratio(tp, n_gt),
        instance_f1=_ratio(2 * tp, 2 * tp + fp + fn),
        lesion_dice=float(gt_dice.mean()) if n_gt else (0.0 if n_pred else nan),
        lesion_ppv=float(pred_ppv.mean()) if n_pred else nan,
        lesion_sensitivity=float(gt_sens.mean()) if n_gt else nan,
        matched_dice=tuple(float(gt_dice[g]) for g, _ in match.pairs),
    )


@dataclass(frozen=True)
class PooledMetrics:
    """Instance PPV, sensitivity and F1 from counts pooled over all patients."""

    true_positives: int
    false_positives: int
    false_negatives: int
    ppv: float
    sensitivity: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def pooled_metrics(cases: Sequence[CaseMetrics]) -> PooledMetrics:
    """Instance metrics from the summed TP / FP / FN of ``cases``."""
    tp = sum(c.true_positives for c in cases)
    fp = sum(c.false_positives for c in cases)
    fn = sum(c.false_negatives for c in cases)
    return PooledMetrics(tp, fp, fn, _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn))


def summarize_cases(cases: Sequence[CaseMetrics]) -> dict[str, Summary]:
    """Per-patient values of every metric summarised across patients."""
    return {name: summarize(np.array([getattr(c, name) for c in cases], dtype=float)) for name in METRIC_NAMES}


def compare_models(
    model_a: Sequence[CaseMetrics], model_b: Sequence[CaseMetrics]
) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank p-value of every metric (same patients, same order).

    A metric whose paired differences are all zero or missing gets NaN.
    """
    ids_a = [c.case_id for c in model_a]
    ids_b = [c.case_id for c in model_b]
    if ids_a != ids_b:
        raise MetricsInputError("both models must be evaluated on the same patients in the same order")
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        a = np.array([getattr(c, name) for c in model_a], dtype=float)
        b = np.array([getattr(c, name) for c in model_b], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        if not np.any(a[ok] != b[ok]):
            out[name] = float("nan")
            continue
        out[name] = wilcoxon_signed_rank(a, b).p_value
    return out


def format_table(results: Mapping[str, Sequence[CaseMetrics]], percent: bool = True) -> str:
    """The study's table: metric, then mean ± SD and median (IQR) per model, then p.

    With two models the last column is the Wilcoxon signed-rank p-value.
    """
    names = list(results)
    if not names:
        raise MetricsInputError("no model results to tabulate")
    summaries = {n: summarize_cases(results[n]) for n in names}
    scale = 100.0 if percent else 1.0
    p_values = compare_models(results[names[0]], results[names[1]]) if len(names) == 2 else {}
    header = ["Metric"] + [f"{n}: mean ± SD | median (IQR)" for n in names] + (["p"] if p_values else [])
    rows = [header]
    for metric in METRIC_NAMES:
        row = [_LABELS[metric] + (" (%)" if percent else "")]
        for n in names:
            s = summaries[n][metric]
            scaled = Summary(
                s.n, s.n_missing, s.mean * scale, s.sd * scale, s.median * scale, s.q1 * scale, s.q3 * scale
            )
            row.append(f"{scaled.mean_sd(1)} | {scaled.median_iqr(1)}")
        if p_values:
            p = p_values[metric]
            row.append("n/a" if not np.isfinite(p) else f"{p:.2E}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    pooled = "; ".join(
        f"{n}: pooled PPV {p.ppv:.3f}, sensitivity {p.sensitivity:.3f}, F1 {p.f1:.3f}"
        for n, p in ((n, pooled_metrics(results[n])) for n in names)
    )
    return "\n".join([*lines, pooled])
