"""The ``meningioma`` analyzer: WHO grade (1 vs 2/3) from post-contrast T1.

Method of Li et al., "An MRI-based deep transfer learning radiomics nomogram for
predicting meningioma grade", Sci Rep 2025 (doi:10.1038/s41598-025-01665-0): N4,
1 mm resampling, IBSI-compliant radiomics (pyradiomics, bin width 25, original +
wavelet + LoG), ResNet50 features of the largest ROI slice, rad-score and
DTL-score (LASSO), nomogram with sex, shape, indistinct margin and peritumoral
edema.

Inputs: the T1C series; optionally a SEG of the tumour (role ``roi``). Without a
SEG the dural-based enhancing mass is segmented automatically
(:mod:`analyzers.meningioma.segmentation`) and written back as a SEG.

Outputs: a TID 1500 SR with the tumour volume, the clinical signs as qualitative
evaluations, rad-score, DTL-score, the probability of high grade and the class,
the model's identity and "not for clinical use"; the SEG when the ROI was made
automatically. Without a model folder (site or reference) the SR carries the
volume and clinical signs and says that no grade model is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import SimpleITK as sitk
from pydantic import Field
from pydicom import Dataset

from analyzers._shared import outputs as out
from analyzers._shared.orientation import AXIAL, reorient
from analyzers._shared.sanity import check_brain, check_static
from analyzers._shared.volume import (
    SegmentationError as SegReadError,
)
from analyzers._shared.volume import (
    SeriesGeometryError,
    Volume,
    load_segmentation,
    load_series,
)
from analyzers.contract import (
    NOT_FOR_CLINICAL_USE,
    AnalysisInput,
    AnalysisResult,
    AnalyzerSettings,
    UnsuitableInput,
)
from analyzers.meningioma.clinical import ClinicalFeatures
from analyzers.meningioma.errors import FeatureExtractionError, ModelError, SegmentationError
from analyzers.meningioma.preprocessing import N4Settings, n4_bias_correction
from analyzers.meningioma.radiomics_features import RadiomicsSettings
from analyzers.meningioma.segmentation import AutoSegmentationSettings, segment_enhancing_mass
from sr_templates import Quantity
from sr_templates import codes as c
from sr_templates.meningioma import TEMPLATE, feature_quantity

if TYPE_CHECKING:
    # torch and torchvision load only when a case is analysed (inside analyze()):
    # the node imports analyzer classes at start-up to validate route settings.
    from analyzers.meningioma.deep_features import DtlNetwork
    from analyzers.meningioma.model import MeningiomaModel
    from analyzers.meningioma.pipeline import CaseFeatures, GradePrediction

__all__ = ["REFERENCE_MODEL_FOLDER", "MeningiomaAnalyzer", "MeningiomaSettings"]

#: The project's reference model (made by training on the ``t1c`` phantom cohort).
REFERENCE_MODEL_FOLDER = Path(__file__).resolve().parent / "reference_model"

# Concepts the shared template does not define yet (private scheme, like its others).
DTL_SCORE = Quantity(
    "dtl_score",
    c.private_code("DTLSCORE", "Deep transfer learning score"),
    c.NO_UNITS,
    "DTL-score",
    "Linear deep-feature score of the grading nomogram",
)
TUMOUR_SHAPE = c.private_code("TUMSHAPE", "Tumour shape")
REGULAR = c.private_code("REGULAR", "Regular (round or round-like)")
IRREGULAR = c.private_code("IRREGULAR", "Irregular")
INDISTINCT_MARGIN = c.private_code("INDISTMARGIN", "Indistinct margin")
PERITUMORAL_EDEMA = c.private_code("PERITUMEDEMA", "Peritumoral edema")


class MeningiomaSettings(AnalyzerSettings):
    """Settings of the ``meningioma`` route (``config/routes.toml``)."""

    model_folder: str | None = None
    """Folder of a site-trained model (``pacsnode train meningioma``); None = reference model."""
    auto_segment: bool = True
    """Segment the enhancing dural-based mass when the study has no tumour SEG."""
    threads: Annotated[int, Field(ge=1, le=64)] = 2
    """CPU threads for ITK and torch."""
    n4_shrink_factor: Annotated[int, Field(ge=1, le=8)] = 4
    series_number: Annotated[int, Field(ge=1, le=99000)] = 9600


def _header(volume: Volume, job: AnalysisInput) -> dict[str, Any]:
    header = dict(job.series.attributes)
    sex = volume.headers[0].get("PatientSex")
    if sex:
        header["PatientSex"] = str(sex)
    return header


def _roi_from_seg(job: AnalysisInput, volume: Volume) -> np.ndarray | None:
    masks: list[np.ndarray] = []
    for item in job.related.get("roi", ()):
        try:
            masks.extend(m for m in load_segmentation(list(item.files), volume).values() if m.any())
        except SegReadError as error:
            raise UnsuitableInput(f"the tumour SEG cannot be used: {error}") from error
    if not masks:
        return None
    # One tumour per study in the study's design: the largest segment.
    return max(masks, key=lambda m: int(m.sum()))


class MeningiomaAnalyzer:
    """Meningioma grade nomogram on post-contrast T1 (not for clinical use)."""

    name: ClassVar[str] = "meningioma"
    version: ClassVar[str] = "1.0.0"
    needs: ClassVar[dict[str, str]] = {"roi": "seg?"}
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type[AnalyzerSettings]] = MeningiomaSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """ROI, features, nomogram and outputs of one T1C series."""
        import torch

        from analyzers.meningioma.pipeline import compute_case_features, predict_grade

        settings = job.settings if isinstance(job.settings, MeningiomaSettings) else MeningiomaSettings()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(settings.threads)
        torch.set_num_threads(settings.threads)
        try:
            volume = load_series(job.series.files)
        except SeriesGeometryError as error:
            raise UnsuitableInput(f"the T1C series is not one regular volume: {error}") from error
        check_static(volume, "meningioma (a static post-contrast T1)", min_slices=3, min_matrix=32)
        # The registered MNI152 brain: a head is in the field of view, and its intracranial space.
        brain = check_brain(volume, "meningioma")
        n4 = N4Settings(shrink_factor=settings.n4_shrink_factor)
        # Computed in the array orientation of the training data (axial, columns to the left, rows
        # to the back) whatever the plane and patient position; masks go back to the series' grid.
        canonical = reorient(volume, AXIAL)
        image = canonical.to_sitk()
        seg_mask = _roi_from_seg(job, volume)
        automatic = seg_mask is None
        corrected = None
        if seg_mask is not None:
            mask_array = seg_mask
        else:
            if not settings.auto_segment:
                raise UnsuitableInput("no tumour SEG in the study and automatic segmentation is off")
            corrected, _ = n4_bias_correction(image, n4)
            intracranial = canonical.to_sitk(array=canonical.forward(brain.mask.astype(np.uint8)))
            try:
                auto = segment_enhancing_mass(corrected, AutoSegmentationSettings(), intracranial)
            except SegmentationError as error:
                raise UnsuitableInput(str(error)) from error
            mask_array = canonical.back(sitk.GetArrayFromImage(auto).astype(bool))
        mask = canonical.to_sitk(array=canonical.forward(mask_array.astype(np.uint8)))
        model, network, model_note = _load_model(settings)
        try:
            features = compute_case_features(
                corrected if corrected is not None else image,
                mask,
                _header(volume, job),
                settings=RadiomicsSettings.from_file(),
                network=network,
                clinical_thresholds=None if model is None else model.clinical_thresholds,
                n4=n4,
                bias_corrected=corrected is not None,
            )
        except FeatureExtractionError as error:
            raise UnsuitableInput(f"features cannot be computed on this ROI: {error}") from error
        prediction = predict_grade(model, features) if model is not None and network is not None else None
        findings = _findings(features, prediction, model, model_note, automatic, self.version)
        datasets = _outputs(job, volume, mask_array, automatic, features, prediction, model, settings, self.version)
        return AnalysisResult(datasets=datasets, findings=findings)


def _load_model(settings: MeningiomaSettings) -> tuple[MeningiomaModel | None, DtlNetwork | None, str]:
    from analyzers.meningioma.deep_features import load_network
    from analyzers.meningioma.model import MeningiomaModel

    folder = Path(settings.model_folder) if settings.model_folder else REFERENCE_MODEL_FOLDER
    try:
        model = MeningiomaModel.load(folder)
        if model.weights_file is None:
            raise ModelError(f"{folder} holds no fine-tuned network weights")
        network = load_network(model.weights_file, model.backbone)
    except ModelError as error:
        if settings.model_folder:
            raise UnsuitableInput(f"the configured meningioma model cannot be loaded: {error}") from error
        return None, None, f"no grade probability: no model installed ({error})"
    return model, network, f"model {model.identity} from {folder.name}"


def _clinical_json(clinical: ClinicalFeatures) -> dict[str, Any]:
    return clinical.to_json()


def _findings(
    features: CaseFeatures,
    prediction: GradePrediction | None,
    model: MeningiomaModel | None,
    model_note: str,
    automatic: bool,
    version: str,
) -> dict[str, Any]:
    used: dict[str, float] = {}
    if model is not None:
        used = {name: round(features.radiomics[name], 6) for name in model.rad_score.names}
    return {
        "notice": NOT_FOR_CLINICAL_USE,
        "analyzer_version": version,
        "roi_source": "automatic segmentation" if automatic else "SEG of the study",
        "tumour_volume_ml": round(features.tumour_volume_ml, 3),
        "clinical": _clinical_json(features.clinical),
        "radiomics_feature_count": len(features.radiomics),
        "rad_score_features": used,
        "grade": None if prediction is None else prediction.to_json(),
        "model": model_note,
    }


def _measurements(
    features: CaseFeatures, prediction: GradePrediction | None, model: MeningiomaModel | None
) -> list[out.MeasuredValue]:
    values = [out.MeasuredValue(TEMPLATE.quantity("volume"), features.tumour_volume_ml * 1000.0)]
    if prediction is not None:
        # The SR's probability is that of the stated impression (the predicted class).
        p_high = prediction.probability_high_grade
        probability = p_high if prediction.high_grade else 1.0 - p_high
        values += [
            out.MeasuredValue(TEMPLATE.quantity("rad_score"), prediction.rad_score),
            out.MeasuredValue(DTL_SCORE, prediction.dtl_score),
            out.MeasuredValue(TEMPLATE.quantity("probability"), 100.0 * probability),
        ]
    if model is not None:
        # The radiomic features the rad-score uses, with this case's values.
        values += [
            out.MeasuredValue(feature_quantity(name), features.radiomics[name]) for name in model.rad_score.names
        ]
    return values


def _evaluations(clinical: ClinicalFeatures) -> list[tuple[Any, Any]]:
    return [
        (TUMOUR_SHAPE, IRREGULAR if clinical.irregular_shape else REGULAR),
        (INDISTINCT_MARGIN, c.PRESENT if clinical.indistinct_margin else c.ABSENT),
        (PERITUMORAL_EDEMA, c.PRESENT if clinical.peritumoral_edema else c.ABSENT),
    ]


def _outputs(
    job: AnalysisInput,
    volume: Volume,
    mask: np.ndarray,
    automatic: bool,
    features: CaseFeatures,
    prediction: GradePrediction | None,
    model: MeningiomaModel | None,
    settings: MeningiomaSettings,
    version: str,
) -> list[Dataset]:
    algorithm = out.Algorithm(name="meningioma", version=version)
    datasets: list[Dataset] = []
    segmentation = None
    if automatic:
        segmentation = out.build_segmentation(
            volume,
            [out.Segment(TEMPLATE.segment_classes["tumour"], mask, tracking_id="meningioma 1")],
            algorithm,
            out.OutputSeries.for_job(
                job.job_id, "seg", series_number=settings.series_number + 1,
                series_description=f"{TEMPLATE.series_description} SEG",
            ),
        )
        datasets.append(segmentation)
    impression = None
    if prediction is not None:
        impression = TEMPLATE.diagnosis("grade2_3" if prediction.high_grade else "grade1")
    lesion = out.LesionFinding(
        tracking_id="meningioma 1",
        region=out.LesionRegion.from_mask(mask),
        measurements=_measurements(features, prediction, model),
        impression=impression,
        evaluations=_evaluations(features.clinical),
        segment_number=1 if segmentation is not None else None,
    )
    texts = [(c.COMMENT, "ROI: automatic segmentation" if automatic else "ROI: SEG of the study")]
    if model is not None and prediction is not None:
        texts.append((c.COMMENT, f"Grade model: {model.identity}"[:1024]))
        texts.append(
            (c.COMMENT, f"Probability of WHO grade 2/3: {100 * prediction.probability_high_grade:.1f} %")
        )
    else:
        texts.append((c.COMMENT, "No grade model installed: no probability reported"))
    report = out.build_measurement_report(
        volume,
        TEMPLATE,
        [lesion],
        algorithm,
        out.OutputSeries.for_job(job.job_id, "sr", series_number=settings.series_number),
        segmentation=segmentation,
        texts=texts,
    )
    datasets.append(report)
    return datasets
