"""Probability of recurrence: a logistic model on (log rKtrans, log rVP, pre-treatment flag).

The inputs follow the issue: the log ratios of the post-treatment study and the
pre-treatment hyperperfusion flag of the matched lesion (1 = hyperperfused before
treatment). The model also carries the two products flag × log ratio, because the
study's point is an interaction: low ratios argue for necrosis only in lesions that were
hyperperfused before treatment; without them a linear model cannot express the rule.
When a lesion has no matched prior, the flag is replaced by the training prevalence
stored with the model (mean imputation), and the report says so.

A model lives in a folder: ``model.json`` (coefficients, feature definition, training
summary) and ``MODEL_CARD.md``. :func:`synthetic_ratio_cohort` draws cohorts around the
study's reported medians (recurrence rKtrans 7.4, rVP 3.1; necrosis 1.6, 0.9; lesions not
hyperperfused before treatment 0.4, 0.7), without images; the reference model is trained
on the ``dce`` image phantom (generated around the same medians) as measured by the
analyzer itself, by :mod:`analyzers.dce.train` (see ``REFERENCE_COMMAND`` there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers._shared.probability import ProbabilityCalibration, ProbabilityError
from analyzers.contract import NOT_FOR_CLINICAL_USE
from analyzers.dce.errors import DceInputError, RecurrenceModelError

__all__ = [
    "FEATURE_NAMES",
    "MODEL_KIND",
    "RecurrenceModel",
    "SyntheticCohort",
    "feature_matrix",
    "synthetic_ratio_cohort",
]

MODEL_KIND = "pacsnode.dce.recurrence-logistic/1"
FEATURE_NAMES = ("log_r_ktrans", "log_r_vp", "pre_treatment_hyperperfused",
                 "pre_flag_x_log_r_ktrans", "pre_flag_x_log_r_vp")
_RATIO_FLOOR = 1e-3  # ratios below this (or zero) are floored before the log


def _design(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """(log rK, log rVP, flag) -> the model's terms, with the flag products."""
    return np.column_stack([x, x[:, 2] * x[:, 0], x[:, 2] * x[:, 1]])


def feature_matrix(r_ktrans: ArrayLike, r_vp: ArrayLike, pre_flag: ArrayLike) -> NDArray[np.float64]:
    """Inputs (log rKtrans, log rVP, flag) as an (N, 3) array; NaN flags stay NaN."""
    k = np.atleast_1d(np.asarray(r_ktrans, dtype=np.float64))
    v = np.atleast_1d(np.asarray(r_vp, dtype=np.float64))
    f = np.atleast_1d(np.asarray(pre_flag, dtype=np.float64))
    k, v, f = np.broadcast_arrays(k, v, f)
    if np.any(~np.isfinite(k)) or np.any(~np.isfinite(v)):
        raise DceInputError("ratios must be finite to compute a probability")
    return np.stack([np.log(np.maximum(k, _RATIO_FLOOR)), np.log(np.maximum(v, _RATIO_FLOOR)),
                     f], axis=1)


@dataclass(frozen=True)
class RecurrenceModel:
    """A fitted logistic model.

    Attributes
    ----------
    coefficients:
        One per term of :data:`FEATURE_NAMES`.
    intercept:
        The bias term.
    prior_flag_fill:
        Value of the pre-treatment flag used when no prior is matched (training prevalence).
    name, version:
        Model identity, written into every report.
    training:
        JSON-able summary of the training data and evaluation.
    calibration:
        Calibration measured on held-out cases (:mod:`analyzers._shared.probability`); a
        model without it prints no probability.
    """

    coefficients: tuple[float, ...]
    intercept: float
    prior_flag_fill: float
    name: str
    version: str
    training: dict[str, Any] = field(default_factory=dict)
    calibration: ProbabilityCalibration | None = None

    def __post_init__(self) -> None:
        if len(self.coefficients) != len(FEATURE_NAMES):
            raise RecurrenceModelError(f"expected {len(FEATURE_NAMES)} coefficients")
        if not all(np.isfinite(self.coefficients)) or not np.isfinite(self.intercept):
            raise RecurrenceModelError("model coefficients must be finite")
        if not 0.0 <= self.prior_flag_fill <= 1.0:
            raise RecurrenceModelError("prior_flag_fill must be in [0, 1]")

    def predict_proba(self, r_ktrans: ArrayLike, r_vp: ArrayLike,
                      pre_flag: ArrayLike) -> NDArray[np.float64]:
        """Probability of recurrence per lesion; a NaN flag means "no matched prior"."""
        x = feature_matrix(r_ktrans, r_vp, pre_flag)
        x[:, 2] = np.where(np.isnan(x[:, 2]), self.prior_flag_fill, x[:, 2])
        z = _design(x) @ np.asarray(self.coefficients) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, r_ktrans: ArrayLike, r_vp: ArrayLike, pre_flag: ArrayLike, recurrence: ArrayLike,
            *, name: str, version: str, c: float = 1.0,
            training: dict[str, Any] | None = None) -> RecurrenceModel:
        """Fit an L2-regularised logistic regression (scikit-learn, lbfgs)."""
        from sklearn.linear_model import LogisticRegression

        x = feature_matrix(r_ktrans, r_vp, pre_flag)
        y = np.asarray(recurrence, dtype=int).reshape(-1)
        if y.size != x.shape[0] or set(np.unique(y)) != {0, 1}:
            raise DceInputError("recurrence labels must be 0/1 with both classes present")
        known = ~np.isnan(x[:, 2])
        fill = float(x[known, 2].mean()) if np.any(known) else 0.5
        x[:, 2] = np.where(known, x[:, 2], fill)
        clf = LogisticRegression(C=c, max_iter=1000).fit(_design(x), y)
        return cls(coefficients=tuple(float(v) for v in clf.coef_[0]),
                   intercept=float(clf.intercept_[0]),
                   prior_flag_fill=fill, name=name, version=version,
                   training=dict(training or {}, n_cases=int(y.size),
                                 n_recurrence=int(y.sum())))

    def save(self, folder: Path) -> Path:
        """Write ``model.json`` and ``MODEL_CARD.md`` into ``folder``; returns the folder."""
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"kind": MODEL_KIND, "features": list(FEATURE_NAMES),
                   **{k: v for k, v in asdict(self).items() if k != "calibration"},
                   "probability": None if self.calibration is None else self.calibration.to_dict()}
        (folder / "model.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        (folder / "MODEL_CARD.md").write_text(self._card())
        return folder

    @classmethod
    def load(cls, folder: Path) -> RecurrenceModel:
        """Read a model folder written by :meth:`save`."""
        path = folder / "model.json"
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise RecurrenceModelError(f"no model.json in {folder}") from exc
        except json.JSONDecodeError as exc:
            raise RecurrenceModelError(f"{path} is not valid JSON: {exc}") from exc
        if payload.get("kind") != MODEL_KIND or payload.get("features") != list(FEATURE_NAMES):
            raise RecurrenceModelError(f"{path} is not a {MODEL_KIND} model")
        try:
            raw = payload.get("probability")
            return cls(coefficients=tuple(float(v) for v in payload["coefficients"]),
                       intercept=float(payload["intercept"]),
                       prior_flag_fill=float(payload["prior_flag_fill"]),
                       name=str(payload["name"]), version=str(payload["version"]),
                       training=dict(payload.get("training", {})),
                       calibration=None if raw is None else ProbabilityCalibration.from_dict(raw))
        except (KeyError, TypeError, ValueError, ProbabilityError) as exc:
            raise RecurrenceModelError(f"{path} is incomplete: {exc}") from exc

    def _card(self) -> str:
        lines = [f"# Model card: {self.name} {self.version}", "",
                 f"**{NOT_FOR_CLINICAL_USE}**", "",
                 "Logistic regression: probability of recurrent tumour (vs radiation necrosis) "
                 "of an enhancing lesion after radiosurgery, from the DCE ratios rKtrans and rVP "
                 "(log), the pre-treatment hyperperfusion flag and their products.", "",
                 "| feature | coefficient |", "|---|---|"]
        lines += [f"| {n} | {c:.4f} |" for n, c in zip(FEATURE_NAMES, self.coefficients,
                                                          strict=True)]
        lines += [f"| intercept | {self.intercept:.4f} |", "",
                  f"Pre-treatment flag when no prior is matched: {self.prior_flag_fill:.3f} "
                  "(training prevalence).", ""]
        lines += self._calibration_lines()
        lines += ["## Training", "",
                  "```json", json.dumps(self.training, indent=2, sort_keys=True), "```", ""]
        return "\n".join(lines)

    def _calibration_lines(self) -> list[str]:
        if self.calibration is None:
            return ["## Calibration", "",
                    "No held-out calibration record: the analyzer prints no probability from "
                    "this model.", ""]
        cal = self.calibration
        lines = ["## Calibration (held-out)", "", cal.statement(), "",
                 "| measure | value |", "|---|---|"]
        lines += [f"| {m.name} | {'n/a' if m.value is None else f'{m.value:.4g}'} |"
                  for m in cal.card_metrics()]
        reliability = self.training.get("holdout", {}).get("reliability")
        if reliability:
            lines += ["", "Reliability on the held-out cases (non-empty bins of predicted "
                      "probability; plot: `reliability.png`):", "",
                      "| cases | mean predicted | observed fraction |", "|---|---|---|"]
            for count, predicted, observed in zip(reliability["counts"], reliability["mean_predicted"],
                                                  reliability["observed_fraction"], strict=True):
                lines.append(f"| {count} | {predicted:.3f} | {observed:.3f} |")
        return [*lines, ""]


@dataclass(frozen=True)
class SyntheticCohort:
    """Ratios, pre-treatment flags and outcomes of a synthetic cohort (one lesion per patient)."""

    r_ktrans: NDArray[np.float64]
    r_vp: NDArray[np.float64]
    pre_flag: NDArray[np.float64]
    recurrence: NDArray[np.int64]
    patient: NDArray[np.int64]


def synthetic_ratio_cohort(n_patients: int, seed: int, *, recurrence_fraction: float = 0.64,
                           pre_hyperperfused_fraction: float = 0.7,
                           log_sd: float = 0.6) -> SyntheticCohort:
    """Draw a cohort around the study's medians (log-normal ratios).

    Recurrences of lesions hyperperfused before treatment are drawn around rKtrans 7.4,
    rVP 3.1; recurrences of lesions not hyperperfused before treatment stay around the
    pre-treatment non-hyperperfused medians 0.4, 0.7 (the premise of the rule);
    necroses around 1.6, 0.9. The 64 % recurrence fraction is the study's (14 of 22).

    Parameters
    ----------
    n_patients:
        Number of lesions (one per patient).
    seed:
        Random seed (same seed, same cohort).
    recurrence_fraction, pre_hyperperfused_fraction:
        Class and flag prevalences.
    log_sd:
        Standard deviation of the log ratios.
    """
    if n_patients < 2:
        raise DceInputError("a cohort needs at least two patients")
    rng = np.random.default_rng(seed)
    rec = (rng.random(n_patients) < recurrence_fraction).astype(np.int64)
    pre = (rng.random(n_patients) < pre_hyperperfused_fraction).astype(np.float64)
    med_k = np.where(rec == 1, np.where(pre == 1, 7.4, 0.4), 1.6)
    med_v = np.where(rec == 1, np.where(pre == 1, 3.1, 0.7), 0.9)
    r_k = med_k * np.exp(rng.normal(0.0, log_sd, n_patients))
    r_v = med_v * np.exp(rng.normal(0.0, log_sd, n_patients))
    return SyntheticCohort(r_ktrans=r_k, r_vp=r_v, pre_flag=pre, recurrence=rec,
                           patient=np.arange(n_patients, dtype=np.int64))

