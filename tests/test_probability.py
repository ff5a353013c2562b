"""Reported probabilities: clipped to the validated range, 2 significant digits, provenance in the SR."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from analyzers._shared import outputs as out
from analyzers._shared.modelcard import DataDescription, ModelCard, load_model_card, write_model_card
from analyzers._shared.probability import (
    PROBABILITY_CARD_KEY,
    LogisticRecalibration,
    ProbabilityCalibration,
    ProbabilityError,
    format_probability,
    significant,
    supported_range,
)
from analyzers._shared.volume import Volume, load_series
from sr_templates import codes as c
from sr_templates import report_template
from tests.test_outputs import dciodvfy_errors
from tests.test_volume import AXIAL, stored_values, write_series


@pytest.mark.parametrize(("p", "expected", "text"), [
    (0.9734, 0.97, "97 %"),
    (0.5, 0.5, "50 %"),
    (0.0123, 0.012, "1.2 %"),
    (0.00456, 0.0046, "0.46 %"),
    (0.996, 0.996, "99.6 %"),
    (0.99949, 0.99949, "99.949 %"),
    (0.12345, 0.12, "12 %"),
])
def test_two_significant_digits_never_round_to_certainty(p: float, expected: float, text: str) -> None:
    assert significant(p) == pytest.approx(expected)
    assert format_probability(p) == text
    assert 0.0 < significant(p) < 1.0


def test_significant_rejects_what_is_not_a_probability() -> None:
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ProbabilityError, match="in \\[0, 1\\]"):
            significant(bad)


def test_supported_range_follows_the_validation_set() -> None:
    # 40 cases support at most (n+1)/(n+2) = 97.6 % even when the model said 0.9999.
    p = np.r_[np.full(20, 1e-5), np.full(20, 0.9999)]
    lower, upper = supported_range(p)
    assert lower == pytest.approx(1 / 42) and upper == pytest.approx(41 / 42)
    # Within the rule-of-succession bounds, the range is the model's own observed span.
    assert supported_range([0.2, 0.3, 0.7]) == pytest.approx((0.2, 0.7))
    with pytest.raises(ProbabilityError):
        supported_range([])


def _calibrated_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return (rng.uniform(size=n) < p).astype(int), p


def test_measure_clip_and_format() -> None:
    y, p = _calibrated_set(2000, 1)
    record = ProbabilityCalibration.measure(
        y, p, model="toy 1.0", validation="2000 simulated cases", outcome="grade 2/3")
    assert record.slope == pytest.approx(1.0, abs=0.15)
    assert record.intercept == pytest.approx(0.0, abs=0.15)
    assert record.n_cases == 2000 and record.n_positive == int(y.sum())
    assert record.lower == pytest.approx(p.min()) and record.upper == pytest.approx(p.max())
    assert record.clip(1.0) == record.upper and record.clip(0.0) == record.lower
    assert record.percent(1.0) < 100.0 and record.percent(0.0) > 0.0
    assert record.format(0.873) == "87 %"
    statement = record.statement()
    assert "toy 1.0" in statement and "2000 simulated cases" in statement
    assert "calibration slope" in statement and "Brier" in statement


def test_perfect_separation_has_no_slope_but_still_a_range() -> None:
    record = ProbabilityCalibration.measure(
        [0, 0, 1, 1], [0.01, 0.02, 0.98, 0.99], model="m", validation="v", outcome="o")
    assert record.slope is None and record.intercept is None
    assert record.upper == pytest.approx(5 / 6)  # 4 cases: rule of succession
    assert record.format(0.99) == "83 %"


def test_record_travels_in_the_model_card(tmp_path: Path) -> None:
    y, p = _calibrated_set(200, 2)
    record = ProbabilityCalibration.measure(y, p, model="toy 1.0", validation="held out",
                                            outcome="grade 2/3")
    card = ModelCard(
        name="toy", version="1.0", analyzer="meningioma", model_description="d",
        intended_use="u", data=DataDescription("s", 200, 200, int(y.sum()), "pos", "neg"),
        validation="held out", metrics=record.card_metrics("held-out: "), references=("r",),
        extra={PROBABILITY_CARD_KEY: record.to_dict()},
    )
    write_model_card(card, tmp_path)
    back = ProbabilityCalibration.from_model_card(load_model_card(tmp_path / "model_card.json"))
    assert back == record
    bare = ModelCard(**{**card.__dict__, "extra": {}})
    with pytest.raises(ProbabilityError, match="retrain"):
        ProbabilityCalibration.from_model_card(bare)


def test_logistic_recalibration_fixes_an_overconfident_score() -> None:
    y, p = _calibrated_set(3000, 3)
    logit = np.log(p / (1 - p))
    overconfident = 1 / (1 + np.exp(-10 * logit))  # calibration slope about 0.1
    before = ProbabilityCalibration.measure(y, overconfident, model="m", validation="v", outcome="o")
    assert before.slope is not None and before.slope < 0.2
    recalibration = LogisticRecalibration.fit(y[:1500], overconfident[:1500])
    after = ProbabilityCalibration.measure(
        y[1500:], recalibration(overconfident[1500:]), model="m", validation="v", outcome="o")
    assert after.slope == pytest.approx(1.0, abs=0.2)
    assert recalibration.b == pytest.approx(0.1, abs=0.03)


@pytest.fixture(scope="module")
def axial(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("axial")
    files = write_series(folder, stored_values((6, 16, 18), seed=11),
                         origin=np.array([-20.0, -30.0, 10.0]), **AXIAL)
    return load_series(files)


def test_sr_names_the_model_and_its_validation_and_an_absent_finding(
    axial: Volume, tmp_path: Path
) -> None:
    y, p = _calibrated_set(100, 4)
    record = ProbabilityCalibration.measure(y, p, model="toy 1.0", validation="100 held-out phantoms",
                                            outcome="meningioma")
    template = report_template("meningioma")
    algorithm = out.Algorithm("meningioma", "9.9", parameters=record.algorithm_parameters())
    lesion = out.LesionFinding(
        "candidate 1", out.LesionRegion.circle((8, 8, 3), 2.0),
        measurements=[out.MeasuredValue(template.quantity("probability"), record.percent(0.0001))],
    )
    sr = out.build_measurement_report(
        axial, template, [lesion], algorithm,
        texts=[record.sr_text(), (c.IMPRESSION, "No meningioma found.")],
        evaluations=[(c.MENINGIOMA, c.ABSENT)],
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = hd.sr.srread(path)
    group = back.content.get_volumetric_roi_measurement_groups()[0]
    probability = group.get_measurements()[0]
    assert probability.value == pytest.approx(record.percent(record.lower))
    assert probability.value > 0.0
    parameters = [i.TextValue for i in group[0].ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert parameters == list(record.algorithm_parameters())
    container = pydicom.dcmread(path).ContentSequence[-1].ContentSequence
    coded = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in container if i.ValueType == "CODE"]
    assert coded == [(c.MENINGIOMA.value, c.ABSENT.value)]
    texts = [i.TextValue for i in container if i.ValueType == "TEXT"]
    assert record.statement() in texts and "No meningioma found." in texts
