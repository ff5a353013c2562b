"""The ``brainmets`` analyzer: nnU-Net detection and segmentation of brain metastases.

Method of "MRI cross-technique transfer learning for brain metastasis
detection" (Eur Radiol Exp 2025;9:15): an nnU-Net v2 model segments
metastases on a 3D post-contrast T1 series, SPACE-like (black-blood) or
MPRAGE-like (gradient echo); on MPRAGE the model trained with labels carried
from SPACE (the study's setting B) is used when configured. Most brains sent to
it have no metastasis: lesions are the connected components (26-connectivity,
minimum size setting) of the model's foreground probability whose confidence
(highest voxel probability) reaches the model folder's validated operating
point (:mod:`analyzers.brainmets.operating`, chosen for at most one false
positive per brain); each has a volume, longest diameter and centroid. A 2D
series or one with voxels coarser than ``max_voxel_mm`` is rejected: small
metastases cannot be seen on it and the model was not validated there.

Outputs: a binary SEG (one segment per lesion, segmented property SCT 128462008
secondary malignant neoplasm, tracking ID/UID shared with the SR) and a TID 1500
SR with one measurement group per lesion (volume, diameter, SCOORD/SCOORD3D,
SEG reference, finding site brain), the lesion count and the operating point
with the sensitivity and false positives per brain it was validated at. Without
a lesion the SR says "no metastasis found" (the coded finding Secondary
malignant neoplasm: Absent) and no SEG is written. With priors of the same
patient, lesions are matched by centroid distance in patient coordinates and
labelled new / stable / growing / shrinking (and prior lesions not found again
as resolved). Not for clinical use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code

from analyzers._shared import outputs as out
from analyzers._shared.orientation import AXIAL, reorient
from analyzers._shared.sanity import check_brain, check_static
from analyzers._shared.volume import SeriesGeometryError, Volume, load_series
from analyzers.brainmets.inference import ModelFolderError, NnUNetModel, Technique, TechniqueError, detect_technique
from analyzers.brainmets.instances import DEFAULT_MIN_VOXELS, LesionSet
from analyzers.brainmets.operating import OperatingPoint, OperatingPointError, confident_lesions, grown
from analyzers.contract import (
    NOT_FOR_CLINICAL_USE,
    AnalysisInput,
    AnalysisResult,
    AnalyzerSettings,
    PriorFinding,
    UnsuitableInput,
)
from sr_templates import SegmentClass
from sr_templates import codes as c
from sr_templates.brainmets import TEMPLATE

__all__ = [
    "METASTASIS_SEGMENT",
    "REFERENCE_MODEL_DIR",
    "BrainmetsAnalyzer",
    "BrainmetsSettings",
    "compare_with_prior",
    "reference_model",
]

#: Reference models shipped with pacsnode (phantom-trained, not for clinical use): ``space/``, ``mprage/``.
REFERENCE_MODEL_DIR = Path(__file__).resolve().parent / "reference_model"


def reference_model(technique: str) -> Path | None:
    """Shipped nnU-Net results folder for ``technique`` (``space``/``mprage``), or None when there is none."""
    folder = REFERENCE_MODEL_DIR / technique
    if (folder / "plans.json").is_file() and any(folder.glob("fold_*/checkpoint_final.pth")):
        return folder
    return None

#: Segmented property of the SEG: SCT 128462008 secondary malignant neoplasm.
METASTASIS_SEGMENT = SegmentClass(
    "metastasis",
    "Metastasis",
    c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    Code("128462008", "SCT", "Secondary malignant neoplasm"),
    c.BRAIN,
)


class BrainmetsSettings(AnalyzerSettings):
    """Settings of the ``brainmets`` route."""

    space_model: Path | None = None
    """nnU-Net v2 results folder of the SPACE-like model (unset: the shipped phantom-trained reference model)."""
    mprage_model: Path | None = None
    """Results folder of the MPRAGE-like model trained with MPRAGE labels (setting A; unset: the shipped
    reference model when there is one)."""
    mprage_cross_technique_model: Path | None = None
    """Results folder of the MPRAGE-like model trained with SPACE-derived labels (setting B)."""
    cross_technique: bool = False
    """Use the setting-B model on MPRAGE-like series."""
    technique: Literal["auto", "space", "mprage"] = "auto"
    """Force the technique instead of reading it from the headers."""
    folds: tuple[int | Literal["all"], ...] | None = None
    """Folds to ensemble (all present when unset)."""
    mirroring: bool = True
    """Test-time mirroring."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """Where nnU-Net runs."""
    threads: int = 2
    """torch CPU threads."""
    min_lesion_voxels: int = DEFAULT_MIN_VOXELS
    """Components with fewer voxels are dropped (when the model folder has no operating point)."""
    max_voxel_mm: float = 3.0
    """Series whose voxels are coarser than this along any axis (or 2D acquisitions) are rejected."""
    brain_margin_mm: float = 5.0
    """Lesions need at least half their voxels within this distance of the registered brain mask."""
    match_distance_mm: float = 10.0
    """Largest centroid distance of a lesion and its prior."""
    change_percent: float = 20.0
    """Volume change (relative to the prior) above which a lesion grows or shrinks."""
    series_number: int = 9400
    """Series number of the SEG (the SR gets +1)."""


def compare_with_prior(
    lesions: Sequence[dict[str, Any]],
    prior_lesions: Sequence[dict[str, Any]],
    match_distance_mm: float,
    change_percent: float,
) -> tuple[list[str], list[str | None], list[str]]:
    """Status of each lesion against the prior's lesions, matched by location.

    Pairs are formed one-to-one, nearest centroids first, up to
    ``match_distance_mm`` apart. Returns the status of each current lesion
    (``new``, ``stable``, ``growing``, ``shrinking``), the matched prior
    tracking ID (or None) and the tracking IDs of prior lesions left unmatched
    (resolved). Centroids are compared in patient coordinates, which assumes the
    head was positioned alike in both studies.
    """
    if match_distance_mm <= 0 or change_percent <= 0:
        raise ValueError("match_distance_mm and change_percent must be positive")
    now = np.array([les["centroid_lps"] for les in lesions], dtype=float).reshape(-1, 3)
    before = np.array([les["centroid_lps"] for les in prior_lesions], dtype=float).reshape(-1, 3)
    distance = np.linalg.norm(now[:, None, :] - before[None, :, :], axis=2)
    status = ["new"] * len(lesions)
    matched: list[str | None] = [None] * len(lesions)
    used: set[int] = set()
    for flat in np.argsort(distance, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, distance.shape)
        if distance[i, j] > match_distance_mm:
            break
        if matched[i] is not None or j in used:
            continue
        used.add(int(j))
        matched[i] = str(prior_lesions[j]["tracking_id"])
        v_now = float(lesions[i]["volume_ml"])
        v_before = float(prior_lesions[j]["volume_ml"])
        change = 100.0 * (v_now - v_before) / v_before if v_before > 0 else float("inf")
        status[i] = "growing" if change > change_percent else "shrinking" if change < -change_percent else "stable"
    resolved = [str(p["tracking_id"]) for k, p in enumerate(prior_lesions) if k not in used]
    return status, matched, resolved


def _check_three_d(volume: Volume, attributes: Any, max_voxel_mm: float) -> None:
    """Refuse 2D acquisitions and coarse voxels: the model was trained and validated on 3D T1."""
    acquisition = str(attributes.get("MRAcquisitionType") or volume.headers[0].get("MRAcquisitionType", "")).upper()
    coarsest = max(volume.spacing)
    if acquisition == "2D" or coarsest > max_voxel_mm:
        kind = "a 2D acquisition" if acquisition == "2D" else "a series"
        raise UnsuitableInput(
            f"brainmets needs a 3D T1 with voxels of at most {max_voxel_mm:g} mm; this is {kind} with "
            f"{coarsest:.1f} mm between slices or pixels, on which metastases of a few millimetres are not "
            "visible and the model was not validated. Send the 3D post-contrast T1 (SPACE/CUBE/VISTA or MPRAGE)."
        )


def _latest_prior(priors: Sequence[PriorFinding]) -> PriorFinding | None:
    usable = [p for p in priors if isinstance(p.findings.get("lesions"), list)]
    if not usable:
        return None
    return max(usable, key=lambda p: (p.study_date or "", p.job_id))


class BrainmetsAnalyzer:
    """Brain-metastasis detection and segmentation on SPACE-like or MPRAGE-like 3D T1C."""

    name: ClassVar[str] = "brainmets"
    version: ClassVar[str] = "1.0.0"
    needs: ClassVar[dict[str, str]] = {}
    wants_priors: ClassVar[bool] = True
    settings_model: ClassVar[type[AnalyzerSettings]] = BrainmetsSettings

    def _model_folder(self, technique: Technique, settings: BrainmetsSettings) -> tuple[Path, str]:
        if technique == "space":
            folder, label = settings.space_model or reference_model("space"), "SPACE model"
        elif settings.cross_technique:
            folder, label = settings.mprage_cross_technique_model, "MPRAGE model trained with SPACE-derived labels"
        else:
            folder, label = settings.mprage_model or reference_model("mprage"), "MPRAGE model"
        if folder is None:
            raise UnsuitableInput(f"no {label} is configured for this {technique.upper()}-like series")
        return Path(folder), label

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        """Segment the series' metastases; raise :class:`UnsuitableInput` when it cannot be done."""
        settings = job.settings
        if not isinstance(settings, BrainmetsSettings):
            settings = BrainmetsSettings.model_validate(dict(settings))
        try:
            volume = load_series(job.series.files)
        except SeriesGeometryError as exc:
            raise UnsuitableInput(f"the series is not one regular 3D volume: {exc}") from exc
        check_static(volume, "brainmets (a static 3D T1)", min_slices=3, min_matrix=32)
        _check_three_d(volume, job.series.attributes, settings.max_voxel_mm)
        # Where the brain is (MNI152 fit); a series that shows none is refused.
        brain = check_brain(volume, "brainmets")
        if settings.technique != "auto":
            technique: Technique = settings.technique
        else:
            header = volume.headers[0]
            attributes = {k: job.series.attributes.get(k, header.get(k)) for k in
                          ("SequenceName", "SeriesDescription", "ProtocolName", "ScanningSequence")}
            try:
                technique = detect_technique(attributes)
            except TechniqueError as exc:
                raise UnsuitableInput(str(exc)) from exc
        folder, model_label = self._model_folder(technique, settings)
        try:
            model = NnUNetModel(folder, settings.folds, mirroring=settings.mirroring,
                                device=settings.device, threads=settings.threads)
            point = OperatingPoint.load(folder)
            # The network sees the array axes it was trained on (axial, columns to the left, rows
            # to the back), whatever the acquisition plane and patient position; probabilities go
            # back onto the series' own grid voxel for voxel.
            canonical = reorient(volume, AXIAL)
            probability = canonical.back(model.foreground_probability(canonical.to_sitk()))
        except (ModelFolderError, OperatingPointError) as exc:
            raise UnsuitableInput(f"the configured {model_label} cannot be used: {exc}") from exc
        if not point.validated:
            point = OperatingPoint(min_voxels=settings.min_lesion_voxels)
        # Metastases are in the brain: components mostly outside it (scalp, orbits, neck) are not reported.
        inside = grown(brain.mask, volume.spacing, settings.brain_margin_mm)
        found, confidences = confident_lesions(probability, volume.affine, point, inside)
        findings = self._findings(job, found, technique, folder, model_label, settings)
        findings["operating_point"] = point.statement()
        for entry, confidence in zip(findings["lesions"], confidences, strict=True):
            entry["confidence"] = round(confidence, 4)
        datasets = self._outputs(job, volume, found, findings, settings, point)
        return AnalysisResult(datasets=datasets, findings=findings)

    def _findings(self, job: AnalysisInput, found: LesionSet, technique: str, folder: Path,
                  model_label: str, settings: BrainmetsSettings) -> dict[str, Any]:
        lesions = [
            {
                "tracking_id": f"metastasis {les.label}",
                "segment_number": les.label,
                "volume_ml": round(les.volume_ml, 5),
                "longest_diameter_mm": round(les.longest_diameter_mm, 2),
                "centroid_lps": [round(v, 2) for v in les.centroid_lps],
                "voxels": les.voxel_count,
            }
            for les in found.lesions
        ]
        findings: dict[str, Any] = {
            "lesion_count": len(lesions),
            "total_volume_ml": round(sum(les.volume_ml for les in found.lesions), 5),
            "lesions": lesions,
            "dropped_small_components": found.dropped,
            "technique": technique,
            "model": {"label": model_label, "folder": folder.name},
            "notice": NOT_FOR_CLINICAL_USE,
        }
        prior = _latest_prior(job.priors)
        if prior is not None:
            status, matched, resolved = compare_with_prior(
                lesions, prior.findings["lesions"], settings.match_distance_mm, settings.change_percent
            )
            for les, s, m in zip(lesions, status, matched, strict=True):
                les["status"] = s
                les["prior_tracking_id"] = m
            findings["comparison"] = {
                "prior_study_instance_uid": prior.study_instance_uid,
                "prior_study_date": prior.study_date,
                "counts": {k: status.count(k) for k in ("new", "stable", "growing", "shrinking")},
                "resolved": resolved,
            }
        return findings

    def _outputs(self, job: AnalysisInput, volume: Volume, found: LesionSet,
                 findings: dict[str, Any], settings: BrainmetsSettings, point: OperatingPoint) -> list[Dataset]:
        algorithm = out.Algorithm(name="pacsnode brainmets", version=self.version)
        datasets: list[Dataset] = []
        seg = None
        if found.lesions:
            segments = [out.Segment(METASTASIS_SEGMENT, found.labels == les.label,
                                    tracking_id=f"metastasis {les.label}") for les in found.lesions]
            seg = out.build_segmentation(volume, segments, algorithm, out.OutputSeries.for_job(
                job.job_id, "seg", series_number=settings.series_number))
            datasets.append(seg)
        quantities = TEMPLATE.quantities
        groups = []
        for les, entry in zip(found.lesions, findings["lesions"], strict=True):
            groups.append(out.LesionFinding(
                tracking_id=entry["tracking_id"],
                region=out.LesionRegion.from_mask(found.labels == les.label),
                measurements=[
                    out.MeasuredValue(quantities["volume"], les.volume_ml * 1000.0),
                    out.MeasuredValue(quantities["diameter"], les.longest_diameter_mm),
                ],
                segment_number=les.label,
            ))
        texts = [(c.COMMENT, f"Technique {findings['technique']}; {findings['model']['label']} "
                             f"({findings['model']['folder']}); {findings['lesion_count']} lesion(s).")]
        if not found.lesions:
            texts.insert(0, (c.IMPRESSION, "No metastasis found."))
        texts.append((c.COMMENT, point.statement()))
        comparison = findings.get("comparison")
        if comparison is not None:
            states = ", ".join(f"{e['tracking_id']}: {e['status']}" for e in findings["lesions"]) or "no lesions"
            texts.append((c.COMMENT, f"Compared with the study of {comparison['prior_study_date']}: {states}; "
                                     f"resolved: {', '.join(comparison['resolved']) or 'none'}."))
        sr = out.build_measurement_report(
            volume, TEMPLATE, groups, algorithm,
            out.OutputSeries.for_job(job.job_id, "sr", series_number=settings.series_number + 1),
            segmentation=seg,
            study_measurements=[out.MeasuredValue(quantities["lesion_count"], float(findings["lesion_count"]))],
            texts=texts,
            evaluations=[(c.METASTASIS, c.PRESENT if found.lesions else c.ABSENT)],
        )
        datasets.append(sr)
        return datasets
