"""What the ``dce`` analyzer reports: the findings record and the DICOM outputs.

The SR states, besides the per-lesion values: which T10 (tissue and blood) and which AIF
were used and why, the AIF's quality, the AIF curve itself, how many voxels showed no
detectable leakage, fit failures, why a ratio is not computable, and which model and
validation produced a printed probability (:mod:`analyzers._shared.probability`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset

from analyzers._shared import outputs as out
from analyzers._shared.reference_image import build_reference_image
from analyzers._shared.volume import Volume
from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput
from analyzers.dce.model import RecurrenceModel
from analyzers.dce.pipeline import DceMaps
from analyzers.dce.readout import LesionRatios, PriorLesion, Reading
from sr_templates import codes as c
from sr_templates.dce import TEMPLATE

if TYPE_CHECKING:
    from analyzers.dce.analyzer import DceSettings

__all__ = ["build_findings", "build_outputs", "report_texts"]

_TEXT_LIMIT = 1024  # UT of an SR TEXT content item may be longer; viewers show about this much


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 5)


def _lesion_record(entry: dict[str, Any]) -> dict[str, Any]:
    ratios: LesionRatios = entry["ratios"]
    prior: PriorLesion | None = entry["prior"]
    reading: Reading | None = entry["reading"]
    return {
        "lesion_id": entry["lesion_id"], "centroid_mm": entry["centroid_mm"],
        "volume_ml": round(entry["volume_ml"], 3), "r_ktrans": _num(ratios.r_ktrans),
        "r_vp": _num(ratios.r_vp), "r_ktrans_note": ratios.r_ktrans_note, "r_vp_note": ratios.r_vp_note,
        "lesion_ktrans_per_min": _num(ratios.lesion_ktrans), "lesion_vp": _num(ratios.lesion_vp),
        "reference_ktrans_per_min": _num(ratios.reference_ktrans),
        "reference_vp": _num(ratios.reference_vp),
        "n_lesion_voxels": ratios.n_lesion, "n_reference_voxels": ratios.n_reference,
        "hyperperfused": entry["hyperperfused"],
        "reading": None if reading is None else reading.name.lower(),
        "reading_text": None if reading is None else reading.value,
        "unreliable_marker_of_recurrence": reading is Reading.UNRELIABLE,
        "probability_recurrence": _num(entry["probability"]),
        "probability_model_output": _num(entry["probability_raw"]),
        "probability_text": entry["probability_text"],
        "probability_note": entry["probability_note"],
        "prior": None if prior is None else {
            "study_date": prior.study_date, "study_instance_uid": prior.study_instance_uid,
            "job_id": prior.job_id, "lesion_id": prior.lesion_id,
            "r_ktrans": _num(prior.r_ktrans), "r_vp": _num(prior.r_vp),
            "hyperperfused": prior.hyperperfused},
        "note": entry["note"],
    }


def build_findings(dynamic: Volume, maps: DceMaps, readouts: list[dict[str, Any]], *,
                   lesion_source: str, model: RecurrenceModel | None, model_note: str,
                   prior_note: str, vfa_angles: list[float], settings: DceSettings) -> dict[str, Any]:
    """The JSON-able findings of one job (indexed by the node, used as priors later)."""
    aif = maps.aif

    def mm(voxels: np.ndarray) -> list[list[float]]:
        return [[round(float(v), 2) for v in dynamic.index_to_patient(p[::-1])] for p in voxels]

    blood_t10 = None if not np.isfinite(aif.blood_t10_s) else round(float(aif.blood_t10_s), 4)
    return {
        "notice": NOT_FOR_CLINICAL_USE,
        "study_date": str(dynamic.headers[0].get("StudyDate", "")) or None,
        "model": maps.model, "t10_source": maps.t10_source, "vfa_flip_angles": vfa_angles,
        "r1_per_mM_per_s": maps.r1_per_mm_s, "hematocrit": settings.hematocrit,
        "baseline_frames": maps.arrival.frame, "bolus_arrival_s": round(maps.arrival.time_s, 2),
        "aif": {"source": aif.source, "reason": aif.reason, "venous_scale": aif.venous_scale,
                "blood_t10_s": blood_t10, "blood_t10_source": aif.blood_t10_source,
                "quality": aif.quality, "voxels_zyx": maps.aif_voxels.tolist(),
                "voxels_mm": mm(maps.aif_voxels), "venous_voxels_mm": mm(maps.venous_voxels),
                "plasma_mM": [round(float(v), 4) for v in aif.plasma],
                "time_s": [round(float(v), 3) for v in np.asarray(dynamic.times)]},
        "fitted_voxels": maps.n_fitted, "failed_voxels": maps.n_failed,
        "no_leakage_voxels": maps.n_no_leakage,
        "leakage_test_alpha": settings.leakage_test_alpha if maps.model == "extended_tofts" else None,
        "kep_limit_per_min": None if maps.kep_limit_per_min is None else round(maps.kep_limit_per_min, 3),
        "ratio_floors": {"ktrans_per_min": settings.ratio_floor_ktrans_per_min,
                         "vp": settings.ratio_floor_vp},
        "lesion_source": lesion_source, "lesions": [_lesion_record(e) for e in readouts],
        "prior": prior_note,
        "recurrence_model": None if model is None else {
            "name": model.name, "version": model.version,
            "validation": None if model.calibration is None else model.calibration.statement()},
        "recurrence_model_note": model_note,
        "hyperperfusion_ratio": settings.hyperperfusion_ratio,
    }


def build_outputs(job: AnalysisInput, dynamic: Volume, maps: DceMaps, readouts: list[dict[str, Any]],
                  findings: dict[str, Any], have_t10: bool, model: RecurrenceModel | None,
                  settings: DceSettings, version: str) -> list[Dataset]:
    """Parametric Maps (float, and integer-scaled companions), the SEG and the SR; with
    ``settings.reference_image`` first the pre-bolus mean as a derived 3D MR series, which
    they reference instead of the dynamic series (:mod:`analyzers._shared.reference_image`)."""
    printed = model is not None and model.calibration is not None and any(
        e["probability"] is not None for e in readouts)
    parameters = model.calibration.algorithm_parameters() if printed and model and model.calibration else ()
    algorithm = out.Algorithm(name="pacsnode dce", version=version)
    sr_algorithm = out.Algorithm(name="pacsnode dce", version=version, parameters=parameters)
    number = settings.series_number
    quantities = TEMPLATE.quantities
    datasets: list[Dataset] = []
    if settings.reference_image:
        # The pre-bolus mean as a derived 3D series that the maps, SEG and SR reference.
        reference = build_reference_image(dynamic, maps.arrival.baseline_frames, algorithm,
                                          out.OutputSeries.for_job(job.job_id, "reference", series_number=number),
                                          what="pre-bolus mean")
        datasets += reference.datasets
        dynamic = reference.volume
    pm_values = [("ktrans", maps.ktrans), ("vp", maps.vp)]
    if maps.model == "extended_tofts":
        pm_values += [("ve", maps.ve), ("kep", maps.kep)]
    if have_t10:
        pm_values.append(("t1", maps.t10 * 1000.0))
    for offset, (key, values) in enumerate(pm_values, start=1):
        # A failed fit (or an undefined ve/kep without leakage) is NaN (or failed_fit_value),
        # never a zero; outside the head mask 0.
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
    segments = [out.Segment(TEMPLATE.segment_classes["lesion"], e["mask"], tracking_id=e["lesion_id"])
                for e in readouts]
    segments += [out.Segment(TEMPLATE.segment_classes["reference"], e["reference_mask"],
                             tracking_id=f"reference {e['lesion_id']}")
                 for e in readouts if e["reference_mask"].any()]
    seg = None
    if segments:
        seg = out.build_segmentation(dynamic, segments, algorithm,
                                     out.OutputSeries.for_job(job.job_id, "seg", series_number=number + 10))
        datasets.append(seg)
    groups = [_lesion_group(i, entry) for i, entry in enumerate(readouts, start=1)]
    texts = report_texts(findings, settings.failed_fit_value)
    if printed and model is not None and model.calibration is not None:
        texts.append(model.calibration.sr_text())
    sr_output = out.OutputSeries.for_job(job.job_id, "sr", series_number=number + 20)
    if groups:
        sr = out.build_measurement_report(dynamic, TEMPLATE, groups, sr_algorithm, sr_output,
                                          segmentation=seg, texts=texts)
    else:
        sr = out.build_summary_report(dynamic, TEMPLATE, sr_algorithm, sr_output,
                                      evaluations=[(c.LESION, c.ABSENT)], texts=texts)
    datasets.append(sr)
    return datasets


def _lesion_group(segment_number: int, entry: dict[str, Any]) -> out.LesionFinding:
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


def _ratio_text(name: str, value: float | None, note: str) -> str:
    return f"{name} {value:.3g}" if value is not None else (note or f"{name} not computable")


def _chunks(prefix: str, items: list[str]) -> list[str]:
    """``prefix [k/n]: a, b, ...`` lines of at most the text limit, splitting between items."""
    lines: list[list[str]] = [[]]
    room = _TEXT_LIMIT - len(prefix) - 12
    for item in items:
        if lines[-1] and sum(len(x) + 2 for x in lines[-1]) + len(item) > room:
            lines.append([])
        lines[-1].append(item)
    return [f"{prefix} [{k}/{len(lines)}]: " + ", ".join(part) for k, part in enumerate(lines, start=1)]


def _aif_quality_text(aif: dict[str, Any]) -> str:
    q = aif.get("quality") or {}
    if aif["source"] != "image" or not q:
        return "AIF quality: population AIF (no image measurement to grade)"
    warnings = "; ".join(q.get("warnings") or []) or "none"
    return (f"AIF quality: {q['verdict']}; {q['n_voxels']} arterial voxels pooled (first-pass signal "
            f"spread {q['amplitude_min_over_max']}), pooled baseline SNR {q['baseline_snr']}, peak "
            f"{q['peak_blood_mM']} mM whole blood at {q['peak_time_s']} s, FWHM {q['fwhm_s']} s, "
            f"area {q['area_blood_mM_s']} mM s, partial-volume scale {q['venous_scale']}; "
            f"warnings: {warnings}")[:_TEXT_LIMIT]


def report_texts(findings: dict[str, Any], failed_fit_value: float | None) -> list[tuple[Any, str]]:
    """Free-text statements of the SR (impressions per lesion, then method comments)."""
    texts = []
    for lesion in findings["lesions"]:
        parts = [f"{lesion['lesion_id']}: " + _ratio_text("rKtrans", lesion["r_ktrans"], lesion["r_ktrans_note"])
                 + ", " + _ratio_text("rVP", lesion["r_vp"], lesion["r_vp_note"])]
        if lesion["hyperperfused"] is not None:
            parts.append("hyperperfusion " + ("yes" if lesion["hyperperfused"] else "no")
                         + f" (threshold {findings['hyperperfusion_ratio']})")
        else:
            parts.append("hyperperfusion not determined (needs both ratios below the threshold "
                         "or one at or above it)")
        prior = lesion["prior"]
        if prior is not None:
            parts.append(f"pre-treatment {prior['study_date']}: rKtrans {prior['r_ktrans']}, "
                         f"rVP {prior['r_vp']}, hyperperfusion "
                         + ("yes" if prior["hyperperfused"] else "no"))
        else:
            parts.append("no matched pre-treatment lesion")
        if lesion["reading_text"]:
            parts.append(lesion["reading_text"])
        if lesion["probability_text"]:
            parts.append(f"probability of recurrence {lesion['probability_text']}")
        elif lesion["probability_note"]:
            parts.append(lesion["probability_note"])
        if lesion["note"]:
            parts.append(lesion["note"])
        texts.append((c.IMPRESSION, "; ".join(parts)[:_TEXT_LIMIT]))
    model = findings["recurrence_model"]
    texts.append((c.COMMENT, "recurrence model: " + (f"{model['name']} {model['version']}"
                                                       if model else findings["recurrence_model_note"])))
    aif = findings["aif"]
    where = "; ".join(f"({x}, {y}, {z}) mm" for x, y, z in aif["voxels_mm"][:10])
    texts.append((c.COMMENT, (f"AIF: {aif['reason']}" + (f"; arterial voxels at {where}" if where else ""))
                  [:_TEXT_LIMIT]))
    texts.append((c.COMMENT, _aif_quality_text(aif)))
    curve = [f"{t:.0f}s:{v:.2f}" for t, v in zip(aif["time_s"], aif["plasma_mM"], strict=True)]
    texts += [(c.COMMENT, line) for line in _chunks("AIF plasma concentration (mM)", curve)]
    blood = (f"{aif['blood_t10_s']} s ({aif['blood_t10_source']})" if aif["blood_t10_s"] is not None
             else "not used (population AIF)")
    leakage = ""
    if findings["leakage_test_alpha"] is not None:
        leakage = (f"; leakage test (F-test, level {findings['leakage_test_alpha']}, kep limit "
                   f"{findings['kep_limit_per_min']} /min): {findings['no_leakage_voxels']} voxels without "
                   "detectable leakage (Ktrans 0, ve and kep undefined)")
    texts.append((c.COMMENT, (f"T10 of tissue: {findings['t10_source']}; T10 of blood (AIF): {blood}; "
                              f"r1 {findings['r1_per_mM_per_s']} /mM/s; model {findings['model']}{leakage}; "
                              f"fit failures: {findings['failed_voxels']} of {findings['fitted_voxels']} "
                              f"voxels ({'NaN' if failed_fit_value is None else f'value {failed_fit_value}'} "
                              f"in the maps; 0 outside the head mask); ratio floors: reference Ktrans "
                              f"{findings['ratio_floors']['ktrans_per_min']} /min, vp "
                              f"{findings['ratio_floors']['vp']}; lesions: {findings['lesion_source']}; "
                              f"{findings['prior']}")[:_TEXT_LIMIT]))
    return texts
