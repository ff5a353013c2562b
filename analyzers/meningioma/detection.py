"""Is there a meningioma at all? The detection stage before grading.

Every post-contrast brain T1 of a hospital reaches the ``meningioma`` analyzer;
most have no meningioma. Before anything is graded, each candidate enhancing
region (:mod:`analyzers.meningioma.candidates`) gets a score from a random
forest (Breiman 2001; scikit-learn, stored as plain JSON trees) on its evidence
(size, enhancement against the series' white matter, dural contact, depth,
shape, necrosis), trained by ``pacsnode train meningioma`` on cases with and
without meningioma (the phantom cohort holds healthy brains, metastases,
glioma-like masses, sinuses, veins, choroid plexus, scalp fat and diploic
marrow). A forest, not a linear model: the evidence combines non-linearly (a
mass that reaches the dura is a meningioma unless it is dark inside; on the
same training cohort a logistic regression reached 97 % specificity at 95 %
sensitivity out of fold, the forest 100 %). The study's score is its best
candidate's; a logistic recalibration
fitted on out-of-fold study scores (grouped by case) turns it into a
probability, and the decision threshold (on the forest score, where the
recalibration cannot squeeze scores together) is chosen on the same out-of-fold
probabilities for a target sensitivity. A series without any candidate gets the
rule-of-succession rate of meningiomas among the training cases that had none.

Below the threshold the analyzer reports "no meningioma found" (a coded absent
finding), no grade and no SEG.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GroupKFold

from analyzers._shared.probability import LogisticRecalibration, ProbabilityCalibration
from analyzers.meningioma.candidates import CANDIDATE_FEATURES, Candidate, CandidateSettings
from analyzers.meningioma.errors import ModelError

__all__ = [
    "DETECTION_FILE",
    "CandidateForest",
    "CaseCandidates",
    "Detection",
    "DetectionModel",
    "fit_detection",
    "label_candidates",
]

DETECTION_FILE = "detection.json"
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class CaseCandidates:
    """One training case: its candidates' features and labels.

    ``labels`` per candidate: 1 the meningioma, 0 something else, -1 ambiguous
    (partly overlapping; left out of the candidate model but still part of the
    case's score).
    """

    case_id: str
    has_meningioma: bool
    features: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.features.shape != (len(self.labels), len(CANDIDATE_FEATURES)):
            raise ValueError("features must be (n_candidates, len(CANDIDATE_FEATURES))")


def label_candidates(candidates: Sequence[Candidate], truth: np.ndarray | None) -> np.ndarray:
    """1 where a candidate lies mostly (>= 50 %) in the true tumour, 0 where < 10 %, else -1."""
    labels = np.zeros(len(candidates), dtype=int)
    if truth is None or not np.any(truth):
        return labels
    truth = np.asarray(truth, dtype=bool)
    for index, candidate in enumerate(candidates):
        inside = float((candidate.mask & truth).sum()) / max(int(candidate.mask.sum()), 1)
        labels[index] = 1 if inside >= 0.5 else 0 if inside < 0.1 else -1
    return labels


@dataclass(frozen=True)
class Detection:
    """The detection stage's decision for one series."""

    found: bool
    probability: float
    threshold: float
    candidates: tuple[Candidate, ...]
    candidate_probabilities: tuple[float, ...]
    best: int | None

    @property
    def candidate(self) -> Candidate | None:
        """The candidate called meningioma (None when nothing was found)."""
        return self.candidates[self.best] if self.found and self.best is not None else None

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary for the findings."""
        return {
            "meningioma_found": self.found,
            "probability": round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "candidates": [
                {"volume_ml": round(c.volume_ml, 3), "probability": round(p, 6),
                 **{k: round(v, 4) for k, v in c.features.items()}}
                for c, p in zip(self.candidates, self.candidate_probabilities, strict=True)
            ],
        }


@dataclass(frozen=True)
class CandidateForest:
    """A fitted random forest as plain arrays: per tree the split feature, threshold,
    children and the leaf's fraction of meningioma candidates."""

    trees: tuple[dict[str, tuple[float, ...]], ...]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> CandidateForest:
        """Fit on candidate rows ``x`` with labels ``y`` (0/1)."""
        forest = RandomForestClassifier(n_estimators=200, min_samples_leaf=2, class_weight="balanced",
                                        random_state=seed, n_jobs=1).fit(x, y)
        positive = int(np.flatnonzero(forest.classes_ == 1)[0])
        trees = []
        for estimator in forest.estimators_:
            tree = estimator.tree_
            values = tree.value[:, 0, :]
            fraction = values[:, positive] / np.maximum(values.sum(axis=1), 1e-12)
            trees.append({
                "feature": tuple(float(v) for v in tree.feature),
                "threshold": tuple(float(v) for v in tree.threshold),
                "left": tuple(float(v) for v in tree.children_left),
                "right": tuple(float(v) for v in tree.children_right),
                "value": tuple(float(v) for v in fraction),
            })
        return cls(tuple(trees))

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Mean leaf fraction over the trees for each row of ``x``."""
        rows = np.asarray(x, dtype=np.float64).reshape(-1, len(CANDIDATE_FEATURES))
        total = np.zeros(len(rows))
        index = np.arange(len(rows))
        for tree in self.trees:
            feature = np.asarray(tree["feature"], dtype=int)
            threshold = np.asarray(tree["threshold"])
            left = np.asarray(tree["left"], dtype=int)
            right = np.asarray(tree["right"], dtype=int)
            node = np.zeros(len(rows), dtype=int)
            while True:
                inner = left[node] >= 0
                if not inner.any():
                    break
                go_left = rows[index, np.where(inner, feature[node], 0)] <= threshold[node]
                node = np.where(inner, np.where(go_left, left[node], right[node]), node)
            total += np.asarray(tree["value"])[node]
        return total / max(len(self.trees), 1)

    def to_json(self) -> list[dict[str, list[float]]]:
        """JSON-able form."""
        return [{k: list(v) for k, v in tree.items()} for tree in self.trees]

    @classmethod
    def from_json(cls, raw: Sequence[dict[str, Sequence[float]]]) -> CandidateForest:
        """Inverse of :meth:`to_json`."""
        return cls(tuple({k: tuple(float(v) for v in values) for k, values in tree.items()} for tree in raw))


@dataclass(frozen=True)
class DetectionModel:
    """Candidate forest, study-level recalibration and threshold."""

    forest: CandidateForest
    recalibration: LogisticRecalibration
    no_candidate_probability: float
    score_threshold: float
    candidate_settings: CandidateSettings = field(default_factory=CandidateSettings)
    calibration: ProbabilityCalibration | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.forest.trees:
            raise ModelError("the detection model has no trees")
        if not 0.0 < self.score_threshold < 1.0 or not 0.0 < self.no_candidate_probability < 1.0:
            raise ModelError("score_threshold and no_candidate_probability must lie in (0, 1)")

    @property
    def threshold(self) -> float:
        """The decision threshold as a calibrated probability (the decision itself uses the score)."""
        return float(self.recalibration(np.array([self.score_threshold]))[0])

    def candidate_scores(self, features: np.ndarray) -> np.ndarray:
        """Forest score (fraction of meningioma votes, before recalibration) of each candidate row."""
        return self.forest.probability(features)

    def study_probability(self, features: np.ndarray) -> tuple[float, int | None]:
        """Calibrated probability that the series shows a meningioma, and its best candidate."""
        rows = np.asarray(features, dtype=np.float64).reshape(-1, len(CANDIDATE_FEATURES))
        if len(rows) == 0:
            return self.no_candidate_probability, None
        scores = self.candidate_scores(rows)
        best = int(np.argmax(scores))
        return float(self.recalibration(np.array([scores[best]]))[0]), best

    def called(self, features: np.ndarray) -> bool:
        """Whether a series with these candidate rows is called a meningioma (best score at the threshold)."""
        rows = np.asarray(features, dtype=np.float64).reshape(-1, len(CANDIDATE_FEATURES))
        return bool(len(rows)) and float(self.candidate_scores(rows).max()) >= self.score_threshold

    def detect(self, candidates: Sequence[Candidate]) -> Detection:
        """Decide on a series' candidates (from :func:`~analyzers.meningioma.candidates.find_candidates`)."""
        rows = np.array([c.vector() for c in candidates]).reshape(-1, len(CANDIDATE_FEATURES))
        probability, best = self.study_probability(rows)
        per_candidate: tuple[float, ...] = ()
        if len(rows):
            per_candidate = tuple(float(v) for v in self.recalibration(self.candidate_scores(rows)))
        return Detection(
            found=self.called(rows),
            probability=probability,
            threshold=self.threshold,
            candidates=tuple(candidates),
            candidate_probabilities=per_candidate,
            best=best,
        )

    # ------------------------------------------------------------ storage
    def to_json(self) -> dict[str, Any]:
        """JSON-able form (``detection.json``)."""
        return {
            "format_version": _FORMAT_VERSION,
            "features": list(CANDIDATE_FEATURES),
            "recalibration": self.recalibration.to_dict(),
            "no_candidate_probability": self.no_candidate_probability,
            "score_threshold": self.score_threshold,
            "threshold": self.threshold,
            "candidate_settings": asdict(self.candidate_settings),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "provenance": self.provenance,
            "forest": self.forest.to_json(),
        }

    def save(self, folder: Path) -> Path:
        """Write ``detection.json`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / DETECTION_FILE
        path.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return path

    def with_calibration(self, calibration: ProbabilityCalibration) -> DetectionModel:
        """The same model carrying the calibration measured on held-out cases."""
        return DetectionModel(**{**self.__dict__, "calibration": calibration})

    @classmethod
    def load(cls, folder: Path) -> DetectionModel:
        """Read ``detection.json`` of a model folder.

        Raises
        ------
        ModelError
            When the file is missing (a model trained before the detection
            stage existed: retrain it) or malformed.
        """
        path = Path(folder) / DETECTION_FILE
        if not path.is_file():
            raise ModelError(
                f"no {DETECTION_FILE} in {folder}: the model has no detection stage; retrain it with "
                "`pacsnode train meningioma` on cases with and without meningioma"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format_version") != _FORMAT_VERSION or tuple(raw["features"]) != CANDIDATE_FEATURES:
                raise ModelError(f"{path}: other format version or features than this analyzer's")
            return cls(
                forest=CandidateForest.from_json(raw["forest"]),
                recalibration=LogisticRecalibration(**raw["recalibration"]),
                no_candidate_probability=float(raw["no_candidate_probability"]),
                score_threshold=float(raw["score_threshold"]),
                candidate_settings=CandidateSettings(**raw["candidate_settings"]),
                calibration=None if raw.get("calibration") is None
                else ProbabilityCalibration.from_dict(raw["calibration"]),
                provenance=dict(raw.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path}: malformed detection model ({error})") from error


# ------------------------------------------------------------------ training
def _stack(cases: Sequence[CaseCandidates]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [c.features for c in cases]
    x = np.concatenate(rows) if rows else np.zeros((0, len(CANDIDATE_FEATURES)))
    y = np.concatenate([c.labels for c in cases]) if rows else np.zeros(0, dtype=int)
    groups = np.concatenate([np.full(len(c.labels), i) for i, c in enumerate(cases)]) if rows else np.zeros(0)
    return x, y, groups


def _study_scores(cases: Sequence[CaseCandidates], forest: CandidateForest) -> np.ndarray:
    """Best-candidate score per case (NaN without candidates)."""
    return np.array([float(forest.probability(c.features).max()) if len(c.labels) else np.nan for c in cases])


def _out_of_fold(cases: Sequence[CaseCandidates], folds: int, seed: int) -> np.ndarray:
    x, y, groups = _stack(cases)
    scores = np.full(len(cases), np.nan)
    case_index = np.arange(len(cases))
    for train_cases, test_cases in GroupKFold(n_splits=min(folds, len(cases))).split(case_index, groups=case_index):
        train = np.isin(groups, train_cases) & (y >= 0)
        if len(np.unique(y[train])) < 2:
            continue
        forest = CandidateForest.fit(x[train], y[train], seed)
        scores[test_cases] = _study_scores([cases[i] for i in test_cases], forest)
    return scores


def _threshold(y: np.ndarray, score: np.ndarray, target_sensitivity: float) -> float:
    """The score threshold with the best sensitivity + specificity among those reaching the target sensitivity.

    Candidate thresholds lie halfway between neighbouring distinct scores (cases
    without a candidate score 0). Among equally good ones the widest gap wins:
    the threshold then sits where the validation cases leave the most room.
    """
    values = np.unique(np.concatenate([[0.0, 1.0], score]))
    mids = 0.5 * (values[1:] + values[:-1])
    gaps = values[1:] - values[:-1]
    positives, negatives = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    sensitivity = np.array([((score >= t) & (y == 1)).sum() / positives for t in mids])
    specificity = np.array([((score < t) & (y == 0)).sum() / negatives for t in mids])
    eligible = sensitivity >= target_sensitivity - 1e-12
    if not eligible.any():
        eligible = sensitivity == sensitivity.max()
    youden = np.where(eligible, sensitivity + specificity, -np.inf)
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    chosen = best[int(np.argmax(gaps[best]))]
    return float(np.clip(mids[chosen], 1e-6, 1 - 1e-6))


def fit_detection(
    cases: Sequence[CaseCandidates],
    *,
    settings: CandidateSettings | None = None,
    target_sensitivity: float = 0.95,
    folds: int = 5,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
) -> tuple[DetectionModel, np.ndarray, np.ndarray]:
    """Fit the detection stage on labelled training cases.

    The recalibration and the score threshold are fitted on the out-of-fold
    study scores of a case-grouped cross-validation; the forest is then
    refitted on every candidate.

    Returns
    -------
    model, out_of_fold_probability, out_of_fold_score
        The model, the calibrated out-of-fold probability of every case and its
        out-of-fold forest score (0 without a candidate).
    """
    y_case = np.array([int(c.has_meningioma) for c in cases])
    x, y, _ = _stack(cases)
    if len(np.unique(y[y >= 0])) < 2 or len(np.unique(y_case)) < 2:
        raise ValueError("detection training needs cases with and without meningioma, and candidates of both kinds")
    without = np.array([len(c.labels) == 0 for c in cases])
    # Rule of succession for the series that show no candidate at all.
    no_candidate = (float(y_case[without].sum()) + 1.0) / (float(without.sum()) + 2.0)
    raw = _out_of_fold(cases, folds, seed)
    usable = ~np.isnan(raw)
    # A mild ridge keeps the slope finite when the out-of-fold scores separate the classes.
    recalibration = LogisticRecalibration.fit(y_case[usable], raw[usable], penalty=0.1)
    calibrated = np.full(len(cases), no_candidate)
    calibrated[usable] = recalibration(raw[usable])
    model = DetectionModel(
        forest=CandidateForest.fit(x[y >= 0], y[y >= 0], seed),
        recalibration=recalibration,
        no_candidate_probability=float(no_candidate),
        score_threshold=_threshold(y_case, np.nan_to_num(raw, nan=0.0), target_sensitivity),
        candidate_settings=settings or CandidateSettings(),
        provenance=dict(provenance or {}),
    )
    return model, calibrated, np.nan_to_num(raw, nan=0.0)
