"""Training and held-out evaluation of the meningioma detection stage.

Used by ``pacsnode train meningioma``. Cases come from the same labels CSV as
the grade models: rows whose ``label`` is a grade (``grade1``/``grade2_3``, 0/1)
have a meningioma, rows labelled ``none``, ``healthy``, ``metastases``,
``glioma`` or ``no_meningioma`` (or with a ``meningioma`` column of 0) do not.
The truth of a meningioma case is its tumour SEG (``seg``) or, for phantom
cohorts, the phantom's true tumour mask; candidates are labelled by their
overlap with it (:func:`analyzers.meningioma.detection.label_candidates`).

On the external test cohort the detection stage is evaluated once, at the
threshold fixed in training: sensitivity and specificity with exact
(Clopper-Pearson) 95 % confidence intervals, and the calibration of its
probability (slope, intercept, Brier, reliability curve), which the analyzer's
reports cite.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy.stats import binomtest

from analyzers._shared.brain import extract_brain
from analyzers._shared.modelcard import CardMetric
from analyzers._shared.orientation import Reoriented
from analyzers._shared.probability import ProbabilityCalibration
from analyzers._shared.stats import calibration_curve
from analyzers._shared.volume import Volume, load_segmentation, load_series
from analyzers.meningioma.candidates import CANDIDATE_FEATURES, CandidateSettings, locate_candidates
from analyzers.meningioma.detection import CaseCandidates, DetectionModel, fit_detection, label_candidates
from analyzers.meningioma.preprocessing import N4Settings

__all__ = [
    "NEGATIVE_LABELS",
    "DetectionEvaluation",
    "evaluate_detection",
    "has_meningioma",
    "load_detection_cases",
    "load_row_series",
    "train_detection_stage",
]

#: Labels of rows without a meningioma.
NEGATIVE_LABELS = frozenset({"none", "healthy", "metastases", "glioma", "no_meningioma", "negative"})
_POSITIVE_LABELS = frozenset({"1", "0", "grade1", "grade2_3", "high", "low", "who1", "who2", "who3"})


def has_meningioma(row: dict[str, str]) -> bool:
    """Whether a labels CSV row is a case with a meningioma."""
    flag = (row.get("meningioma") or "").strip().lower()
    if flag in {"0", "1", "true", "false"}:
        return flag in {"1", "true"}
    label = (row.get("label") or "").strip().lower()
    if label in NEGATIVE_LABELS:
        return False
    if label in _POSITIVE_LABELS:
        return True
    raise ValueError(f"label {row.get('label')!r} is neither a grade nor one of {sorted(NEGATIVE_LABELS)}")


def _series_folder(root: Path, row: dict[str, str]) -> Path:
    return root / row["series_dir"] if row.get("series_dir") else root / row["case"] / "t1c"


def load_row_series(root: Path, row: dict[str, str]) -> tuple[Path, Volume]:
    """The series folder of a labels CSV row (``series_dir``, or a phantom cohort's ``case``) and
    its volume (the folder's ``*.dcm`` files, or every file when none is so named)."""
    folder = _series_folder(root, row)
    return folder, load_series(sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file()))


def load_detection_cases(
    labels_csv: Path,
    *,
    settings: CandidateSettings | None = None,
    n4: N4Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[CaseCandidates], list[str]]:
    """Candidates and their labels for every row of a labels CSV, and each row's label text.

    Raises
    ------
    ValueError
        A meningioma row without truth (no ``seg`` and no phantom tumour mask).
    """
    root = labels_csv.parent
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    settings = settings or CandidateSettings()
    cases: list[CaseCandidates] = []
    for number, row in enumerate(rows):
        folder, volume = load_row_series(root, row)
        # The analyzer's own path: brain found by the MNI152 fit, the series turned to the training
        # axes, N4, the intracranial space, candidates; the truth is turned the same way.
        located = locate_candidates(volume, extract_brain(volume).mask, settings, n4)
        positive = has_meningioma(row)
        truth = _truth_mask(root, row, folder, volume, located.canonical) if positive else None
        features = np.array([c.vector() for c in located.candidates]).reshape(-1, len(CANDIDATE_FEATURES))
        case_id = row.get("case") or row.get("series_dir") or str(number)
        cases.append(CaseCandidates(case_id, positive, features, label_candidates(located.candidates, truth)))
        if progress is not None:
            progress(number + 1, len(rows))
    return cases, [str(row.get("label", "")) for row in rows]


def _truth_mask(root: Path, row: dict[str, str], folder: Path, volume: Any, canonical: Reoriented) -> np.ndarray:
    """The meningioma's true mask on the grid its candidates are found on (``canonical``: the
    series turned to the training axes): the largest segment of the row's SEG, or a phantom's
    true tumour mask (kept on the phantom's own grid, ``affine_lps``, whatever the patient position)."""
    if row.get("seg"):
        masks = [m for m in load_segmentation(root / row["seg"], volume).values() if m.any()]
        if masks:
            return canonical.forward(np.asarray(max(masks, key=lambda m: int(m.sum())), dtype=bool))
    truth = folder.parent / "truth" / "maps.npz"
    if truth.is_file():
        with np.load(truth) as maps:
            mask = np.asarray(maps["tumour_mask"], dtype=bool)
            grid = np.asarray(maps["affine_lps"], dtype=np.float64) if "affine_lps" in maps.files else None
        if grid is None:  # no grid recorded: the series' own
            return canonical.forward(mask)
        try:
            # The phantom's affine takes (slice, row, column) indices; ours (column, row, slice).
            return canonical.onto(mask, grid[:, [2, 1, 0, 3]])
        except ValueError as exc:
            raise ValueError(f"{truth}: the tumour mask does not lie on the voxels of {folder}: {exc}") from exc
    raise ValueError(f"{folder}: a meningioma case needs a tumour SEG (column 'seg') to train detection")


def _exact_ci(successes: int, total: int) -> tuple[float, float]:
    if total == 0:
        return float("nan"), float("nan")
    interval = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="exact")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class DetectionEvaluation:
    """The detection stage on one cohort at its fixed threshold."""

    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int
    calibration: ProbabilityCalibration
    reliability: dict[str, list[float]]
    errors: list[dict[str, Any]]

    @property
    def sensitivity(self) -> float:
        """TP / (TP + FN)."""
        return self.true_positives / max(self.true_positives + self.false_negatives, 1)

    @property
    def specificity(self) -> float:
        """TN / (TN + FP)."""
        return self.true_negatives / max(self.true_negatives + self.false_positives, 1)

    def card_metrics(self, prefix: str) -> tuple[CardMetric, ...]:
        """Sensitivity and specificity with exact 95 % CIs, then the probability's calibration."""
        positives = self.true_positives + self.false_negatives
        negatives = self.true_negatives + self.false_positives
        sens_ci = _exact_ci(self.true_positives, positives)
        spec_ci = _exact_ci(self.true_negatives, negatives)
        return (
            CardMetric(f"{prefix}sensitivity", self.sensitivity, *sens_ci, 0.95,
                       f"{self.true_positives}/{positives} meningiomas found; exact (Clopper-Pearson) CI"),
            CardMetric(f"{prefix}specificity", self.specificity, *spec_ci, 0.95,
                       f"{self.true_negatives}/{negatives} series without meningioma reported as such; exact CI"),
            *self.calibration.card_metrics(prefix),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (evaluation.json)."""
        return {
            "true_positives": self.true_positives,
            "false_negatives": self.false_negatives,
            "true_negatives": self.true_negatives,
            "false_positives": self.false_positives,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "sensitivity_ci95": _exact_ci(self.true_positives, self.true_positives + self.false_negatives),
            "specificity_ci95": _exact_ci(self.true_negatives, self.true_negatives + self.false_positives),
            "calibration": self.calibration.to_dict(),
            "reliability": self.reliability,
            "errors": self.errors,
        }


def evaluate_detection(
    model: DetectionModel,
    cases: Sequence[CaseCandidates],
    labels: Sequence[str],
    *,
    model_name: str,
    validation: str,
    out_of_fold: tuple[np.ndarray, np.ndarray] | None = None,
) -> DetectionEvaluation:
    """Sensitivity, specificity and calibration of ``model`` on labelled cases (decided once).

    ``out_of_fold`` (probabilities, scores) replaces the model's own study
    probabilities and forest scores (the out-of-fold ones of its training cohort).
    """
    y = np.array([int(c.has_meningioma) for c in cases])
    if out_of_fold is None:
        p = np.array([model.study_probability(c.features)[0] for c in cases])
        called = np.array([model.called(c.features) for c in cases])
    else:
        p = np.asarray(out_of_fold[0], dtype=np.float64)
        called = np.asarray(out_of_fold[1]) >= model.score_threshold
    errors = [
        {"case": c.case_id, "label": label, "probability": round(float(q), 4), "has_meningioma": c.has_meningioma}
        for c, label, q, call in zip(cases, labels, p, called, strict=True)
        if call != c.has_meningioma
    ]
    curve = calibration_curve(y, p, n_bins=5)
    return DetectionEvaluation(
        true_positives=int((called & (y == 1)).sum()),
        false_negatives=int((~called & (y == 1)).sum()),
        true_negatives=int((~called & (y == 0)).sum()),
        false_positives=int((called & (y == 0)).sum()),
        calibration=ProbabilityCalibration.measure(y, p, model=model_name, validation=validation,
                                                   outcome="a meningioma in the series"),
        reliability={"mean_predicted": [float(v) for v in curve.mean_predicted],
                     "observed_fraction": [float(v) for v in curve.observed_fraction]},
        errors=errors,
    )


def train_detection_stage(
    train_csv: Path,
    out: Path,
    *,
    test_csv: Path | None = None,
    model_name: str = "meningioma-detection 1",
    n4: N4Settings | None = None,
    threads: int = 1,
) -> tuple[DetectionModel, DetectionEvaluation | None, DetectionEvaluation]:
    """Fit on ``train_csv``, evaluate once on ``test_csv``, write ``detection.json`` to ``out``.

    Returns the model (carrying the held-out calibration when a test cohort was
    given, else the out-of-fold one), the held-out evaluation and the
    out-of-fold evaluation of the training cohort.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    train, train_labels = load_detection_cases(train_csv, n4=n4)
    model, oof, oof_score = fit_detection(train, provenance={"training_labels": str(train_csv), "name": model_name})
    oof_eval = evaluate_detection(model, train, train_labels, model_name=model_name,
                                  validation=f"out-of-fold, training cohort {train_csv}",
                                  out_of_fold=(oof, oof_score))
    held_out = None
    calibration = oof_eval.calibration
    if test_csv is not None:
        test, test_labels = load_detection_cases(test_csv, n4=n4)
        held_out = evaluate_detection(model, test, test_labels, model_name=model_name,
                                      validation=f"held-out cohort {test_csv}")
        calibration = held_out.calibration
    model = model.with_calibration(calibration)
    model.save(out)
    return model, held_out, oof_eval

