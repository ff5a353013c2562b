"""``pacsnode train spine``: train and evaluate one sequence's CNN, as the spine study did.

Design (../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt):

1. lesion ROIs of one sequence (``--sequence t1|t2|stir|t1c``) from a labels file
   (:func:`analyzers.spine.dataset.labelled_cohort`) or the spine phantom
   (``--phantom --cases N``);
2. class balance by randomly downsampling the majority class;
3. a 60/40 train/test split, stratified by class and grouped by patient;
4. a small hyper-parameter search over learning rate, batch size, epochs and dropout
   (``--search-trials`` configurations, the study's own first, each trained on 75 % of
   the training patients and scored by AUC on the other 25 %);
5. the chosen configuration trained on all training patients (Adam, categorical
   cross-entropy) and evaluated once on the held-out 40 %: AUC, accuracy,
   sensitivity and specificity (metastasis is the positive class, called at
   P(metastasis) ≥ 0.5, i.e. the softmax arg-max) with patient-level cluster-bootstrap
   95 % CIs; per comparison (hemangioma vs the metastases of each primary) when the
   labels give a ``primary`` column;
6. the calibration of P(hemangioma) on the same held-out lesions (slope, intercept,
   Brier, the range a report may print; :mod:`analyzers._shared.probability`);
7. the model (``spine_<sequence>.pt`` + ``.json``, whose held-out AUC weights the
   combination in the analyzer) and its model card (``model_card_<sequence>.md/.json``)
   written to ``--out``.

``--calibrate`` trains nothing: it measures the calibration of the model already in
``--out`` on the lesions given (another phantom seed or a site's own labelled lesions,
held out from training) and stores it with the model and its card.

Epoch progress goes to stderr; the summary table to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from analyzers._shared.modelcard import (
    CardMetric,
    DataDescription,
    ModelCard,
    ModelCardError,
    load_model_card,
    write_model_card,
)
from analyzers._shared.probability import PROBABILITY_CARD_KEY, ProbabilityCalibration
from analyzers._shared.stats import bootstrap_binary_metrics, cluster_bootstrap_ci, roc_auc
from analyzers.spine.dataset import (
    LesionCohort,
    downsample_majority,
    grouped_split,
    labelled_cohort,
    phantom_cohort,
)
from analyzers.spine.errors import SpineDataError, SpineModelError
from analyzers.spine.model import (
    RELIABLE_SEQUENCES,
    SEQUENCES,
    HyperParameters,
    SequenceModel,
    fit_network,
    log_progress,
)

__all__ = ["REFERENCE_COMMAND", "SequenceEvaluation", "TrainingOutcome", "main", "train_sequence"]

#: How ``analyzers/spine/reference_model`` was made (one run per sequence): the study's final
#: configuration (40 epochs, batch 16, Adam lr 1e-3, dropout 0.5) without a search.
REFERENCE_COMMAND = (
    "pacsnode train spine --sequence {sequence} --phantom --cases 60 --seed 7 --search-trials 1 "
    "--threads 1 --name pacsnode-spine-reference --version 2.0.0 --out analyzers/spine/reference_model"
)
_PAPER = ("Evaluating the Efficacy of Deep Learning Models for Distinguishing Spinal Hemangiomas "
          "from Common Metastatic Tumors Across MRI Sequences (preprint; "
          "../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt)")


@dataclass(frozen=True)
class SequenceEvaluation:
    """Held-out performance of one comparison (all metastases, or one primary)."""

    comparison: str
    n_lesions: int
    n_patients: int
    auc: tuple[float, float, float]
    accuracy: tuple[float, float, float]
    sensitivity: tuple[float, float, float]
    specificity: tuple[float, float, float]

    def row(self) -> str:
        """One line of the summary table."""
        def fmt(v: tuple[float, float, float]) -> str:
            return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
        return (f"| {self.comparison} | {self.n_lesions} | {self.n_patients} | {fmt(self.auc)} | "
                f"{fmt(self.accuracy)} | {fmt(self.sensitivity)} | {fmt(self.specificity)} |")


@dataclass(frozen=True)
class TrainingOutcome:
    """The trained model, its held-out evaluations and the search it came from."""

    model: SequenceModel
    evaluations: list[SequenceEvaluation]
    search: list[dict[str, Any]]
    n_train: int
    n_test: int
    seconds: float
    calibration: ProbabilityCalibration | None = None


def _search_space(base: HyperParameters, trials: int, seed: int) -> list[HyperParameters]:
    """The study's configuration first, then ``trials - 1`` others from a small grid."""
    grid = [
        HyperParameters(lr, batch, epochs, dropout)
        for lr in (base.learning_rate, base.learning_rate / 3.0)
        for batch in (base.batch_size, max(2, base.batch_size // 2))
        for epochs in (base.epochs, max(1, base.epochs // 2))
        for dropout in (base.dropout, 0.3)
    ]
    others = [h for h in grid if h != base]
    order = np.random.default_rng(seed).permutation(len(others))
    return [base, *[others[i] for i in order[:max(0, trials - 1)]]]


def _interval(ci: Any) -> tuple[float, float, float]:
    return float(ci.estimate), float(ci.lower), float(ci.upper)


def _evaluate(name: str, y_met: NDArray[np.int64], p_met: NDArray[np.float64], groups: NDArray[np.str_],
              n_boot: int, seed: int) -> SequenceEvaluation:
    auc = cluster_bootstrap_ci(y_met, p_met, groups, roc_auc, n_boot=n_boot, seed=seed)
    at = bootstrap_binary_metrics(y_met, p_met, 0.5, groups, n_boot=n_boot, seed=seed)
    return SequenceEvaluation(name, len(y_met), len(set(groups.tolist())), _interval(auc),
                              _interval(at["accuracy"]), _interval(at["sensitivity"]),
                              _interval(at["specificity"]))


def train_sequence(
    cohort: LesionCohort,
    base: HyperParameters,
    *,
    search_trials: int = 4,
    seed: int = 0,
    n_boot: int = 2000,
    name: str = "pacsnode-spine",
    version: str = "0.0.0",
    verbose: bool = True,
    device: str = "cpu",
) -> TrainingOutcome:
    """Balance, split, search, train and evaluate one sequence (see the module docstring).

    ``device`` is the torch device the networks are trained on (``"cpu"``, ``"cuda"``).
    """
    start = time.monotonic()
    balanced = cohort.subset(downsample_majority(cohort.labels, seed))
    train_rows, test_rows = grouped_split(balanced.labels, balanced.groups, 0.4, seed)
    train, test = balanced.subset(train_rows), balanced.subset(test_rows)
    search: list[dict[str, Any]] = []
    best = base
    candidates = _search_space(base, search_trials, seed)
    if len(candidates) > 1:
        inner_fit, inner_val = grouped_split(train.labels, train.groups, 0.25, seed + 1)
        best_auc = -1.0
        for trial, hyper in enumerate(candidates, start=1):
            prefix = f"{cohort.sequence} search {trial}/{len(candidates)}"
            network = fit_network(train.crops[inner_fit], train.labels[inner_fit], hyper, seed=seed,
                                  progress=log_progress(prefix) if verbose else None, device=device)
            p_hem = SequenceModel(cohort.sequence, network, 0.5).probability_hemangioma(
                train.crops[inner_val])
            auc = roc_auc(train.labels[inner_val], 1.0 - p_hem)
            search.append({**asdict(hyper), "validation_auc": round(auc, 4)})
            if verbose:
                sys.stderr.write(f"  AUC {auc:.3f}\n")
            if auc > best_auc:
                best, best_auc = hyper, auc
    network = fit_network(train.crops, train.labels, best, seed=seed,
                          progress=log_progress(f"{cohort.sequence} final") if verbose else None, device=device)
    if verbose:
        sys.stderr.write("\n")
    model = SequenceModel(cohort.sequence, network, 0.5, best, name, version)
    p_met = 1.0 - model.probability_hemangioma(test.crops)
    evaluations = [_evaluate(f"hemangioma vs metastasis ({cohort.sequence})", test.labels, p_met,
                             test.groups, n_boot, seed)]
    for primary in sorted({p for p in test.primaries.tolist() if p}):
        rows = (test.labels == 0) | (test.primaries == primary)
        if len(set(test.labels[rows].tolist())) == 2:
            evaluations.append(_evaluate(f"hemangioma vs {primary} ({cohort.sequence})", test.labels[rows],
                                         p_met[rows], test.groups[rows], n_boot, seed))
    model.validation_auc = float(np.clip(evaluations[0].auc[0], 0.0, 1.0))
    calibration = measure_calibration(model, test.labels, 1.0 - p_met,
                                      f"held-out 40 % of the training source's patients ({cohort.sequence})")
    return TrainingOutcome(model, evaluations, search, len(train.labels), len(test.labels),
                           time.monotonic() - start, calibration)


def measure_calibration(model: SequenceModel, labels: NDArray[np.int64], p_hemangioma: NDArray[np.float64],
                        validation: str) -> ProbabilityCalibration:
    """Calibration of P(hemangioma) on held-out lesions (labels: 0 hemangioma, 1 metastasis)."""
    return ProbabilityCalibration.measure(
        (np.asarray(labels) == 0).astype(int), p_hemangioma,
        model=f"{model.name} {model.version} ({model.sequence.upper()})", validation=validation,
        outcome="hemangioma (rather than metastasis)",
    )


def _card(outcome: TrainingOutcome, cohort: LesionCohort, source: str, command: str,
          environment: dict[str, Any]) -> ModelCard:
    model = outcome.model
    metrics = []
    for ev in outcome.evaluations:
        note = f"held-out 40 % of patients, {ev.n_lesions} lesions, patient-level cluster bootstrap"
        for label, value in (("ROC-AUC", ev.auc), ("accuracy", ev.accuracy),
                             ("sensitivity", ev.sensitivity), ("specificity", ev.specificity)):
            metrics.append(CardMetric(f"{ev.comparison}: {label}", value[0], value[1], value[2], 0.95, note))
    if outcome.calibration is not None:
        metrics += outcome.calibration.card_metrics("P(hemangioma): ")
    n_met = int(np.sum(cohort.labels == 1))
    return ModelCard(
        name=model.name,
        version=model.version,
        analyzer="spine",
        model_description=(
            f"CNN on the {model.sequence.upper()} lesion ROI (sagittal slice, grayscale, 256x256): "
            "3 conv blocks (32/64/128 filters, 3x3, batch norm, ReLU, 4x4 max pooling), FC 128, "
            f"dropout {model.hyper.dropout}, softmax over (hemangioma, metastasis); Adam lr "
            f"{model.hyper.learning_rate:g}, batch {model.hyper.batch_size}, {model.hyper.epochs} epochs, "
            "categorical cross-entropy"
        ),
        intended_use=(
            "Research: probability that a vertebral lesion on sagittal spine MRI is a hemangioma rather "
            "than a metastasis, per sequence, combined over T1 and T2 by the spine analyzer. "
            "Not for clinical use."
        ),
        data=DataDescription(
            source=source,
            n_cases=len(cohort.labels),
            n_patients=cohort.n_patients,
            n_positive=n_met,
            positive_label="metastasis",
            negative_label="hemangioma",
            features=(f"{model.sequence} lesion ROI 256x256",),
            notes=f"majority class downsampled to the minority; {outcome.n_train} training and "
                  f"{outcome.n_test} held-out lesions after balancing",
        ),
        validation=(
            "60/40 train/test split stratified by class and grouped by patient; "
            + (f"hyper-parameter search ({len(outcome.search)} configurations) on a grouped 75/25 split of "
               "the training patients; " if outcome.search else
               "no hyper-parameter search (the configuration given was trained directly); ")
            + "metrics on the held-out patients with patient-level cluster-bootstrap resamples"
        ),
        metrics=tuple(metrics),
        references=(_PAPER,),
        limitations=(
            "Pooling size (4x4) chosen to keep the model small; the paper does not state it.",
            "Models trained on the synthetic phantom show that the method works end to end, not how it "
            "performs on patients.",
            "STIR and T1C models are reported but flagged less reliable, as in the study; the analyzer "
            "combines only T1 and T2 when either is present.",
        ),
        extra={PROBABILITY_CARD_KEY: None if outcome.calibration is None else outcome.calibration.to_dict(),
               "command": command, "hyper_parameters": asdict(model.hyper), "search": outcome.search,
               "training_seconds": round(outcome.seconds, 1), "sequence": model.sequence,
               "reliable_in_combination": model.sequence in RELIABLE_SEQUENCES,
               "environment": environment},
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsnode train spine",
        description="Train and evaluate the per-sequence hemangioma vs metastasis CNN (not for clinical use).",
    )
    parser.add_argument("--sequence", required=True, choices=SEQUENCES)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", type=Path, help="labels.csv (see analyzers.spine.dataset.labelled_cohort)")
    source.add_argument("--phantom", action="store_true", help="simulate a spine phantom cohort")
    parser.add_argument("--cases", type=int, default=40, help="phantom cases (with --phantom)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="model folder (created or extended)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--search-trials", type=int, default=4, help="configurations tried (1 = no search)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="training device; auto = cuda when available")
    parser.add_argument("--name", default="pacsnode-spine")
    parser.add_argument("--version", default="0.0.0")
    parser.add_argument("--quiet", action="store_true", help="no epoch progress on stderr")
    parser.add_argument("--calibrate", action="store_true",
                        help="do not train: measure the calibration of the model already in --out on these "
                             "lesions (a held-out cohort: another seed or site) and store it with the model")
    return parser


def calibrate_existing(folder: Path, sequence: str, cohort: LesionCohort, source: str) -> ProbabilityCalibration:
    """Measure an existing model's calibration on held-out lesions; store it in its JSON and model card."""
    model = SequenceModel.load(folder, sequence)
    p_hem = model.probability_hemangioma(cohort.crops).astype(np.float64)
    calibration = measure_calibration(model, cohort.labels, p_hem, source)
    model.info = {**model.info, PROBABILITY_CARD_KEY: calibration.to_dict()}
    model.save(folder)
    card_path = folder / f"model_card_{sequence}.json"
    try:
        card = load_model_card(card_path)
    except (OSError, ModelCardError):
        return calibration
    kept = tuple(m for m in card.metrics if not m.name.startswith("P(hemangioma): "))
    updated = ModelCard(**{**card.__dict__, "metrics": kept + calibration.card_metrics("P(hemangioma): "),
                           "extra": {**card.extra, PROBABILITY_CARD_KEY: calibration.to_dict()}})
    write_model_card(updated, folder, stem=f"model_card_{sequence}")
    return calibration


def main(argv: Sequence[str] | None = None) -> int:
    """``pacsnode train spine`` (see the module docstring); returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(max(1, args.threads))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("pacsnode train spine: --device cuda but no CUDA device is available\n")
        return 2
    environment = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                   "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                   "torch": torch.__version__}
    command = "pacsnode train spine " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        base = HyperParameters(args.learning_rate, args.batch_size, args.epochs, args.dropout)
        if args.phantom:
            def tick(done: int, total: int) -> None:
                if not args.quiet:
                    sys.stderr.write(f"\rphantom cases {done}/{total}")
                    sys.stderr.flush()

            cohort = phantom_cohort((args.sequence,), args.cases, args.seed, progress=tick)[args.sequence]
            if not args.quiet:
                sys.stderr.write("\n")
            source = f"spine phantom (analyzers.phantoms.spine), seed {args.seed}, {args.cases} cases"
        else:
            cohort = labelled_cohort(args.labels, args.sequence)
            source = f"site lesions listed in {args.labels.name}"
        if args.calibrate:
            calibration = calibrate_existing(args.out, args.sequence, cohort, f"held-out {source}")
            print(f"spine {args.sequence}: {calibration.statement()}")
            return 0
        outcome = train_sequence(cohort, base, search_trials=args.search_trials, seed=args.seed,
                                 n_boot=args.bootstrap, name=args.name, version=args.version,
                                 verbose=not args.quiet, device=device)
        outcome.model.info = {"command": command, "source": source, "n_train": outcome.n_train,
                              "n_test": outcome.n_test, "training_seconds": round(outcome.seconds, 1),
                              "environment": environment,
                              PROBABILITY_CARD_KEY: None if outcome.calibration is None
                              else outcome.calibration.to_dict()}
        outcome.model.save(args.out)
        write_model_card(_card(outcome, cohort, source, command, environment), args.out,
                         stem=f"model_card_{args.sequence}")
    except (SpineDataError, SpineModelError) as exc:
        sys.stderr.write(f"pacsnode train spine: {exc}\n")
        return 2
    print(f"spine {args.sequence}: {len(cohort.labels)} lesions, {cohort.n_patients} patients; "
          f"trained in {outcome.seconds:.0f} s on {environment['device']} with {asdict(outcome.model.hyper)}")
    print("| comparison | lesions | patients | AUC [95% CI] | accuracy | sensitivity | specificity |")
    print("|---|---|---|---|---|---|---|")
    for ev in outcome.evaluations:
        print(ev.row())
    print(f"model written to {args.out} (not for clinical use)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
