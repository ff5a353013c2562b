"""Per-lesion decisions of the ``dsc`` analyzer: when a probability may be reported, and how.

A lesion gets a probability of dural metastasis only when

1. a classifier is installed (the site's model folder or the reference model);
2. its model card carries a calibration record measured on held-out data
   (:class:`analyzers._shared.probability.ProbabilityCalibration`, written by
   ``pacsnode train dsc``): a model whose probabilities were never validated
   does not print them;
3. the series lies inside the acquisitions the model was validated on
   (:meth:`analyzers.dsc.model.DscClassifier.outside_range`: voxel size and the
   time the series covers after bolus arrival, on which the ratios depend).

The class (dural metastasis or meningioma) is decided on the model's own
probability at its threshold; the reported probability is the calibration's:
clipped to the range the validation supports and rounded to 2 significant
digits (never 0 % or 100 %). Otherwise the lesion keeps its measurements and the
report says why no probability is given.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyzers._shared.modelcard import ModelCardError, load_model_card
from analyzers._shared.probability import ProbabilityCalibration, ProbabilityError, significant
from analyzers.dsc.model import NEGATIVE_LABEL, POSITIVE_LABEL, DscClassifier

__all__ = ["Acquisition", "LesionDecider", "load_calibration"]

_CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class Acquisition:
    """What the model's range is checked against: voxel size and bolus coverage."""

    pixel_mm: float
    slice_mm: float
    coverage_s: float


def load_calibration(folder: Path) -> tuple[ProbabilityCalibration | None, str | None]:
    """The calibration record of the model card in ``folder``, or None and the reason."""
    path = Path(folder) / _CARD_FILE
    try:
        card = load_model_card(path)
    except (OSError, ModelCardError, ValueError, KeyError) as exc:
        return None, f"the model card {path} cannot be read ({exc})"
    try:
        return ProbabilityCalibration.from_model_card(card), None
    except ProbabilityError as exc:
        return None, str(exc)


class LesionDecider:
    """Classifies lesion feature rows and decides what the report may say about them.

    Parameters
    ----------
    model:
        The classifier, or None when none is installed.
    calibration:
        Its calibration record, or None.
    unavailable:
        Why there is no model or no calibration (shown in the report).
    acquisition:
        The series' voxel size and bolus coverage.
    """

    def __init__(self, model: DscClassifier | None, calibration: ProbabilityCalibration | None,
                 unavailable: str | None, acquisition: Acquisition) -> None:
        self.model = model
        self.calibration = calibration
        reasons = [unavailable] if unavailable else []
        if model is not None:
            outside = model.outside_range(acquisition.pixel_mm, acquisition.slice_mm,
                                          acquisition.coverage_s)
            if outside:
                reasons.append(f"the series is outside the acquisitions the model was validated on "
                               f"({outside})")
            if calibration is None and not unavailable:
                reasons.append("the model has no calibration measured on held-out data")
        self.withheld = "; ".join(reasons) or None

    def decide(self, result: MutableMapping[str, Any], features: dict[str, float]) -> None:
        """Set ``probability`` (raw model), ``reported_probability``, ``class`` and ``note`` of one lesion."""
        result.update(probability=None, reported_probability=None, reported_class_probability=None,
                      note=None)
        result["class"] = None
        if self.model is None:
            result["note"] = f"no probability: {self.withheld}"
            return
        probability = float(self.model.probability(self.model.matrix([features]))[0])
        result["probability"] = probability
        if self.withheld is not None or self.calibration is None:
            result["note"] = f"no probability or class reported: {self.withheld}"
            return
        called = POSITIVE_LABEL if probability >= self.model.threshold else NEGATIVE_LABEL
        reported = self.calibration.reported(probability)
        result["class"] = called
        result["reported_probability"] = reported
        # The SR states the probability of the class it calls.
        result["reported_class_probability"] = (reported if called == POSITIVE_LABEL
                                                else significant(1.0 - self.calibration.clip(probability)))
