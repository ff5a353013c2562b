"""One case through the study's pipeline: preprocessing, features, nomogram.

Image + ROI + header -> N4 and 1 mm resampling -> radiomics (pyradiomics,
``params.yaml``) -> clinical image signs -> ResNet50 max-ROI-slice features ->
rad-score, DTL-score and nomogram probability (Li et al., Sci Rep 2025).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from analyzers.meningioma.clinical import ClinicalFeatures, ClinicalThresholds, clinical_features
from analyzers.meningioma.deep_features import DtlNetwork, deep_features, slice_tensor
from analyzers.meningioma.model import MeningiomaModel
from analyzers.meningioma.preprocessing import N4Settings, PreprocessedCase, preprocess
from analyzers.meningioma.radiomics_features import RadiomicsSettings, extract_radiomics

__all__ = [
    "CaseFeatures",
    "GradePrediction",
    "compute_case_features",
    "dtl_feature_names",
    "predict_grade",
]


def dtl_feature_names(count: int = 2048) -> tuple[str, ...]:
    """Names of the pooled ResNet50 activations (``dtl_0000`` ...)."""
    return tuple(f"dtl_{i:04d}" for i in range(count))


@dataclass(frozen=True)
class CaseFeatures:
    """Everything computed for one case.

    Attributes
    ----------
    preprocessed:
        The N4-corrected, resampled image and ROI.
    radiomics:
        pyradiomics features by name.
    dtl:
        Pooled network activations by name (``dtl_0000`` ...), empty without a network.
    slice_input:
        The network input of the case, ``(1, 3, 224, 224)``.
    clinical:
        Sex and the image-derived clinical signs.
    tumour_volume_ml:
        ROI volume on the source grid.
    """

    preprocessed: PreprocessedCase
    radiomics: dict[str, float]
    dtl: dict[str, float]
    slice_input: torch.Tensor
    clinical: ClinicalFeatures
    tumour_volume_ml: float


@dataclass(frozen=True)
class GradePrediction:
    """The nomogram's output for one case."""

    rad_score: float
    dtl_score: float
    probability_high_grade: float
    high_grade: bool
    threshold: float

    def to_json(self) -> dict[str, Any]:
        """JSON-able form for the findings."""
        return {
            "rad_score": round(self.rad_score, 6),
            "dtl_score": round(self.dtl_score, 6),
            "probability_high_grade": round(self.probability_high_grade, 6),
            "predicted_class": "WHO grade 2/3" if self.high_grade else "WHO grade 1",
            "threshold": self.threshold,
        }


def compute_case_features(
    image: sitk.Image,
    mask: sitk.Image,
    header: Mapping[str, Any],
    *,
    settings: RadiomicsSettings | None = None,
    network: DtlNetwork | None = None,
    clinical_thresholds: ClinicalThresholds | None = None,
    n4: N4Settings | None = None,
    bias_corrected: bool = False,
) -> CaseFeatures:
    """Run preprocessing and every feature family on one case.

    Parameters
    ----------
    image, mask:
        The T1C image and the tumour ROI on its grid.
    header:
        DICOM attributes of the series (``PatientSex``).
    settings:
        Radiomics parameters; the analyzer's ``params.yaml`` when None.
    network:
        Fine-tuned network for the DTL features; None skips them.
    clinical_thresholds, n4:
        Passed to the clinical signs and to N4.
    bias_corrected:
        ``image`` is already N4-corrected; N4 is skipped.
    """
    settings = settings or RadiomicsSettings.from_file()
    roi = sitk.GetArrayFromImage(mask) != 0
    volume_ml = float(roi.sum() * np.prod(mask.GetSpacing()) / 1000.0)
    case = preprocess(image, mask, settings.target_spacing_mm, n4, bias_corrected=bias_corrected)
    radiomics = extract_radiomics(case.image, case.mask, settings)
    clinical = clinical_features(
        case.image,
        case.mask,
        header,
        radiomics["original_shape_Sphericity"],
        clinical_thresholds,
        source_mask=mask,
    )
    inputs = slice_tensor(case.image, case.mask)
    dtl: dict[str, float] = {}
    if network is not None:
        values = deep_features(network, inputs)[0]
        dtl = dict(zip(dtl_feature_names(len(values)), (float(v) for v in values), strict=True))
    return CaseFeatures(case, radiomics, dtl, inputs, clinical, volume_ml)


def predict_grade(model: MeningiomaModel, features: CaseFeatures) -> GradePrediction:
    """Rad-score, DTL-score and the (recalibrated) nomogram probability of one case."""
    rad = model.rad_score.score(features.radiomics)
    dtl = model.dtl_score.score(features.dtl)
    predictors = np.concatenate([features.clinical.as_vector(), [rad, dtl]])
    probability = model.probability(predictors)
    return GradePrediction(rad, dtl, probability, probability >= model.threshold, model.threshold)
