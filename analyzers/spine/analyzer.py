"""The ``spine`` analyzer: vertebral hemangioma vs metastasis on T1, T2, STIR and T1C.

Implements ../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt under the analyzer
contract (``analyzers.contract``):

1. the analyzed series' sequence (T1, T2, STIR or T1C) is read from its description and
   acquisition parameters (:func:`sequence_of`); the other spine series of the same study
   come as related series (roles ``spine`` and ``spine_bodypart``, the two routes that
   send series to this analyzer), are classified the same way and are used when they
   share the frame of reference (first series of each sequence);
2. lesions come from a SEG of the study (role ``roi``; their vertebral levels from the
   detected vertebral bodies when the T1 is there) or, without one, from automatic
   vertebral-lesion detection on T1 with T2 (:mod:`analyzers.spine.detect`);
3. every sequence with a model gives P(hemangioma) for each lesion from its ROI
   (:mod:`analyzers.spine.model`); the combined probability averages T1 and T2 weighted
   by their validation AUC; STIR and T1C are reported and flagged less reliable;
4. outputs: a TID 1500 SR with one group per lesion (vertebral level, bounding-box SCOORD on
   the sagittal slice and SCOORD3D, probability per sequence and combined, class) and,
   when lesions were found automatically, a binary SEG of them.

Several series of one study each start a job. The job of the *lead* series (T1, else
T2, else STIR, else T1C, among the series present) writes the combined report, the
study's one SR; a job of another sequence records that sequence's probabilities in its
findings and names the lead series (with ``sequence_reports = true`` it also writes an
SR of that sequence alone). A study missing a sequence gets its report from the series
present. Everything it writes says "not for clinical use".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field
from pydicom.sr.coding import Code

from analyzers._shared.outputs import (
    Algorithm,
    LesionFinding,
    LesionRegion,
    MeasuredValue,
    OutputSeries,
    Segment,
    build_measurement_report,
    build_segmentation,
)
from analyzers._shared.probability import ProbabilityCalibration, format_probability, significant
from analyzers._shared.sanity import check_static
from analyzers._shared.volume import SegmentationError, SeriesGeometryError, Volume, load_segmentation, load_series
from analyzers.contract import (
    NOT_FOR_CLINICAL_USE,
    AnalysisInput,
    AnalysisResult,
    AnalyzerSettings,
    SeriesInput,
    UnsuitableInput,
)
from analyzers.spine.combine import RELIABLE_SEQUENCES, SEQUENCES, combine_probabilities
from analyzers.spine.detect import DetectionOptions, DetectionResult, detect_lesions
from analyzers.spine.errors import SpineDataError, SpineModelError
from sr_templates import SegmentClass
from sr_templates import codes as c
from sr_templates.spine import TEMPLATE, vertebra

if TYPE_CHECKING:  # torch is imported only when a job runs (see _load_models)
    from analyzers.spine.model import SpineModelSet

__all__ = ["REFERENCE_MODEL_DIR", "SpineAnalyzer", "SpineSettings", "sequence_of"]

#: The reference models shipped with the analyzer (trained on the spine phantom).
REFERENCE_MODEL_DIR = Path(__file__).resolve().parent / "reference_model"
_CLASSIFIER_T1C = c.private_code("CNNT1C", "Classifier on post-contrast T1 series")
_LESION_CLASS = SegmentClass("lesion", "Vertebral lesion", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, c.LESION,
                             c.VERTEBRA)
_CONTRAST = re.compile(r"(?<![a-z])(\+ ?c|ce|gd|km|post|contrast|kontrast|t1c)(?![a-z])|t1[ _-]?(\+ ?c|c|ce|gd)")
# Roles of the sibling spine series (the routes of config/routes.toml that send series to this
# analyzer); each sibling's sequence is read from its own description and parameters.
_SIBLING_ROLES = ("spine", "spine_bodypart")
_STIR = re.compile(r"stir|tirm|(?<![a-z])ir(?![a-z])|fse-ir|irtse")


class SpineSettings(AnalyzerSettings):
    """Settings of the ``spine`` analyzer (``settings`` of its routes in routes.toml)."""

    model: str | None = Field(None, description="model folder of a site; the reference models when unset")
    automatic_detection: bool = Field(True, description="find lesions when the study has no SEG")
    sequence_reports: bool = Field(
        False, description="also write an SR for each series that is not the lead (its own sequence only); "
                           "by default the lead series' combined SR is the study's one report")
    series_number: int = Field(9500, ge=1)


def sequence_of(attributes: Mapping[str, Any]) -> str | None:
    """``t1``, ``t2``, ``stir`` or ``t1c`` from SeriesDescription, else TR/TE/TI; None if unclear."""
    text = " ".join(str(attributes.get(k, "")) for k in ("SeriesDescription", "ProtocolName")).lower()
    contrast = bool(str(attributes.get("ContrastBolusAgent", "")).strip()) or bool(_CONTRAST.search(text))
    if _STIR.search(text):
        return "stir"
    if re.search(r"(?<![a-z0-9])t2", text):
        return "t2"
    if re.search(r"(?<![a-z0-9])t1", text):
        return "t1c" if contrast else "t1"

    def number(key: str) -> float | None:
        try:
            return float(attributes[key])
        except (KeyError, TypeError, ValueError):
            return None

    tr, te, ti = number("RepetitionTime"), number("EchoTime"), number("InversionTime")
    if ti is not None and 80.0 <= ti <= 250.0:
        return "stir"
    if tr is not None and te is not None:
        if tr < 1000.0 and te < 30.0:
            return "t1c" if contrast else "t1"
        if tr > 1500.0 and te > 60.0:
            return "t2"
    return None


def _attributes(series: SeriesInput, volume: Volume) -> dict[str, Any]:
    header = volume.headers[0]
    merged = {k: header.get(k) for k in ("SeriesDescription", "ProtocolName", "RepetitionTime", "EchoTime",
                                          "InversionTime", "ContrastBolusAgent") if k in header}
    merged.update({k: v for k, v in series.attributes.items() if v not in (None, "")})
    return merged


def _load(series: SeriesInput, what: str) -> Volume:
    try:
        volume = load_series(series.files)
    except SeriesGeometryError as exc:
        raise UnsuitableInput(f"the {what} series is not one regular volume: {exc}") from exc
    check_static(volume, f"spine ({what} series, static sagittal images)", min_slices=3, min_matrix=32)
    return volume


@dataclass
class _Lesion:
    mask: np.ndarray
    level: str | None
    p_hemangioma: dict[str, float]


def _load_models(settings: SpineSettings) -> SpineModelSet:
    # torch (through analyzers.spine.model) is imported here, when a job runs, not when the
    # node loads the analyzer class to validate its routes.
    from analyzers.spine.model import SpineModelSet

    folder = Path(settings.model) if settings.model else REFERENCE_MODEL_DIR
    try:
        return SpineModelSet.load(folder)
    except SpineModelError as exc:
        raise UnsuitableInput(f"the spine model cannot be loaded: {exc}") from exc


class SpineAnalyzer:
    """Vertebral hemangioma vs metastasis analyzer (see the module docstring)."""

    name: ClassVar[str] = "spine"
    version: ClassVar[str] = "0.2.0"
    needs: ClassVar[Mapping[str, str]] = {
        "spine": "spine?",
        "spine_bodypart": "spine_bodypart?",
        "roi": "seg?",
    }
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type[AnalyzerSettings]] = SpineSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Analyze one spine series with its siblings; raises :class:`UnsuitableInput` when it cannot."""
        settings = job.settings if isinstance(job.settings, SpineSettings) else SpineSettings(
            **job.settings.model_dump()
        )
        models = _load_models(settings)
        from analyzers.spine.dataset import crop_lesion  # torch: only when a job runs

        own = _load(job.series, "analyzed")
        own_sequence = sequence_of(_attributes(job.series, own))
        if own_sequence is None:
            raise UnsuitableInput(
                "cannot tell the sequence (T1, T2, STIR, T1C) from SeriesDescription or TR/TE/TI; "
                "route only sagittal spine T1/T2/STIR/T1C series to the spine analyzer"
            )
        volumes = {own_sequence: own}
        notes: list[str] = []
        for role in _SIBLING_ROLES:
            for sibling in job.related.get(role, ()):
                uid = sibling.series_instance_uid
                try:
                    volume = load_series(sibling.files)
                except SeriesGeometryError as exc:
                    notes.append(f"series {uid} not used: {exc}")
                    continue
                sequence = sequence_of(_attributes(sibling, volume))
                if sequence is None:
                    notes.append(f"series {uid} not used: its sequence is not recognised")
                    continue
                if sequence in volumes:
                    notes.append(f"series {uid} not used: a {sequence} series is already used")
                    continue
                if volume.frame_of_reference_uid != own.frame_of_reference_uid or volume.is_dynamic:
                    notes.append(f"{sequence} series {uid} not used: other frame of reference")
                    continue
                volumes[sequence] = volume
        lead = next(s for s in SEQUENCES if s in volumes)
        reference = volumes[lead]
        masks, source = self._lesion_masks(job, volumes, lead, settings)
        # Which sequences this job reports: all of them for the lead, its own otherwise.
        reported = [s for s in SEQUENCES if s in volumes] if own_sequence == lead else [own_sequence]
        lesions = []
        for mask, level in masks:
            probabilities = {}
            for sequence in reported:
                if sequence not in models.models:
                    continue
                volume = volumes[sequence]
                on_grid = mask if volume is reference else volume.resample_from(mask.astype(np.uint8), reference) > 0
                if not on_grid.any():
                    continue
                crop = crop_lesion(volume.data, on_grid)
                probabilities[sequence] = float(models.models[sequence].probability_hemangioma(crop)[0])
            lesions.append(_Lesion(mask, level, probabilities))
        if own is not reference:  # report on the analyzed series' own images
            for lesion in lesions:
                mapped = own.resample_from(lesion.mask.astype(np.uint8), reference) > 0
                lesion.mask = mapped if mapped.any() else lesion.mask
        missing = [s for s in reported if s not in models.models]
        if missing:
            notes.append(f"no model for {', '.join(missing)} in {models.folder}")
        findings = self._findings(lesions, models, own_sequence, lead, reference, source, notes, volumes)
        if own_sequence == lead or settings.sequence_reports:
            datasets = self._outputs(job, own, lesions, models, findings, source, settings)
        else:  # the lead series' job writes the study's combined SR, with this sequence in it
            datasets = []
            notes.append(f"reported in the combined SR of the {lead.upper()} series {reference.series_instance_uid}")
        return AnalysisResult(datasets=datasets, findings=findings)

    # ------------------------------------------------------------------ lesions
    def _lesion_masks(
        self, job: AnalysisInput, volumes: Mapping[str, Volume], lead: str, settings: SpineSettings
    ) -> tuple[list[tuple[np.ndarray, str | None]], str]:
        reference = volumes[lead]
        segs = job.related.get("roi", ())
        masks: list[tuple[np.ndarray, str | None]] = []
        for item in segs:
            try:
                loaded = load_segmentation(list(item.files), reference)
            except SegmentationError as exc:
                raise UnsuitableInput(f"the lesion SEG cannot be used: {exc}") from exc
            masks += [(m, None) for m in loaded.values() if m.any()]
        if segs:
            return self._seg_levels(masks, volumes, reference), "seg"
        if not settings.automatic_detection:
            raise UnsuitableInput("the study has no lesion SEG and automatic_detection is off; send a SEG")
        if "t1" not in volumes:
            raise UnsuitableInput(
                "automatic vertebral-lesion detection needs the sagittal T1 of the study (with T2 when "
                "present); send the T1 series or a lesion SEG, then run `pacsnode reprocess`"
            )
        result = self._detect(volumes)
        t1 = volumes["t1"]
        for lesion in result.lesions:
            mask = lesion.mask if reference is t1 else reference.resample_from(lesion.mask.astype(np.uint8), t1) > 0
            masks.append((mask, lesion.level))
        return masks, "automatic"

    @staticmethod
    def _seg_levels(masks: list[tuple[np.ndarray, str | None]], volumes: Mapping[str, Volume],
                    reference: Volume) -> list[tuple[np.ndarray, str | None]]:
        """Vertebral levels of SEG lesions from the detected vertebral bodies (T1 needed)."""
        if "t1" not in volumes or not masks:
            return masks
        try:
            result = SpineAnalyzer._detect(volumes)
        except UnsuitableInput:
            return masks  # levels are a courtesy here; the SEG still defines the lesions
        t1 = volumes["t1"]
        bodies = result.bodies if reference is t1 else reference.resample_from(result.bodies, t1)
        named = []
        for mask, _ in masks:
            owners = bodies[mask]
            owners = owners[owners > 0]
            level = result.body_levels.get(int(np.bincount(owners).argmax())) if owners.size else None
            named.append((mask, level))
        return named

    @staticmethod
    def _detect(volumes: Mapping[str, Volume]) -> DetectionResult:
        t1 = volumes["t1"]
        t2 = volumes.get("t2")
        t2_data = None if t2 is None else t2.data if t2.affine.shape == t1.affine.shape and np.allclose(
            t2.affine, t1.affine, atol=1e-3) and t2.shape3d == t1.shape3d else None
        if t2 is not None and t2_data is None:
            t2_data = _resample_values(t2, t1)
        try:
            return detect_lesions(t1.data, t1.affine, t1.spacing, t2_data, DetectionOptions())
        except SpineDataError as exc:
            raise UnsuitableInput(f"automatic vertebral-lesion detection failed: {exc}") from exc

    # ----------------------------------------------------------------- findings
    def _findings(self, lesions: Sequence[_Lesion], models: SpineModelSet, own: str, lead: str,
                  reference: Volume, source: str, notes: list[str],
                  volumes: Mapping[str, Volume]) -> dict[str, Any]:
        aucs = models.validation_aucs
        rows = []
        for number, lesion in enumerate(lesions, start=1):
            row: dict[str, Any] = {
                "tracking_id": f"lesion {number}",
                "level": lesion.level,
                "volume_mm3": round(float(lesion.mask.sum() * np.prod(reference.spacing)), 1),
                "p_hemangioma": {s: round(p, 4) for s, p in lesion.p_hemangioma.items()},
            }
            if lesion.p_hemangioma:
                combined = combine_probabilities(lesion.p_hemangioma, aucs)
                row.update({
                    "p_hemangioma_combined": round(combined.probability, 4),
                    "combined_from": list(combined.sequences),
                    "class": combined.label,
                    "combination_reliable": combined.reliable,
                })
            rows.append(row)
        return {
            "sequence": own,
            "lead_sequence": lead,
            "lead_series": reference.series_instance_uid,
            "combined_report": own == lead,
            "sequences_available": [s for s in SEQUENCES if s in volumes],
            "lesion_source": source,
            "lesions": rows,
            "models": {s: {"name": m.name, "version": m.version, "validation_auc": round(m.validation_auc, 4)}
                       for s, m in models.models.items()},
            "less_reliable_sequences": [s for s in SEQUENCES if s not in RELIABLE_SEQUENCES],
            "notes": notes,
            "clinical_use": NOT_FOR_CLINICAL_USE,
        }

    # ------------------------------------------------------------------ outputs
    def _outputs(self, job: AnalysisInput, own: Volume, lesions: Sequence[_Lesion], models: SpineModelSet,
                 findings: Mapping[str, Any], source: str, settings: SpineSettings) -> list[Any]:
        calibrations = {s: m.calibration for s, m in models.models.items()}
        parameters = tuple(p for cal in calibrations.values() if cal is not None for p in cal.algorithm_parameters())
        algorithm = Algorithm(self.name, self.version, parameters=parameters)
        datasets: list[Any] = []
        seg = None
        if source == "automatic" and lesions and findings["combined_report"]:
            segments = [Segment(_LESION_CLASS, lesion.mask, f"lesion {n}") for n, lesion in enumerate(lesions, 1)]
            seg = build_segmentation(
                own, segments, algorithm,
                OutputSeries.for_job(job.job_id, "seg", series_number=settings.series_number,
                                     series_description=f"{TEMPLATE.series_description} SEG"),
                body_part=TEMPLATE.body_part,
            )
            datasets.append(seg)
        methods: dict[str, Code] = {**TEMPLATE.methods, "t1c": _CLASSIFIER_T1C}
        probability = TEMPLATE.quantity("probability")
        groups = []
        texts: list[tuple[Code, str]] = []
        for n, (lesion, row) in enumerate(zip(lesions, findings["lesions"], strict=True), start=1):
            label = row.get("class")
            measurements = []
            reported = {s: _reported(p, calibrations[s]) for s, p in lesion.p_hemangioma.items()}
            combined = None
            if label is not None:
                combined = _reported(row["p_hemangioma_combined"],
                                     _combined_range([calibrations[s] for s in row["combined_from"]]))
                hemangioma = label == "hemangioma"
                # The template's probability is that of the stated impression.
                measurements += [MeasuredValue(probability, _percent_of_impression(p, hemangioma), methods[s])
                                 for s, p in reported.items() if p is not None]
                if combined is not None:
                    measurements.append(MeasuredValue(probability, _percent_of_impression(combined, hemangioma),
                                                      methods["combined"]))
            sites = [c.VERTEBRA] + ([vertebra(lesion.level)] if lesion.level else [])
            groups.append(LesionFinding(
                tracking_id=f"lesion {n}",
                region=LesionRegion.from_mask(lesion.mask),
                measurements=measurements,
                finding_sites=sites,
                impression=None if label is None else TEMPLATE.diagnosis(label),
                segment_number=n if seg is not None else None,
            ))
            per_sequence = ", ".join(
                f"{s.upper()} {'not reported (calibration not measured)' if p is None else format_probability(p)}"
                f"{' (less reliable)' if s not in RELIABLE_SEQUENCES else ''}"
                for s, p in reported.items()
            )
            summary = (f"lesion {n} ({lesion.level or 'level not determined'}): P(hemangioma) {per_sequence}"
                       + (f"; combined {format_probability(combined) if combined is not None else 'not reported'}"
                          f" -> {label}" if label else ""))
            texts.append((c.COMMENT, summary[:1024]))
        texts.append((c.COMMENT, "Probabilities in the measurement groups are of the stated impression; "
                                 "the combined value averages the T1 and T2 probabilities weighted by "
                                 "validation AUC and is limited to the range both models' validations support "
                                 "(its own calibration is not measured). STIR and T1C are less reliable (as the "
                                 "spine CNN study found) and not combined when T1 or T2 is available."))
        identities = "; ".join(f"{s}: {m.name} {m.version} (validation AUC {m.validation_auc:.2f})"
                               for s, m in models.models.items())
        texts.append((c.COMMENT, f"models: {identities}"[:1024]))
        texts += [cal.sr_text() for cal in calibrations.values() if cal is not None]
        if not findings["combined_report"]:
            texts.append((c.COMMENT, f"{findings['sequence'].upper()} only; the combined report is written for "
                                     f"the {findings['lead_sequence'].upper()} series "
                                     f"{findings['lead_series']}"))
        if not lesions:
            texts.append((c.COMMENT, f"no vertebral lesion found ({source})"))
        sr = build_measurement_report(
            own, TEMPLATE, groups, algorithm,
            OutputSeries.for_job(job.job_id, "sr", series_number=settings.series_number + 1,
                                 series_description=f"{TEMPLATE.series_description} SR"),
            segmentation=seg, texts=texts,
            # The lesion count makes the report complete when no lesion was found (TID 1500 needs a group).
            study_measurements=[MeasuredValue(TEMPLATE.quantity("lesion_count"), float(len(lesions)))],
        )
        datasets.append(sr)
        return datasets


def _reported(p_hemangioma: float, validated: ProbabilityCalibration | tuple[float, float] | None) -> float | None:
    """P(hemangioma) as a report may print it: clipped to the validated range, 2 significant digits."""
    if validated is None:
        return None
    lower, upper = (validated.lower, validated.upper) if isinstance(validated, ProbabilityCalibration) else validated
    return significant(min(max(float(p_hemangioma), lower), upper))


def _combined_range(calibrations: Sequence[ProbabilityCalibration | None]) -> tuple[float, float] | None:
    """The range every combined model's validation supports (None when one is unvalidated or they do not meet)."""
    if not calibrations or any(cal is None for cal in calibrations):
        return None
    lower = max(cal.lower for cal in calibrations if cal is not None)
    upper = min(cal.upper for cal in calibrations if cal is not None)
    return (lower, upper) if lower <= upper else None


def _percent_of_impression(p_hemangioma: float, hemangioma: bool) -> float:
    """The reported P(hemangioma) as the probability of the stated class, in percent."""
    return round(100.0 * (p_hemangioma if hemangioma else 1.0 - p_hemangioma), 6)


def _resample_values(moving: Volume, onto: Volume) -> np.ndarray:
    """Nearest-neighbour values of ``moving`` on ``onto``'s grid (same frame of reference)."""
    return onto.resample_from(moving.data.astype(np.float32), moving).astype(np.float32)
