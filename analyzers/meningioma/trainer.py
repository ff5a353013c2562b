"""``pacsnode train meningioma``: fit the grade models on labelled T1C studies.

Training and external test as in Li et al. (Sci Rep 2025): the models are fitted
on the training cohort (``--labels``) and evaluated once on an external cohort
(``--test-labels``): AUC with 95 % CI, accuracy, sensitivity, specificity, PPV,
NPV, Hosmer-Lemeshow and decision curves for the clinical, radiomics and DTL
SVMs and the DTLR nomogram (:func:`analyzers._shared.stats.evaluation.evaluate_predictions`),
DeLong tests between models (:func:`analyzers._shared.stats.delong.delong_pairwise`).

Labels CSV: one row per case with ``label`` (``grade1``/``grade2_3`` or 0/1) and
either ``series_dir`` (folder of the T1C DICOM files, relative to the CSV) with an
optional ``seg`` (a tumour SEG file), or a phantom cohort's ``case`` column
(``<csv folder>/<case>/t1c``). Cases without a SEG are segmented automatically.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from analyzers._shared.volume import load_segmentation, load_series
from analyzers.meningioma.deep_features import (
    BackboneConfig,
    FineTuneConfig,
    load_network,
    resolve_start_weights,
)
from analyzers.meningioma.errors import SegmentationError
from analyzers.meningioma.model import MeningiomaModel
from analyzers.meningioma.pipeline import compute_case_features, dtl_feature_names, predict_grade
from analyzers.meningioma.preprocessing import n4_bias_correction
from analyzers.meningioma.radiomics_features import RadiomicsSettings
from analyzers.meningioma.segmentation import segment_enhancing_mass
from analyzers.meningioma.train import TrainingCase, TrainingResult, extract_training_features, fit_models

__all__ = ["load_cases", "main"]

_POSITIVE = {"1", "grade2_3", "high", "who2", "who3"}
_NEGATIVE = {"0", "grade1", "low", "who1"}


def _label(value: str) -> bool:
    text = value.strip().lower()
    if text in _POSITIVE:
        return True
    if text in _NEGATIVE:
        return False
    raise ValueError(f"label {value!r} is neither grade1/0 nor grade2_3/1")


def load_cases(labels_csv: Path, *, phantom_truth_roi: bool = False) -> list[TrainingCase]:
    """Read the cases of a labels CSV (see module doc); ROIs from SEG or automatic.

    With ``phantom_truth_roi`` a phantom case's true tumour mask
    (``<case>/truth/maps.npz``) is the ROI, standing in for the study's manual
    delineation.
    """
    root = labels_csv.parent
    cases = []
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            folder = root / row["series_dir"] if row.get("series_dir") else root / row["case"] / "t1c"
            volume = load_series(sorted(folder.glob("*.dcm")) or sorted(p for p in folder.iterdir() if p.is_file()))
            image = volume.to_sitk()
            header = {"PatientSex": str(volume.headers[0].get("PatientSex", ""))}
            truth = folder.parent / "truth" / "maps.npz"
            if phantom_truth_roi and not row.get("seg") and truth.is_file():
                with np.load(truth) as maps:
                    truth_mask = np.asarray(maps["tumour_mask"], dtype=np.uint8)
                if truth_mask.shape != volume.shape3d:
                    raise ValueError(f"{truth}: tumour_mask shape {truth_mask.shape} is not {volume.shape3d}")
                mask = volume.to_sitk(array=truth_mask)
                cases.append(TrainingCase(image, mask, header, _label(row["label"]), row.get("case", "")))
                continue
            if row.get("seg"):
                masks = [m for m in load_segmentation(root / row["seg"], volume).values() if m.any()]
                mask_array = max(masks, key=lambda m: int(m.sum()))
                mask = volume.to_sitk(array=mask_array.astype(np.uint8))
            else:
                # N4 once: the automatic segmentation needs the corrected image.
                corrected, _ = n4_bias_correction(image)
                try:
                    mask = segment_enhancing_mass(corrected)
                except SegmentationError as error:
                    raise SegmentationError(f"{labels_csv}, case in {folder}: {error}") from error
                image = corrected
            case_id = row.get("case") or row.get("series_dir") or str(len(cases))
            cases.append(
                TrainingCase(image, mask, header, _label(row["label"]), case_id, bias_corrected=not row.get("seg"))
            )
    return cases


def _predict(
    model: MeningiomaModel, result: TrainingResult, cases: Sequence[TrainingCase], settings: RadiomicsSettings
) -> dict[str, np.ndarray]:
    network = load_network(model.weights_file, model.backbone)
    scores: dict[str, list[float]] = {"clinical": [], "radiomics": [], "dtl": [], "nomogram": []}
    for case in cases:
        features = compute_case_features(
            case.image, case.mask, case.header, settings=settings, network=network,
            clinical_thresholds=model.clinical_thresholds, bias_corrected=case.bias_corrected,
        )
        prediction = predict_grade(model, features)
        scores["nomogram"].append(prediction.probability_high_grade)
        clinical = features.clinical.as_vector()[None]
        scores["clinical"].append(float(result.svm_clinical.predict_proba(clinical)[0, 1]))
        rad = model.rad_score.z_scores(features.radiomics)[None]
        scores["radiomics"].append(float(result.svm_radiomics.predict_proba(rad)[0, 1]))
        dtl = model.dtl_score.z_scores(features.dtl)[None]
        scores["dtl"].append(float(result.svm_dtl.predict_proba(dtl)[0, 1]))
    return {name: np.array(values) for name, values in scores.items()}


def _evaluate(y: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict[str, Any]:
    from analyzers._shared.stats.delong import delong_pairwise
    from analyzers._shared.stats.evaluation import evaluate_predictions

    report: dict[str, Any] = {}
    for name, probability in scores.items():
        evaluation = evaluate_predictions(y, probability, threshold=thresholds.get(name), n_boot=1000)
        report[name] = evaluation.to_dict()
    pairs = delong_pairwise(y, scores)
    report["delong"] = {f"{a} vs {b}": result.to_dict() for (a, b), result in pairs.items()}
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line of ``pacsnode train meningioma``."""
    parser = argparse.ArgumentParser(prog="pacsnode train meningioma", description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="training cohort labels CSV")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--test-labels", type=Path, help="external test cohort labels CSV")
    parser.add_argument("--start-weights", type=Path, help="network weights to fine-tune from")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", choices=("resnet50", "small"), default="resnet50",
                        help="small: width-reduced ResNet with the same 2,048 features (fast runs)")
    parser.add_argument("--icc-cases", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantom-truth-roi", action="store_true",
                        help="use a phantom case's true tumour mask as its ROI (manual-delineation stand-in)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    settings = RadiomicsSettings.from_file()
    train_cases = load_cases(args.labels, phantom_truth_roi=args.phantom_truth_roi)
    features = extract_training_features(train_cases, settings=settings, icc_cases=args.icc_cases)
    backbone = BackboneConfig() if args.backbone == "resnet50" else BackboneConfig((1, 1, 1, 1), 16)
    start = args.start_weights or resolve_start_weights(args.out, None)
    result = fit_models(
        features, args.out, backbone=backbone, start_weights=start, seed=args.seed,
        fine_tune_config=FineTuneConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed),
        provenance={"training_labels": str(args.labels)},
    )
    y_train = features.labels
    train_scores = dict(result.training_probabilities)
    report: dict[str, Any] = {"training": _evaluate(y_train, train_scores, {})}
    thresholds = {name: float(report["training"][name]["at_threshold"]["threshold"]) for name in train_scores}
    if args.test_labels:
        test_cases = load_cases(args.test_labels, phantom_truth_roi=args.phantom_truth_roi)
        test_scores = _predict(result.model, result, test_cases, settings)
        y_test = np.array([int(c.high_grade) for c in test_cases])
        report["external_test"] = _evaluate(y_test, test_scores, thresholds)
    dtl_names = dtl_feature_names()
    report["selected"] = {"radiomics": list(result.model.rad_score.names),
                          "dtl": [n for n in result.model.dtl_score.names if n in dtl_names]}
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    summary = {k: report[k]["nomogram"]["auc"] for k in ("training", "external_test") if k in report}
    print(json.dumps({"out": str(args.out), "nomogram_auc": summary}, default=str))
    return 0
