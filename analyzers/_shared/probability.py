"""Probabilities an SR may print: calibrated, clipped to what validation supports, 2 digits.

Every probability a pacsnode report states comes from a model whose calibration
was measured on held-out data (calibration slope and intercept after Cox 1958 as
in Steyerberg's validation framework, Brier score, reliability curve). This
module carries that measurement from training to the report:

- :class:`ProbabilityCalibration` is measured once by ``pacsnode train`` on the
  held-out (or out-of-fold) probabilities and stored in the model card's
  ``extra["probability"]`` (:meth:`ProbabilityCalibration.to_dict`); the
  analyzer reads it back (:meth:`ProbabilityCalibration.from_model_card`).
- It clips a probability to the range the validation set supports
  (:func:`supported_range`): never 0 % or 100 %, and never beyond the lowest and
  highest probability the model gave on the validation cases.
- It rounds to 2 significant digits (:func:`significant`) and formats
  (:func:`format_probability`); a probability that would round to 100 % keeps
  the digits that make it differ from 100 % (0.996 → "99.6 %").
- It states in the SR which model and which validation produced the number:
  :meth:`ProbabilityCalibration.algorithm_parameters` for TID 4019 Algorithm
  Parameters (``outputs.Algorithm(parameters=...)``) and
  :meth:`ProbabilityCalibration.sr_text` for the report's Qualitative
  Evaluations, which every viewer shows.

:class:`LogisticRecalibration` (Platt scaling on the logit, the same model the
calibration slope is measured with) turns an over- or under-confident score into
a calibrated probability when its parameters are fitted on held-out or
out-of-fold predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from pydicom.sr.coding import Code

from analyzers._shared.modelcard import CardMetric, ModelCard
from analyzers._shared.stats import (
    brier_score,
    calibration_slope_intercept,
)
from sr_templates import codes as c

__all__ = [
    "PROBABILITY_CARD_KEY",
    "LogisticRecalibration",
    "ProbabilityCalibration",
    "ProbabilityError",
    "format_probability",
    "significant",
    "supported_range",
]

PROBABILITY_CARD_KEY = "probability"
"""Key of a model card's ``extra`` that holds :meth:`ProbabilityCalibration.to_dict`."""

_DIGITS = 2


class ProbabilityError(ValueError):
    """A probability or its calibration record is missing, out of range or inconsistent."""


def _check_probability(p: float, what: str = "probability") -> float:
    value = float(p)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ProbabilityError(f"{what} must be a finite number in [0, 1], got {p!r}")
    return value


def significant(p: float, digits: int = _DIGITS) -> float:
    """``p`` rounded to ``digits`` significant digits, never to exactly 0 or 1.

    A probability strictly between 0 and 1 that would round to 1 (0.996 with 2
    digits) is rounded on its complement instead (1 - 0.0040 = 0.996), so the
    printed value keeps saying it is not certain. Exactly 0 or 1 are returned
    unchanged: clip first (:meth:`ProbabilityCalibration.clip`).
    """
    value = _check_probability(p)
    if digits < 1:
        raise ProbabilityError("digits must be at least 1")
    if value in (0.0, 1.0):
        return value

    def rounded(x: float) -> float:
        return round(x, digits - 1 - math.floor(math.log10(abs(x))))

    out = rounded(value)
    if out >= 1.0:
        out = 1.0 - rounded(1.0 - value)
    return float(out)


def format_probability(p: float, digits: int = _DIGITS) -> str:
    """``"97 %"``, ``"4.2 %"``, ``"99.6 %"``: :func:`significant` as a percentage."""
    percent = significant(p, digits) * 100.0
    text = f"{percent:.6f}".rstrip("0").rstrip(".")
    return f"{text} %"


def supported_range(probabilities: ArrayLike) -> tuple[float, float]:
    """The probabilities a validation set of ``n`` cases supports.

    The range spans the lowest and highest probability the model gave on the
    validation cases (calibration was not measured outside it) and is never
    wider than Laplace's rule of succession allows for ``n`` cases,
    ``[1 / (n + 2), (n + 1) / (n + 2)]``: 40 validation cases cannot support a
    probability above 97.6 %.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.size == 0:
        raise ProbabilityError("no validation probabilities to take a range from")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ProbabilityError("validation probabilities must be finite numbers in [0, 1]")
    n = p.size
    floor, ceiling = 1.0 / (n + 2), (n + 1.0) / (n + 2)
    lower = min(max(float(p.min()), floor), ceiling)
    upper = max(min(float(p.max()), ceiling), floor)
    return lower, upper


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class ProbabilityCalibration:
    """How one model's probability was validated, and what that allows a report to print.

    Attributes
    ----------
    model:
        Model identity as the report names it (``"meningioma-grade 3.0"``).
    validation:
        What the calibration was measured on (``"40 held-out phantom cases,
        pacsnode phantom t1c --seed 3000"`` or ``"out-of-fold, 5-fold CV"``).
    n_cases, n_positive:
        Validation cases and how many of them were positive.
    slope, intercept:
        Calibration slope and intercept (None when the fit does not converge,
        e.g. perfectly separated classes).
    brier:
        Brier score on the validation cases.
    lower, upper:
        The range probabilities are clipped to (:func:`supported_range`).
    outcome:
        What the probability is the probability of (``"WHO grade 2/3"``).
    recalibrated_on:
        The cohort a recalibration of the model's score was fitted on when it
        is not the validation itself (``"the final model's predictions on 60
        calibration cases"``); empty when the validation names it.
    """

    model: str
    validation: str
    n_cases: int
    n_positive: int
    slope: float | None
    intercept: float | None
    brier: float
    lower: float
    upper: float
    outcome: str
    recalibrated_on: str = ""

    def __post_init__(self) -> None:
        for name in ("model", "validation", "outcome"):
            if not str(getattr(self, name)).strip():
                raise ProbabilityError(f"{name} must not be empty")
        if not 0 <= self.n_positive <= self.n_cases or self.n_cases < 1:
            raise ProbabilityError("need n_cases >= 1 and 0 <= n_positive <= n_cases")
        _check_probability(self.lower, "lower")
        _check_probability(self.upper, "upper")
        if not 0.0 < self.lower <= self.upper < 1.0:
            raise ProbabilityError(f"need 0 < lower <= upper < 1, got {self.lower}, {self.upper}")

    @classmethod
    def measure(
        cls,
        y: ArrayLike,
        probabilities: ArrayLike,
        *,
        model: str,
        validation: str,
        outcome: str,
        recalibrated_on: str = "",
    ) -> ProbabilityCalibration:
        """Measure calibration on validation labels ``y`` (0/1) and the model's probabilities."""
        labels = np.asarray(y).ravel()
        p = np.asarray(probabilities, dtype=np.float64).ravel()
        if labels.size != p.size or labels.size == 0:
            raise ProbabilityError("labels and probabilities must be non-empty and of equal length")
        if not set(np.unique(labels).tolist()) <= {0, 1}:
            raise ProbabilityError("labels must be 0 or 1")
        lower, upper = supported_range(p)
        slope = intercept = None
        if 0 < int(labels.sum()) < labels.size:
            fit = calibration_slope_intercept(labels, p)
            slope, intercept = _finite_or_none(fit.slope), _finite_or_none(fit.intercept)
        return cls(
            model=model,
            validation=validation,
            n_cases=int(labels.size),
            n_positive=int(labels.sum()),
            slope=slope,
            intercept=intercept,
            brier=float(brier_score(labels, p)),
            lower=lower,
            upper=upper,
            outcome=outcome,
            recalibrated_on=recalibrated_on,
        )

    # ------------------------------------------------------------------ use
    def clip(self, p: float) -> float:
        """``p`` limited to ``[lower, upper]``."""
        return min(max(_check_probability(p), self.lower), self.upper)

    def reported(self, p: float) -> float:
        """The probability a report prints: clipped, then 2 significant digits (0-1)."""
        return significant(self.clip(p))

    def percent(self, p: float) -> float:
        """:meth:`reported` in percent, for a ``%`` measurement in an SR."""
        return round(self.reported(p) * 100.0, 6)

    def format(self, p: float) -> str:
        """:meth:`reported` as text, e.g. ``"87 %"``."""
        return format_probability(self.clip(p))

    # ------------------------------------------------------------- provenance
    def _calibration_text(self) -> str:
        slope = "n/a" if self.slope is None else f"{self.slope:.2f}"
        intercept = "n/a" if self.intercept is None else f"{self.intercept:.2f}"
        return f"calibration slope {slope}, intercept {intercept}, Brier {self.brier:.3f}"

    def statement(self) -> str:
        """One sentence naming the model, its validation and its calibration."""
        how = (
            f"recalibrated on {self.recalibrated_on} and validated on" if self.recalibrated_on
            else "calibrated and validated on"
        )
        return (
            f"Probability of {self.outcome} by model {self.model}, {how} "
            f"{self.validation} ({self.n_cases} cases, {self.n_positive} positive): "
            f"{self._calibration_text()}; reported probabilities are limited to "
            f"{format_probability(self.lower)} - {format_probability(self.upper)}."
        )

    def sr_text(self) -> tuple[Code, str]:
        """A (concept, text) pair for an SR's Qualitative Evaluations (``texts=``)."""
        return c.COMMENT, self.statement()[:1024]

    def algorithm_parameters(self) -> tuple[str, ...]:
        """TID 4019 Algorithm Parameters: model, validation and calibration, one per item."""
        recalibration = (f"recalibrated on: {self.recalibrated_on}"[:1024],) if self.recalibrated_on else ()
        return (
            f"probability model: {self.model}"[:1024],
            *recalibration,
            f"validation: {self.validation} ({self.n_cases} cases, {self.n_positive} positive)"[:1024],
            f"{self._calibration_text()}"[:1024],
            f"reported range: {format_probability(self.lower)} - {format_probability(self.upper)}",
        )

    def card_metrics(self, prefix: str = "") -> tuple[CardMetric, ...]:
        """Calibration numbers for the model card's performance table."""
        note = f"{self.validation}, {self.n_cases} cases"
        if self.recalibrated_on:
            note += f"; recalibrated on {self.recalibrated_on}"
        return (
            CardMetric(f"{prefix}calibration slope", self.slope, note=note),
            CardMetric(f"{prefix}calibration intercept", self.intercept, note=note),
            CardMetric(f"{prefix}Brier score", self.brier, note=note),
            CardMetric(f"{prefix}lowest reported probability", self.lower,
                       note="rule of succession and lowest validation probability"),
            CardMetric(f"{prefix}highest reported probability", self.upper,
                       note="rule of succession and highest validation probability"),
        )

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (a model card's ``extra["probability"]``)."""
        recalibration = {"recalibrated_on": self.recalibrated_on} if self.recalibrated_on else {}
        return {
            "model": self.model,
            "validation": self.validation,
            "n_cases": self.n_cases,
            "n_positive": self.n_positive,
            "slope": self.slope,
            "intercept": self.intercept,
            "brier": self.brier,
            "lower": self.lower,
            "upper": self.upper,
            "outcome": self.outcome,
            **recalibration,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProbabilityCalibration:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                model=str(raw["model"]),
                validation=str(raw["validation"]),
                n_cases=int(raw["n_cases"]),
                n_positive=int(raw["n_positive"]),
                slope=None if raw["slope"] is None else float(raw["slope"]),
                intercept=None if raw["intercept"] is None else float(raw["intercept"]),
                brier=float(raw["brier"]),
                lower=float(raw["lower"]),
                upper=float(raw["upper"]),
                outcome=str(raw["outcome"]),
                recalibrated_on=str(raw.get("recalibrated_on") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProbabilityError(f"incomplete probability calibration record: {exc}") from exc

    @classmethod
    def from_model_card(cls, card: ModelCard, key: str = PROBABILITY_CARD_KEY) -> ProbabilityCalibration:
        """The record a model card carries in ``extra[key]``.

        Raises
        ------
        ProbabilityError
            When the card has none: the model's probabilities were never
            validated, so a report must not print them (retrain with the
            current ``pacsnode train``).
        """
        raw = card.extra.get(key)
        if not isinstance(raw, Mapping):
            raise ProbabilityError(
                f"model card of {card.name} {card.version} has no calibration record "
                f"(extra[{key!r}]); retrain it with the current 'pacsnode train' so its "
                "probabilities are validated before a report prints them"
            )
        return cls.from_dict(raw)


@dataclass(frozen=True)
class LogisticRecalibration:
    """``p' = sigmoid(a + b * logit(p))`` fitted on held-out or out-of-fold predictions.

    Platt scaling on the logit of a score that already is a probability; ``b``
    is the reciprocal of how over-confident the score is (a nomogram with
    calibration slope 0.1 gets ``b`` about 0.1).
    """

    a: float
    b: float

    @classmethod
    def fit(cls, y: ArrayLike, probabilities: ArrayLike, penalty: float = 1e-3) -> LogisticRecalibration:
        """Maximum likelihood fit (a tiny ridge ``penalty`` keeps separated data finite)."""
        labels = np.asarray(y, dtype=np.float64).ravel()
        x = _logit(np.asarray(probabilities, dtype=np.float64).ravel())
        if labels.size != x.size or labels.size < 2 or len(np.unique(labels)) != 2:
            raise ProbabilityError("recalibration needs both classes and one probability per label")
        design = np.column_stack([np.ones_like(x), x])
        beta = np.zeros(2)
        for _ in range(200):
            mu = 1.0 / (1.0 + np.exp(-(design @ beta)))
            grad = design.T @ (labels - mu) - penalty * beta
            hess = design.T @ (design * (mu * (1 - mu))[:, None]) + penalty * np.eye(2)
            step = np.linalg.solve(hess, grad)
            beta = beta + step
            if np.abs(step).max() < 1e-10:
                break
        return cls(a=float(beta[0]), b=float(beta[1]))

    def __call__(self, probabilities: ArrayLike) -> np.ndarray:
        """Recalibrated probabilities."""
        x = _logit(np.asarray(probabilities, dtype=np.float64))
        return np.asarray(1.0 / (1.0 + np.exp(-(self.a + self.b * x))))

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return {"a": self.a, "b": self.b}


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-9, 1 - 1e-9)
    return np.asarray(np.log(q / (1 - q)))

