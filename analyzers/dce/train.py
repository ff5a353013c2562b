"""``pacsnode train dce``: fit and evaluate the recurrence model on labelled lesions.

Same evaluation as the other trainers (:mod:`analyzers._shared.stats`): patient-grouped
nested cross-validation (Optuna tuning of the L2 strength inside, out-of-fold
probabilities outside), patient-level bootstrap CIs, calibration, a sensitivity-targeted
threshold and decision curves on the out-of-fold predictions; the shipped model is then
tuned and refitted on all rows. The model is the one of :mod:`analyzers.dce.model`
(logistic regression on log rKtrans, log rVP, the pre-treatment flag and their products).

Input: a CSV with one row per lesion and the columns ``patient`` (grouping id),
``r_ktrans``, ``r_vp``, ``pre_treatment_hyperperfused`` (1, 0 or empty = no prior) and
``label`` (``recurrence`` / ``radiation_necrosis``, or 1 / 0) — e.g. the ``lesions`` of the
node's ``dce`` findings joined with histopathology; or ``--phantom N`` for N cases of the
``dce`` image phantom, each analysed end to end by the ``dce`` analyzer (pre-treatment
study, then the follow-up with the pre-treatment findings as prior; how the reference
model is made); or ``--synthetic N`` for a cohort of ratios drawn around the study's
medians (:func:`analyzers.dce.model.synthetic_ratio_cohort`, no images).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analyzers.dce.errors import DceInputError
from analyzers.dce.model import RecurrenceModel, feature_matrix, synthetic_ratio_cohort

__all__ = ["PHANTOM_GEOMETRY", "REFERENCE_COMMAND", "HeldOut", "load_cohort_csv", "main", "phantom_cohort",
           "train"]

#: The command that made ``analyzers/dce/reference_model`` (reproducible: same seed, same model).
#: Its calibration is measured on cases 101-140; cases 61-100 were used once before, to decide
#: against recalibrating on out-of-fold probabilities (see docs/analyzers/dce.md).
REFERENCE_COMMAND = ("pacsnode train dce --phantom 60 --holdout-cases 40 --holdout-from 100 --seed 7 "
                     "--trials 10 --n-boot 1000 --out analyzers/dce/reference_model "
                     "--name pacsnode-dce-recurrence-reference --version 3.0.0")

#: Phantom cases for training: the smallest grid the analyzer reads reliably (48×48×6 voxels of
#: 4.8×4.8×10 mm, 60 frames of 5 s), QIBA-DRO-like kinetics and SNR 50 (the phantom's default).
PHANTOM_GEOMETRY: dict[str, Any] = {"matrix": 48, "slices": 6, "pixel_mm": 4.8, "slice_mm": 10.0,
                                    "time_points": 60, "frame_s": 5.0}

_LABELS = {"recurrence": 1, "1": 1, "radiation_necrosis": 0, "necrosis": 0, "0": 0}


def _design(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.column_stack([x, x[:, 2] * x[:, 0], x[:, 2] * x[:, 1]])


def _factory(trial: Any) -> Any:
    """Mean-impute the flag (training prevalence), add the products, L2 logistic (tuned C)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    c = trial.suggest_float("C", 1e-2, 1e2, log=True)
    return Pipeline([("impute", SimpleImputer(strategy="mean")),
                     ("terms", FunctionTransformer(_design)),
                     ("logistic", LogisticRegression(C=c, max_iter=1000))])


def load_cohort_csv(path: Path) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[Any]]:
    """Read the lesion CSV into (inputs (N, 3), labels (N,), patient ids (N,))."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DceInputError(f"cannot read {path}: {exc}") from exc
    needed = {"patient", "r_ktrans", "r_vp", "pre_treatment_hyperperfused", "label"}
    if not rows or not needed <= set(rows[0]):
        raise DceInputError(f"{path} needs the columns {sorted(needed)}")
    try:
        flags = [float(r["pre_treatment_hyperperfused"]) if r["pre_treatment_hyperperfused"]
                 .strip() else np.nan for r in rows]
        x = feature_matrix([float(r["r_ktrans"]) for r in rows],
                           [float(r["r_vp"]) for r in rows], flags)
        y = np.array([_LABELS[r["label"].strip().lower()] for r in rows], dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DceInputError(f"{path}: unreadable value ({exc})") from exc
    return x, y, np.array([r["patient"] for r in rows], dtype=object)


def _truth_seg(folder: Path, tag: str, mask: NDArray[np.bool_]) -> Path:
    """The lesion as a radiologist's SEG would give it (the phantom's truth), next to the case."""
    from analyzers._shared import outputs as out
    from analyzers._shared.volume import load_series
    from sr_templates.dce import TEMPLATE

    dynamic = load_series(sorted((folder / f"{tag}dce").iterdir()))
    seg = out.build_segmentation(dynamic, [out.Segment(TEMPLATE.segment_classes["lesion"], mask,
                                                       tracking_id="drawn")],
                                 out.Algorithm(name="phantom truth", version="1"))
    target = folder / f"{tag}seg"
    target.mkdir(exist_ok=True)
    seg.save_as(target / "seg.dcm")
    return target


def phantom_cohort(cases: int, seed: int, first_case: int = 0,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Lesion rows of ``cases`` ``dce`` phantom patients, measured by the ``dce`` analyzer.

    Each case's two studies are written as DICOM and analysed as the node would: the
    pre-treatment study (VFA T1 map, the lesion from a SEG of the phantom's truth), then
    the follow-up with the pre-treatment findings as its prior. One row per follow-up
    lesion with measured ratios: ``patient``, ``r_ktrans``, ``r_vp``,
    ``pre_treatment_hyperperfused`` (of the matched prior lesion; NaN without one),
    ``label`` (the phantom's truth) and the true ratios.
    """
    from analyzers.contract import AnalysisInput, PriorFinding, SeriesInput
    from analyzers.dce.analyzer import DceAnalyzer, DceSettings
    from analyzers.phantoms.dce import simulate_dce
    from analyzers.phantoms.dicomio import write_case

    def series(folder: Path, study: str) -> SeriesInput:
        return SeriesInput(folder.name, study, tuple(sorted(p for p in folder.iterdir() if p.is_file())))

    analyzer = DceAnalyzer()
    rows: list[dict[str, Any]] = []
    for index in range(first_case, first_case + cases):
        started = time.monotonic()
        case = simulate_dce(seed=seed, case_index=index, **PHANTOM_GEOMETRY)
        with tempfile.TemporaryDirectory(prefix="pacsnode-dce-train-") as tmp:
            folder = Path(tmp)
            write_case(case, folder)
            findings: dict[str, dict[str, Any]] = {}
            for tag in ("pre_", ""):
                seg = _truth_seg(folder, tag, case.truth_maps[f"{tag}lesion_labels"] > 0)
                priors = [] if tag else [PriorFinding("pre", "pre", "pre", findings["pre_"]["study_date"],
                                                      findings["pre_"], DceAnalyzer.version)]
                job = AnalysisInput(job_id=f"train-{index}-{tag or 'post'}", series=series(folder / f"{tag}dce", tag),
                                    related={"vfa": [series(p, tag) for p in sorted(folder.glob(f"{tag}vfa_fa*"))],
                                             "roi": [series(seg, tag)]},
                                    priors=priors, settings=DceSettings(), scratch=folder)
                findings[tag] = analyzer.analyze(job).findings
        truth = case.truth["studies_truth"]["post"]["lesions"][0]
        for lesion in findings[""]["lesions"]:
            if lesion["r_ktrans"] is None or lesion["r_vp"] is None:
                continue
            prior = lesion["prior"]
            rows.append({"patient": case.patient.patient_id, "r_ktrans": lesion["r_ktrans"],
                         "r_vp": lesion["r_vp"],
                         "pre_treatment_hyperperfused": np.nan if prior is None else float(prior["hyperperfused"]),
                         "label": case.truth["label"], "r_ktrans_true": truth["rktrans"],
                         "r_vp_true": truth["rvp"]})
        if progress:
            print(f"[dce] phantom case {index + 1 - first_case}/{cases} (index {index}, {case.truth['label']}): "
                  f"{time.monotonic() - started:.1f} s", flush=True)
    return rows


@dataclass(frozen=True)
class HeldOut:
    """Cases kept out of training and tuning, on which calibration is measured."""

    x: NDArray[np.float64]
    y: NDArray[np.int64]
    note: str


def _recalibrated(model: RecurrenceModel, y: NDArray[np.int64], oof: NDArray[np.float64]) -> RecurrenceModel:
    """Fold a logistic recalibration of the out-of-fold probabilities into the coefficients.

    ``sigmoid(a + b·logit(p))`` of a logistic model is a logistic model with coefficients
    ``b·β`` and intercept ``a + b·β0``; nothing else changes.
    """
    from analyzers._shared.probability import LogisticRecalibration

    recal = LogisticRecalibration.fit(y, oof)
    training = dict(model.training, recalibration={
        "method": "logistic recalibration (Platt) of the out-of-fold probabilities", **recal.to_dict()})
    return replace(model, coefficients=tuple(recal.b * v for v in model.coefficients),
                   intercept=recal.a + recal.b * model.intercept, training=training)


def _held_out_calibration(model: RecurrenceModel, held: HeldOut, out: Path) -> RecurrenceModel:
    """Measure the final model on the held-out cases; record it and draw the reliability plot."""
    from analyzers._shared import stats
    from analyzers._shared.probability import ProbabilityCalibration
    from analyzers._shared.report import calibration_figure, figure_png

    x = held.x.copy()
    probability = model.predict_proba(np.exp(x[:, 0]), np.exp(x[:, 1]), x[:, 2])
    calibration = ProbabilityCalibration.measure(
        held.y, probability, model=f"{model.name} {model.version}", validation=held.note,
        outcome="recurrent tumour (vs radiation necrosis)")
    curve = stats.calibration_curve(held.y, probability, n_bins=5)
    both = 0 < int(held.y.sum()) < held.y.size
    holdout = {"note": held.note, "n_cases": int(held.y.size), "n_recurrence": int(held.y.sum()),
               "auc": float(stats.roc_auc(held.y, probability)) if both else None,
               "brier": calibration.brier, "calibration_slope": calibration.slope,
               "calibration_intercept": calibration.intercept, "reliability": curve.to_dict(),
               "reported_range": [calibration.lower, calibration.upper]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.png").write_bytes(figure_png(calibration_figure(
        {f"held-out ({held.y.size} cases)": curve}, title=f"{model.name} {model.version}")))
    return replace(model, calibration=calibration, training=dict(model.training, holdout=holdout))


def train(x: NDArray[np.float64], y: NDArray[np.int64], groups: NDArray[Any], out: Path, *,
          name: str, version: str, seed: int = 0, folds: int = 5, n_trials: int = 20,
          n_boot: int = 2000, data_note: str = "", held_out: HeldOut | None = None,
          recalibrate: bool = False) -> RecurrenceModel:
    """Nested-CV evaluation, the final model, its calibration on held-out cases, written to ``out``.

    Parameters
    ----------
    x:
        Inputs (log rKtrans, log rVP, flag), shape (N, 3); NaN flag = no prior.
    y:
        1 = recurrence, 0 = radiation necrosis.
    groups:
        Patient of each row.
    out:
        Model folder to write.
    name, version:
        Model identity.
    seed, folds, n_trials, n_boot:
        Evaluation settings.
    data_note:
        What the data are, for the model card.
    held_out:
        Cases of other patients, never used for fitting or tuning: the calibration the
        analyzer relies on to print a probability is measured on them. Without them the
        model carries no calibration record and the analyzer prints no probability.
    recalibrate:
        Fold a logistic recalibration of the out-of-fold probabilities into the model (off by
        default: on the reference phantom cohort the out-of-fold slope, 3.6, did not carry over
        to held-out patients, whose slope after recalibration was 0.33).
    """
    from analyzers._shared import stats

    outer = stats.CVScheme.group_kfold(folds, stratified=True)
    nested = stats.nested_cross_validate(x, y, groups, _factory, outer=outer,
                                         inner_splits=min(folds, 5), n_trials=n_trials,
                                         seed=seed)
    evaluation = stats.evaluate_predictions(y, nested.oof_probability, _group_codes(groups),
                                            n_boot=n_boot, seed=seed)
    tuned = stats.tune_and_fit(x, y, groups, _factory, cv_splits=min(folds, 5), stratified=True,
                               n_trials=n_trials, seed=seed)
    c_value = float(tuned.best_params["C"])
    flags = x[:, 2]
    summary = evaluation.to_dict()
    training = {"data": data_note, "seed": seed, "cv": nested.scheme, "n_trials": n_trials,
                "chosen_C": c_value, "oof_auc": summary.get("auc"),
                "oof_brier": summary.get("brier"), "evaluation": summary}
    model = RecurrenceModel.fit(np.exp(x[:, 0]), np.exp(x[:, 1]), flags, y, name=name,
                                version=version, c=c_value,
                                training=json.loads(json.dumps(training, default=_jsonable)))
    if recalibrate:
        model = _recalibrated(model, y, np.asarray(nested.oof_probability, dtype=np.float64))
    if held_out is not None:
        model = _held_out_calibration(model, held_out, out)
    model = replace(model, training=json.loads(json.dumps(model.training, default=_jsonable)))
    model.save(out)
    return model


def _analyzer_version() -> str:
    from analyzers.dce.analyzer import DceAnalyzer

    return DceAnalyzer.version


def _group_codes(groups: NDArray[Any]) -> NDArray[np.int64]:
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    return codes.astype(np.int64)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _phantom_rows(cases: int, seed: int, first_case: int, rows_csv: Path | None
                  ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[Any], int]:
    rows = phantom_cohort(cases, seed, first_case=first_case, progress=True)
    if not rows:
        raise DceInputError(f"no phantom case of {cases} gave computable ratios")
    if rows_csv is not None:
        with rows_csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    x = feature_matrix([r["r_ktrans"] for r in rows], [r["r_vp"] for r in rows],
                       [r["pre_treatment_hyperperfused"] for r in rows])
    y = np.array([_LABELS[r["label"]] for r in rows], dtype=np.int64)
    return x, y, np.array([r["patient"] for r in rows], dtype=object), len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode train dce``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="pacsnode train dce", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", type=Path, help="lesion CSV (see the module documentation)")
    source.add_argument("--phantom", type=int, metavar="N",
                        help="train on N dce phantom patients analysed by the dce analyzer")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="train on N synthetic patients drawn around the study's medians")
    parser.add_argument("--holdout", type=Path, metavar="CSV",
                        help="with --cohort: lesions of other patients, for the calibration record")
    parser.add_argument("--holdout-cases", type=int, default=0, metavar="M",
                        help="with --phantom/--synthetic: M further patients held out for calibration")
    parser.add_argument("--holdout-from", type=int, metavar="K",
                        help="with --phantom: the held-out patients are cases K+1..K+M (default: right "
                             "after the training cases)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="fold a logistic recalibration of the out-of-fold probabilities into the model")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", default="pacsnode-dce-recurrence-site")
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--rows-csv", type=Path, help="with --phantom: write the measured training rows here "
                                                      "(default: training_rows.csv in the model folder)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    held: HeldOut | None = None
    if args.cohort is not None:
        x, y, groups = load_cohort_csv(args.cohort)
        note = f"site cohort {args.cohort.name}"
        if args.holdout is not None:
            hx, hy, _ = load_cohort_csv(args.holdout)
            held = HeldOut(hx, hy, f"held-out site cohort {args.holdout.name}")
    elif args.phantom is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        x, y, groups, n_rows = _phantom_rows(args.phantom, args.seed, 0,
                                             args.rows_csv or args.out / "training_rows.csv")
        geometry = ", ".join(f"{k}={v}" for k, v in PHANTOM_GEOMETRY.items())
        note = (f"dce image phantom, {args.phantom} patients (seed {args.seed}; {geometry}; SNR 50), "
                f"{n_rows} follow-up lesions with computable ratios measured by the dce analyzer "
                f"{_analyzer_version()} (VFA T1, lesion from the phantom's truth SEG, pre-treatment study "
                "as prior)")
        if args.holdout_cases:
            first = args.phantom if args.holdout_from is None else args.holdout_from
            if first < args.phantom:
                parser.error("--holdout-from must not reach back into the training cases")
            hx, hy, _, n_held = _phantom_rows(args.holdout_cases, args.seed, first,
                                              args.out / "holdout_rows.csv")
            held = HeldOut(hx, hy, f"{n_held} lesions of {args.holdout_cases} held-out dce phantom patients "
                                   f"(cases {first + 1}-{first + args.holdout_cases}, seed "
                                   f"{args.seed}), measured by the dce analyzer")
    else:
        cohort = synthetic_ratio_cohort(args.synthetic, args.seed)
        x = feature_matrix(cohort.r_ktrans, cohort.r_vp, cohort.pre_flag)
        y, groups = cohort.recurrence, cohort.patient.astype(object)
        note = (f"synthetic ratio cohort, {args.synthetic} patients, seed {args.seed} "
                "(analyzers.dce.model.synthetic_ratio_cohort)")
        if args.holdout_cases:
            extra = synthetic_ratio_cohort(args.holdout_cases, args.seed + 1)
            held = HeldOut(feature_matrix(extra.r_ktrans, extra.r_vp, extra.pre_flag), extra.recurrence,
                           f"{args.holdout_cases} held-out synthetic patients (seed {args.seed + 1})")
    model = train(x, y, groups, args.out, name=args.name, version=args.version, seed=args.seed,
                  folds=args.folds, n_trials=args.trials, n_boot=args.n_boot, data_note=note,
                  held_out=held, recalibrate=args.recalibrate)
    auc = model.training.get("oof_auc")
    print(f"wrote {args.out} ({model.name} {model.version}); out-of-fold AUC {auc}")
    if model.calibration is not None:
        print(model.calibration.statement())
    else:
        print("no held-out cases: the model has no calibration record and the analyzer will print "
              "no probability from it (use --holdout / --holdout-cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
