"""Model cards for the models ``pacsnode train`` writes.

A model card (Mitchell et al. 2019, "Model Cards for Model Reporting") travels
with every model folder as ``model_card.md`` (for people) and
``model_card.json`` (for the node and the analyzer, which show the model's
identity in every result). It states the data the model was trained on, the
intended use, the validation design, the measured performance with confidence
intervals, the paper or standard followed, and the limitations. Every card
carries :data:`analyzers.contract.NOT_FOR_CLINICAL_USE`: a card cannot be written
without it, and it is not a field a caller can change, because no model of
pacsnode is validated for clinical use until a site validates its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analyzers._shared.stats import Evaluation
from analyzers.contract import NOT_FOR_CLINICAL_USE

__all__ = [
    "CardMetric",
    "DataDescription",
    "ModelCard",
    "ModelCardError",
    "ModelCardPaths",
    "load_model_card",
    "metrics_from_evaluation",
    "write_model_card",
]

CARD_SCHEMA = "pacsnode-model-card/1"


class ModelCardError(ValueError):
    """A model card is incomplete or inconsistent."""


def _need(value: str, name: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ModelCardError(f"model card field {name!r} must be a non-empty string")


def _finite_or_none(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    v = float(value)
    if math.isnan(v):
        return None
    if math.isinf(v):
        raise ModelCardError(f"metric {name!r} is infinite")
    return v


@dataclass(frozen=True)
class DataDescription:
    """What the model was trained and evaluated on.

    Attributes
    ----------
    source:
        Where the cases came from, e.g. ``"phantom cohort, pacsnode phantom dsc,
        seed 0, 120 cases"`` or ``"site studies listed in labels.csv"``.
    n_cases, n_patients, n_positive:
        Counts (cases are lesions or studies, as the analyzer defines a row).
    positive_label, negative_label:
        What label 1 and label 0 mean, e.g. ``"dural metastasis"`` / ``"meningioma"``.
    features:
        Model inputs in order, e.g. ``("rCBF_mean", "rCBV_mean")``.
    notes:
        Anything else a reader needs (label provenance, exclusions).
    """

    source: str
    n_cases: int
    n_patients: int
    n_positive: int
    positive_label: str
    negative_label: str
    features: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        _need(self.source, "data.source")
        _need(self.positive_label, "data.positive_label")
        _need(self.negative_label, "data.negative_label")
        if not 0 < self.n_patients <= self.n_cases:
            raise ModelCardError("data needs 0 < n_patients <= n_cases")
        if not 0 <= self.n_positive <= self.n_cases:
            raise ModelCardError("data needs 0 <= n_positive <= n_cases")

    @property
    def n_negative(self) -> int:
        """Cases with label 0."""
        return self.n_cases - self.n_positive

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "source": self.source,
            "n_cases": self.n_cases,
            "n_patients": self.n_patients,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
            "features": list(self.features),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class CardMetric:
    """One measured number with its interval.

    ``value`` None means "not defined on these data" (e.g. PPV with no case
    called positive) and is written as "n/a".
    """

    name: str
    value: float | None
    ci_lower: float | None = None
    ci_upper: float | None = None
    confidence: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _need(self.name, "metric.name")
        for attr in ("value", "ci_lower", "ci_upper"):
            object.__setattr__(self, attr, _finite_or_none(getattr(self, attr), self.name))
        if (self.ci_lower is None) != (self.ci_upper is None):
            raise ModelCardError(f"metric {self.name!r} needs both CI bounds or neither")
        if self.ci_lower is not None and self.confidence is None:
            raise ModelCardError(f"metric {self.name!r} has a CI but no confidence level")

    def formatted(self, decimals: int = 3) -> str:
        """``"0.866 (95% CI 0.798-0.934)"`` or ``"0.142"`` or ``"n/a"``."""
        if self.value is None:
            return "n/a"
        text = f"{self.value:.{decimals}f}"
        if self.ci_lower is not None and self.ci_upper is not None and self.confidence:
            pct = round(self.confidence * 100)
            sep = " to " if min(self.ci_lower, self.ci_upper) < 0 else "-"
            text += f" ({pct}% CI {self.ci_lower:.{decimals}f}{sep}{self.ci_upper:.{decimals}f})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "value": self.value,
            "ci_lower": self.ci_lower,
            "ci_upper": self.ci_upper,
            "confidence": self.confidence,
            "note": self.note,
        }


def metrics_from_evaluation(evaluation: Evaluation, prefix: str = "") -> tuple[CardMetric, ...]:
    """Card metrics from an :class:`~analyzers._shared.stats.Evaluation`.

    AUC with its patient-level bootstrap CI, Brier score, calibration slope and
    intercept, Hosmer-Lemeshow p, the operating threshold, and sensitivity,
    specificity, PPV, NPV and accuracy at it with their bootstrap CIs.
    ``prefix`` (e.g. ``"external test: "``) is put before every name.
    """
    auc = evaluation.auc
    out = [
        CardMetric(
            f"{prefix}ROC-AUC",
            auc.estimate,
            auc.lower,
            auc.upper,
            auc.confidence,
            f"patient-level cluster bootstrap, {auc.n_used} of {auc.n_boot} resamples",
        ),
        CardMetric(f"{prefix}Brier score", evaluation.brier),
        CardMetric(f"{prefix}calibration slope", evaluation.calibration_fit.slope),
        CardMetric(f"{prefix}calibration intercept", evaluation.calibration_fit.intercept),
    ]
    hl = evaluation.hosmer_lemeshow
    if hl is not None:
        out.append(
            CardMetric(
                f"{prefix}Hosmer-Lemeshow p",
                hl.p_value,
                note=f"chi2 = {hl.statistic:.3f}, {hl.dof} df, {hl.dof + 2} risk groups",
            )
        )
    at = evaluation.at_threshold
    how = (
        f"highest threshold with sensitivity >= {evaluation.target_sensitivity:.0%}"
        if evaluation.target_sensitivity is not None
        else "threshold fixed beforehand"
    )
    out.append(CardMetric(f"{prefix}operating threshold", at.threshold, note=how))
    for key, label in (
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("ppv", "PPV"),
        ("npv", "NPV"),
        ("accuracy", "accuracy"),
    ):
        ci = evaluation.at_threshold_ci[key]
        out.append(
            CardMetric(
                f"{prefix}{label} at threshold",
                getattr(at, key),
                ci.lower if math.isfinite(ci.lower) else None,
                ci.upper if math.isfinite(ci.upper) else None,
                ci.confidence if math.isfinite(ci.lower) else None,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class ModelCard:
    """Everything a model card says.

    Attributes
    ----------
    name, version:
        Model identity, as the analyzer reports it in its outputs.
    analyzer:
        The analyzer that uses the model (``"dsc"``, ``"meningioma"``, ...).
    model_description:
        What the model is, e.g. "LDA on (rCBF_mean, rCBV_mean) with median
        imputation and standardisation".
    intended_use:
        What the model is for and for whom.
    data:
        Training data description.
    validation:
        The validation design, e.g. "nested CV, outer 5-fold GroupKFold by
        patient, inner 5-fold grouped CV with 25 Optuna trials, seed 0".
    metrics:
        Measured performance.
    references:
        The papers and standards followed.
    limitations:
        Known limitations, one per entry.
    created:
        Optional creation date (ISO 8601), given by the caller so that cards are
        reproducible.
    extra:
        Further JSON-able facts (hyper-parameters, software versions, ...).
    """

    name: str
    version: str
    analyzer: str
    model_description: str
    intended_use: str
    data: DataDescription
    validation: str
    metrics: tuple[CardMetric, ...]
    references: tuple[str, ...]
    limitations: tuple[str, ...] = ()
    created: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("name", "version", "analyzer", "model_description", "intended_use", "validation"):
            _need(getattr(self, attr), attr)
        if not self.metrics:
            raise ModelCardError("a model card needs at least one measured metric")
        if not self.references:
            raise ModelCardError("a model card must name the paper or standard it follows")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ModelCardError("metric names must be unique")
        try:
            json.dumps(dict(self.extra), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"extra must be JSON-able without NaN: {exc}") from exc

    @property
    def clinical_use_statement(self) -> str:
        """The mandatory statement; always :data:`analyzers.contract.NOT_FOR_CLINICAL_USE`."""
        return NOT_FOR_CLINICAL_USE

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``model_card.json`` holds)."""
        return {
            "schema": CARD_SCHEMA,
            "clinical_use": self.clinical_use_statement,
            "name": self.name,
            "version": self.version,
            "analyzer": self.analyzer,
            "created": self.created,
            "model_description": self.model_description,
            "intended_use": self.intended_use,
            "data": self.data.to_dict(),
            "validation": self.validation,
            "metrics": [m.to_dict() for m in self.metrics],
            "references": list(self.references),
            "limitations": list(self.limitations),
            "extra": dict(self.extra),
        }

    def to_markdown(self) -> str:
        """The card as Markdown."""
        d = self.data
        lines = [
            f"# Model card: {self.name} {self.version}",
            "",
            f"**{self.clinical_use_statement}**",
            "",
            f"- Analyzer: `{self.analyzer}`",
        ]
        if self.created:
            lines.append(f"- Created: {self.created}")
        lines += [
            "",
            "## Model",
            "",
            self.model_description,
            "",
            "## Intended use",
            "",
            self.intended_use,
            "",
            "This model is a research tool. It must not be used for diagnosis or treatment "
            "decisions; a site that wants to rely on it validates its own model on its own "
            "patients first.",
            "",
            "## Data",
            "",
            f"- Source: {d.source}",
            f"- Cases: {d.n_cases} from {d.n_patients} patients",
            f"- Positive ({d.positive_label}): {d.n_positive}; negative ({d.negative_label}): {d.n_negative}",
        ]
        if d.features:
            lines.append("- Features: " + ", ".join(f"`{f}`" for f in d.features))
        if d.notes:
            lines.append(f"- Notes: {d.notes}")
        lines += [
            "",
            "## Validation",
            "",
            self.validation,
            "",
            "## Performance",
            "",
            "| metric | value | note |",
            "|---|---|---|",
        ]
        lines += [f"| {m.name} | {m.formatted()} | {m.note} |" for m in self.metrics]
        lines += ["", "## Method follows", ""]
        lines += [f"- {r}" for r in self.references]
        if self.limitations:
            lines += ["", "## Limitations", ""]
            lines += [f"- {lim}" for lim in self.limitations]
        if self.extra:
            lines += [
                "",
                "## Details",
                "",
                "```json",
                json.dumps(dict(self.extra), indent=2, sort_keys=True),
                "```",
            ]
        lines += ["", f"**{self.clinical_use_statement}**", ""]
        return "\n".join(lines)


@dataclass(frozen=True)
class ModelCardPaths:
    """Where :func:`write_model_card` put the card."""

    markdown: Path
    json: Path


def write_model_card(card: ModelCard, folder: Path, stem: str = "model_card") -> ModelCardPaths:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``folder`` (created when missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{stem}.md"
    js = folder / f"{stem}.json"
    md.write_text(card.to_markdown(), encoding="utf-8")
    js.write_text(
        json.dumps(card.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return ModelCardPaths(markdown=md, json=js)


def _tuple_of(items: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(items)


def load_model_card(path: Path) -> ModelCard:
    """Read a ``model_card.json`` written by :func:`write_model_card`.

    Raises
    ------
    ModelCardError
        When the file is not a pacsnode model card or lacks the clinical-use statement.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if raw.get("schema") != CARD_SCHEMA:
        raise ModelCardError(f"{path} is not a {CARD_SCHEMA} model card")
    if raw.get("clinical_use") != NOT_FOR_CLINICAL_USE:
        raise ModelCardError(f"{path} lacks the not-for-clinical-use statement")
    d = raw["data"]
    try:
        return ModelCard(
            name=raw["name"],
            version=raw["version"],
            analyzer=raw["analyzer"],
            created=raw.get("created"),
            model_description=raw["model_description"],
            intended_use=raw["intended_use"],
            data=DataDescription(
                source=d["source"],
                n_cases=d["n_cases"],
                n_patients=d["n_patients"],
                n_positive=d["n_positive"],
                positive_label=d["positive_label"],
                negative_label=d["negative_label"],
                features=_tuple_of(d.get("features", [])),
                notes=d.get("notes", ""),
            ),
            validation=raw["validation"],
            metrics=tuple(CardMetric(**m) for m in raw["metrics"]),
            references=_tuple_of(raw["references"]),
            limitations=_tuple_of(raw.get("limitations", [])),
            extra=raw.get("extra", {}),
        )
    except KeyError as exc:
        raise ModelCardError(f"{path} misses the field {exc}") from exc
