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
    assert not is_hyperperfused(float("nan"), 1.0)
    with pytest.raises(DceInputError):
        is_hyperperfused(float("nan"), float("nan"))


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
