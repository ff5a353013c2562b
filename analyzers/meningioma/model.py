"""The grade models of the study and the model folder that holds them.

Li et al. (Sci Rep 2025), "Model construction": clinical, radiomics and DTL
models are support vector machines on the selected features; the DTLR nomogram
is a logistic regression on sex, shape, indistinct margin, peritumoral edema,
rad-score and DTL-score giving the probability of a high-grade (WHO 2/3)
meningioma.

A model folder holds ``model.json`` (scores, nomogram, thresholds, provenance),
the fine-tuned network weights (``dtl_resnet50.pt``), the nomogram figure
(``nomogram.png``) and ``model_card.md``. The SVM models are fitted and evaluated
during training (they are the study's comparison models); the analyzer reports
the nomogram, so the folder does not store them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from analyzers._shared.probability import LogisticRecalibration
from analyzers.contract import NOT_FOR_CLINICAL_USE
from analyzers.meningioma.clinical import ClinicalThresholds
from analyzers.meningioma.deep_features import FINE_TUNED_WEIGHTS_FILE, BackboneConfig
from analyzers.meningioma.errors import ModelError
from analyzers.meningioma.selection import LassoScore

__all__ = [
    "MODEL_CARD_FILE",
    "MODEL_FILE",
    "NOMOGRAM_FIGURE",
    "NOMOGRAM_PREDICTORS",
    "MeningiomaModel",
    "NomogramModel",
    "fit_nomogram",
    "fit_svm",
    "plot_nomogram",
]

MODEL_FILE = "model.json"
MODEL_CARD_FILE = "model_card.md"
NOMOGRAM_FIGURE = "nomogram.png"
NOMOGRAM_PREDICTORS = ("sex", "shape", "indistinct_margin", "peritumoral_edema", "rad_score", "dtl_score")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class NomogramModel:
    """Logistic regression on the nomogram's predictors (``NOMOGRAM_PREDICTORS``).

    Attributes
    ----------
    coefficients, intercept:
        Log-odds coefficients per predictor and intercept.
    ranges:
        Training minimum and maximum of each predictor (for the figure's axes).
    """

    coefficients: tuple[float, ...]
    intercept: float
    ranges: tuple[tuple[float, float], ...]
    predictors: tuple[str, ...] = NOMOGRAM_PREDICTORS

    def __post_init__(self) -> None:
        if not len(self.coefficients) == len(self.ranges) == len(self.predictors):
            raise ValueError("one coefficient and one range per predictor")

    def probability(self, values: Sequence[float] | np.ndarray) -> float:
        """Probability of high grade for one case's predictor values."""
        x = np.asarray(values, dtype=np.float64)
        if x.shape != (len(self.predictors),):
            raise ValueError(f"expected {len(self.predictors)} predictor values, got {x.shape}")
        logit = self.intercept + float(x @ np.asarray(self.coefficients))
        return float(1.0 / (1.0 + np.exp(-logit)))

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "predictors": list(self.predictors),
            "coefficients": list(self.coefficients),
            "intercept": self.intercept,
            "ranges": [list(r) for r in self.ranges],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NomogramModel:
        """Inverse of :meth:`to_json`."""
        return cls(
            coefficients=tuple(float(v) for v in data["coefficients"]),
            intercept=float(data["intercept"]),
            ranges=tuple((float(a), float(b)) for a, b in data["ranges"]),
            predictors=tuple(data["predictors"]),
        )


def fit_nomogram(predictors: np.ndarray, labels: Sequence[int] | np.ndarray) -> NomogramModel:
    """Fit the nomogram on ``(n_cases, 6)`` predictor values (``NOMOGRAM_PREDICTORS`` order).

    An unpenalised logistic regression, as a nomogram is; a very weak ridge
    (C = 1e4) keeps the fit finite when a predictor separates the classes.
    """
    x = np.asarray(predictors, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if x.ndim != 2 or x.shape[1] != len(NOMOGRAM_PREDICTORS) or len(y) != len(x):
        raise ValueError(f"predictors must be (n_cases, {len(NOMOGRAM_PREDICTORS)})")
    fitted = LogisticRegression(C=1e4, max_iter=10000).fit(x, y)
    return NomogramModel(
        coefficients=tuple(float(v) for v in fitted.coef_[0]),
        intercept=float(fitted.intercept_[0]),
        ranges=tuple((float(lo), float(hi)) for lo, hi in zip(x.min(0), x.max(0), strict=True)),
    )


def fit_svm(features: np.ndarray, labels: Sequence[int] | np.ndarray, seed: int = 0) -> Pipeline:
    """An SVM model as the study's: standardisation + RBF SVC, Platt-scaled probabilities.

    Platt scaling (sigmoid) is fitted on cross-validated decision values
    (``CalibratedClassifierCV(ensemble=False)``, scikit-learn's replacement for
    ``SVC(probability=True)``).
    """
    y = np.asarray(labels, dtype=int)
    folds = int(max(2, min(5, np.bincount(y).min())))
    calibrated = CalibratedClassifierCV(
        SVC(kernel="rbf", random_state=seed), method="sigmoid", cv=folds, ensemble=False
    )
    return make_pipeline(StandardScaler(), calibrated).fit(np.asarray(features, dtype=np.float64), y)


def plot_nomogram(model: NomogramModel, path: Path, labels: Mapping[str, str] | None = None) -> Path:
    """Draw the nomogram (points per predictor, total points, probability) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = dict(
        sex="Sex (0 F, 1 M)",
        shape="Shape (0 regular, 1 irregular)",
        indistinct_margin="Indistinct margin",
        peritumoral_edema="Peritumoral edema",
        rad_score="Rad-score",
        dtl_score="DTL-score",
    )
    names.update(labels or {})
    beta = np.asarray(model.coefficients)
    spans = np.array([abs(b) * (hi - lo) for b, (lo, hi) in zip(beta, model.ranges, strict=True)])
    scale = 100.0 / max(float(spans.max()), 1e-12)
    rows = len(model.predictors) + 3
    figure, axis = plt.subplots(figsize=(9, 0.6 * rows + 1))
    axis.set_xlim(-5, 105)
    axis.set_ylim(-0.5, rows - 0.5)
    axis.axis("off")

    def ruler(row: int, label: str, ticks: Sequence[tuple[float, str]]) -> None:
        y = rows - 1 - row
        positions = [p for p, _ in ticks]
        axis.plot([min(positions), max(positions)], [y, y], color="black", lw=1)
        for position, text in ticks:
            axis.plot([position, position], [y, y + 0.12], color="black", lw=1)
            axis.text(position, y + 0.18, text, ha="center", fontsize=7)
        axis.text(-6, y, label, ha="right", va="center", fontsize=8)

    ruler(0, "Points", [(p, str(p)) for p in range(0, 101, 10)])
    low_total = 0.0
    for row, (name, b, (lo, hi)) in enumerate(zip(model.predictors, beta, model.ranges, strict=True), 1):
        values = np.linspace(lo, hi, 5) if hi > lo else np.array([lo])
        origin = lo if b >= 0 else hi
        ticks = [(float(abs(b) * abs(v - origin) * scale), f"{v:.2g}") for v in values]
        ruler(row, names.get(name, name), ticks)
        low_total += b * origin
    total_points = float(spans.sum() * scale)
    total_ticks = [
        (p * 100 / max(total_points, 1e-9), f"{p:.0f}") for p in np.linspace(0, total_points, 6)
    ]
    ruler(rows - 2, "Total points", total_ticks)
    probabilities = [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95]
    prob_ticks = []
    for p in probabilities:
        points = (np.log(p / (1 - p)) - model.intercept - low_total) * scale
        if 0 <= points <= total_points:
            prob_ticks.append((points * 100 / max(total_points, 1e-9), f"{p:g}"))
    if len(prob_ticks) >= 2:
        ruler(rows - 1, "Risk of high grade", prob_ticks)
    axis.set_title("DTLR nomogram (not for clinical use)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class MeningiomaModel:
    """Everything the analyzer needs to turn features into a grade probability.

    Attributes
    ----------
    rad_score, dtl_score:
        LASSO scores over radiomics and DTL features.
    nomogram:
        The DTLR nomogram.
    threshold:
        Probability at or above which the class is "high grade".
    clinical_thresholds:
        Decision thresholds of the image-derived clinical signs.
    backbone:
        Architecture of the fine-tuned network.
    folder:
        Where the model was loaded from (holds the network weights).
    provenance:
        Training data, sizes, measured performance, start weights (model card).
    recalibration:
        Logistic recalibration of the nomogram's probability, fitted on
        out-of-fold predictions of the training cohort (the unpenalised
        nomogram on in-sample scores is over-confident); None keeps the
        nomogram's own probability.
    """

    rad_score: LassoScore
    dtl_score: LassoScore
    nomogram: NomogramModel
    threshold: float = 0.5
    clinical_thresholds: ClinicalThresholds = field(default_factory=ClinicalThresholds)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    folder: Path | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    recalibration: LogisticRecalibration | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")

    @property
    def weights_file(self) -> Path | None:
        """The fine-tuned network weights in the folder, if any."""
        if self.folder is None:
            return None
        candidate = self.folder / FINE_TUNED_WEIGHTS_FILE
        return candidate if candidate.is_file() else None

    @property
    def identity(self) -> str:
        """Model name and version for the outputs."""
        name = str(self.provenance.get("name", "meningioma-nomogram"))
        return f"{name} {self.provenance.get('version', 'unversioned')}"

    def save(self, folder: Path) -> Path:
        """Write ``model.json`` and the nomogram figure into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        document = {
            "format_version": _FORMAT_VERSION,
            "rad_score": self.rad_score.to_json(),
            "dtl_score": self.dtl_score.to_json(),
            "nomogram": self.nomogram.to_json(),
            "threshold": self.threshold,
            "clinical_thresholds": vars(self.clinical_thresholds),
            "backbone": {
                "layers": list(self.backbone.layers),
                "width_per_group": self.backbone.width_per_group,
                "dropout": self.backbone.dropout,
                "classes": self.backbone.classes,
            },
            "provenance": dict(self.provenance),
            "recalibration": None if self.recalibration is None else self.recalibration.to_dict(),
        }
        (folder / MODEL_FILE).write_text(json.dumps(document, indent=2), encoding="utf-8")
        plot_nomogram(self.nomogram, folder / NOMOGRAM_FIGURE)
        (folder / MODEL_CARD_FILE).write_text(self.model_card(), encoding="utf-8")
        return folder

    def probability(self, predictors: Sequence[float] | np.ndarray) -> float:
        """Calibrated probability of high grade: the nomogram's, recalibrated when the model has one."""
        raw = self.nomogram.probability(predictors)
        if self.recalibration is None:
            return raw
        return float(self.recalibration(np.array([raw]))[0])

    def model_card(self) -> str:
        """Markdown model card: data, start weights, selection, intended use."""
        facts = "\n".join(f"- **{key}**: {value}" for key, value in sorted(self.provenance.items()))
        pairs = zip(self.nomogram.predictors, self.nomogram.coefficients, strict=True)
        terms = ", ".join(f"{name} {coef:+.4g}" for name, coef in pairs)
        return (
            f"# Model card: {self.identity}\n\n"
            f"{NOT_FOR_CLINICAL_USE}\n\n"
            "Predicts the probability of a high-grade (WHO 2/3) meningioma from post-contrast T1 "
            "with the deep transfer learning radiomics nomogram of Li et al., Sci Rep 2025 "
            "(doi:10.1038/s41598-025-01665-0).\n\n"
            "Pretrained ImageNet weights are not downloaded by pacsnode: the ResNet50 was fine-tuned "
            "from the start weights named below (a site's own file, the project's reference weights "
            "trained on phantom cohorts, or a random initialisation).\n\n"
            f"## Facts\n\n{facts}\n\n"
            f"## Nomogram (log-odds)\n\nintercept {self.nomogram.intercept:+.4g}; {terms}\n\n"
            f"Rad-score: {len(self.rad_score.names)} features; DTL-score: {len(self.dtl_score.names)} "
            f"features; class threshold {self.threshold}.\n"
        )

    @classmethod
    def load(cls, folder: Path) -> MeningiomaModel:
        """Read a model folder written by :meth:`save`.

        Raises
        ------
        ModelError
            ``model.json`` is missing, unreadable or of another format version.
        """
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise ModelError(f"no {MODEL_FILE} in {folder}; train one with `pacsnode train meningioma`")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format_version") != _FORMAT_VERSION:
                raise ModelError(f"{path}: unsupported format_version {document.get('format_version')}")
            backbone = document["backbone"]
            return cls(
                rad_score=LassoScore.from_json(document["rad_score"]),
                dtl_score=LassoScore.from_json(document["dtl_score"]),
                nomogram=NomogramModel.from_json(document["nomogram"]),
                threshold=float(document["threshold"]),
                clinical_thresholds=ClinicalThresholds(**document["clinical_thresholds"]),
                backbone=BackboneConfig(
                    layers=tuple(backbone["layers"]),
                    width_per_group=int(backbone["width_per_group"]),
                    dropout=float(backbone["dropout"]),
                    classes=int(backbone["classes"]),
                ),
                folder=Path(folder),
                provenance=document.get("provenance", {}),
                recalibration=None if document.get("recalibration") is None
                else LogisticRecalibration(**document["recalibration"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path}: malformed model file ({error})") from error
