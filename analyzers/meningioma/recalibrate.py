"""``pacsnode train meningioma --recalibrate-on``: refit the grade probability's recalibration only.

A trained model folder keeps its network, feature selection and nomogram; only
the logistic recalibration of the nomogram's probability
(:class:`analyzers._shared.probability.LogisticRecalibration`, Platt scaling on
the nomogram's logit) is fitted again, on the final model's own predictions on a
calibration cohort that took no part in training. A site uses it to recalibrate
on its own cases without retraining.

Why not the training run's recalibration: it is fitted on out-of-fold
predictions of selection and nomogram refitted on 4/5 of the training cases.
Those refits are noisier than the final model fitted on every case, so a
recalibration fitted on them shrinks the final model's scores too much (reported
probabilities too moderate: calibration slope above 1 on held-out cases).

Every case of the calibration cohort goes through the analyzer's pipeline
(:func:`analyzers.meningioma.pipeline.compute_case_features`) with the model's
network, on the ROI the training used (tumour SEG, phantom truth or automatic
segmentation, see :func:`analyzers.meningioma.trainer.load_cases`). The
calibration of the probability the analyzer reports is then measured once on
``--test-labels`` (slope and intercept after Cox 1958, Brier score, a case
bootstrap CI of the slope, reliability plot) or, without a test cohort, out of
fold on the calibration cohort (the two recalibration parameters refitted per
fold). ``model.json`` (new recalibration, version + 0.1), ``model_card.md/.json``,
``evaluation.json`` (per-case predictions under ``"recalibration"``) and
``report_recalibration.html`` with its ``report_recalibration_*.png`` are
rewritten.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from analyzers._shared.modelcard import CardMetric, ModelCardError, load_model_card, metrics_from_evaluation
from analyzers._shared.modelcard import write_model_card as write_card
from analyzers._shared.probability import PROBABILITY_CARD_KEY, LogisticRecalibration, ProbabilityCalibration
from analyzers._shared.report import write_report
from analyzers._shared.stats import brier_score, calibration_slope_intercept, cluster_bootstrap_ci
from analyzers._shared.stats.evaluation import Evaluation, evaluate_predictions
from analyzers.meningioma.errors import ModelError
from analyzers.meningioma.model import MeningiomaModel
from analyzers.meningioma.preprocessing import N4Settings

if TYPE_CHECKING:
    from analyzers.meningioma.trainer import TrainingCase

__all__ = [
    "ROI_SOURCES",
    "CohortPredictions",
    "RecalibrationResult",
    "predict_cohort",
    "recalibrate",
    "recalibrate_main",
    "slope_bootstrap_ci",
    "write_recalibration",
]

_OUTCOME = "WHO grade 2/3"
_REPORT_STEM = "report_recalibration"
_VALIDATION_MARK = ". Grade probability (model "
_ROI_TEXT = {"training": "tumour SEG or automatic segmentation", "truth": "phantom truth masks",
             "detected": "the analyzer's detected candidate"}


@dataclass(frozen=True)
class CohortPredictions:
    """The final model's nomogram probability (before any recalibration) on every meningioma of a cohort."""

    labels_csv: str
    case_ids: tuple[str, ...]
    high_grade: np.ndarray
    nomogram: np.ndarray
    roi: str = "training"
    not_graded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.case_ids) == len(self.high_grade) == len(self.nomogram):
            raise ValueError("one label and one probability per case")

    def describe(self) -> str:
        """``"cohort X (52 meningiomas, 27 WHO grade 2/3; ROIs: ...)"``."""
        missed = f", {len(self.not_graded)} not graded: not detected" if self.not_graded else ""
        return (f"cohort {self.labels_csv} ({len(self.case_ids)} meningiomas, "
                f"{int(np.sum(self.high_grade))} {_OUTCOME}; ROIs: {_ROI_TEXT[self.roi]}{missed})")

    @classmethod
    def pooled(cls, cohorts: Sequence[CohortPredictions]) -> CohortPredictions:
        """One cohort of several (case ids prefixed with their labels CSV)."""
        if len(cohorts) == 1:
            return cohorts[0]
        if len({c.roi for c in cohorts}) > 1:
            raise ValueError("cohorts with ROIs from different sources are not pooled")
        return cls(" + ".join(c.labels_csv for c in cohorts),
                   tuple(f"{c.labels_csv}:{case}" for c in cohorts for case in c.case_ids),
                   np.concatenate([c.high_grade for c in cohorts]), np.concatenate([c.nomogram for c in cohorts]),
                   roi=cohorts[0].roi,
                   not_graded=tuple(f"{c.labels_csv}:{case}" for c in cohorts for case in c.not_graded))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, one row per case."""
        return {"labels": self.labels_csv, "roi": self.roi, "not_graded": list(self.not_graded), "cases": [
            {"case": case, "high_grade": int(label), "nomogram_probability": float(p)}
            for case, label, p in zip(self.case_ids, self.high_grade, self.nomogram, strict=True)]}


ROI_SOURCES = ("training", "truth", "detected")
"""Where the ROI of each meningioma comes from when a cohort is predicted.

``training``: the training's own rule (a tumour SEG of the row, else the
automatic segmentation); ``truth``: a phantom case's true tumour mask;
``detected``: the analyzer's path without a SEG (brain fit, candidates, the
model folder's detection stage); a meningioma the detection stage misses is not
graded and is counted in :attr:`CohortPredictions.not_graded`.
"""


def _detected_roi_cases(folder: Path, labels_csv: Path) -> tuple[list[TrainingCase], tuple[str, ...]]:
    """The meningioma rows of ``labels_csv`` with the ROI the analyzer grades, and the rows it does not grade."""
    from analyzers._shared.brain import NoBrainFound, extract_brain
    from analyzers.meningioma.candidates import locate_candidates
    from analyzers.meningioma.detection import DetectionModel
    from analyzers.meningioma.train_detection import has_meningioma, load_row_series
    from analyzers.meningioma.trainer import TrainingCase, _label

    detection = DetectionModel.load(folder)
    root = labels_csv.parent
    cases: list[TrainingCase] = []
    missed: list[str] = []
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if has_meningioma(row)]
    for number, row in enumerate(rows):
        case_id = row.get("case") or row.get("series_dir") or str(number)
        print(f"[meningioma] {labels_csv}: detecting {number + 1}/{len(rows)} ({case_id})", file=sys.stderr, flush=True)
        _, volume = load_row_series(root, row)
        try:
            brain = extract_brain(volume)
        except NoBrainFound:
            missed.append(f"{case_id} (no brain found)")
            continue
        located = locate_candidates(volume, brain.mask, detection.candidate_settings, N4Settings())
        found = detection.detect(located.candidates).candidate
        if found is None:
            missed.append(f"{case_id} (not detected)")
            continue
        mask = located.canonical.to_sitk(array=found.mask.astype(np.uint8))
        header = {"PatientSex": str(volume.headers[0].get("PatientSex", ""))}
        cases.append(TrainingCase(located.corrected, mask, header, _label(row["label"]), case_id,
                                  bias_corrected=True))
    return cases, tuple(missed)


def predict_cohort(folder: Path, labels_csv: Path, *, roi: str = "training", threads: int = 1) -> CohortPredictions:
    """The nomogram probability of the model in ``folder`` on every meningioma of ``labels_csv``.

    ``roi`` is one of :data:`ROI_SOURCES`. The recalibration stored in the
    folder is not applied: the result is what a new recalibration is fitted on.
    """
    import SimpleITK as sitk
    import torch

    from analyzers.meningioma.deep_features import load_network
    from analyzers.meningioma.pipeline import compute_case_features, predict_grade
    from analyzers.meningioma.radiomics_features import RadiomicsSettings
    from analyzers.meningioma.trainer import load_cases

    if roi not in ROI_SOURCES:
        raise ValueError(f"ROI source {roi!r} is not one of {', '.join(ROI_SOURCES)}")
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    model = replace(MeningiomaModel.load(folder), recalibration=None)
    if model.weights_file is None:
        raise ModelError(f"{folder} holds no fine-tuned network weights; train it with `pacsnode train meningioma`")
    network = load_network(model.weights_file, model.backbone)
    settings = RadiomicsSettings.from_file()
    missed: tuple[str, ...] = ()
    if roi == "detected":
        cases, missed = _detected_roi_cases(folder, labels_csv)
    else:
        cases = load_cases(labels_csv, phantom_truth_roi=roi == "truth")
    if not cases:
        raise ValueError(f"{labels_csv}: no meningioma rows to recalibrate on")
    probabilities = []
    for number, case in enumerate(cases, start=1):
        print(f"[meningioma] {labels_csv}: grading {number}/{len(cases)} ({case.case_id}; ROI: {_ROI_TEXT[roi]})",
              file=sys.stderr, flush=True)
        features = compute_case_features(
            case.image, case.mask, case.header, settings=settings, network=network,
            clinical_thresholds=model.clinical_thresholds, bias_corrected=case.bias_corrected)
        probabilities.append(predict_grade(model, features).probability_high_grade)
    return CohortPredictions(str(labels_csv), tuple(c.case_id for c in cases),
                             np.array([int(c.high_grade) for c in cases]), np.array(probabilities),
                             roi=roi, not_graded=missed)


def _converged_slope(y: np.ndarray, probability: np.ndarray) -> float:
    """Calibration slope, NaN where it is undefined (one class, or a fit that did not converge)."""
    if not 0 < int(y.sum()) < len(y):
        return float("nan")
    fit = calibration_slope_intercept(y, probability)
    return float(fit.slope) if fit.converged and math.isfinite(fit.slope) else float("nan")


def slope_bootstrap_ci(y: np.ndarray, probability: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float, int] | None:
    """Percentile CI of the calibration slope over case bootstrap resamples, and how many resamples fitted.

    Resamples with one class only or a fit that does not converge (separated
    classes) are left out; None when fewer than half of them fit.
    """
    ci = cluster_bootstrap_ci(y, probability, metric=_converged_slope, n_boot=n_boot, confidence=confidence,
                              stratified=False, seed=seed)
    if ci.n_used < n_boot / 2:
        return None
    return ci.lower, ci.upper, ci.n_used


def _out_of_fold(y: np.ndarray, raw: np.ndarray, folds: int, seed: int) -> np.ndarray:
    splits = max(2, min(folds, int(np.bincount(y, minlength=2).min())))
    out = np.zeros(len(y))
    for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed).split(raw, y):
        out[test] = LogisticRecalibration.fit(y[train], raw[train])(raw[test])
    return out


def _raw_cut(threshold: float, recalibration: LogisticRecalibration | None) -> float:
    """The nomogram probability that ``recalibration`` maps to ``threshold``."""
    if recalibration is None:
        return threshold
    logit = (math.log(threshold / (1.0 - threshold)) - recalibration.a) / recalibration.b
    return 1.0 / (1.0 + math.exp(-logit))


@dataclass(frozen=True)
class RecalibrationResult:
    """A new recalibration and what was measured on held-out (or out-of-fold) cases.

    Attributes
    ----------
    recalibration, previous:
        The new recalibration and the one the folder held before.
    calibration:
        Calibration of the reported probability, the model card's record.
    slope_ci:
        Case-bootstrap 95 % CI of the slope and the resamples that fitted, or None.
    printed:
        Slope, intercept and Brier score of the probability as a report prints it
        (clipped to the supported range, 2 significant digits); None when not defined.
    evaluations:
        On the validation cases: the new, the previous and no recalibration,
        thresholds at the same nomogram probability as the model's operating threshold.
    """

    recalibration: LogisticRecalibration
    previous: LogisticRecalibration | None
    calibration: ProbabilityCalibration
    slope_ci: tuple[float, float, int] | None
    evaluations: dict[str, Evaluation]
    model_identity: str
    printed: tuple[float | None, float | None, float]
    operating_threshold: float


def _bumped(version: str) -> str:
    major, _, minor = version.partition(".")
    return f"{major}.{int(minor) + 1 if minor.isdigit() else 1}"


def recalibrate(model: MeningiomaModel, calibration: CohortPredictions, test: CohortPredictions | None, *,
                operating_threshold: float, folds: int = 5, seed: int = 0) -> RecalibrationResult:
    """Fit the recalibration on ``calibration``; measure it on ``test`` or out of fold.

    ``operating_threshold`` is the model's operating threshold on its current
    (previous) probability scale; the evaluations use the same nomogram cut.
    """
    y_cal = np.asarray(calibration.high_grade, dtype=int)
    new = LogisticRecalibration.fit(y_cal, calibration.nomogram)
    identity = f"{model.provenance.get('name', 'meningioma-nomogram')} " \
               f"{_bumped(str(model.provenance.get('version', '1')))}"
    recalibrated_on = f"the final model's predictions on calibration {calibration.describe()}"
    if test is not None:
        y, raw = np.asarray(test.high_grade, dtype=int), test.nomogram
        reported = new(raw)
        validation = f"external test {test.describe()}"
    else:
        y, raw = y_cal, calibration.nomogram
        reported = _out_of_fold(y, raw, folds, seed)
        validation = f"out-of-fold ({folds}-fold recalibration refits), calibration cohort {calibration.labels_csv}"
    record = ProbabilityCalibration.measure(y, reported, model=identity, validation=validation, outcome=_OUTCOME,
                                            recalibrated_on=recalibrated_on)
    cut = _raw_cut(operating_threshold, model.recalibration)
    threshold = float(new(np.array([cut]))[0])
    scales = {"recalibrated on the calibration cohort": (reported, threshold)}
    if model.recalibration is not None:
        scales["previous recalibration"] = (model.recalibration(raw), operating_threshold)
    scales["nomogram, not recalibrated"] = (raw, cut)
    evaluations = {name: evaluate_predictions(y, p, threshold=t, n_boot=1000, seed=seed)
                   for name, (p, t) in scales.items()}
    printed = np.array([record.reported(p) for p in reported])
    fit = calibration_slope_intercept(y, printed) if 0 < int(y.sum()) < len(y) else None
    slope, intercept = (None, None) if fit is None or not fit.converged else (fit.slope, fit.intercept)
    return RecalibrationResult(new, model.recalibration, record, slope_bootstrap_ci(y, reported, seed=seed),
                               evaluations, identity, (slope, intercept, float(brier_score(y, printed))), threshold)


def _card_metrics(old: Sequence[CardMetric], result: RecalibrationResult, held_out: bool) -> tuple[CardMetric, ...]:
    """Old rows without those of the superseded probability scale, then the new measurements."""
    superseded = ("reported grade probability:", "printed grade probability:", "recalibrated nomogram:")
    kept = [m for m in old if not any(text in m.name for text in superseded)
            and not (m.name.startswith("external test, nomogram: ") and not m.name.endswith("ROC-AUC"))]
    where = "external test" if held_out else "out-of-fold"
    record = result.calibration
    rows = list(record.card_metrics(f"{where}, reported grade probability: "))
    if result.slope_ci is not None:
        low, high, fitted = result.slope_ci
        rows[0] = replace(rows[0], ci_lower=low, ci_upper=high, confidence=0.95,
                          note=f"{rows[0].note}; CI: case bootstrap, {fitted} resamples that fitted")
    note = f"{record.validation}, {record.n_cases} cases; clipped to the reported range, 2 significant digits"
    rows += [CardMetric(f"{where}, printed grade probability: {name}", value, note=note)
             for name, value in zip(("calibration slope", "calibration intercept", "Brier score"), result.printed,
                                    strict=True)]
    if held_out:
        evaluation = result.evaluations["recalibrated on the calibration cohort"]
        rows += metrics_from_evaluation(evaluation, f"external test ({evaluation.n_cases} cases), recalibrated "
                                                    "nomogram: ")
    return tuple(kept + rows)


def write_recalibration(folder: Path, result: RecalibrationResult, calibration: CohortPredictions,
                        test: CohortPredictions | None, notes: Sequence[str] = ()) -> None:
    """Store the recalibration in ``folder``: model, model card, evaluation.json and report."""
    model = MeningiomaModel.load(folder)
    try:
        card = load_model_card(folder / "model_card.json")
    except (OSError, ModelCardError) as error:
        raise ModelError(f"{folder}: no readable model_card.json ({error}); the folder must come from "
                         "`pacsnode train meningioma`") from error
    version = result.model_identity.rsplit(" ", 1)[1]
    previous = "none" if result.previous is None else f"a {result.previous.a:.3f}, b {result.previous.b:.3f}"
    how = (f"logistic recalibration of the nomogram's probability (a {result.recalibration.a:.3f}, b "
           f"{result.recalibration.b:.3f}) fitted on {result.calibration.recalibrated_on}; it replaces {previous}")
    model = replace(model, recalibration=result.recalibration,
                    provenance={**model.provenance, "version": version, "recalibration": how})
    model.save(folder)
    record = result.calibration
    trained = card.validation.split(_VALIDATION_MARK)[0].rstrip(".")
    validation = (f"{trained}{_VALIDATION_MARK}{result.model_identity}): {how}; its calibration "
                  f"measured on {record.validation} ({record.n_cases} cases, {record.n_positive} {_OUTCOME}); "
                  "the external-test rows of the clinical, radiomics and DTL models and the nomogram's ROC-AUC "
                  "are the training run's")
    extra = {**card.extra, PROBABILITY_CARD_KEY: record.to_dict(), "version": version,
             "recalibration": {**result.recalibration.to_dict(), "fitted_on": record.recalibrated_on,
                               "operating_threshold": result.operating_threshold,
                               "previous": None if result.previous is None else result.previous.to_dict()}}
    card = replace(card, version=version, validation=validation, extra=extra,
                   metrics=_card_metrics(card.metrics, result, test is not None),
                   limitations=tuple(card.limitations) + tuple(notes))
    write_card(card, folder)
    evaluation_path = folder / "evaluation.json"
    report = json.loads(evaluation_path.read_text(encoding="utf-8")) if evaluation_path.is_file() else {}
    report["grade_calibration"] = record.to_dict()
    report["recalibration"] = {
        "recalibration": result.recalibration.to_dict(),
        "previous": None if result.previous is None else result.previous.to_dict(),
        "slope_ci95": None if result.slope_ci is None else list(result.slope_ci[:2]),
        "printed": dict(zip(("slope", "intercept", "brier"), result.printed, strict=True)),
        "calibration_cohort": calibration.to_dict(),
        "external_test": None if test is None else test.to_dict(),
        "evaluations": {name: e.to_dict() for name, e in result.evaluations.items()},
    }
    evaluation_path.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    write_report(folder, stem=_REPORT_STEM, title="meningioma grade probability: recalibration",
                 evaluations=result.evaluations, model_card=card,
                 notes=[record.statement(), "Thresholds: the same nomogram probability as the model's operating "
                        "threshold on each scale."])


def recalibrate_main(args: argparse.Namespace) -> int:
    """``pacsnode train meningioma --recalibrate-on CSV [...] --model-folder DIR [--test-labels CSV ...]``.

    Several calibration (or test) cohorts are pooled into one; ``--roi`` says
    where every cohort's ROIs come from (:data:`ROI_SOURCES`).
    """
    folder: Path = args.model_folder
    model = MeningiomaModel.load(folder)
    card = load_model_card(folder / "model_card.json")
    # The operating threshold on the current probability scale: a former recalibration's, else the training run's.
    former = card.extra.get("recalibration")
    thresholds = [m.value for m in card.metrics if m.name == "external test, nomogram: operating threshold"]
    if isinstance(former, dict) and former.get("operating_threshold") is not None:
        operating = float(former["operating_threshold"])
    elif thresholds and thresholds[0] is not None:
        operating = float(thresholds[0])
    else:
        operating = model.threshold
    tests: list[Path] = list(args.test_labels or ())
    per_process = max(1, args.threads // 2) if tests else args.threads
    pool = None
    test_jobs = []
    if tests and args.threads >= 2:
        # The test cohorts are independent of the calibration cohorts: they run in a process of their own.
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        test_jobs = [pool.submit(predict_cohort, folder, labels, roi=args.roi, threads=per_process)
                     for labels in tests]
    calibration = CohortPredictions.pooled([
        predict_cohort(folder, labels, roi=args.roi, threads=per_process) for labels in args.recalibrate_on])
    test = None
    if pool is not None:
        test = CohortPredictions.pooled([job.result() for job in test_jobs])
        pool.shutdown()
    elif tests:
        test = CohortPredictions.pooled([predict_cohort(folder, labels, roi=args.roi, threads=args.threads)
                                         for labels in tests])
    result = recalibrate(model, calibration, test, operating_threshold=operating, seed=args.seed)
    write_recalibration(folder, result, calibration, test, notes=args.note or ())
    record = result.calibration
    print(json.dumps({"model_folder": str(folder), "model": result.model_identity,
                      "recalibration": result.recalibration.to_dict(), "validation": record.validation,
                      "n_cases": record.n_cases, "n_positive": record.n_positive, "slope": record.slope,
                      "slope_ci95": None if result.slope_ci is None else result.slope_ci[:2],
                      "intercept": record.intercept, "brier": record.brier,
                      "printed_slope_intercept_brier": result.printed,
                      "reported_range": [record.lower, record.upper]}))
    return 0
