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
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analyzers.dce.errors import DceInputError
from analyzers.dce.model import RecurrenceModel, feature_matrix, synthetic_ratio_cohort

__all__ = ["PHANTOM_GEOMETRY", "REFERENCE_COMMAND", "load_cohort_csv", "main", "phantom_cohort", "train"]

#: The command that made ``analyzers/dce/reference_model`` (reproducible: same seed, same model).
REFERENCE_COMMAND = ("pacsnode train dce --phantom 60 --seed 7 --trials 10 --n-boot 1000 "
                     "--out analyzers/dce/reference_model --name pacsnode-dce-recurrence-reference "
                     "--version 2.0.0")

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


def train(x: NDArray[np.float64], y: NDArray[np.int64], groups: NDArray[Any], out: Path, *,
          name: str, version: str, seed: int = 0, folds: int = 5, n_trials: int = 20,
          n_boot: int = 2000, data_note: str = "") -> RecurrenceModel:
    """Nested-CV evaluation, then the final model written to ``out``.

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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode train dce``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="pacsnode train dce", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", type=Path, help="lesion CSV (see the module documentation)")
    source.add_argument("--phantom", type=int, metavar="N",
                        help="train on N dce phantom patients analysed by the dce analyzer")
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="train on N synthetic patients drawn around the study's medians")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", default="pacsnode-dce-recurrence-site")
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--rows-csv", type=Path, help="with --phantom: also write the measured lesion rows here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cohort is not None:
        x, y, groups = load_cohort_csv(args.cohort)
        note = f"site cohort {args.cohort.name}"
    elif args.phantom is not None:
        rows = phantom_cohort(args.phantom, args.seed, progress=True)
        if args.rows_csv is not None:
            with args.rows_csv.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        x = feature_matrix([r["r_ktrans"] for r in rows], [r["r_vp"] for r in rows],
                           [r["pre_treatment_hyperperfused"] for r in rows])
        y = np.array([_LABELS[r["label"]] for r in rows], dtype=np.int64)
        groups = np.array([r["patient"] for r in rows], dtype=object)
        geometry = ", ".join(f"{k}={v}" for k, v in PHANTOM_GEOMETRY.items())
        note = (f"dce image phantom, {args.phantom} patients (seed {args.seed}; {geometry}; SNR 50), "
                f"{len(rows)} follow-up lesions measured by the dce analyzer {_analyzer_version()} "
                "(VFA T1, lesion from the phantom's truth SEG, pre-treatment study as prior)")
    else:
        cohort = synthetic_ratio_cohort(args.synthetic, args.seed)
        x = feature_matrix(cohort.r_ktrans, cohort.r_vp, cohort.pre_flag)
        y, groups = cohort.recurrence, cohort.patient.astype(object)
        note = (f"synthetic ratio cohort, {args.synthetic} patients, seed {args.seed} "
                "(analyzers.dce.model.synthetic_ratio_cohort)")
    model = train(x, y, groups, args.out, name=args.name, version=args.version, seed=args.seed,
                  folds=args.folds, n_trials=args.trials, n_boot=args.n_boot, data_note=note)
    auc = model.training.get("oof_auc")
    print(f"wrote {args.out} ({model.name} {model.version}); out-of-fold AUC {auc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
