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
node's ``dce`` findings joined with histopathology; or ``--synthetic N`` for a cohort of
:func:`analyzers.dce.model.synthetic_ratio_cohort` (how the reference model is made).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from analyzers.dce.errors import DceInputError
from analyzers.dce.model import RecurrenceModel, feature_matrix, synthetic_ratio_cohort

__all__ = ["REFERENCE_COMMAND", "load_cohort_csv", "main", "train"]

#: The command that made ``analyzers/dce/reference_model`` (reproducible: same seed, same model).
REFERENCE_COMMAND = ("python -m analyzers.dce.train --synthetic 400 --seed 20250101 "
                     "--out analyzers/dce/reference_model --name pacsnode-dce-recurrence-reference "
                     "--version 1.0.0")

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
    source.add_argument("--synthetic", type=int, metavar="N",
                        help="train on N synthetic patients drawn around the study's medians")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", default="pacsnode-dce-recurrence-site")
    parser.add_argument("--version", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cohort is not None:
        x, y, groups = load_cohort_csv(args.cohort)
        note = f"site cohort {args.cohort.name}"
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
