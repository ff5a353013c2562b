"""The ``meningioma`` analyzer: WHO grade (1 vs 2/3) from post-contrast T1.

Method of Li et al., "An MRI-based deep transfer learning radiomics nomogram for
predicting meningioma grade", Sci Rep 2025 (doi:10.1038/s41598-025-01665-0): N4,
1 mm resampling, IBSI-compliant radiomics (pyradiomics, bin width 25, original +
wavelet + LoG), ResNet50 features of the largest ROI slice, rad-score and
DTL-score (LASSO), nomogram with sex, shape, indistinct margin and peritumoral
edema.

Inputs: the T1C series; optionally a SEG of the tumour (role ``roi``). Most
post-contrast brain T1 series have no meningioma, so without a SEG the analyzer
first decides whether there is one (:mod:`analyzers.meningioma.detection`):
candidate enhancing masses (:mod:`analyzers.meningioma.candidates`) are scored
by the model folder's detection stage. Below its threshold the SR says "no
meningioma found" (the coded finding Meningioma: Absent, and the calibrated
probability that there is one); it reports no grade and no SEG. Above it, the
candidate becomes the ROI, written back as a SEG, and is graded. A study with a
tumour SEG (a reader's) is graded without detection.

Outputs: a TID 1500 SR with the tumour volume, the clinical signs as qualitative
evaluations, rad-score, DTL-score, the probability of high grade and the class,
the probability that the series shows a meningioma, which model and which
validation produced each probability, and "not for clinical use"; the SEG when
the ROI was made automatically. Probabilities are calibrated, limited to the
range their validation supports and printed with 2 significant digits
(:mod:`analyzers._shared.probability`). Without a model folder (site or
reference) only a study with a tumour SEG is reported (volume and clinical
signs, no grade).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import SimpleITK as sitk
from pydantic import Field
from pydicom import Dataset

from analyzers._shared import outputs as out
from analyzers._shared.modelcard import ModelCardError, load_model_card
from analyzers._shared.orientation import AXIAL, reorient
from analyzers._shared.probability import ProbabilityCalibration, ProbabilityError
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
from analyzers.meningioma.candidates import locate_candidates
from analyzers.meningioma.clinical import ClinicalFeatures
from analyzers.meningioma.detection import Detection, DetectionModel
from analyzers.meningioma.errors import FeatureExtractionError, ModelError, SegmentationError
from analyzers.meningioma.preprocessing import N4Settings
from analyzers.meningioma.radiomics_features import RadiomicsSettings
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


@dataclass(frozen=True)
class _Models:
    """What a model folder provides; any part may be missing."""

    grade: MeningiomaModel | None
    network: DtlNetwork | None
    detection: DetectionModel | None
    grade_calibration: ProbabilityCalibration | None
    note: str


class MeningiomaAnalyzer:
    """Meningioma detection, then grade nomogram, on post-contrast T1 (not for clinical use)."""

    name: ClassVar[str] = "meningioma"
    version: ClassVar[str] = "2.0.0"
    needs: ClassVar[dict[str, str]] = {"roi": "seg?"}
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type[AnalyzerSettings]] = MeningiomaSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Detection (without a tumour SEG), ROI, features, nomogram and outputs of one T1C series."""
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
        models = _load_models(settings)
        detection: Detection | None = None
        corrected = None
        if seg_mask is not None:
            mask_array = seg_mask
        else:
            if not settings.auto_segment:
                raise UnsuitableInput("no tumour SEG in the study and automatic segmentation is off")
            if models.detection is None:
                raise UnsuitableInput(
                    f"no tumour SEG in the study and no meningioma detection model ({models.note}); "
                    "send a tumour SEG or install a model trained with `pacsnode train meningioma`"
                )
            try:
                located = locate_candidates(volume, brain.mask, models.detection.candidate_settings, n4)
            except SegmentationError as error:
                raise UnsuitableInput(f"{error}; the meningioma analyzer needs a head post-contrast T1") from error
            corrected = located.corrected
            detection = models.detection.detect(located.candidates)
            if detection.candidate is None:
                return _nothing_found(job, volume, detection, models.detection, settings, self.version)
            mask_array = canonical.back(detection.candidate.mask)
        mask = canonical.to_sitk(array=canonical.forward(mask_array.astype(np.uint8)))
        try:
            features = compute_case_features(
                corrected if corrected is not None else image,
                mask,
                _header(volume, job),
                settings=RadiomicsSettings.from_file(),
                network=models.network,
                clinical_thresholds=None if models.grade is None else models.grade.clinical_thresholds,
                n4=n4,
                bias_corrected=corrected is not None,
            )
        except FeatureExtractionError as error:
            raise UnsuitableInput(f"features cannot be computed on this ROI: {error}") from error
        prediction = None
        if models.grade is not None and models.network is not None:
            prediction = predict_grade(models.grade, features)
        findings = _findings(features, prediction, models, detection, self.version)
        datasets = _outputs(job, volume, mask_array, features, prediction, models, detection, settings,
                            self.version)
        return AnalysisResult(datasets=datasets, findings=findings)


def _grade_calibration(folder: Path) -> ProbabilityCalibration | None:
    try:
        return ProbabilityCalibration.from_model_card(load_model_card(folder / "model_card.json"))
    except (OSError, ModelCardError, ProbabilityError, KeyError, ValueError):
        return None


def _load_models(settings: MeningiomaSettings) -> _Models:
    from analyzers.meningioma.deep_features import load_network
    from analyzers.meningioma.model import MeningiomaModel

    folder = Path(settings.model_folder) if settings.model_folder else REFERENCE_MODEL_FOLDER
    try:
        detection = DetectionModel.load(folder)
    except ModelError as error:
        if settings.model_folder and (folder / "detection.json").is_file():
            raise UnsuitableInput(f"the configured meningioma detection model cannot be loaded: {error}") from error
        detection = None
    try:
        model = MeningiomaModel.load(folder)
        if model.weights_file is None:
            raise ModelError(f"{folder} holds no fine-tuned network weights")
        network = load_network(model.weights_file, model.backbone)
    except ModelError as error:
        if settings.model_folder and detection is None:
            raise UnsuitableInput(f"the configured meningioma model cannot be loaded: {error}") from error
        return _Models(None, None, detection, None, f"no grade probability: no model installed ({error})")
    return _Models(model, network, detection, _grade_calibration(folder),
                   f"model {model.identity} from {folder.name}")


def _findings(
    features: CaseFeatures,
    prediction: GradePrediction | None,
    models: _Models,
    detection: Detection | None,
    version: str,
) -> dict[str, Any]:
    used: dict[str, float] = {}
    if models.grade is not None:
        used = {name: round(features.radiomics[name], 6) for name in models.grade.rad_score.names}
    return {
        "notice": NOT_FOR_CLINICAL_USE,
        "analyzer_version": version,
        "meningioma_found": True,
        "roi_source": "automatic segmentation" if detection is not None else "SEG of the study",
        "detection": None if detection is None else detection.to_json(),
        "tumour_volume_ml": round(features.tumour_volume_ml, 3),
        "clinical": features.clinical.to_json(),
        "radiomics_feature_count": len(features.radiomics),
        "rad_score_features": used,
        "grade": None if prediction is None else prediction.to_json(),
        "model": models.note,
    }


def _detection_measurement(detection: Detection, model: DetectionModel) -> list[out.MeasuredValue]:
    """The probability that the series shows a meningioma, when its calibration is known."""
    if model.calibration is None:
        return []
    return [out.MeasuredValue(TEMPLATE.quantity("probability"), model.calibration.percent(detection.probability),
                              method=TEMPLATE.methods["detection"])]


def _detection_texts(detection: Detection, model: DetectionModel) -> list[tuple[Any, str]]:
    count = len(detection.candidates)
    calibration = model.calibration
    if calibration is None:
        return [(c.COMMENT, f"Detection: {count} candidate enhancing mass(es); the detection model's "
                            "calibration was not measured, so no probability is reported.")]
    summary = (f"Detection: {count} candidate enhancing mass(es); probability of a meningioma "
               f"{calibration.format(detection.probability)} (called present from "
               f"{calibration.format(model.threshold)}).")
    return [(c.COMMENT, summary), calibration.sr_text()]


def _nothing_found(
    job: AnalysisInput,
    volume: Volume,
    detection: Detection,
    model: DetectionModel,
    settings: MeningiomaSettings,
    version: str,
) -> AnalysisResult:
    """The report of a series without meningioma: a coded absent finding, no grade, no SEG."""
    parameters = () if model.calibration is None else model.calibration.algorithm_parameters()
    algorithm = out.Algorithm(name="meningioma", version=version, parameters=parameters)
    texts = [(c.IMPRESSION, "No meningioma found."), *_detection_texts(detection, model)]
    report = out.build_measurement_report(
        volume,
        TEMPLATE,
        [],
        algorithm,
        out.OutputSeries.for_job(job.job_id, "sr", series_number=settings.series_number),
        study_measurements=_detection_measurement(detection, model),
        texts=texts,
        evaluations=[(c.MENINGIOMA, c.ABSENT)],
        study_evaluations=[(c.MENINGIOMA, c.ABSENT)],
    )
    findings = {
        "notice": NOT_FOR_CLINICAL_USE,
        "analyzer_version": version,
        "meningioma_found": False,
        "impression": "no meningioma found",
        "detection": detection.to_json(),
        "grade": None,
        "tumour_volume_ml": None,
        "model": model.provenance.get("name", "meningioma detection"),
    }
    return AnalysisResult(datasets=[report], findings=findings)


def _measurements(
    features: CaseFeatures, prediction: GradePrediction | None, models: _Models
) -> list[out.MeasuredValue]:
    values = [out.MeasuredValue(TEMPLATE.quantity("volume"), features.tumour_volume_ml * 1000.0)]
    if prediction is not None:
        values += [
            out.MeasuredValue(TEMPLATE.quantity("rad_score"), prediction.rad_score),
            out.MeasuredValue(DTL_SCORE, prediction.dtl_score),
        ]
        if models.grade_calibration is not None:
            # The SR's probability is that of the stated impression (the predicted class).
            p_high = prediction.probability_high_grade
            p_stated = p_high if prediction.high_grade else 1.0 - p_high
            values.append(out.MeasuredValue(TEMPLATE.quantity("probability"),
                                            models.grade_calibration.percent(p_stated)))
    if models.grade is not None:
        # The radiomic features the rad-score uses, with this case's values.
        values += [
            out.MeasuredValue(feature_quantity(name), features.radiomics[name])
            for name in models.grade.rad_score.names
        ]
    return values


def _evaluations(clinical: ClinicalFeatures) -> list[tuple[Any, Any]]:
    return [
        (TUMOUR_SHAPE, IRREGULAR if clinical.irregular_shape else REGULAR),
        (INDISTINCT_MARGIN, c.PRESENT if clinical.indistinct_margin else c.ABSENT),
        (PERITUMORAL_EDEMA, c.PRESENT if clinical.peritumoral_edema else c.ABSENT),
    ]


def _grade_texts(prediction: GradePrediction | None, models: _Models) -> list[tuple[Any, str]]:
    if models.grade is None or prediction is None:
        return [(c.COMMENT, "No grade model installed: no grade reported")]
    texts = [(c.COMMENT, f"Grade model: {models.grade.identity}"[:1024])]
    if models.grade_calibration is None:
        texts.append((c.COMMENT, "Grade probability not reported: the model card has no calibration record; "
                                 "retrain the model with the current `pacsnode train meningioma`"))
    else:
        calibration = models.grade_calibration
        texts.append((c.COMMENT, "Probability of WHO grade 2/3: "
                                 f"{calibration.format(prediction.probability_high_grade)}"))
        texts.append(calibration.sr_text())
    return texts


def _outputs(
    job: AnalysisInput,
    volume: Volume,
    mask: np.ndarray,
    features: CaseFeatures,
    prediction: GradePrediction | None,
    models: _Models,
    detection: Detection | None,
    settings: MeningiomaSettings,
    version: str,
) -> list[Dataset]:
    parameters: tuple[str, ...] = ()
    if models.grade_calibration is not None:
        parameters += models.grade_calibration.algorithm_parameters()
    if models.detection is not None and detection is not None and models.detection.calibration is not None:
        parameters += models.detection.calibration.algorithm_parameters()
    algorithm = out.Algorithm(name="meningioma", version=version, parameters=parameters)
    datasets: list[Dataset] = []
    segmentation = None
    if detection is not None:
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
        measurements=_measurements(features, prediction, models),
        impression=impression,
        evaluations=_evaluations(features.clinical),
        segment_number=1 if segmentation is not None else None,
    )
    texts = [(c.COMMENT, "ROI: automatic segmentation" if detection is not None else "ROI: SEG of the study")]
    study: list[out.MeasuredValue] = []
    if detection is not None and models.detection is not None:
        texts += _detection_texts(detection, models.detection)
        study = _detection_measurement(detection, models.detection)
    texts += _grade_texts(prediction, models)
    report = out.build_measurement_report(
        volume,
        TEMPLATE,
        [lesion],
        algorithm,
        out.OutputSeries.for_job(job.job_id, "sr", series_number=settings.series_number),
        segmentation=segmentation,
        study_measurements=study,
        texts=texts,
        evaluations=[(c.MENINGIOMA, c.PRESENT)],
    )
    datasets.append(report)
    return datasets
