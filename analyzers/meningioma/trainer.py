"""``pacsnode train meningioma``: fit the grade models on labelled T1C studies.

Training and external test as in Li et al. (Sci Rep 2025): the models are fitted
on the training cohort (``--labels``) and evaluated once on an external cohort
(``--test-labels``): AUC with 95 % CI, accuracy, sensitivity, specificity, PPV,
NPV, Hosmer-Lemeshow and decision curves for the clinical, radiomics and DTL
SVMs and the DTLR nomogram (:func:`analyzers._shared.stats.evaluation.evaluate_predictions`),
DeLong tests between models (:func:`analyzers._shared.stats.delong.delong_pairwise`).

Labels CSV: one row per case with ``label`` (``grade1``/``grade2_3`` or 0/1 for a
meningioma; ``none``, ``healthy``, ``metastases``, ``glioma`` or ``no_meningioma``
for a series without one) and either ``series_dir`` (folder of the T1C DICOM
files, relative to the CSV) with an optional ``seg`` (a tumour SEG file), or a
phantom cohort's ``case`` column (``<csv folder>/<case>/t1c``). The grade models
use the meningioma rows (cases without a SEG are segmented automatically); the
detection stage (:mod:`analyzers.meningioma.train_detection`) uses every row and
is evaluated on the test cohort with sensitivity, specificity (exact 95 % CIs)
and calibration. The grade probability's calibration on the test cohort (or,
without one, out of fold) goes into the model card (``extra["probability"]``),
where the analyzer reads the range it may print.

``--recalibrate-on LABELS_CSV --model-folder DIR`` trains nothing: it refits the
grade probability's recalibration of a trained folder on a calibration cohort
(:mod:`analyzers.meningioma.recalibrate`).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from analyzers._shared.modelcard import (
    CardMetric,
    DataDescription,
    ModelCard,
    metrics_from_evaluation,
    write_model_card,
)
from analyzers._shared.probability import PROBABILITY_CARD_KEY, ProbabilityCalibration
from analyzers._shared.report import write_report
from analyzers._shared.stats.delong import DeLongResult, delong_pairwise
from analyzers._shared.stats.evaluation import Evaluation, evaluate_predictions
from analyzers._shared.volume import load_segmentation
from analyzers.contract import NOT_FOR_CLINICAL_USE
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
from analyzers.meningioma.train_detection import (
    DetectionEvaluation,
    has_meningioma,
    load_row_series,
    train_detection_stage,
)

__all__ = ["load_cases", "main"]

#: Identity of the detection stage in its model card and in reports.
DETECTION_MODEL_NAME = "meningioma-detection 1"
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
    """Read the meningioma cases of a labels CSV (see module doc); ROIs from SEG or automatic.

    With ``phantom_truth_roi`` a phantom case's true tumour mask
    (``<case>/truth/maps.npz``) is the ROI, standing in for the study's manual
    delineation.
    """
    root = labels_csv.parent
    cases = []
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not has_meningioma(row):
                continue  # a series without meningioma: detection data only
            folder, volume = load_row_series(root, row)
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


def _evaluate(
    y: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Evaluation], dict[tuple[str, str], DeLongResult]]:
    """Evaluate every model's probabilities; thresholds fixed beforehand where given."""
    evaluations = {
        name: evaluate_predictions(y, probability, threshold=thresholds.get(name), n_boot=1000)
        for name, probability in scores.items()
    }
    report: dict[str, Any] = {name: evaluation.to_dict() for name, evaluation in evaluations.items()}
    pairs = delong_pairwise(y, scores)
    report["delong"] = {f"{a} vs {b}": result.to_dict() for (a, b), result in pairs.items()}
    return report, evaluations, pairs


def _card(
    args: argparse.Namespace,
    result: TrainingResult,
    y_train: np.ndarray,
    train_evaluations: dict[str, Evaluation],
    test_evaluations: dict[str, Evaluation] | None,
    seconds: float,
    grade_calibration: ProbabilityCalibration,
    detection: tuple[DetectionEvaluation | None, DetectionEvaluation] | None,
) -> ModelCard:
    """The model card: data, how it was trained, measured performance, limitations."""
    model = result.model
    facts = dict(model.provenance)
    backbone = model.backbone
    metrics: list[CardMetric] = []
    # Training (apparent) performance is shown for the nomogram only; the external
    # test is the performance to quote.
    metrics += metrics_from_evaluation(train_evaluations["nomogram"], "training (apparent), nomogram: ")[:1]
    if test_evaluations is not None:
        for name in ("nomogram", "clinical", "radiomics", "dtl"):
            metrics += metrics_from_evaluation(test_evaluations[name], f"external test, {name}: ")
    where = "external test" if test_evaluations is not None else "out-of-fold"
    metrics += grade_calibration.card_metrics(f"{where}, reported grade probability: ")
    if detection is not None:
        held_out, out_of_fold = detection
        metrics += out_of_fold.card_metrics("out-of-fold, detection: ")[:2]
        if held_out is not None:
            metrics += held_out.card_metrics("external test, detection: ")
    network = (
        "torchvision ResNet50 (layers 3-4-6-3, width 64)"
        if backbone.is_resnet50
        else f"width-reduced ResNet (bottleneck layers {'-'.join(map(str, backbone.layers))}, "
        f"width {backbone.width_per_group}) with the same 2,048 pooled features"
    )
    training_how = (
        f"fine-tuned {facts.get('fine_tune_epochs_run')} epochs (of {args.epochs} asked), SGD lr 0.01, "
        f"batch {args.batch_size}, from {facts.get('start_weights')} (no ImageNet weights: none are "
        f"downloaded); ROIs {'from the phantom truth masks' if args.phantom_truth_roi else 'from SEG or automatic'}"
        f"; ICC on the first {args.icc_cases} cases; seed {args.seed}; {args.threads} CPU threads; "
        f"wall time {seconds:.0f} s (os.cpu_count() = {os.cpu_count()})"
    )
    limitations = [
        "Trained and tested on synthetic phantom cohorts only when the labels are phantom cohorts: "
        "performance on patients is unknown.",
        "Clinical signs (shape, margin, edema) are image-derived rules, not reader calls.",
    ]
    if not backbone.is_resnet50:
        limitations.append("Reduced backbone, not the study's ResNet50.")
    limitations += list(args.note or [])
    test_source = f"; external test labels {args.test_labels}" if args.test_labels else ""
    return ModelCard(
        name=str(facts.get("name", "meningioma-nomogram")),
        version=str(facts.get("version", "1")),
        analyzer="meningioma",
        model_description=(
            "DTLR nomogram: logistic regression on sex, shape, indistinct margin, peritumoral edema, "
            f"rad-score ({len(model.rad_score.names)} radiomic features, LASSO) and DTL-score "
            f"({len(model.dtl_score.names)} deep features, LASSO) of a {network}; SVM comparison models "
            "on clinical, radiomic and deep features"
        ),
        intended_use="Research: whether a post-contrast T1 shows a meningioma (detection stage) and, if "
        "it does, the probability of WHO grade 2/3. " + NOT_FOR_CLINICAL_USE,
        data=DataDescription(
            source=f"training labels {args.labels}{test_source}",
            n_cases=len(y_train),
            n_patients=len(y_train),
            n_positive=int(y_train.sum()),
            positive_label="WHO grade 2/3",
            negative_label="WHO grade 1",
            features=("sex", "shape", "indistinct_margin", "peritumoral_edema", "rad_score", "dtl_score"),
            notes=training_how,
        ),
        validation=(
            f"models fitted on the training cohort ({len(y_train)} cases); "
            + (
                f"evaluated once on the external test cohort ({test_evaluations['nomogram'].n_cases} cases) "
                "at thresholds chosen on the training cohort (sensitivity >= 85 %); AUC CIs by bootstrap"
                if test_evaluations is not None
                else "no external test cohort given: apparent training performance only"
            )
        ),
        metrics=tuple(metrics),
        references=(
            "Li et al., An MRI-based deep transfer learning radiomics nomogram for predicting meningioma "
            "grade, Sci Rep 2025, doi:10.1038/s41598-025-01665-0",
            "IBSI-1 (Zwanenburg et al., Radiology 2020) via pyradiomics",
        ),
        limitations=tuple(limitations),
        extra={
            PROBABILITY_CARD_KEY: grade_calibration.to_dict(),
            "detection": None if detection is None else {
                "external_test": None if detection[0] is None else detection[0].to_dict(),
                "out_of_fold": detection[1].to_dict(),
            },
            "recalibration": None if model.recalibration is None else model.recalibration.to_dict(),
            "nomogram": model.nomogram.to_json(),
            "radiomics_selected": list(model.rad_score.names),
            "dtl_selected": list(model.dtl_score.names),
            "clinical_thresholds": vars(model.clinical_thresholds),
            "training": training_how,
            "radiomics_selection": facts.get("radiomics_selection"),
            "dtl_selection": facts.get("dtl_selection"),
            **{k: v for k, v in facts.items() if isinstance(v, (str, int, float, bool))},
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Command line of ``pacsnode train meningioma``."""
    parser = argparse.ArgumentParser(prog="pacsnode train meningioma", description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="training cohort labels CSV (required unless --recalibrate-on)")
    parser.add_argument("--out", type=Path, help="model folder to write (required unless --recalibrate-on)")
    parser.add_argument("--test-labels", type=Path, action="append",
                        help="external test cohort labels CSV (with --recalibrate-on repeatable: pooled)")
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
    parser.add_argument("--no-detection", action="store_true",
                        help="train the grade models only (the analyzer then grades only studies with a tumour SEG)")
    parser.add_argument("--note", action="append",
                        help="a limitation or fact for the model card (repeatable), e.g. how the machine was loaded")
    parser.add_argument("--recalibrate-on", type=Path, metavar="LABELS_CSV", action="append",
                        help="no training: refit the grade probability's recalibration of --model-folder on the "
                        "model's predictions on this cohort (repeatable: pooled), measure it on --test-labels "
                        "(else out of fold)")
    parser.add_argument("--model-folder", type=Path, help="trained model folder to recalibrate (rewritten)")
    parser.add_argument("--roi", choices=("training", "truth", "detected"),
                        help="with --recalibrate-on, the ROI of every graded meningioma: training (tumour SEG, else "
                        "the automatic segmentation), truth (phantom truth masks; the default with "
                        "--phantom-truth-roi) or detected (what the analyzer grades without a SEG: its detection "
                        "stage's candidate; undetected meningiomas are counted, not graded)")
    args = parser.parse_args(argv)
    if args.roi is None:
        args.roi = "truth" if args.phantom_truth_roi else "training"
    if args.recalibrate_on is not None:
        if args.model_folder is None:
            parser.error("--recalibrate-on needs --model-folder (the trained model folder to recalibrate)")
        from analyzers.meningioma.recalibrate import recalibrate_main

        return recalibrate_main(args)
    if args.labels is None or args.out is None:
        parser.error("--labels and --out are required to train (or --recalibrate-on with --model-folder)")
    if args.test_labels is not None and len(args.test_labels) > 1:
        parser.error("training takes one --test-labels cohort (several only with --recalibrate-on)")
    args.test_labels = args.test_labels[0] if args.test_labels else None
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    # The detection stage reads every case again (brain fit, N4, candidates): it runs in a
    # process of its own beside the grade models and writes only detection.json.
    pool = None if args.no_detection else ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    detection_job = None if pool is None else pool.submit(
        train_detection_stage, args.labels, args.out, test_csv=args.test_labels, model_name=DETECTION_MODEL_NAME,
        threads=args.threads)
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
    training_report, train_evaluations, _ = _evaluate(y_train, train_scores, {})
    report: dict[str, Any] = {"training": training_report}
    thresholds = {name: float(report["training"][name]["at_threshold"]["threshold"]) for name in train_scores}
    test_evaluations = None
    pairs = None
    if args.test_labels:
        test_cases = load_cases(args.test_labels, phantom_truth_roi=args.phantom_truth_roi)
        test_scores = _predict(result.model, result, test_cases, settings)
        y_test = np.array([int(c.high_grade) for c in test_cases])
        report["external_test"], test_evaluations, pairs = _evaluate(y_test, test_scores, thresholds)
    if args.test_labels:
        grade_calibration = ProbabilityCalibration.measure(
            y_test, test_scores["nomogram"], model=result.model.identity,
            validation=f"external test cohort {args.test_labels}", outcome="WHO grade 2/3")
    else:
        assert result.out_of_fold_nomogram is not None
        grade_calibration = ProbabilityCalibration.measure(
            y_train, result.out_of_fold_nomogram, model=result.model.identity,
            validation=f"out-of-fold, training cohort {args.labels} (recalibrated on these predictions)",
            outcome="WHO grade 2/3")
    report["grade_calibration"] = grade_calibration.to_dict()
    detection = None
    if detection_job is not None and pool is not None:
        detection_model, held_out, out_of_fold = detection_job.result()
        pool.shutdown()
        detection = (held_out, out_of_fold)
        report["detection"] = {"threshold": detection_model.threshold, "out_of_fold": out_of_fold.to_dict(),
                               "external_test": None if held_out is None else held_out.to_dict()}
    dtl_names = dtl_feature_names()
    report["selected"] = {"radiomics": list(result.model.rad_score.names),
                          "dtl": [n for n in result.model.dtl_score.names if n in dtl_names]}
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    card = _card(args, result, y_train, train_evaluations, test_evaluations, time.monotonic() - started,
                 grade_calibration, detection)
    write_model_card(card, args.out)
    write_report(
        args.out,
        title="meningioma grade models: " + ("external test" if test_evaluations else "training (apparent)"),
        evaluations=test_evaluations or train_evaluations,
        delong=pairs,
        model_card=card,
    )
    summary = {k: report[k]["nomogram"]["auc"] for k in ("training", "external_test") if k in report}
    print(json.dumps({"out": str(args.out), "nomogram_auc": summary,
                      "grade_calibration_slope": grade_calibration.slope,
                      "detection": None if detection is None else {
                          k: None if e is None else {"sensitivity": e.sensitivity, "specificity": e.specificity}
                          for k, e in zip(("external_test", "out_of_fold"), detection, strict=True)}},
                     default=str))
    return 0
