"""The ``dce`` analyzer: DCE pharmacokinetic maps and the prior-informed reading of
recurrence vs radiation necrosis (issue "Analyzer dce"; method of
``papers/dce-pretreatment-perfusion-recurrence-vs-necrosis``).

Inputs: the dynamic SPGR series; optionally the variable-flip-angle series of the same
study (role ``vfa``: one series per flip angle, or one series holding all of them) and
a SEG of the enhancing lesion(s) (role ``roi``). Priors: earlier ``dce`` findings of the
patient; the earliest earlier study is taken as the pre-treatment one (setting).

Outputs: Parametric Maps of Ktrans, ve, vp, kep and (with VFA) T10; a binary SEG of the
lesions and their reference regions; a TID 1500 SR with, per lesion, rKtrans, rVP,
hyperperfusion, the matched pre-treatment values, the reading of the study's rule, the
probability of recurrence and the model's identity; the AIF's source, voxels and curve.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from pydicom import Dataset

from analyzers._shared import outputs as out
from analyzers._shared.volume import (
    SegmentationError,
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
    PriorFinding,
    UnsuitableInput,
)
from analyzers.dce.errors import DceInputError, RecurrenceModelError
from analyzers.dce.model import RecurrenceModel
from analyzers.dce.pipeline import Acquisition, DceMaps, PipelineSettings, compute_maps
from analyzers.dce.readout import (
    LesionRatios,
    PriorLesion,
    Reading,
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
from analyzers.dce.t1 import default_t10, fit_vfa_nonlinear
from sr_templates import codes as c
from sr_templates.dce import TEMPLATE

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


def _t10_from_vfa(dynamic: Volume, series: Sequence[Any]) -> tuple[np.ndarray, list[float]]:
    """Nonlinear VFA T1 (s) on the dynamic's grid, from one or more VFA series."""
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
    stack = np.stack(images, axis=-1).reshape(-1, len(angles))
    fit = fit_vfa_nonlinear(stack, angles, tr / 1000.0)
    return fit.t1.reshape(dynamic.shape3d), angles


class DceAnalyzer:
    """DCE-MRI pharmacokinetics and the prior-informed recurrence reading."""

    name: ClassVar[str] = "dce"
    version: ClassVar[str] = "1.0.0"
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
        if not dynamic.is_dynamic or dynamic.times is None:
            raise UnsuitableInput("the series has no time axis; the dce analyzer needs the "
                                  "dynamic T1-weighted series (with frame timing)")
        acq = _acquisition(dynamic, settings)
        vfa_series = list(job.related.get("vfa", ()))
        t10_map: np.ndarray | None = None
        vfa_angles: list[float] = []
        if vfa_series:
            t10_map, vfa_angles = _t10_from_vfa(dynamic, vfa_series)
        pipe = PipelineSettings(model=settings.model, aif=settings.aif,
                                hematocrit=settings.hematocrit, t10_s=settings.t10_s,
                                r1_per_mm_s=settings.r1_per_mm_s, agent=settings.agent)
        try:
            maps = compute_maps(dynamic.data, dynamic.times, acq, t10_map=t10_map, settings=pipe)
        except DceInputError as exc:
            raise UnsuitableInput(str(exc)) from exc

        lesions, lesion_source = self._lesions(job, dynamic, maps, settings)
        model, model_note = _load_model(settings)
        priors, prior_note = _prior_lesions(job.priors, dynamic, settings)
        readouts = [self._readout(i, mask, dynamic, maps, lesions, priors, model, acq, t10_map,
                                  settings) for i, mask in enumerate(lesions, start=1)]
        findings = _findings(dynamic, maps, readouts, lesion_source, model, model_note,
                             prior_note, vfa_angles, settings)
        datasets = _outputs(job, dynamic, maps, readouts, findings, t10_map is not None,
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
        ratios = lesion_ratios(maps.ktrans, maps.vp, lesion, reference)
        zz, yy, xx = np.nonzero(lesion)
        centroid = dynamic.index_to_patient(np.array([xx.mean(), yy.mean(), zz.mean()]))
        entry: dict[str, Any] = {
            "lesion_id": f"lesion {index}", "mask": lesion, "reference_mask": reference,
            "ratios": ratios, "centroid_mm": [round(float(v), 2) for v in centroid],
            "volume_ml": float(lesion.sum() * np.prod(dynamic.spacing) / 1000.0),
        }
        if ratios.n_reference == 0 or not (np.isfinite(ratios.r_ktrans)
                                           or np.isfinite(ratios.r_vp)):
            entry.update(hyperperfused=None, reading=None, probability=None, prior=None,
                         note="no usable normal-tissue reference; ratios undefined")
            return entry
        hyper = is_hyperperfused(ratios.r_ktrans, ratios.r_vp, settings.hyperperfusion_ratio)
        prior = match_prior_lesion(centroid, priors,
                                   max_distance_mm=settings.prior_match_distance_mm)
        reading = prior_informed_reading(hyper, prior)
        probability = None
        if model is not None and np.isfinite(ratios.r_ktrans) and np.isfinite(ratios.r_vp):
            flag = np.nan if prior is None else float(prior.hyperperfused)
            probability = float(model.predict_proba(ratios.r_ktrans, ratios.r_vp, flag)[0])
        entry.update(hyperperfused=hyper, reading=reading, probability=probability, prior=prior,
                     note="")
        return entry


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


def _findings(dynamic: Volume, maps: DceMaps, readouts: list[dict[str, Any]],
              lesion_source: str, model: RecurrenceModel | None, model_note: str,
              prior_note: str, vfa_angles: list[float], settings: DceSettings) -> dict[str, Any]:
    def num(value: float | None) -> float | None:
        return None if value is None or not np.isfinite(value) else round(float(value), 5)

    lesions = []
    for entry in readouts:
        ratios: LesionRatios = entry["ratios"]
        prior: PriorLesion | None = entry["prior"]
        reading: Reading | None = entry["reading"]
        lesions.append({
            "lesion_id": entry["lesion_id"], "centroid_mm": entry["centroid_mm"],
            "volume_ml": round(entry["volume_ml"], 3), "r_ktrans": num(ratios.r_ktrans),
            "r_vp": num(ratios.r_vp), "lesion_ktrans_per_min": num(ratios.lesion_ktrans),
            "lesion_vp": num(ratios.lesion_vp), "reference_ktrans_per_min":
                num(ratios.reference_ktrans), "reference_vp": num(ratios.reference_vp),
            "n_lesion_voxels": ratios.n_lesion, "n_reference_voxels": ratios.n_reference,
            "hyperperfused": entry["hyperperfused"],
            "reading": None if reading is None else reading.name.lower(),
            "reading_text": None if reading is None else reading.value,
            "unreliable_marker_of_recurrence": reading is Reading.UNRELIABLE,
            "probability_recurrence": num(entry["probability"]),
            "prior": None if prior is None else {
                "study_date": prior.study_date, "study_instance_uid": prior.study_instance_uid,
                "job_id": prior.job_id, "lesion_id": prior.lesion_id,
                "r_ktrans": num(prior.r_ktrans), "r_vp": num(prior.r_vp),
                "hyperperfused": prior.hyperperfused},
            "note": entry["note"],
        })
    aif = maps.aif
    return {
        "notice": NOT_FOR_CLINICAL_USE,
        "study_date": str(dynamic.headers[0].get("StudyDate", "")) or None,
        "model": maps.model, "t10_source": maps.t10_source, "vfa_flip_angles": vfa_angles,
        "r1_per_mM_per_s": maps.r1_per_mm_s, "hematocrit": settings.hematocrit,
        "baseline_frames": maps.arrival.frame, "bolus_arrival_s": round(maps.arrival.time_s, 2),
        "aif": {"source": aif.source, "reason": aif.reason, "venous_scale": aif.venous_scale,
                "voxels_zyx": maps.aif_voxels.tolist(),
                "voxels_mm": [[round(float(v), 2) for v in dynamic.index_to_patient(p[::-1])]
                              for p in maps.aif_voxels],
                "plasma_mM": [round(float(v), 4) for v in aif.plasma],
                "time_s": [round(float(v), 3) for v in np.asarray(dynamic.times)]},
        "fitted_voxels": maps.n_fitted, "failed_voxels": maps.n_failed,
        "lesion_source": lesion_source, "lesions": lesions, "prior": prior_note,
        "recurrence_model": None if model is None else {"name": model.name,
                                                        "version": model.version},
        "recurrence_model_note": model_note,
        "hyperperfusion_ratio": settings.hyperperfusion_ratio,
    }


def _outputs(job: AnalysisInput, dynamic: Volume, maps: DceMaps, readouts: list[dict[str, Any]],
             findings: dict[str, Any], have_t10: bool, settings: DceSettings,
             version: str) -> list[Dataset]:
    algorithm = out.Algorithm(name="pacsnode dce", version=version)
    number = settings.series_number
    quantities = TEMPLATE.quantities
    datasets: list[Dataset] = []
    pm_values = [("ktrans", maps.ktrans), ("vp", maps.vp)]
    if maps.model == "extended_tofts":
        pm_values += [("ve", maps.ve), ("kep", maps.kep)]
    if have_t10:
        pm_values.append(("t1", maps.t10 * 1000.0))
    for offset, (key, values) in enumerate(pm_values, start=1):
        # A failed fit is NaN (or failed_fit_value), never a zero; outside the head mask 0.
        failed = maps.failed | (maps.mask & ~np.isfinite(values))
        fill = np.nan if settings.failed_fit_value is None else settings.failed_fit_value
        written = np.where(failed, fill, np.where(maps.mask, values, 0.0))
        datasets.append(out.build_parametric_map(
            dynamic, written, quantities[key], algorithm,
            out.OutputSeries.for_job(job.job_id, f"pm-{key}", series_number=number + offset),
            fill_value=settings.failed_fit_value))
        if settings.integer_maps:
            datasets.append(out.build_parametric_map(
                dynamic, written, quantities[key], algorithm,
                out.OutputSeries.for_job(job.job_id, f"pm-{key}-int", series_number=number + 30 + offset),
                fill_value=settings.failed_fit_value, integer_scaled=True))
    segments = []
    for entry in readouts:
        segments.append(out.Segment(TEMPLATE.segment_classes["lesion"], entry["mask"],
                                    tracking_id=entry["lesion_id"]))
    for entry in readouts:
        if entry["reference_mask"].any():
            segments.append(out.Segment(TEMPLATE.segment_classes["reference"],
                                        entry["reference_mask"],
                                        tracking_id=f"reference {entry['lesion_id']}"))
    seg = None
    if segments:
        seg = out.build_segmentation(dynamic, segments, algorithm,
                                     out.OutputSeries.for_job(job.job_id, "seg",
                                                              series_number=number + 10))
        datasets.append(seg)
    groups = [_lesion_group(i, entry, findings["lesions"][i - 1])
              for i, entry in enumerate(readouts, start=1)]
    texts = _report_texts(findings, settings.failed_fit_value)
    sr_output = out.OutputSeries.for_job(job.job_id, "sr", series_number=number + 20)
    if groups:
        sr = out.build_measurement_report(dynamic, TEMPLATE, groups, algorithm, sr_output,
                                          segmentation=seg, texts=texts)
    else:
        sr = out.build_summary_report(dynamic, TEMPLATE, algorithm, sr_output,
                                      evaluations=[(c.LESION, c.ABSENT)], texts=texts)
    datasets.append(sr)
    return datasets


def _lesion_group(segment_number: int, entry: dict[str, Any],
                  summary: dict[str, Any]) -> out.LesionFinding:
    q = TEMPLATE.quantities
    ratios: LesionRatios = entry["ratios"]
    measurements = [out.MeasuredValue(q["volume"], entry["volume_ml"] * 1000.0)]
    for key, value in (("ktrans", ratios.lesion_ktrans), ("vp", ratios.lesion_vp),
                       ("rktrans", ratios.r_ktrans), ("rvp", ratios.r_vp)):
        if np.isfinite(value):
            measurements.append(out.MeasuredValue(q[key], float(value), derivation=c.MEAN))
    prior: PriorLesion | None = entry["prior"]
    if prior is not None and np.isfinite(prior.r_ktrans) and np.isfinite(ratios.r_ktrans) \
            and prior.r_ktrans > 0:
        change = 100.0 * (ratios.r_ktrans / prior.r_ktrans - 1.0)
        measurements.append(out.MeasuredValue(q["ktrans_change"], change))
    impression = None
    if entry["probability"] is not None:
        measurements.append(out.MeasuredValue(q["probability"], 100.0 * entry["probability"]))
        impression = TEMPLATE.diagnoses["recurrence"]
    evaluations = []
    if entry["hyperperfused"] is not None:
        evaluations.append((c.FINDING, c.PRESENT if entry["hyperperfused"] else c.ABSENT))
    return out.LesionFinding(tracking_id=entry["lesion_id"],
                             region=out.LesionRegion.from_mask(entry["mask"]),
                             measurements=measurements, impression=impression,
                             evaluations=evaluations, segment_number=segment_number)


def _report_texts(findings: dict[str, Any], failed_fit_value: float | None) -> list[tuple[Any, str]]:
    texts = []
    for lesion in findings["lesions"]:
        parts = [f"{lesion['lesion_id']}: rKtrans {lesion['r_ktrans']}, rVP {lesion['r_vp']}"]
        if lesion["hyperperfused"] is not None:
            parts.append("hyperperfusion " + ("yes" if lesion["hyperperfused"] else "no")
                         + f" (threshold {findings['hyperperfusion_ratio']})")
        prior = lesion["prior"]
        if prior is not None:
            parts.append(f"pre-treatment {prior['study_date']}: rKtrans {prior['r_ktrans']}, "
                         f"rVP {prior['r_vp']}, hyperperfusion "
                         + ("yes" if prior["hyperperfused"] else "no"))
        else:
            parts.append("no matched pre-treatment lesion")
        if lesion["reading_text"]:
            parts.append(lesion["reading_text"])
        if lesion["probability_recurrence"] is not None:
            parts.append(f"probability of recurrence {100 * lesion['probability_recurrence']:.0f} %")
        if lesion["note"]:
            parts.append(lesion["note"])
        texts.append((c.IMPRESSION, "; ".join(parts)[:1024]))
    model = findings["recurrence_model"]
    texts.append((c.COMMENT, "recurrence model: " + (f"{model['name']} {model['version']}"
                                                       if model else findings["recurrence_model_note"])))
    aif = findings["aif"]
    where = "; ".join(f"({x}, {y}, {z}) mm" for x, y, z in aif["voxels_mm"][:10])
    texts.append((c.COMMENT, f"AIF: {aif['reason']}" + (f"; arterial voxels at {where}" if where
                                                        else "")))
    curve = ", ".join(f"{t:.0f}s:{v:.2f}" for t, v in zip(aif["time_s"], aif["plasma_mM"],
                                                          strict=True))
    texts.append((c.COMMENT, f"AIF plasma concentration (mM): {curve}"[:1024]))
    texts.append((c.COMMENT, f"T10: {findings['t10_source']}; r1 {findings['r1_per_mM_per_s']} "
                             f"/mM/s; model {findings['model']}; fit failures: "
                             f"{findings['failed_voxels']} of {findings['fitted_voxels']} voxels "
                             f"({'NaN' if failed_fit_value is None else f'value {failed_fit_value}'} "
                             f"in the maps; 0 outside the head mask); "
                             f"lesions: {findings['lesion_source']}; {findings['prior']}"))
    return texts
