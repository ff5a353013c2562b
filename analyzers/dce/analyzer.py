"""The ``dce`` analyzer: DCE pharmacokinetic maps and the prior-informed reading of
recurrence vs radiation necrosis (issue "Analyzer dce"; method of
``papers/dce-pretreatment-perfusion-recurrence-vs-necrosis``).

Inputs: the dynamic SPGR series; optionally the variable-flip-angle series of the same
study (role ``vfa``: one series per flip angle, or one series holding all of them) and
a SEG of the enhancing lesion(s) (role ``roi``). Priors: earlier ``dce`` findings of the
patient; the earliest earlier study is taken as the pre-treatment one (setting).

Outputs: Parametric Maps of Ktrans, ve, vp, kep and (with VFA) T10; a binary SEG of the
lesions and their reference regions; a TID 1500 SR with, per lesion, rKtrans, rVP (or why
a ratio is not computable), hyperperfusion, the matched pre-treatment values, the reading
of the study's rule, the probability of recurrence with the model and validation that
produced it; the T10s and the AIF used, the AIF's quality and curve (:mod:`analyzers.dce.report`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from pydicom import Dataset

from analyzers._shared.probability import ProbabilityError
from analyzers._shared.sanity import check_acquisition, check_dynamic
from analyzers._shared.volume import (
    SegmentationError,
    SeriesGeometryError,
    Volume,
    load_segmentation,
    load_series,
)
from analyzers.contract import (
    AnalysisInput,
    AnalysisResult,
    AnalyzerSettings,
    PriorFinding,
    UnsuitableInput,
)
from analyzers.dce.arterial import VfaSignals
from analyzers.dce.errors import DceInputError, RecurrenceModelError
from analyzers.dce.model import RecurrenceModel
from analyzers.dce.pipeline import Acquisition, DceMaps, PipelineSettings, compute_maps
from analyzers.dce.readout import (
    PriorLesion,
    is_hyperperfused,
    lesion_ratios,
    match_prior_lesion,
    prior_informed_reading,
)
from analyzers.dce.regions import (
    LesionSegmentationSettings,
    contralateral_reference,
    enhancing_voxels,
    segment_enhancing_lesions,
)
from analyzers.dce.report import build_findings, build_outputs
from analyzers.dce.t1 import default_t10, fit_vfa_nonlinear

__all__ = ["REFERENCE_MODEL_FOLDER", "DceAnalyzer", "DceSettings"]

#: The reference recurrence model shipped with the analyzer.
REFERENCE_MODEL_FOLDER = Path(__file__).resolve().parent / "reference_model"


class DceSettings(AnalyzerSettings):
    """Settings of the ``dce`` route (``config/routes.toml``)."""

    model: Literal["extended_tofts", "patlak"] = "extended_tofts"
    """Tracer-kinetic model."""
    aif: Literal["auto", "parker"] = "auto"
    """``auto``: image AIF with the Parker population AIF as fallback; ``parker``: Parker."""
    hematocrit: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.45
    leakage_test_alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = 0.05
    """Level of the F-test that keeps the plasma-only model (Ktrans 0) where extended Tofts
    does not fit significantly better (Ewing & Bagher-Ebadian 2013); None = no test."""
    ratio_floor_ktrans_per_min: Annotated[float, Field(ge=0.0)] = 0.005
    """Reference Ktrans below which rKtrans is not computable (the OSIPI absolute Ktrans
    tolerance: a smaller reference cannot be told from zero)."""
    ratio_floor_vp: Annotated[float, Field(ge=0.0)] = 0.005
    """Reference vp below which rVP is not computable (see docs/analyzers/dce.md)."""
    t10_s: Annotated[float, Field(gt=0.0)] | None = None
    """Fixed T10 without a VFA series; None = white matter at the field strength
    (Stanisz et al. MRM 2005: 0.884 s at 1.5 T, 1.084 s at 3 T)."""
    r1_per_mm_s: Annotated[float, Field(gt=0.0)] | None = None
    """Relaxivity; None = plasma r1 of ``agent`` at the field strength (Rohrer et al. 2005)."""
    agent: str = "gadobutrol"
    field_strength_t: Annotated[float, Field(gt=0.0)] | None = None
    """Used only when the series lacks MagneticFieldStrength."""
    hyperperfusion_ratio: Annotated[float, Field(gt=0.0)] = 1.5
    prior_match_distance_mm: Annotated[float, Field(gt=0.0)] = 20.0
    prior_selection: Literal["earliest", "latest"] = "earliest"
    """Which earlier ``dce`` study is the pre-treatment one."""
    model_folder: str | None = None
    """Folder of a site-trained recurrence model; None = the reference model."""
    lesion_late_threshold_mm: Annotated[float, Field(gt=0.0)] = 0.05
    lesion_min_volume_ml: Annotated[float, Field(ge=0.0)] = 0.1
    series_number: Annotated[int, Field(ge=1, le=99000)] = 9500
    integer_maps: bool = True
    """Also write each map as an integer-scaled Parametric Map (16-bit, slope and intercept in its
    Real World Value Mapping) for viewers and PACS that show no float images."""
    reference_image: bool = True
    """Write the pre-bolus mean as a derived 3D MR series and put the maps, SEG and SR on it,
    for viewers that overlay nothing on a dynamic series (OHIF 3); false: they reference the
    dynamic series' first time point (docs/viewer.md)."""
    failed_fit_value: float | None = None
    """Value of a failed voxel fit in the Parametric Maps; None = NaN (IEEE 754 float pixel
    data: no value). A number (e.g. -1, impossible for these quantities) only for a viewer
    that cannot display NaN. Voxels outside the head mask, where nothing is fitted, are 0."""


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _acquisition(vol: Volume, settings: DceSettings) -> Acquisition:
    header = vol.headers[0]
    flip, tr_ms = _float(header, "FlipAngle"), _float(header, "RepetitionTime")
    field = _float(header, "MagneticFieldStrength") or settings.field_strength_t
    if flip is None or tr_ms is None:
        raise UnsuitableInput("the dynamic series lacks FlipAngle or RepetitionTime; both are "
                              "needed to convert SPGR signal to concentration")
    if field is None:
        raise UnsuitableInput("MagneticFieldStrength is missing; set field_strength_t in the route")
    return Acquisition(flip_deg=flip, tr_s=tr_ms / 1000.0, field_t=field)


def _t10_from_vfa(dynamic: Volume, series: Sequence[Any]) -> tuple[np.ndarray, list[float], VfaSignals]:
    """Nonlinear VFA T1 (s) on the dynamic's grid, from one or more VFA series, and the signals."""
    images, angles, tr = [], [], None
    for item in series:
        vol = load_series(item.files)
        if vol.is_dynamic:
            headers = vol.time_point_headers
            frames = [vol.data[i] for i in range(vol.data.shape[0])]
        else:
            headers, frames = (vol.headers[0],), [vol.data]
        for header, frame in zip(headers, frames, strict=True):
            fa = _float(header, "FlipAngle")
            tr_ms = _float(header, "RepetitionTime")
            if fa is None or tr_ms is None:
                raise UnsuitableInput("a VFA image lacks FlipAngle or RepetitionTime")
            if tr is not None and abs(tr_ms - tr) > 1e-3:
                raise UnsuitableInput("the VFA series differ in RepetitionTime")
            tr = tr_ms
            images.append(dynamic.resample_from(frame, vol))
            angles.append(fa)
    if len(set(angles)) < 2 or tr is None:
        raise UnsuitableInput(f"VFA T1 needs two or more flip angles, got {sorted(set(angles))}")
    grid = np.stack(images, axis=-1).astype(np.float64)
    fit = fit_vfa_nonlinear(grid.reshape(-1, len(angles)), angles, tr / 1000.0)
    return (fit.t1.reshape(dynamic.shape3d), angles,
            VfaSignals(signals=grid, flip_deg=tuple(angles), tr_s=tr / 1000.0))


class DceAnalyzer:
    """DCE-MRI pharmacokinetics and the prior-informed recurrence reading."""

    name: ClassVar[str] = "dce"
    version: ClassVar[str] = "2.0.0"
    needs: ClassVar[dict[str, str]] = {"vfa": "vfa?", "roi": "seg?"}
    wants_priors: ClassVar[bool] = True
    settings_model: ClassVar[type[AnalyzerSettings]] = DceSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Maps, lesions, ratios, the rule's reading and the outputs of one dynamic series."""
        settings = job.settings if isinstance(job.settings, DceSettings) else DceSettings()
        try:
            dynamic = load_series(job.series.files)
        except SeriesGeometryError as exc:
            raise UnsuitableInput(f"the dynamic series is not one regular volume: {exc}") from exc
        # The dynamic T1-weighted series with frame timing (a time axis).
        check_dynamic(dynamic, "dce", min_time_points=10)
        check_acquisition(dynamic, "dce (T1-weighted spoiled gradient echo)", max_repetition_ms=50.0,
                          hint=": a T2*-weighted EPI perfusion (DSC) belongs to the dsc analyzer")
        acq = _acquisition(dynamic, settings)
        vfa_series = list(job.related.get("vfa", ()))
        t10_map: np.ndarray | None = None
        vfa: VfaSignals | None = None
        vfa_angles: list[float] = []
        if vfa_series:
            t10_map, vfa_angles, vfa = _t10_from_vfa(dynamic, vfa_series)
        pipe = PipelineSettings(model=settings.model, aif=settings.aif,
                                hematocrit=settings.hematocrit, t10_s=settings.t10_s,
                                r1_per_mm_s=settings.r1_per_mm_s, agent=settings.agent,
                                leakage_test_alpha=settings.leakage_test_alpha)
        try:
            maps = compute_maps(dynamic.data, dynamic.times, acq, t10_map=t10_map, vfa=vfa,
                                settings=pipe)
        except DceInputError as exc:
            raise UnsuitableInput(str(exc)) from exc

        lesions, lesion_source = self._lesions(job, dynamic, maps, settings)
        model, model_note = _load_model(settings)
        priors, prior_note = _prior_lesions(job.priors, dynamic, settings)
        readouts = [self._readout(i, mask, dynamic, maps, lesions, priors, model, acq, t10_map,
                                  settings) for i, mask in enumerate(lesions, start=1)]
        findings = build_findings(dynamic, maps, readouts, lesion_source=lesion_source, model=model,
                                  model_note=model_note, prior_note=prior_note,
                                  vfa_angles=vfa_angles, settings=settings)
        datasets = build_outputs(job, dynamic, maps, readouts, findings, t10_map is not None, model,
                                 settings, self.version)
        return AnalysisResult(datasets=datasets, findings=findings)

    # ---------------------------------------------------------------- lesions
    @staticmethod
    def _lesions(job: AnalysisInput, dynamic: Volume, maps: DceMaps,
                 settings: DceSettings) -> tuple[list[np.ndarray], str]:
        seg_series = list(job.related.get("roi", ()))
        if seg_series:
            masks: list[np.ndarray] = []
            for item in seg_series:
                try:
                    masks.extend(m for m in load_segmentation(list(item.files), dynamic).values()
                                 if m.any())
                except SegmentationError as exc:
                    raise UnsuitableInput(f"the lesion SEG cannot be used: {exc}") from exc
            if masks:
                return masks, "SEG of the study"
        voxel_ml = float(np.prod(dynamic.spacing)) / 1000.0
        cfg = _segmentation_settings(settings)
        return (segment_enhancing_lesions(maps.conc, maps.mask, voxel_ml, cfg),
                "automatic (late-enhancement threshold)")

    def _readout(self, index: int, lesion: np.ndarray, dynamic: Volume, maps: DceMaps,
                 lesions: list[np.ndarray], priors: list[PriorLesion],
                 model: RecurrenceModel | None, acq: Acquisition, t10_map: np.ndarray | None,
                 settings: DceSettings) -> dict[str, Any]:
        exclude = enhancing_voxels(maps.conc, maps.mask, _segmentation_settings(settings),
                                   persistent_only=False)
        for other in lesions:
            exclude |= other
        reference = contralateral_reference(lesion, maps.mask, exclude, maps.vp, dynamic.affine,
                                            t10=t10_map, wm_t10_s=default_t10(acq.field_t))
        ratios = lesion_ratios(maps.ktrans, maps.vp, lesion, reference,
                               floor_ktrans=settings.ratio_floor_ktrans_per_min,
                               floor_vp=settings.ratio_floor_vp)
        zz, yy, xx = np.nonzero(lesion)
        centroid = dynamic.index_to_patient(np.array([xx.mean(), yy.mean(), zz.mean()]))
        entry: dict[str, Any] = {
            "lesion_id": f"lesion {index}", "mask": lesion, "reference_mask": reference,
            "ratios": ratios, "centroid_mm": [round(float(v), 2) for v in centroid],
            "volume_ml": float(lesion.sum() * np.prod(dynamic.spacing) / 1000.0),
            "probability": None, "probability_raw": None, "probability_text": "",
        }
        if ratios.n_reference == 0 or not (np.isfinite(ratios.r_ktrans)
                                           or np.isfinite(ratios.r_vp)):
            why = "no usable normal-tissue reference" if ratios.n_reference == 0 else "no ratio computable"
            entry.update(hyperperfused=None, reading=None, prior=None, note=f"{why}; no reading",
                         probability_note="probability not reported: no ratio computable")
            return entry
        hyper = is_hyperperfused(ratios.r_ktrans, ratios.r_vp, settings.hyperperfusion_ratio)
        prior = match_prior_lesion(centroid, priors,
                                   max_distance_mm=settings.prior_match_distance_mm)
        reading = None if hyper is None else prior_informed_reading(hyper, prior)
        entry.update(hyperperfused=hyper, reading=reading, prior=prior, note="")
        entry.update(_probability(model, ratios.r_ktrans, ratios.r_vp, prior,
                                  ratios.r_ktrans_note or ratios.r_vp_note))
        return entry


def _probability(model: RecurrenceModel | None, r_ktrans: float, r_vp: float,
                 prior: PriorLesion | None, ratio_note: str) -> dict[str, Any]:
    """The printed probability (clipped to the validated range, 2 digits) or why there is none."""
    none = {"probability": None, "probability_raw": None, "probability_text": ""}
    if model is None:
        return {**none, "probability_note": "probability not reported: no recurrence model"}
    if not (np.isfinite(r_ktrans) and np.isfinite(r_vp)):
        return {**none, "probability_note": f"probability not reported ({ratio_note})"}
    if model.calibration is None:
        return {**none, "probability_note": (f"probability not reported: model {model.name} "
                                             f"{model.version} has no held-out calibration record")}
    flag = np.nan if prior is None else float(prior.hyperperfused)
    raw = float(model.predict_proba(r_ktrans, r_vp, flag)[0])
    try:
        reported = model.calibration.reported(raw)
    except ProbabilityError as exc:
        return {**none, "probability_note": f"probability not reported: {exc}"}
    return {"probability": reported, "probability_raw": raw,
            "probability_text": model.calibration.format(raw), "probability_note": ""}


def _segmentation_settings(settings: DceSettings) -> LesionSegmentationSettings:
    return LesionSegmentationSettings(late_threshold_mM=settings.lesion_late_threshold_mm,
                                      min_volume_ml=settings.lesion_min_volume_ml)


def _load_model(settings: DceSettings) -> tuple[RecurrenceModel | None, str]:
    folder = Path(settings.model_folder) if settings.model_folder else REFERENCE_MODEL_FOLDER
    try:
        return RecurrenceModel.load(folder), f"model folder {folder.name}"
    except RecurrenceModelError as exc:
        if settings.model_folder:
            raise UnsuitableInput(f"the configured recurrence model cannot be loaded: {exc}") from exc
        return None, f"no probability: reference model unavailable ({exc})"


def _study_date(text: str | None) -> _dt.date | None:
    try:
        return _dt.datetime.strptime(str(text), "%Y%m%d").date() if text else None
    except ValueError:
        return None


def _prior_lesions(priors: Sequence[PriorFinding], dynamic: Volume,
                   settings: DceSettings) -> tuple[list[PriorLesion], str]:
    """Lesions of the pre-treatment study among the priors (earlier studies only)."""
    current = dynamic.study_instance_uid
    today = _study_date(dynamic.headers[0].get("StudyDate"))
    usable = []
    for prior in priors:
        date = _study_date(prior.study_date)
        if prior.study_instance_uid == current or not prior.findings.get("lesions"):
            continue
        if today is not None and date is not None and date >= today:
            continue
        usable.append((date or _dt.date.min, prior))
    if not usable:
        return [], "no earlier dce study of this patient"
    usable.sort(key=lambda item: item[0])
    chosen = usable[0][1] if settings.prior_selection == "earliest" else usable[-1][1]
    lesions = []
    for item in chosen.findings["lesions"]:
        if item.get("hyperperfused") is None:
            continue
        try:
            lesions.append(PriorLesion.from_findings(
                item, study_date=chosen.study_date,
                study_instance_uid=chosen.study_instance_uid, job_id=chosen.job_id))
        except DceInputError:
            continue
    return lesions, (f"pre-treatment study {chosen.study_date or 'of unknown date'} "
                     f"({chosen.study_instance_uid})")
