"""``pacsnode train dce --phantom N``: the training rows come from image phantoms measured by the
``dce`` analyzer, and the shipped reference model is the one its reference command makes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from analyzers.dce.analyzer import REFERENCE_MODEL_FOLDER
from analyzers.dce.model import RecurrenceModel
from analyzers.dce.train import PHANTOM_GEOMETRY, REFERENCE_COMMAND, phantom_cohort
from analyzers.phantoms.dce import simulate_dce


def test_phantom_rows_are_the_analyzers_measurements_of_the_phantom() -> None:
    (row,) = phantom_cohort(1, seed=7)
    case = simulate_dce(seed=7, case_index=0, **PHANTOM_GEOMETRY)
    truth = case.truth["studies_truth"]
    pre, post = truth["pre"]["lesions"][0], truth["post"]["lesions"][0]
    assert row["patient"] == case.patient.patient_id and row["label"] == case.truth["label"]
    assert row["r_ktrans_true"] == post["rktrans"] and row["r_vp_true"] == post["rvp"]
    # measured, not copied: near the truth (partial volume at 4.8 mm lowers lesion means), on the same
    # side of the hyperperfusion threshold, with the matched prior's flag equal to the truth's
    assert row["r_ktrans"] != post["rktrans"]
    assert 0.5 < row["r_ktrans"] / post["rktrans"] < 2.0 and 0.5 < row["r_vp"] / post["rvp"] < 2.0
    assert (max(row["r_ktrans"], row["r_vp"]) >= 1.5) == post["hyperperfusion"]
    assert row["pre_treatment_hyperperfused"] == float(pre["hyperperfusion"])


def test_reference_model_is_made_by_the_reference_command() -> None:
    model = RecurrenceModel.load(REFERENCE_MODEL_FOLDER)
    words = REFERENCE_COMMAND.split()
    option = {key: value for key, value in itertools.pairwise(words) if key.startswith("--")}
    assert option["--version"] == model.version and option["--name"] == model.name
    assert option["--out"] == "analyzers/dce/reference_model"
    n_patients, seed = int(option["--phantom"]), int(option["--seed"])
    assert model.training["data"].startswith(f"dce image phantom, {n_patients} patients (seed {seed};")
    assert model.training["oof_auc"]["estimate"] > 0.5
    card = (Path(REFERENCE_MODEL_FOLDER) / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "NOT FOR CLINICAL USE" in card and "dce image phantom" in card
    json.dumps(model.training)
    assert np.isfinite(model.predict_proba(7.4, 3.1, 1.0)[0])
    # Its probabilities are calibrated on held-out patients (after the training cases), recorded in
    # the card with the reliability plot; the analyzer prints nothing without this record.
    held_first, held_n = int(option["--holdout-from"]), int(option["--holdout-cases"])
    assert held_first >= n_patients and model.calibration is not None
    assert f"cases {held_first + 1}-{held_first + held_n}, seed {seed}" in model.calibration.validation
    assert 0 < model.calibration.n_cases <= held_n and model.training["holdout"]["n_cases"] == model.calibration.n_cases
    assert "Calibration (held-out)" in card and (Path(REFERENCE_MODEL_FOLDER) / "reliability.png").is_file()
