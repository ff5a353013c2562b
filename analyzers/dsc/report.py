"""DICOM outputs of the ``dsc`` analyzer: Parametric Maps, SEG and TID 1500 SR.

Built with :mod:`analyzers._shared.outputs` from the report content in
:mod:`sr_templates.dsc`. Two quantities and one segment class that the shared
template does not list yet are defined here: the BSW leakage coefficient K2,
the relative wash-in time rWiT (pacsnode private codes) and the AIF voxels
(SCT Artery), so that a reader can check the automatic arterial input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from analyzers._shared import outputs as out
from analyzers._shared.probability import ProbabilityCalibration, format_probability
from analyzers._shared.reference_image import build_reference_image
from analyzers._shared.volume import Volume
from analyzers.dsc.maps import DscMaps
from sr_templates import Quantity, SegmentClass
from sr_templates import codes as c
from sr_templates.dsc import TEMPLATE

__all__ = ["AIF_SEGMENT", "K2_QUANTITY", "METHOD_NAMES", "RWIT_QUANTITY", "build_outputs", "quality_text"]

K2_QUANTITY = Quantity("k2", c.private_code("BSWK2", "Leakage coefficient K2"), c.PER_SECOND,
                       "K2", "Leakage coefficient K2, Boxerman-Schmainda-Weisskoff scale (1/s)")
RWIT_QUANTITY = Quantity("rwit", c.private_code("RWASHINTIME", "Relative wash-in time"),
                         c.RATIO_UNIT, "rWiT", "Wash-in time relative to contralateral white matter")
AIF_SEGMENT = SegmentClass("aif", "Arterial input function voxels", c.ANATOMICAL_STRUCTURE,
                           c.ARTERY, c.BRAIN)


def _relative_map(values: np.ndarray, reference: float) -> np.ndarray:
    if not np.isfinite(reference) or reference <= 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    return (values / reference).astype(np.float32)


def build_outputs(
    job_id: str,
    volume: Volume,
    maps: DscMaps,
    results: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Any],
    series_number: int,
    version: str,
    *,
    integer_maps: bool = True,
    reference_image: bool = True,
    calibration: ProbabilityCalibration | None = None,
) -> list[Dataset]:
    """Parametric Maps (float, and integer-scaled with ``integer_maps``), a SEG (when there is
    anything to segment) and the SR of one job.

    With ``reference_image``, the pre-bolus mean (the baseline frames S0 is read from) is
    written first as a derived 3D MR series, and the maps, SEG and SR reference it instead
    of the dynamic series' first time point (:mod:`analyzers._shared.reference_image`).
    ``calibration`` (when probabilities are reported) names the model and its validation in
    the SR's algorithm parameters (TID 4019) and in a comment.
    """
    parameters = calibration.algorithm_parameters() if calibration is not None else ()
    algorithm = out.Algorithm(name="pacsnode dsc", version=version, parameters=parameters)
    datasets: list[Dataset] = []
    if reference_image:
        baseline = slice(maps.timing.baseline_start, maps.timing.baseline_end + 1)
        reference = build_reference_image(volume, baseline, algorithm,
                                          out.OutputSeries.for_job(job_id, "reference",
                                                                   series_number=series_number),
                                          what="pre-bolus mean")
        datasets += reference.datasets
        volume = reference.volume
    q = TEMPLATE.quantities
    reference_cbv = results[0]["reference"].cbv if results else float("nan")
    reference_cbf = results[0]["reference"].cbf if results else float("nan")
    pm_values: list[tuple[Quantity, np.ndarray]] = [
        (q["cbv"], maps.cbv), (q["cbf"], maps.cbf), (q["mtt"], maps.mtt),
        (q["psr"], maps.psr_percent), (K2_QUANTITY, maps.k2),
    ]
    if results:
        # Relative maps use the reference region of the first lesion.
        pm_values += [(q["rcbv"], _relative_map(maps.cbv, reference_cbv)),
                      (q["rcbf"], _relative_map(maps.cbf, reference_cbf))]
    for offset, (quantity, values) in enumerate(pm_values, start=1):
        datasets.append(out.build_parametric_map(
            volume, values, quantity, algorithm,
            out.OutputSeries.for_job(job_id, f"pm-{quantity.key}",
                                     series_number=series_number + offset)))
        if integer_maps:
            datasets.append(out.build_parametric_map(
                volume, values, quantity, algorithm,
                out.OutputSeries.for_job(job_id, f"pm-{quantity.key}-int",
                                         series_number=series_number + 30 + offset), integer_scaled=True))
    segments = [out.Segment(TEMPLATE.segment_classes["lesion"], r["mask"], tracking_id=r["lesion_id"])
                for r in results]
    segments += [out.Segment(TEMPLATE.segment_classes["reference_wm"], r["reference_mask"],
                             tracking_id=f"reference {r['lesion_id']}") for r in results]
    if maps.aif_mask.any():
        segments.append(out.Segment(AIF_SEGMENT, maps.aif_mask, tracking_id="aif"))
    seg = out.build_segmentation(volume, segments, algorithm,
                                 out.OutputSeries.for_job(job_id, "seg",
                                                          series_number=series_number + 10))
    datasets.append(seg)
    groups = [_lesion_group(number, result) for number, result in enumerate(results, start=1)]
    sr_output = out.OutputSeries.for_job(job_id, "sr", series_number=series_number + 20)
    texts = _texts(findings, calibration)
    if groups:
        sr = out.build_measurement_report(volume, TEMPLATE, groups, algorithm, sr_output,
                                          segmentation=seg, texts=texts)
    else:
        sr = out.build_summary_report(volume, TEMPLATE, algorithm, sr_output,
                                      evaluations=[(c.LESION, c.ABSENT)], texts=texts)
    datasets.append(sr)
    return datasets


def _lesion_group(segment_number: int, result: Mapping[str, Any]) -> out.LesionFinding:
    q = TEMPLATE.quantities
    lesion, ratios = result["lesion"], result["ratios"]
    # The template's wash-out slope is per second of the normalised signal: divide by S0.
    slope = lesion.washout_slope / lesion.s0 if lesion.s0 > 0 else float("nan")
    candidates = [
        (q["volume"], result["volume_ml"] * 1000.0),
        (q["cbv"], lesion.cbv), (q["cbf"], lesion.cbf), (q["mtt"], lesion.mtt),
        (q["psr"], lesion.psr_percent), (q["wash_in_time"], lesion.wash_in_s),
        (q["wash_out_slope"], slope), (K2_QUANTITY, lesion.k2),
        (q["rcbv"], ratios["rCBV"]), (q["rcbf"], ratios["rCBF"]), (q["rpsr"], ratios["rPSR"]),
        (RWIT_QUANTITY, ratios["rWiT"]),
    ]
    # Mean over the lesion's voxels for the maps' values; the volume is no such mean.
    measurements = [out.MeasuredValue(quantity, float(value),
                                      derivation=None if quantity is q["volume"] else c.MEAN)
                    for quantity, value in candidates if np.isfinite(value)]
    impression = None
    if result["reported_class_probability"] is not None:
        # Clipped to what the validation supports, 2 significant digits (decision.py).
        measurements.append(out.MeasuredValue(q["probability"],
                                              round(100.0 * result["reported_class_probability"], 6)))
        impression = TEMPLATE.diagnoses[result["class"]]
    return out.LesionFinding(tracking_id=result["lesion_id"],
                             region=out.LesionRegion.from_mask(result["mask"]),
                             measurements=measurements, impression=impression,
                             segment_number=segment_number)


def _texts(findings: Mapping[str, Any],
           calibration: ProbabilityCalibration | None) -> list[tuple[Code, str]]:
    texts: list[tuple[Code, str]] = []
    for lesion in findings["lesions"]:
        parts = [f"{lesion['lesion_id']} ({lesion['label']}): rCBV {lesion['rCBV']}, "
                 f"rCBF {lesion['rCBF']}, rPSR {lesion['rPSR']}, rWiT {lesion['rWiT']}"]
        if lesion["probability_dural_metastasis"] is not None:
            parts.append(f"probability of dural metastasis "
                         f"{format_probability(lesion['probability_dural_metastasis'])}, "
                         f"class {lesion['class']}")
        elif lesion["note"]:
            parts.append(lesion["note"])
        parts.append(f"reference: contralateral NAWM, {lesion['reference_voxels']} voxels")
        texts.append((c.IMPRESSION, "; ".join(parts)[:1024]))
    if calibration is not None and findings["lesions"]:
        texts.append(calibration.sr_text())
    model = findings["model"]
    texts.append((c.COMMENT, "model: " + (
        f"{model['kind']} on {', '.join(model['features'])}, threshold {model['threshold']:.3f} "
        f"({model['folder']})" if model else str(findings["model_note"]))[:1024]))
    aif = findings["aif"]
    leakage = (f"model-based where the data show leakage ({findings['leaky_voxels']} voxels)"
               if findings["leakage_correction"] else "off")
    texts.append((c.COMMENT, (
        f"lesions: {findings['lesion_source']}; AIF: {aif['source']}, {aif['voxels']} voxels "
        f"(SEG segment 'Arterial input function voxels'); deconvolution "
        f"{METHOD_NAMES[findings['deconvolution']]}; leakage correction {leakage}; "
        f"S1 of PSR at {findings['psr_s1_time_s']:.1f} s"
    )[:1024]))
    texts.append((c.COMMENT, quality_text(findings["masked_voxels"], findings["brain_voxels"])[:1024]))
    return texts


#: How the SR names each deconvolution method.
METHOD_NAMES = {
    "osvd": "oSVD (block-circulant, oscillation index 0.035; Wu 2003)",
    "ssvd": "sSVD (threshold 0.2; Østergaard 1996)",
    "bayes": "Bayesian model-based (gamma transit-time residue; Mouridsen 2006)",
}
_MASK_REASONS = {
    "cbv_not_positive": "CBV not positive (noise or leakage left after correction)",
    "cbf_not_positive": "CBF not positive",
    "mtt_not_finite": "MTT not finite",
}


def quality_text(masked: Mapping[str, int], brain_voxels: int) -> str:
    """The quality statement of the SR: which map voxels were masked and why."""
    total = sum(masked.values())
    if total == 0:
        return f"quality: every one of {brain_voxels} brain voxels has positive CBV, CBF and MTT"
    parts = [f"{count} {_MASK_REASONS.get(reason, reason)}" for reason, count in masked.items() if count]
    return (f"quality: {total} of {brain_voxels} brain voxels masked (no value) in the CBV, CBF and "
            f"MTT maps: " + "; ".join(parts))
