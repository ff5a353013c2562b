"""The ``dsc`` analyzer: DSC perfusion maps, lesion ratios and dural metastasis probability.

Implements the method of ../shared/papers/dsc-dural-metastasis-vs-meningioma.txt
under the analyzer contract (``analyzers.contract``):

1. the dynamic series is read (:func:`analyzers._shared.volume.load_series`) and
   every map computed (:mod:`analyzers.dsc.maps`);
2. lesions come from a SEG of the same study (role ``roi``, resampled through
   patient coordinates) or, without one, from automatic dural-lesion
   candidates (:mod:`analyzers.dsc.candidates`);
3. each lesion is compared with contralateral normal-appearing white matter
   (:mod:`analyzers.dsc.reference`): rCBV, rCBF, rPSR, rWiT;
4. the classifier (:mod:`analyzers.dsc.model`; the site's model folder, or the
   reference model shipped with the analyzer) gives the probability of dural
   metastasis and the class at its threshold;
5. outputs: Parametric Maps (CBV, CBF, MTT, PSR, K2, rCBV, rCBF), a SEG (lesions,
   reference regions, AIF voxels) and a TID 1500 SR (:mod:`analyzers.dsc.report`).

Everything it writes says "not for clinical use".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from analyzers._shared.sanity import check_acquisition, check_dynamic
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
    SeriesInput,
    UnsuitableInput,
)
from analyzers.dsc.candidates import CandidateOptions, find_candidates
from analyzers.dsc.decision import Acquisition, LesionDecider, load_calibration
from analyzers.dsc.errors import DscError, DscModelError
from analyzers.dsc.maps import DscMaps, MapOptions, compute_maps
from analyzers.dsc.model import DscClassifier
from analyzers.dsc.reference import (
    contralateral_reference,
    measure_region,
    midsagittal_position,
    relative_values,
    white_matter_mask,
)

__all__ = ["REFERENCE_MODEL_DIR", "DscAnalyzer", "DscSettings", "LesionResult"]

#: The reference model shipped with the analyzer (trained on the phantom cohort).
REFERENCE_MODEL_DIR = Path(__file__).resolve().parent / "reference_model"
_EDEMA_WORDS = ("edema", "oedema")
_REFERENCE_WORDS = ("reference", "nawm", "normal")


class DscSettings(AnalyzerSettings):
    """Settings of the ``dsc`` analyzer (``settings`` of its route in routes.toml)."""

    method: Literal["osvd", "ssvd", "bayes"] = Field(
        "osvd", description="deconvolution: oSVD (default), sSVD, or the Bayesian model-based "
        "estimate (gamma transit-time residue, Mouridsen 2006) that keeps CBF at short transit times"
    )
    oi_target: float = Field(0.035, gt=0.0, lt=1.0)
    svd_threshold: float = Field(0.2, gt=0.0, lt=1.0)
    shape_prior: Literal["neighbourhood", "flat"] = Field(
        "neighbourhood", description="Bayesian method: each voxel's prior over the residue shape from "
        "its 3 x 3 x 3 neighbours' shape posteriors, or flat"
    )
    leakage_correction: bool = True
    psr_delay_s: float = Field(90.0, gt=0.0)
    skip_frames: int = Field(0, ge=0)
    aif: str | None = Field(
        None, description="SegmentLabel of an arterial ROI in the study's SEG to use as AIF"
    )
    model: str | None = Field(
        None, description="model folder of a site model; the reference model when unset"
    )
    reference_radius_mm: float = Field(25.0, gt=0.0)
    edema_margin_mm: float = Field(10.0, ge=0.0)
    candidate_min_rcbv: float = Field(2.5, gt=1.0)
    max_candidates: int = Field(5, ge=1)
    series_number: int = Field(9400, ge=1)
    integer_maps: bool = True
    """Also write each map as an integer-scaled Parametric Map (16-bit, slope and intercept in its
    Real World Value Mapping) for viewers and PACS that show no float images."""
    reference_image: bool = True
    """Write the pre-bolus mean as a derived 3D MR series and put the maps, SEG and SR on it,
    for viewers that overlay nothing on a dynamic series (OHIF 3); false: they reference the
    dynamic series' first time point (docs/viewer.md)."""


class LesionResult(dict[str, Any]):
    """One lesion's masks and values (a dict so it can feed findings and the SR alike)."""


def _echo_time_s(volume: Volume) -> float:
    value = volume.headers[0].get("EchoTime")
    try:
        te_ms = float(value)
    except (TypeError, ValueError):
        raise UnsuitableInput("the DSC series has no EchoTime; ΔR2* needs it") from None
    if not 1.0 <= te_ms <= 200.0:
        raise UnsuitableInput(f"EchoTime {te_ms} ms is not a T2*-weighted DSC echo time")
    return te_ms / 1000.0


def _lr_axis(volume: Volume) -> int:
    """Array axis of the ``(z, y, x)`` volume that runs most nearly left-right (patient x)."""
    column_axis_to_array = {0: 2, 1: 1, 2: 0}
    return column_axis_to_array[int(np.argmax(np.abs(volume.affine[0, :3])))]


def _sex_female(volume: Volume) -> float:
    sex = str(volume.headers[0].get("PatientSex", "")).upper()
    return 1.0 if sex == "F" else 0.0 if sex == "M" else float("nan")


def _load_model(settings: DscSettings) -> tuple[DscClassifier | None, str, str | None]:
    """(model, its folder or why there is none, why its probabilities cannot be reported)."""
    folder = Path(settings.model) if settings.model else REFERENCE_MODEL_DIR
    try:
        model = DscClassifier.load(folder)
    except DscModelError as exc:
        if settings.model:
            raise UnsuitableInput(f"the configured DSC model cannot be loaded: {exc}") from exc
        return None, f"no reference model installed ({exc})", f"no reference model installed ({exc})"
    return model, str(folder), None


class DscAnalyzer:
    """DSC perfusion analyzer (see the module docstring)."""

    name: ClassVar[str] = "dsc"
    version: ClassVar[str] = "0.1.0"
    needs: ClassVar[Mapping[str, str]] = {"roi": "seg?"}
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type[AnalyzerSettings]] = DscSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Analyze one DSC series; raises :class:`UnsuitableInput` when it cannot be done."""
        settings = job.settings if isinstance(job.settings, DscSettings) else DscSettings(
            **job.settings.model_dump()
        )
        # A configured model that cannot be read is a configuration error: fail fast.
        model, model_note, unavailable = _load_model(settings)
        calibration = None
        if model is not None:
            calibration, unavailable = load_calibration(Path(model_note))
        try:
            volume = load_series(job.series.files)
        except SeriesGeometryError as exc:
            raise UnsuitableInput(f"the DSC series is not one regular volume: {exc}") from exc
        # A dynamic T2*-weighted perfusion series with a time axis (route it to dsc by its SeriesDescription).
        check_dynamic(volume, "dsc", min_time_points=10)
        check_acquisition(volume, "dsc (T2*-weighted perfusion)", min_echo_ms=10.0,
                          hint=": a T1-weighted dynamic (DCE) belongs to the dce analyzer")
        te_s = _echo_time_s(volume)
        segments = _roi_segments(job.related.get("roi", ()), volume)
        aif_mask = None
        if settings.aif:
            if settings.aif not in segments:
                raise UnsuitableInput(
                    f"settings.aif names segment {settings.aif!r}, but the study's SEG has "
                    f"{sorted(segments) or 'no segments'}"
                )
            aif_mask = segments.pop(settings.aif)
        options = MapOptions(
            method=settings.method,
            oi_target=settings.oi_target,
            svd_threshold=settings.svd_threshold,
            shape_prior=settings.shape_prior,
            leakage_correction=settings.leakage_correction,
            psr_delay_s=settings.psr_delay_s,
            skip_frames=settings.skip_frames,
        )
        try:
            maps = compute_maps(volume.data, volume.times, te_s, options, aif_mask=aif_mask)
            lesions, source, edema = _lesions(segments, maps, volume, settings)
            results = _measure(lesions, edema, maps, volume, settings)
        except DscError as exc:
            raise UnsuitableInput(str(exc)) from exc
        dz, dy, dx = (float(v) for v in volume.spacing)
        decider = LesionDecider(model, calibration, unavailable, Acquisition(
            pixel_mm=max(dy, dx), slice_mm=dz,
            coverage_s=float(maps.times[-1] - maps.timing.arrival_time_s)))
        for result in results:
            result["features"] = _features(result, _sex_female(volume))
            decider.decide(result, result["features"])
        findings = _findings(maps, results, source, model, model_note, settings, te_s)
        findings["probability_withheld"] = decider.withheld
        findings["calibration"] = None if calibration is None else calibration.to_dict()
        from analyzers.dsc.report import build_outputs

        datasets = build_outputs(job.job_id, volume, maps, results, findings, settings.series_number,
                                 self.version, integer_maps=settings.integer_maps,
                                 reference_image=settings.reference_image,
                                 calibration=calibration if decider.withheld is None else None)
        return AnalysisResult(datasets=datasets, findings=findings)


def _roi_segments(series: Sequence[SeriesInput], volume: Volume) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for item in series:
        try:
            loaded = load_segmentation(list(item.files), volume)
        except SegmentationError as exc:
            raise UnsuitableInput(f"the lesion SEG cannot be used: {exc}") from exc
        for label, mask in loaded.items():
            key, copy = label, 2
            while key in masks:
                key, copy = f"{label} ({copy})", copy + 1
            masks[key] = mask
    return {label: mask for label, mask in masks.items() if mask.any()}


def _lesions(
    segments: Mapping[str, np.ndarray], maps: DscMaps, volume: Volume, settings: DscSettings
) -> tuple[list[tuple[str, np.ndarray]], str, np.ndarray]:
    edema = np.zeros(volume.shape3d, dtype=bool)
    lesions: list[tuple[str, np.ndarray]] = []
    for label, mask in segments.items():
        lowered = label.lower()
        if any(word in lowered for word in _EDEMA_WORDS):
            edema |= mask
        elif not any(word in lowered for word in _REFERENCE_WORDS):
            lesions.append((label, mask & maps.brain_mask))
    lesions = [(label, mask) for label, mask in lesions if mask.any()]
    if lesions:
        return lesions, "SEG of the study", edema
    white = white_matter_mask(maps)
    options = CandidateOptions(min_rcbv=settings.candidate_min_rcbv,
                               max_candidates=settings.max_candidates)
    found = find_candidates(maps, white, volume.spacing, options)
    source = "automatic dural-lesion candidates (no lesion SEG in the study)"
    return [(f"candidate {i}", mask) for i, mask in enumerate(found, start=1)], source, edema


def _measure(
    lesions: list[tuple[str, np.ndarray]],
    edema: np.ndarray,
    maps: DscMaps,
    volume: Volume,
    settings: DscSettings,
) -> list[LesionResult]:
    if not lesions:
        return []
    every_lesion = np.zeros(volume.shape3d, dtype=bool)
    for _, mask in lesions:
        every_lesion |= mask
    white = white_matter_mask(maps, exclude=every_lesion | edema)
    axis = _lr_axis(volume)
    plane = midsagittal_position(maps.s0, maps.brain_mask, axis)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    results = []
    for index, (label, mask) in enumerate(lesions, start=1):
        reference = contralateral_reference(
            mask, white, plane, axis, volume.spacing, edema=edema | every_lesion,
            exclude=maps.aif_mask, radius_mm=settings.reference_radius_mm,
            edema_margin_mm=settings.edema_margin_mm, baseline=maps.s0,
        )
        lesion_values = measure_region(maps, volume.data, mask)
        reference_values = measure_region(maps, volume.data, reference)
        ratios = relative_values(lesion_values, reference_values)
        results.append(LesionResult(
            lesion_id=f"lesion {index}", label=label, mask=mask, reference_mask=reference,
            volume_ml=float(mask.sum() * voxel_ml), lesion=lesion_values,
            reference=reference_values, ratios=ratios, plane=plane,
        ))
    return results


def _features(result: LesionResult, sex_female: float) -> dict[str, float]:
    ratios, lesion = result["ratios"], result["lesion"]
    return {
        "rCBF_mean": ratios["rCBF"],
        "rCBV_mean": ratios["rCBV"],
        "rWiT": ratios["rWiT"],
        "rPSR": ratios["rPSR"],
        "washout_slope": lesion.washout_slope,
        "ADC_mean": float("nan"),
        "sex_female": sex_female,
    }


def _number(value: float | None, digits: int = 4) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)


def _findings(
    maps: DscMaps,
    results: list[LesionResult],
    source: str,
    model: DscClassifier | None,
    model_note: str,
    settings: DscSettings,
    te_s: float,
) -> dict[str, Any]:
    lesions = []
    for result in results:
        lesion, reference = result["lesion"], result["reference"]
        lesions.append({
            "lesion_id": result["lesion_id"],
            "label": result["label"],
            "volume_ml": _number(result["volume_ml"]),
            "cbv_ml_100g": _number(lesion.cbv),
            "cbf_ml_100g_min": _number(lesion.cbf),
            "mtt_s": _number(lesion.mtt),
            "k2_per_s": _number(lesion.k2, 6),
            "psr_percent": _number(lesion.psr_percent),
            "wash_in_s": _number(lesion.wash_in_s),
            "washout_slope_per_s": _number(lesion.washout_slope),
            "reference_voxels": reference.voxels,
            "reference_cbv_ml_100g": _number(reference.cbv),
            "reference_cbf_ml_100g_min": _number(reference.cbf),
            "reference_psr_percent": _number(reference.psr_percent),
            "reference_wash_in_s": _number(reference.wash_in_s),
            **{key: _number(value) for key, value in result["ratios"].items()},
            "probability_dural_metastasis": result["reported_probability"],
            "probability_model": _number(result["probability"]),
            "class": result["class"],
            "note": result["note"],
        })
    return {
        "clinical_use": NOT_FOR_CLINICAL_USE,
        "echo_time_s": te_s,
        "frames": int(maps.times.size),
        "bolus_arrival_s": maps.timing.arrival_time_s,
        "psr_s1_time_s": maps.psr_t1_s,
        "deconvolution": settings.method,
        "oi_target": settings.oi_target if settings.method == "osvd" else None,
        "svd_threshold": settings.svd_threshold if settings.method == "ssvd" else None,
        "leakage_correction": settings.leakage_correction,
        "leaky_voxels": int(np.count_nonzero(maps.leak_k[maps.brain_mask])),
        "brain_voxels": int(maps.brain_mask.sum()),
        "masked_voxels": dict(maps.masked),
        "aif": {
            "source": "settings.aif ROI" if settings.aif else "automatic (clustering)",
            "voxels": int(maps.aif_mask.sum()),
            "peak_delta_r2s_per_s": _number(float(np.max(maps.aif_curve))),
        },
        "lesion_source": source,
        "lesions": lesions,
        "model": None if model is None else {
            "folder": model_note, "kind": model.kind, "features": list(model.features),
            "threshold": model.threshold,
        },
        "model_note": None if model is not None else model_note,
    }
