"""brainmets operating point: lesion confidence, threshold sweep on a validation set, storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analyzers.brainmets.operating import (
    OperatingPoint,
    OperatingPointError,
    ValidationCase,
    choose_operating_point,
    confident_lesions,
    sweep,
)


def _blob(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: int, value: float,
          into: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32) if into is None else into
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    out[inside] = np.maximum(out[inside], value)
    return out


SHAPE = (20, 24, 24)


def _case(case_id: str, lesions: list[tuple[tuple[int, int, int], float]],
          false: list[tuple[tuple[int, int, int], float]]) -> ValidationCase:
    truth = np.zeros(SHAPE, dtype=bool)
    probability = np.zeros(SHAPE, dtype=np.float32)
    for centre, confidence in lesions:
        truth |= _blob(SHAPE, centre, 2, 1.0) > 0
        _blob(SHAPE, centre, 2, confidence, probability)
    for centre, confidence in false:
        _blob(SHAPE, centre, 1, confidence, probability)
    return ValidationCase(case_id, truth, probability)


def test_confident_lesions_keep_what_reaches_the_threshold() -> None:
    probability = _blob(SHAPE, (5, 6, 6), 2, 0.97)
    _blob(SHAPE, (14, 16, 16), 2, 0.62, probability)
    point = OperatingPoint(floor=0.3, threshold=0.9, n_cases=1, sensitivity=1.0, fp_per_brain=0.0,
                           fp_per_lesion_free_brain=0.0)
    found, confidences = confident_lesions(probability, np.eye(4), point)
    assert len(found.lesions) == 1 and confidences == pytest.approx((0.97,))
    assert found.mask[5, 6, 6] and not found.mask[14, 16, 16]
    # nnU-Net's argmax (no operating point): both blobs.
    found, _ = confident_lesions(probability, np.eye(4), OperatingPoint())
    assert len(found.lesions) == 2


def test_sweep_and_choice_meet_the_false_positive_budget() -> None:
    cases = [
        _case("a", [((5, 6, 6), 0.99), ((14, 16, 16), 0.75)], [((10, 3, 20), 0.55)]),
        _case("b", [((8, 12, 12), 0.96)], [((15, 4, 4), 0.82), ((3, 20, 3), 0.45)]),
        _case("free-1", [], [((10, 10, 10), 0.92), ((4, 4, 20), 0.6)]),
        _case("free-2", [], []),
    ]
    rows = {r.threshold: r for r in sweep(cases, floor=0.3)}
    assert (rows[0.3].true_positives, rows[0.3].false_positives, rows[0.3].false_negatives) == (3, 5, 0)
    assert rows[0.7].sensitivity == 1.0 and rows[0.7].false_positives == 2
    assert rows[0.8].sensitivity == pytest.approx(2 / 3) and rows[0.8].fp_per_lesion_free_brain == 0.5
    point = choose_operating_point(list(rows.values()), floor=0.3, validation="unit cases", n_lesions=3,
                                   max_fp_per_brain=0.5)
    # 0.7 keeps every lesion at 2 false positives in 4 brains (0.5 per brain, 0.5 per lesion-free brain).
    assert point.threshold == 0.7 and point.sensitivity == 1.0 and point.fp_per_brain == 0.5
    strict = choose_operating_point(list(rows.values()), floor=0.3, validation="unit cases", n_lesions=3,
                                    max_fp_per_brain=0.0)
    assert strict.threshold == 0.95 and strict.fp_per_brain == 0.0
    assert "unit cases" in strict.statement() and "0.95" in strict.statement()


def test_operating_point_file(tmp_path: Path) -> None:
    assert not OperatingPoint.load(tmp_path).validated  # no file: nnU-Net's argmax
    point = OperatingPoint(floor=0.3, threshold=0.8, validation="v", sensitivity=0.9, fp_per_brain=0.4,
                           fp_per_lesion_free_brain=0.2, n_cases=40, n_lesion_free=20, n_lesions=51)
    point.save(tmp_path)
    assert OperatingPoint.load(tmp_path) == point
    (tmp_path / "operating_point.json").write_text('{"floor": 0.9, "threshold": 0.5}')
    with pytest.raises(OperatingPointError, match="floor <= threshold"):
        OperatingPoint.load(tmp_path)
