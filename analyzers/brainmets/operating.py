"""Which predicted lesions the ``brainmets`` analyzer reports: a validated operating point.

nnU-Net's argmax calls every voxel with a foreground probability above 0.5; on
brains without metastases every such blob is a false positive that a PACS shows
as a "metastasis". The analyzer instead takes the connected components of the
foreground probability at ``floor`` (26-connectivity, at least ``min_voxels``)
as candidate lesions, gives each a confidence (its highest voxel probability)
and reports those whose confidence reaches ``threshold``. A reported lesion is
delineated at half its confidence (at most 0.5, at least ``floor``): a confident
lesion keeps nnU-Net's 0.5 boundary, a faint one (a metastasis of one or two
voxels at the model's grid) is not lost to it.

The threshold is chosen on a validation set (``pacsnode evaluate brainmets
--phantom --lesion-free N --write-operating-point``: phantoms with metastases and
lesion-free phantoms whose vessels and sinuses are the usual false positives)
as the one with the highest instance sensitivity among those with at most
``max_fp_per_brain`` false positives per brain, both over all validation brains
and over the lesion-free ones; the minimum component size (1 or 3 voxels) is
chosen with it, because a metastasis of 2-3 mm is a single voxel at the
reference models' 2 mm grid. It is stored as ``operating_point.json`` in the
model folder with the numbers it was chosen on; without that file the analyzer
keeps nnU-Net's argmax (floor = threshold = 0.5) and says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from analyzers.brainmets.instances import DEFAULT_MIN_VOXELS, LesionSet, extract_lesions
from analyzers.brainmets.metrics import connected_components, evaluate_case

__all__ = [
    "OPERATING_POINT_FILE",
    "OperatingPoint",
    "OperatingPointError",
    "SweepRow",
    "ValidationCase",
    "choose_operating_point",
    "confident_lesions",
    "grown",
    "sweep",
]

OPERATING_POINT_FILE = "operating_point.json"
_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


class OperatingPointError(ValueError):
    """An operating point file is malformed or its values are out of range."""


@dataclass(frozen=True)
class OperatingPoint:
    """Floor, confidence threshold and the validation numbers they were chosen on."""

    floor: float = 0.5
    threshold: float = 0.5
    min_voxels: int = DEFAULT_MIN_VOXELS
    validation: str = "not validated: nnU-Net's argmax"
    sensitivity: float | None = None
    fp_per_brain: float | None = None
    fp_per_lesion_free_brain: float | None = None
    n_cases: int = 0
    n_lesion_free: int = 0
    n_lesions: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= self.threshold < 1.0:
            raise OperatingPointError(f"need 0 < floor <= threshold < 1, got {self.floor}, {self.threshold}")
        if self.min_voxels < 1:
            raise OperatingPointError("min_voxels must be at least 1")

    @property
    def validated(self) -> bool:
        """Whether the threshold was chosen on a validation set."""
        return self.n_cases > 0

    def statement(self) -> str:
        """One sentence for the SR: how lesions were kept and what that was validated to give."""
        if not self.validated:
            return ("Lesions: nnU-Net argmax components; no validated confidence threshold "
                    "(false positives per brain not measured for this model).")
        return (
            f"Lesions reported when their confidence (highest voxel probability) reaches "
            f"{self.threshold:.2f} (components of at least {self.min_voxels} voxel(s) at probability "
            f"{self.floor:.2f}); chosen on {self.validation} ({self.n_cases} brains, "
            f"{self.n_lesion_free} without metastases, {self.n_lesions} metastases): instance sensitivity "
            f"{self.sensitivity:.2f}, {self.fp_per_brain:.2f} false positives per brain, "
            f"{self.fp_per_lesion_free_brain:.2f} per brain without metastases."
        )

    def save(self, folder: Path) -> Path:
        """Write ``operating_point.json`` into the model folder."""
        path = Path(folder) / OPERATING_POINT_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> OperatingPoint:
        """The folder's operating point, or the unvalidated argmax default when it has none."""
        path = Path(folder) / OPERATING_POINT_FILE
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (TypeError, ValueError) as exc:
            raise OperatingPointError(f"{path}: {exc}") from exc


def grown(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (e.g. a brain mask from an affine template fit, a few mm off)."""
    outside = ndimage.distance_transform_edt(~np.asarray(mask, dtype=bool), sampling=tuple(float(s) for s in spacing))
    return np.asarray(outside <= margin_mm)


def _candidates(probability: np.ndarray, floor: float, min_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """Components at ``floor`` (label map) and each one's confidence (index = label, 0 unused)."""
    labels, count = connected_components(probability >= floor)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    confidence = np.zeros(count + 1)
    np.maximum.at(confidence, labels.ravel(), probability.ravel().astype(np.float64))
    confidence[sizes < min_voxels] = 0.0
    confidence[0] = 0.0
    return labels, confidence


def _delineate(probability: np.ndarray, labels: np.ndarray, confidence: np.ndarray, keep: np.ndarray,
               floor: float) -> np.ndarray:
    """Voxels of the kept components at or above half their confidence (at most 0.5, at least ``floor``)."""
    level = np.clip(0.5 * confidence, floor, 0.5)
    return np.asarray(keep[labels] & (probability >= level[labels]))


def confident_lesions(
    probability: np.ndarray, affine: np.ndarray, point: OperatingPoint, region: np.ndarray | None = None
) -> tuple[LesionSet, tuple[float, ...]]:
    """Lesions whose confidence reaches the threshold, largest first, with their confidences.

    With ``region`` (e.g. the brain), a lesion also needs at least half its
    voxels inside it.
    """
    labels, confidence = _candidates(probability, point.floor, point.min_voxels)
    keep = confidence >= point.threshold
    keep[0] = False
    if region is not None and keep.any():
        inside = np.bincount(labels.ravel(), weights=np.asarray(region, dtype=np.float64).ravel(),
                             minlength=len(confidence))
        sizes = np.bincount(labels.ravel(), minlength=len(confidence))
        keep &= inside >= 0.5 * np.maximum(sizes, 1)
    kept = extract_lesions(_delineate(probability, labels, confidence, keep, point.floor), affine, 1)
    confidences = tuple(float(probability[kept.labels == lesion.label].max()) for lesion in kept.lesions)
    return kept, confidences


@dataclass(frozen=True)
class ValidationCase:
    """One validation brain: truth and the model's foreground probability on the same grid."""

    case_id: str
    truth: np.ndarray
    probability: np.ndarray


@dataclass(frozen=True)
class SweepRow:
    """Instance counts over the validation set at one threshold."""

    threshold: float
    true_positives: int
    false_negatives: int
    false_positives: int
    false_positives_lesion_free: int
    n_cases: int
    n_lesion_free: int
    min_voxels: int = DEFAULT_MIN_VOXELS

    @property
    def sensitivity(self) -> float:
        """Pooled instance sensitivity (NaN without lesions)."""
        total = self.true_positives + self.false_negatives
        return self.true_positives / total if total else float("nan")

    @property
    def fp_per_brain(self) -> float:
        """False-positive instances per validation brain."""
        return self.false_positives / self.n_cases if self.n_cases else float("nan")

    @property
    def fp_per_lesion_free_brain(self) -> float:
        """False-positive instances per brain without metastases (NaN without such brains)."""
        return self.false_positives_lesion_free / self.n_lesion_free if self.n_lesion_free else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with the derived rates."""
        return {**asdict(self), "sensitivity": self.sensitivity, "fp_per_brain": self.fp_per_brain,
                "fp_per_lesion_free_brain": self.fp_per_lesion_free_brain}


def sweep(
    cases: Sequence[ValidationCase],
    floor: float = 0.05,
    thresholds: Sequence[float] | None = None,
    min_voxels: int = DEFAULT_MIN_VOXELS,
) -> list[SweepRow]:
    """Instance TP / FN / FP of the validation set at each threshold (matching: Dice > 0.1)."""
    thresholds = [t for t in (thresholds or _THRESHOLDS) if t >= floor]
    counts = np.zeros((len(thresholds), 4), dtype=int)
    lesion_free = 0
    for case in cases:
        probability = np.asarray(case.probability, dtype=np.float32)
        labels, confidence = _candidates(probability, floor, min_voxels)
        free = not np.any(case.truth)
        lesion_free += int(free)
        for row, threshold in enumerate(thresholds):
            keep = confidence >= threshold
            keep[0] = False
            metrics = evaluate_case(case.truth, _delineate(probability, labels, confidence, keep, floor),
                                    case.case_id)
            counts[row] += (metrics.true_positives, metrics.false_negatives, metrics.false_positives,
                            metrics.false_positives if free else 0)
    return [
        SweepRow(float(t), int(c[0]), int(c[1]), int(c[2]), int(c[3]), len(cases), lesion_free, min_voxels)
        for t, c in zip(thresholds, counts, strict=True)
    ]


def choose_operating_point(
    rows: Sequence[SweepRow],
    *,
    floor: float,
    validation: str,
    n_lesions: int,
    max_fp_per_brain: float = 1.0,
) -> OperatingPoint:
    """The threshold (and minimum size) with the highest sensitivity within the false-positive budget.

    Ties go to the higher threshold, then to the larger minimum size. When no
    row meets the budget, the one with the fewest false positives per brain is
    taken (the statement then shows how many).
    """
    if not rows:
        raise OperatingPointError("no sweep rows to choose from")

    def within(row: SweepRow) -> bool:
        free = row.fp_per_lesion_free_brain
        return row.fp_per_brain <= max_fp_per_brain and (np.isnan(free) or free <= max_fp_per_brain)

    eligible = [r for r in rows if within(r)]
    if eligible:
        best = max(eligible, key=lambda r: (np.nan_to_num(r.sensitivity, nan=0.0), r.threshold, r.min_voxels))
    else:
        best = min(rows, key=lambda r: (r.fp_per_brain, -r.threshold, -r.min_voxels))
    return OperatingPoint(
        floor=floor,
        threshold=max(best.threshold, floor),
        min_voxels=best.min_voxels,
        validation=validation,
        sensitivity=float(np.nan_to_num(best.sensitivity, nan=0.0)),
        fp_per_brain=float(best.fp_per_brain),
        fp_per_lesion_free_brain=float(np.nan_to_num(best.fp_per_lesion_free_brain, nan=0.0)),
        n_cases=best.n_cases,
        n_lesion_free=best.n_lesion_free,
        n_lesions=n_lesions,
    )
