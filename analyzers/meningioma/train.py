"""Fitting the study's models on a labelled training cohort.

Order as in Li et al. (Sci Rep 2025): preprocessing and features of every case
(radiomics also on the dilated and eroded ROI of the first ``icc_cases`` cases,
the stand-in for the second reader); fine-tuning of ResNet50 on the max-ROI
slices; DTL features from the fine-tuned network; per family z-score, ICC >= 0.8,
Spearman pruning and LASSO -> rad-score and DTL-score; the nomogram (logistic
regression) and the SVM models for the clinical, radiomics and DTL features.

Deviation from the study, on purpose: the network is fine-tuned on the training
cases only (the study fine-tuned on training and test images), so that an
external test stays untouched. Addition to the study: the nomogram's
probability is recalibrated (logistic recalibration, Platt scaling on its
logit) on out-of-fold nomogram probabilities of a 5-fold stratified
cross-validation of the selection and nomogram steps; an unpenalised nomogram
on in-sample LASSO scores is over-confident (calibration slope 0.10 on the
external phantoms before this step). Evaluation statistics (AUC CIs, DeLong,
Hosmer-Lemeshow, decision curves) come from :mod:`analyzers._shared.stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from analyzers._shared.probability import LogisticRecalibration
from analyzers.meningioma.clinical import ClinicalThresholds
from analyzers.meningioma.deep_features import (
    FINE_TUNED_WEIGHTS_FILE,
    BackboneConfig,
    FineTuneConfig,
    FineTuneReport,
    deep_features,
    fine_tune,
    load_network,
    slice_tensor,
)
from analyzers.meningioma.model import MeningiomaModel, fit_nomogram, fit_svm
from analyzers.meningioma.pipeline import CaseFeatures, compute_case_features, dtl_feature_names
from analyzers.meningioma.preprocessing import N4Settings
from analyzers.meningioma.radiomics_features import RadiomicsSettings, extract_radiomics
from analyzers.meningioma.selection import LassoScore, fit_lasso_score, perturbed_rois

__all__ = [
    "TrainingCase",
    "TrainingFeatures",
    "TrainingResult",
    "extract_training_features",
    "fit_models",
    "out_of_fold_nomogram",
]


@dataclass(frozen=True)
class TrainingCase:
    """One labelled case: T1C image, tumour ROI, header attributes, grade.

    ``bias_corrected`` marks an image that is already N4-corrected.
    """

    image: sitk.Image
    mask: sitk.Image
    header: Mapping[str, Any]
    high_grade: bool
    case_id: str = ""
    bias_corrected: bool = False


@dataclass
class TrainingFeatures:
    """Features of a training cohort before any model is fitted."""

    cases: list[CaseFeatures]
    labels: np.ndarray
    radiomics_names: tuple[str, ...]
    # Features of the dilated / eroded ROIs of the ICC subset (rows of that subset).
    radiomics_dilated: np.ndarray
    radiomics_eroded: np.ndarray
    slices_dilated: torch.Tensor
    slices_eroded: torch.Tensor

    def radiomics_matrix(self) -> np.ndarray:
        """``(n_cases, n_features)`` in ``radiomics_names`` order."""
        return np.array([[c.radiomics[n] for n in self.radiomics_names] for c in self.cases])

    def slices(self) -> torch.Tensor:
        """Network inputs of every case, ``(n, 3, 224, 224)``."""
        return torch.cat([c.slice_input for c in self.cases])


@dataclass
class TrainingResult:
    """The fitted model and the comparison models with training predictions."""

    model: MeningiomaModel
    svm_clinical: Pipeline
    svm_radiomics: Pipeline
    svm_dtl: Pipeline
    fine_tune_report: FineTuneReport | None
    training_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    out_of_fold_nomogram: np.ndarray | None = None


def extract_training_features(
    cases: Sequence[TrainingCase],
    *,
    settings: RadiomicsSettings | None = None,
    icc_cases: int = 20,
    n4: N4Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingFeatures:
    """Preprocess every case and compute radiomics, clinical signs and network inputs.

    The first ``icc_cases`` cases are also processed with the ROI dilated and
    eroded by 1 mm (radiomics and the max-ROI slice) for the stability filter.
    """
    settings = settings or RadiomicsSettings.from_file()
    features: list[CaseFeatures] = []
    dilated_rows: list[list[float]] = []
    eroded_rows: list[list[float]] = []
    dilated_slices: list[torch.Tensor] = []
    eroded_slices: list[torch.Tensor] = []
    names: tuple[str, ...] = ()
    for number, case in enumerate(cases):
        computed = compute_case_features(
            case.image, case.mask, case.header, settings=settings, n4=n4, bias_corrected=case.bias_corrected
        )
        features.append(computed)
        if not names:
            names = tuple(computed.radiomics)
        if number < icc_cases:
            image = computed.preprocessed.image
            for roi, rows, slices in zip(
                perturbed_rois(computed.preprocessed.mask),
                (dilated_rows, eroded_rows),
                (dilated_slices, eroded_slices),
                strict=True,
            ):
                values = extract_radiomics(image, roi, settings)
                rows.append([values[n] for n in names])
                slices.append(slice_tensor(image, roi))
        if progress is not None:
            progress(number + 1, len(cases))
    return TrainingFeatures(
        cases=features,
        labels=np.array([int(c.high_grade) for c in cases]),
        radiomics_names=names,
        radiomics_dilated=np.array(dilated_rows),
        radiomics_eroded=np.array(eroded_rows),
        slices_dilated=torch.cat(dilated_slices) if dilated_slices else torch.empty(0),
        slices_eroded=torch.cat(eroded_slices) if eroded_slices else torch.empty(0),
    )


def _icc_pair(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    return (first, second) if len(first) >= 2 else None


def _scores(score: LassoScore, matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.array([score.score(dict(zip(names, row, strict=True))) for row in matrix])


def out_of_fold_nomogram(
    radiomics: np.ndarray,
    radiomics_names: Sequence[str],
    dtl: np.ndarray,
    dtl_names: Sequence[str],
    clinical: np.ndarray,
    y: np.ndarray,
    *,
    radiomics_icc: tuple[np.ndarray, np.ndarray] | None,
    dtl_icc: tuple[np.ndarray, np.ndarray] | None,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Out-of-fold nomogram probabilities: selection, both LASSO scores and the nomogram refitted per fold.

    The ICC stability inputs use no labels and are shared by every fold; the
    fine-tuned network is the one fitted on all training cases.
    """
    minority = int(min(np.bincount(y)))
    splitter = StratifiedKFold(n_splits=max(2, min(folds, minority)), shuffle=True, random_state=seed)
    out = np.zeros(len(y))
    for train, test in splitter.split(radiomics, y):
        rad = fit_lasso_score(radiomics[train], y[train], radiomics_names, second_delineation=radiomics_icc, seed=seed)
        deep = fit_lasso_score(dtl[train], y[train], dtl_names, second_delineation=dtl_icc, seed=seed)
        predictors = np.column_stack([clinical, _scores(rad, radiomics, radiomics_names),
                                      _scores(deep, dtl, dtl_names)])
        nomogram = fit_nomogram(predictors[train], y[train])
        out[test] = [nomogram.probability(row) for row in predictors[test]]
    return out


def fit_models(
    training: TrainingFeatures,
    out: Path,
    *,
    backbone: BackboneConfig | None = None,
    fine_tune_config: FineTuneConfig | None = None,
    start_weights: Path | None = None,
    clinical_thresholds: ClinicalThresholds | None = None,
    provenance: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainingResult:
    """Fine-tune, select features, fit nomogram and SVMs; write the model folder ``out``.

    Parameters
    ----------
    training:
        From :func:`extract_training_features`.
    out:
        Model folder to write (``model.json``, ``dtl_resnet50.pt``, ``nomogram.png``).
    backbone, fine_tune_config:
        Network architecture and fine-tuning hyper-parameters (the study's by default).
    start_weights:
        Weights fine-tuning starts from (see
        :func:`analyzers.meningioma.deep_features.resolve_start_weights`); None is a
        random initialisation.
    clinical_thresholds:
        Thresholds of the clinical image signs (stored with the model).
    provenance:
        Model-card facts (name, version, data description).
    seed:
        Seed of fine-tuning and cross-validation.
    """
    y = training.labels
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    network = load_network(start_weights, backbone)
    report = fine_tune(network, training.slices(), y.tolist(), fine_tune_config or FineTuneConfig(seed=seed))
    torch.save(network.state_dict(), out / FINE_TUNED_WEIGHTS_FILE)

    dtl = deep_features(network, training.slices())
    dtl_names = dtl_feature_names(dtl.shape[1])
    dtl_icc = None
    if len(training.slices_dilated) >= 2:
        dtl_icc = (deep_features(network, training.slices_dilated), deep_features(network, training.slices_eroded))
    radiomics = training.radiomics_matrix()
    rad_score: LassoScore = fit_lasso_score(
        radiomics,
        y,
        training.radiomics_names,
        second_delineation=_icc_pair(training.radiomics_dilated, training.radiomics_eroded),
        seed=seed,
    )
    dtl_score = fit_lasso_score(dtl, y, dtl_names, second_delineation=dtl_icc, seed=seed)

    rad_values = np.array([rad_score.score(c.radiomics) for c in training.cases])
    dtl_dicts = [dict(zip(dtl_names, row, strict=True)) for row in dtl]
    dtl_values = np.array([dtl_score.score(d) for d in dtl_dicts])
    clinical = np.array([c.clinical.as_vector() for c in training.cases])
    nomogram = fit_nomogram(np.column_stack([clinical, rad_values, dtl_values]), y)

    rad_selected = np.array([rad_score.z_scores(c.radiomics) for c in training.cases])
    dtl_selected = np.array([dtl_score.z_scores(d) for d in dtl_dicts])
    svm_clinical = fit_svm(clinical, y, seed)
    svm_radiomics = fit_svm(rad_selected, y, seed)
    svm_dtl = fit_svm(dtl_selected, y, seed)

    radiomics_icc = _icc_pair(training.radiomics_dilated, training.radiomics_eroded)
    oof = out_of_fold_nomogram(radiomics, training.radiomics_names, dtl, dtl_names, clinical, y,
                               radiomics_icc=radiomics_icc, dtl_icc=dtl_icc, seed=seed)
    recalibration = LogisticRecalibration.fit(y, oof)

    facts = {
        "name": "meningioma-nomogram",
        "version": "1",
        "training_cases": len(y),
        "training_high_grade": int(y.sum()),
        "radiomics_selection": vars(rad_score.report),
        "dtl_selection": vars(dtl_score.report),
        "start_weights": str(start_weights) if start_weights else "random initialisation",
        "backbone_is_resnet50": (backbone or BackboneConfig()).is_resnet50,
        "fine_tune_epochs_run": len(report.train_loss),
        "intended_use": "research; NOT FOR CLINICAL USE",
    }
    facts.update(provenance or {})
    model = MeningiomaModel(
        rad_score=rad_score,
        dtl_score=dtl_score,
        nomogram=nomogram,
        clinical_thresholds=clinical_thresholds or ClinicalThresholds(),
        backbone=network.config,
        folder=out,
        provenance=facts,
        recalibration=recalibration,
    )
    model.save(out)
    predictors = np.column_stack([clinical, rad_values, dtl_values])
    probabilities = {
        "nomogram": np.array([model.probability(row) for row in predictors]),
        "clinical": svm_clinical.predict_proba(clinical)[:, 1],
        "radiomics": svm_radiomics.predict_proba(rad_selected)[:, 1],
        "dtl": svm_dtl.predict_proba(dtl_selected)[:, 1],
    }
    return TrainingResult(model, svm_clinical, svm_radiomics, svm_dtl, report, probabilities, recalibration(oof))
