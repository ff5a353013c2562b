"""The study's readout: ratios, hyperperfusion, each branch of the prior-informed rule,
lesion matching by location, and the recurrence model's persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analyzers.dce.errors import DceInputError, RecurrenceModelError
from analyzers.dce.model import RecurrenceModel, synthetic_ratio_cohort
from analyzers.dce.readout import (
    PriorLesion,
    Reading,
    is_hyperperfused,
    lesion_ratios,
    match_prior_lesion,
    prior_informed_reading,
)


def _prior(hyper: bool, centroid: tuple[float, float, float] = (10.0, -20.0, 30.0)) -> PriorLesion:
    ratio = 3.0 if hyper else 0.8
    return PriorLesion(centroid_mm=centroid, r_ktrans=ratio, r_vp=ratio, hyperperfused=hyper,
                       study_date="20250101", study_instance_uid="1.2.3", job_id="j1",
                       lesion_id="L1")


def test_lesion_ratios_ignore_failed_voxels() -> None:
    ktrans = np.full((4, 4), 0.02)
    vp = np.full((4, 4), 0.01)
    lesion = np.zeros((4, 4), bool)
    lesion[0, :2] = True
    reference = np.zeros((4, 4), bool)
    reference[3, :] = True
    ktrans[0, :2] = [0.2, np.nan]  # a failed voxel in the lesion does not count
    vp[0, :2] = [0.03, 0.05]
    out = lesion_ratios(ktrans, vp, lesion, reference)
    assert out.r_ktrans == pytest.approx(10.0)
    assert out.r_vp == pytest.approx(4.0)
    assert (out.n_lesion, out.n_reference) == (1, 4)
    with pytest.raises(DceInputError):
        lesion_ratios(ktrans, vp, lesion, lesion)


def test_hyperperfusion_threshold() -> None:
    assert is_hyperperfused(1.5, 0.2)
    assert is_hyperperfused(0.2, 1.5)
    assert not is_hyperperfused(1.49, 1.49)
    assert is_hyperperfused(1.2, 1.1, threshold=1.1)
    # One ratio not computable: at/above the threshold still decides, below it cannot.
    assert is_hyperperfused(float("nan"), 1.6) is True
    assert is_hyperperfused(float("nan"), 1.0) is None
    with pytest.raises(DceInputError):
        is_hyperperfused(float("nan"), float("nan"))


def test_ratio_below_the_floor_is_not_computable() -> None:
    ktrans = np.zeros((4, 4))
    vp = np.full((4, 4), 0.01)
    lesion = np.zeros((4, 4), bool)
    lesion[0] = True
    reference = np.zeros((4, 4), bool)
    reference[3] = True
    ktrans[0], vp[0] = 0.2, 0.03
    ktrans[3] = [0.0, 0.0, 0.0, 0.004]  # normal tissue: Ktrans ~ 0, one noisy voxel
    out = lesion_ratios(ktrans, vp, lesion, reference, floor_ktrans=0.005, floor_vp=0.005)
    assert np.isnan(out.r_ktrans) and out.reference_ktrans == pytest.approx(0.001)
    assert "below the floor 0.005 /min" in out.r_ktrans_note
    assert out.r_vp == pytest.approx(3.0) and out.r_vp_note == ""
    # Without a floor the same data give the unbounded ratio the floor exists to prevent.
    assert lesion_ratios(ktrans, vp, lesion, reference).r_ktrans == pytest.approx(200.0)
    vp[3] = 0.001
    assert "below the floor" in lesion_ratios(ktrans, vp, lesion, reference, floor_vp=0.005).r_vp_note


# --- one test per branch of the rule ----------------------------------------------------------


def test_rule_hyperperfusion_now_favours_recurrence_whatever_the_prior() -> None:
    assert prior_informed_reading(True, None) is Reading.FAVOURS_RECURRENCE
    assert prior_informed_reading(True, _prior(hyper=False)) is Reading.FAVOURS_RECURRENCE
    assert prior_informed_reading(True, _prior(hyper=True)) is Reading.FAVOURS_RECURRENCE


def test_rule_absent_now_without_pretreatment_hyperperfusion_is_unreliable() -> None:
    reading = prior_informed_reading(False, _prior(hyper=False))
    assert reading is Reading.UNRELIABLE
    assert "unreliable marker of recurrence" in reading.value


def test_rule_absent_now_with_pretreatment_hyperperfusion_favours_necrosis() -> None:
    assert prior_informed_reading(False, _prior(hyper=True)) is Reading.FAVOURS_NECROSIS


def test_rule_absent_now_without_any_prior_favours_necrosis() -> None:
    assert prior_informed_reading(False, None) is Reading.FAVOURS_NECROSIS


def test_rule_changes_the_reading_exactly_when_it_should() -> None:
    """Over all combinations, the prior changes the reading only for absent/absent."""
    for now in (True, False):
        for prior_hyper in (True, False):
            without = prior_informed_reading(now, None)
            with_prior = prior_informed_reading(now, _prior(prior_hyper))
            changed = without is not with_prior
            assert changed == (not now and not prior_hyper)


# --- lesion matching --------------------------------------------------------------------------


def test_match_prior_lesion_by_location() -> None:
    near = _prior(True, (10.0, -20.0, 30.0))
    far = _prior(False, (60.0, 10.0, 5.0))
    assert match_prior_lesion((12.0, -18.0, 33.0), [far, near]) is near
    assert match_prior_lesion((58.0, 12.0, 5.0), [far, near]) is far
    assert match_prior_lesion((-60.0, 0.0, 0.0), [far, near]) is None
    assert match_prior_lesion((30.0, -20.0, 30.0), [near], max_distance_mm=25.0) is near
    with pytest.raises(DceInputError):
        match_prior_lesion((0.0, 0.0, 0.0), [near], max_distance_mm=0.0)


def test_prior_lesion_from_findings() -> None:
    entry = {"centroid_mm": [1, 2, 3], "r_ktrans": 0.9, "r_vp": 1.1, "hyperperfused": False,
             "lesion_id": "L2"}
    prior = PriorLesion.from_findings(entry, study_date="20240101", study_instance_uid="1.2",
                                      job_id="j0")
    assert prior.centroid_mm == (1.0, 2.0, 3.0) and not prior.hyperperfused
    with pytest.raises(DceInputError):
        PriorLesion.from_findings({"centroid_mm": [1, 2]}, study_date=None,
                                  study_instance_uid="1", job_id="j")


# --- recurrence model -------------------------------------------------------------------------


def test_recurrence_model_round_trip_and_direction(tmp_path: Path) -> None:
    cohort = synthetic_ratio_cohort(400, seed=7)
    model = RecurrenceModel.fit(cohort.r_ktrans, cohort.r_vp, cohort.pre_flag, cohort.recurrence,
                                name="dce-recurrence-test", version="0")
    folder = model.save(tmp_path / "model")
    loaded = RecurrenceModel.load(folder)
    assert loaded == model
    assert "NOT FOR CLINICAL USE" in (folder / "MODEL_CARD.md").read_text()
    p_high = loaded.predict_proba(7.4, 3.1, 1.0)[0]
    p_low = loaded.predict_proba(1.6, 0.9, 1.0)[0]
    assert p_high > 0.8 and p_low < 0.5
    # Low ratios without pre-treatment hyperperfusion are not evidence of necrosis.
    assert loaded.predict_proba(0.4, 0.7, 0.0)[0] > loaded.predict_proba(0.4, 0.7, 1.0)[0]
    # Unknown prior: the stored prevalence is used.
    assert np.isfinite(loaded.predict_proba(2.0, 2.0, np.nan)[0])
    accuracy = np.mean((loaded.predict_proba(cohort.r_ktrans, cohort.r_vp, cohort.pre_flag) > 0.5)
                       == cohort.recurrence)
    assert accuracy > 0.8


def test_recurrence_model_calibration_record_round_trip(tmp_path: Path) -> None:
    from analyzers._shared.probability import ProbabilityCalibration

    cohort = synthetic_ratio_cohort(200, seed=5)
    model = RecurrenceModel.fit(cohort.r_ktrans, cohort.r_vp, cohort.pre_flag, cohort.recurrence,
                                name="dce-recurrence-test", version="0")
    held = synthetic_ratio_cohort(40, seed=6)
    p = model.predict_proba(held.r_ktrans, held.r_vp, held.pre_flag)
    calibration = ProbabilityCalibration.measure(held.recurrence, p, model="dce-recurrence-test 0",
                                                 validation="40 held-out synthetic patients",
                                                 outcome="recurrent tumour")
    folder = RecurrenceModel(**{**model.__dict__, "calibration": calibration}).save(tmp_path / "m")
    loaded = RecurrenceModel.load(folder)
    assert loaded.calibration == calibration
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Calibration (held-out)" in card and "40 held-out synthetic patients" in card
    # Never 0 % or 100 %: 40 validation cases support at most 41/42, printed with 2 digits.
    assert calibration.format(1.0) == "98 %" and calibration.format(0.0) == "2.4 %"
    assert "No held-out calibration record" in (model.save(tmp_path / "bare") / "MODEL_CARD.md").read_text()


def test_recurrence_model_rejects_foreign_folders(tmp_path: Path) -> None:
    with pytest.raises(RecurrenceModelError):
        RecurrenceModel.load(tmp_path)
    (tmp_path / "model.json").write_text('{"kind": "other"}')
    with pytest.raises(RecurrenceModelError):
        RecurrenceModel.load(tmp_path)
    with pytest.raises(DceInputError):
        RecurrenceModel.fit([1.0, 2.0], [1.0, 2.0], [1.0, 1.0], [1, 1], name="x", version="0")


def test_trainer_nested_cv_writes_a_loadable_model(tmp_path: Path) -> None:
    from analyzers.dce.train import load_cohort_csv, main

    cohort = synthetic_ratio_cohort(60, seed=3)
    csv_path = tmp_path / "lesions.csv"
    lines = ["patient,r_ktrans,r_vp,pre_treatment_hyperperfused,label"]
    for i in range(60):
        flag = "" if i % 10 == 0 else str(int(cohort.pre_flag[i]))
        label = "recurrence" if cohort.recurrence[i] else "radiation_necrosis"
        lines.append(f"p{i // 2},{cohort.r_ktrans[i]},{cohort.r_vp[i]},{flag},{label}")
    csv_path.write_text("\n".join(lines) + "\n")
    x, y, groups = load_cohort_csv(csv_path)
    assert x.shape == (60, 3) and np.isnan(x[0, 2]) and len(set(groups)) == 30
    assert np.array_equal(y, cohort.recurrence)
    out = tmp_path / "model"
    assert main(["--cohort", str(csv_path), "--out", str(out), "--folds", "3", "--trials", "2",
                 "--n-boot", "50"]) == 0
    model = RecurrenceModel.load(out)
    assert model.training["cv"].startswith("3-fold")
    assert model.training["oof_auc"]["estimate"] > 0.7
    assert 0.0 < model.prior_flag_fill < 1.0
    assert model.calibration is None  # no held-out cases: no probability will be printed
    # With held-out patients the calibration record, its reliability plot and table exist.
    held = tmp_path / "held.csv"
    held.write_text("\n".join(lines[:1] + [line.replace("p", "q", 1) for line in lines[1:41]]) + "\n")
    assert main(["--cohort", str(csv_path), "--holdout", str(held), "--out", str(out), "--folds", "3",
                 "--trials", "2", "--n-boot", "50", "--recalibrate"]) == 0
    model = RecurrenceModel.load(out)
    assert model.calibration is not None and model.calibration.n_cases == 40
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert model.training["holdout"]["n_cases"] == 40 and "recalibration" in model.training
    # The recalibration is folded into the coefficients: the held-out record is of that model.
    held_x, held_y, _ = load_cohort_csv(held)
    p = model.predict_proba(np.exp(held_x[:, 0]), np.exp(held_x[:, 1]), held_x[:, 2])
    assert model.calibration.brier == pytest.approx(float(np.mean((p - held_y) ** 2)))


def test_automatic_lesion_and_contralateral_reference_on_arrays() -> None:
    from analyzers.dce.regions import contralateral_reference, segment_enhancing_lesions

    shape = (6, 40, 40)
    t = np.arange(30)
    conc = np.zeros((30, *shape))
    rng = np.random.default_rng(0)
    head = np.zeros(shape, bool)
    head[:, 5:35, 5:35] = True
    conc[:, head] = 0.02 + 0.002 * rng.standard_normal((30, int(head.sum())))
    lesion = np.zeros(shape, bool)
    lesion[2:4, 15:20, 8:13] = True  # patient-left of the midline (x < 20)
    conc[:, lesion] = (0.3 * (1 - np.exp(-t / 5.0)))[:, None]
    vessel = np.zeros(shape, bool)
    vessel[:, 30, 30] = True  # early high peak that washes out: not a lesion
    conc[:, vessel] = (3.0 * np.exp(-((t - 5.0) ** 2) / 4.0) + 0.1)[:, None]
    found = segment_enhancing_lesions(conc, head, voxel_ml=0.01)
    assert len(found) == 1 and np.array_equal(found[0], lesion)
    vp = np.where(head, 0.02, np.nan)
    affine = np.eye(4)  # 1 mm voxels, x = column
    reference = contralateral_reference(lesion, head, lesion | vessel, vp, affine, t10=None,
                                        wm_t10_s=1.084)
    cols = np.nonzero(reference)[2]
    assert reference.sum() >= 20 and not (reference & lesion).any()
    assert cols.mean() > 20.0  # mirrored across the midline of the head mask
