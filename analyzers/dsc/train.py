"""``pacsnode train dsc``: fit and evaluate the dural metastasis vs meningioma classifier.

Follows the evaluation of the dural-lesion DSC study
(../shared/papers/dsc-dural-metastasis-vs-meningioma.txt, section 2.5) with the
shared toolkit :mod:`analyzers._shared.stats`: patient-grouped nested
cross-validation (outer GroupKFold, inner grouped CV with Optuna tuning) of
LDA, L2 logistic regression and linear SVM (the pipelines of
:mod:`analyzers.dsc.model`) plus decision tree, KNN and the soft-voting
ensemble of the best two; pooled out-of-fold ROC-AUC with patient-level
cluster-bootstrap CI, Brier score, calibration, the threshold for ≥ 85 %
sensitivity for metastasis; univariate AUCs of rCBF and rCBV. The shipped model
(``--model``, LDA by default) is then fitted on all rows and written as
``model.json`` with ``model_card.md/json``, ``report.html`` (ROC, calibration)
and ``features.csv``.

Input, one of:

* ``--cohort lesions.csv``: one row per lesion with ``patient``, ``label``
  (``dural_metastasis``/``meningioma`` or 1/0) and the feature columns
  (``rCBF_mean``, ``rCBV_mean``; for ``--features extended`` also ``ADC_mean``,
  ``rWiT``, ``rPSR``, ``washout_slope``, ``sex_female``; empty = missing), e.g.
  the ``lesions`` of the node's ``dsc`` findings joined with the site's labels;
* ``--phantom --cases N``: N cases of the project's DSC phantom, each analysed
  with the map library and its lesions' truth masks as ROIs (how the reference
  model is made).

Held-out test: ``--holdout lesions.csv`` (with ``--cohort``) or
``--holdout-cases M`` (with ``--phantom``: the M phantom cases that follow the
training cases, other patients) is never seen by model selection or fitting;
the final model, with the threshold chosen on the training cohort, is applied
to it once and its ROC-AUC with patient-level cluster-bootstrap 95 % CI,
Brier score and sensitivity/specificity at the training threshold are written
to the model card (metrics prefixed ``held-out:``), the report and stdout.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analyzers.dsc.errors import DscModelError
from analyzers.dsc.model import (
    FEATURE_SETS,
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    ClassifierKind,
    DscClassifier,
    build_pipeline,
    fit_classifier,
)

__all__ = ["REFERENCE_COMMAND", "load_cohort_csv", "main", "phantom_cohort", "train"]

#: The command that makes ``analyzers/dsc/reference_model``.
REFERENCE_COMMAND = ("python -m analyzers.dsc.train --phantom --cases 120 --holdout-cases 60 --seed 0 "
                     "--trials 10 --n-boot 1000 --out analyzers/dsc/reference_model "
                     "--name pacsnode-dsc-reference --version 3.0.0")
_LABELS = {POSITIVE_LABEL: 1, "metastasis": 1, "1": 1, NEGATIVE_LABEL: 0, "0": 0}
#: Phantom geometry of the training cohort: coarser than a clinical series to keep
#: a 120-case cohort within minutes; the lesion ratios are measured the same way.
PHANTOM_GEOMETRY: dict[str, Any] = {"matrix": 64, "slices": 12, "pixel_mm": 3.6, "slice_mm": 6.0,
                                    "snr": 60.0}
#: Acquisitions a phantom-trained model answers for: voxels up to 25 % coarser than the
#: training grid's, and a series covering at least 40 s after bolus arrival (the training
#: series cover 70-78 s: 60 frames of 1.5 s, arrival at 10-18 s).
PHANTOM_ACQUISITION_RANGE: dict[str, float] = {
    "pixel_mm_max": 1.25 * PHANTOM_GEOMETRY["pixel_mm"],
    "slice_mm_max": 1.25 * PHANTOM_GEOMETRY["slice_mm"],
    "coverage_s_min": 40.0,
}


def load_cohort_csv(path: Path, features: Sequence[str]) -> tuple[NDArray[np.float64],
                                                                  NDArray[np.int64], NDArray[Any]]:
    """Read a lesion CSV into (features, labels, patients)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DscModelError(f"cannot read {path}: {exc}") from exc
    needed = {"patient", "label", "rCBF_mean", "rCBV_mean"}
    if not rows or not needed <= set(rows[0]):
        raise DscModelError(f"{path} needs at least the columns {sorted(needed)}")
    x = np.full((len(rows), len(features)), np.nan)
    try:
        for i, row in enumerate(rows):
            for j, name in enumerate(features):
                text = (row.get(name) or "").strip()
                x[i, j] = float(text) if text else np.nan
        y = np.array([_LABELS[r["label"].strip().lower()] for r in rows], dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DscModelError(f"{path}: unreadable value ({exc})") from exc
    return x, y, np.array([r["patient"] for r in rows], dtype=object)


def phantom_cohort(cases: int, seed: int, first_case: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Lesion rows of ``cases`` DSC phantom cases from ``first_case`` on (truth lesion masks as ROIs)."""
    from scipy import ndimage

    from analyzers.dsc.maps import compute_maps
    from analyzers.dsc.reference import (
        contralateral_reference,
        measure_region,
        midsagittal_position,
        relative_values,
        white_matter_mask,
    )
    from analyzers.phantoms.dsc import simulate_dsc

    rows = []
    for index in range(first_case, first_case + cases):
        if progress:
            print(f"[dsc] phantom case {index + 1 - first_case}/{cases} (index {index})", flush=True)
        case = simulate_dsc(seed=seed, case_index=index, **PHANTOM_GEOMETRY)
        series, truth_maps = case.series[0], case.truth_maps
        maps = compute_maps(series.pixels, series.times_s, case.truth["constants"]["te_s"])
        lesions = truth_maps["lesion_labels"]
        every = lesions > 0
        white = white_matter_mask(maps, exclude=ndimage.binary_dilation(every, iterations=1))
        plane = midsagittal_position(maps.s0, maps.brain_mask, 2)
        dz, dy, dx = (float(v) for v in series.grid.spacing)
        spacing = (dz, dy, dx)
        for item in case.truth["lesions"]:
            mask = lesions == item["id"]
            if not (mask & maps.brain_mask).any():
                continue
            reference = contralateral_reference(mask, white, plane, 2, spacing, edema=every,
                                                exclude=maps.aif_mask, baseline=maps.s0)
            lesion = measure_region(maps, series.pixels, mask)
            ratios = relative_values(lesion, measure_region(maps, series.pixels, reference))
            rows.append({
                "patient": case.patient.patient_id, "label": case.truth["label"],
                "rCBF_mean": ratios["rCBF"], "rCBV_mean": ratios["rCBV"], "ADC_mean": np.nan,
                "rWiT": ratios["rWiT"], "rPSR": ratios["rPSR"],
                "washout_slope": lesion.washout_slope,
                "sex_female": 1.0 if case.patient.sex == "F" else 0.0,
                "rCBF_true": item["rcbf"], "rCBV_true": item["rcbv"],
            })
    return rows


def _factory(kind: ClassifierKind) -> Any:
    def build(trial: Any) -> Any:
        c_value = 1.0 if kind == "lda" else trial.suggest_float("C", 1e-3, 1e2, log=True)
        return build_pipeline(kind, c_value, 0)

    return build


def train(x: NDArray[np.float64], y: NDArray[np.int64], groups: NDArray[Any], out: Path, *,
          features: Sequence[str], kind: ClassifierKind, name: str, version: str, seed: int = 0,
          folds: int = 5, n_trials: int = 20, n_boot: int = 2000, data_note: str = "",
          holdout: tuple[NDArray[np.float64], NDArray[np.int64], NDArray[Any]] | None = None,
          holdout_note: str = "",
          acquisition_range: Mapping[str, float] | None = None,
          ) -> tuple[DscClassifier, Any]:
    """Nested-CV comparison and evaluation, then the final model, card and report in ``out``.

    Parameters
    ----------
    holdout:
        ``(features, labels, patients)`` of a held-out cohort (patients not in
        ``groups``); the final model and its training threshold are applied to it once.
    holdout_note:
        Description of the held-out cohort for the model card.
    acquisition_range:
        The acquisitions the training data cover (see :class:`DscClassifier`).

    The probability a report prints is clipped and rounded by its calibration
    (:class:`analyzers._shared.probability.ProbabilityCalibration`), measured on the
    held-out cohort when there is one, else on the out-of-fold probabilities of the
    nested CV, and stored in the model card's ``extra["probability"]``.

    Returns
    -------
    model, holdout_evaluation:
        The fitted classifier, and the :class:`~analyzers._shared.stats.Evaluation`
        of the held-out cohort (None without one).

    Raises
    ------
    DscModelError
        The held-out cohort shares patients with the training cohort or has one class only.
    """
    from analyzers._shared import stats
    from analyzers._shared.modelcard import (
        DataDescription,
        ModelCard,
        metrics_from_evaluation,
        write_model_card,
    )
    from analyzers._shared.probability import PROBABILITY_CARD_KEY, ProbabilityCalibration
    from analyzers._shared.report import write_report

    _, codes = np.unique(groups.astype(str), return_inverse=True)
    candidates = {"lda": _factory("lda"), "logistic_l2": _factory("logistic"),
                  "linear_svm": _factory("linear_svm"),
                  "decision_tree": stats.decision_tree_factory, "knn": stats.knn_factory}
    outer = stats.CVScheme(n_splits=folds, stratified=True)
    comparison = stats.compare_models(x, y, codes, candidates, outer=outer,
                                      inner_splits=min(folds, 5), n_trials=n_trials,
                                      n_boot=n_boot, seed=seed)
    key = {"lda": "lda", "logistic": "logistic_l2", "linear_svm": "linear_svm"}[kind]
    evaluation = stats.evaluate_predictions(y, comparison.results[key].oof_probability, codes,
                                            n_boot=n_boot, seed=seed)
    univariate = stats.univariate_aucs(x[:, :2], y, list(features[:2]), codes, n_boot=n_boot,
                                       seed=seed)
    c_value = 1.0
    if kind != "lda":
        tuned = stats.tune_and_fit(x, y, codes, _factory(kind), cv_splits=min(folds, 5),
                                   stratified=True, n_trials=n_trials, seed=seed)
        c_value = float(tuned.best_params["C"])
    model = fit_classifier(x, y, features, kind=kind, groups=codes, c_value=c_value, seed=seed)
    model = replace(model, acquisition_range=dict(acquisition_range or {}))
    model.save(out)
    held_out = None
    calibration = ProbabilityCalibration.measure(
        y, comparison.results[key].oof_probability, model=f"{name} {version}",
        validation=f"out-of-fold probabilities of {folds}-fold CV grouped by patient, {data_note}",
        outcome="dural metastasis")
    if holdout is not None:
        hx, hy, hgroups = holdout
        shared = set(hgroups.astype(str)) & set(groups.astype(str))
        if shared:
            raise DscModelError(f"held-out patients also in the training cohort: {sorted(shared)[:5]}")
        if np.unique(hy).size < 2:
            raise DscModelError("the held-out cohort needs lesions of both classes")
        _, hcodes = np.unique(hgroups.astype(str), return_inverse=True)
        held_out = stats.evaluate_predictions(hy, model.probability(hx), hcodes,
                                              threshold=model.threshold, n_boot=n_boot, seed=seed)
        calibration = ProbabilityCalibration.measure(
            hy, model.probability(hx), model=f"{name} {version}",
            validation=f"held-out {holdout_note}", outcome="dural metastasis")
    data = DataDescription(source=data_note, n_cases=int(y.size),
                           n_patients=int(np.unique(codes).size), n_positive=int(y.sum()),
                           positive_label="dural metastasis", negative_label="meningioma",
                           features=tuple(features))
    card = ModelCard(
        name=name, version=version, analyzer="dsc",
        model_description=(f"{kind} on ({', '.join(features)}) with median imputation and "
                           f"standardisation; probability of dural metastasis, class at "
                           f"threshold {model.threshold:.3f} (sensitivity >= 85 % on "
                           "out-of-fold training probabilities)"),
        intended_use=("Research: second opinion on dural-based lesions (dural metastasis vs "
                      "meningioma) from DSC perfusion ratios; not for diagnosis."),
        data=data,
        validation=(f"nested CV, outer {folds}-fold StratifiedGroupKFold by patient, inner "
                    f"grouped CV with {n_trials} Optuna trials, seed {seed}; pooled out-of-fold "
                    f"probabilities; {n_boot} patient-level bootstrap resamples"
                    + ("" if held_out is None else
                       f"; held-out test ({holdout_note}; {held_out.n_cases} lesions): the final model "
                       "and its training threshold applied once, metrics prefixed 'held-out:'")),
        metrics=metrics_from_evaluation(evaluation)
        + (() if held_out is None else metrics_from_evaluation(held_out, "held-out: "))
        + calibration.card_metrics("reported probability: "),
        references=("Dural metastasis vs meningioma with DSC perfusion and machine learning "
                    "(../shared/papers/dsc-dural-metastasis-vs-meningioma.txt)",
                    "Bjørnerud et al., JCBFM 2011 (leakage term; Boxerman et al., AJNR 2006)",
                    "Wu et al., MRM 2003 (oSVD)"),
        limitations=("Trained on the data described; a site must validate on its own studies.",
                     "CBF from oSVD (OI 0.035) is biased low; ratios partly cancel the bias.",
                     "Validated only for the acquisitions in extra.acquisition_range; outside it the "
                     "analyzer does not report the probability."),
        extra={"comparison": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                               for k, v in row.items()} for row in comparison.table()],
               "univariate_auc": {u.feature: round(u.auc.estimate, 4) for u in univariate},
               "C": c_value, PROBABILITY_CARD_KEY: calibration.to_dict(),
               "acquisition_range": dict(model.acquisition_range)},
    )
    write_model_card(card, out)
    evaluations = {f"{key} (nested CV, out-of-fold)": evaluation}
    if held_out is not None:
        evaluations[f"{key} (held-out test)"] = held_out
    write_report(out, title=f"pacsnode dsc: {name} {version}",
                 evaluations=evaluations, comparison_table=comparison.table(),
                 cv_results=comparison.results, univariate=univariate, model_card=card,
                 n_boot=min(n_boot, 500), seed=seed)
    return model, held_out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``pacsnode train dsc``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="pacsnode train dsc", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", type=Path, help="lesion CSV (see the module documentation)")
    source.add_argument("--phantom", action="store_true", help="train on DSC phantom cases")
    parser.add_argument("--cases", type=int, default=120, help="phantom cases (with --phantom)")
    parser.add_argument("--holdout", type=Path, help="held-out lesion CSV (with --cohort)")
    parser.add_argument("--holdout-cases", type=int, default=0,
                        help="held-out phantom cases after the training cases (with --phantom)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--model", choices=("lda", "logistic", "linear_svm"), default="lda")
    parser.add_argument("--features", choices=tuple(FEATURE_SETS), default="reduced")
    parser.add_argument("--name", default="pacsnode-dsc-site")
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.holdout is not None and args.cohort is None:
        parser.error("--holdout goes with --cohort (use --holdout-cases with --phantom)")
    if args.holdout_cases and not args.phantom:
        parser.error("--holdout-cases goes with --phantom (use --holdout with --cohort)")
    features = FEATURE_SETS[args.features]
    holdout = None
    holdout_note = ""
    if args.cohort is not None:
        x, y, groups = load_cohort_csv(args.cohort, features)
        note = f"site cohort {args.cohort.name}"
        if args.holdout is not None:
            holdout = load_cohort_csv(args.holdout, features)
            holdout_note = f"site cohort {args.holdout.name}"
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = phantom_cohort(args.cases, args.seed, progress=True)
        x, y, groups = _phantom_arrays(rows, features, args.out / "features.csv")
        note = (f"pacsnode DSC phantom, {args.cases} cases, seed {args.seed}, "
                f"{PHANTOM_GEOMETRY}; lesion truth masks as ROIs")
        if args.holdout_cases > 0:
            held = phantom_cohort(args.holdout_cases, args.seed, first_case=args.cases, progress=True)
            holdout = _phantom_arrays(held, features, args.out / "holdout_features.csv")
            holdout_note = (f"pacsnode DSC phantom cases {args.cases + 1}-{args.cases + args.holdout_cases} "
                            f"of seed {args.seed}, other patients")
    model, held_out = train(x, y, groups, args.out, features=features, kind=args.model, name=args.name,
                            version=args.version, seed=args.seed, folds=args.folds, n_trials=args.trials,
                            n_boot=args.n_boot, data_note=note, holdout=holdout, holdout_note=holdout_note,
                            acquisition_range=PHANTOM_ACQUISITION_RANGE if args.phantom else None)
    print(f"wrote {args.out}: {model.kind} on {', '.join(model.features)}, "
          f"threshold {model.threshold:.3f}")
    if held_out is not None:
        auc, at = held_out.auc, held_out.at_threshold
        print(f"held-out: {held_out.n_cases} lesions of {held_out.n_patients} patients, ROC-AUC "
              f"{auc.estimate:.3f} (95% CI {auc.lower:.3f}-{auc.upper:.3f}, patient-level bootstrap), "
              f"sensitivity {at.sensitivity:.3f}, specificity {at.specificity:.3f} "
              f"at the training threshold")
    return 0


def _phantom_arrays(rows: Sequence[dict[str, Any]], features: Sequence[str], path: Path,
                    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[Any]]:
    """Write the lesion rows to ``path`` and return (features, labels, patients)."""
    if not rows:
        raise DscModelError("the phantom cohort produced no lesion rows")
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    x = np.array([[row[name] for name in features] for row in rows], dtype=np.float64)
    y = np.array([_LABELS[row["label"]] for row in rows], dtype=np.int64)
    return x, y, np.array([row["patient"] for row in rows], dtype=object)


if __name__ == "__main__":
    raise SystemExit(main())
