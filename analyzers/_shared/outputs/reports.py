"""TID 1500 Structured Report outputs (highdicom), see :mod:`analyzers._shared.outputs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from analyzers._shared.numbers import significant
from analyzers._shared.output_sources import OutputError, region_reference, source_images
from analyzers._shared.outputs.common import (
    _SR_SERIES_NUMBER,
    MANUFACTURER,
    Algorithm,
    OutputSeries,
    _observer_name,
    _stamp,
    derive_uid,
)
from analyzers._shared.volume import Volume
from analyzers.contract import NOT_FOR_CLINICAL_USE
from sr_templates import Quantity, ReportTemplate
from sr_templates import codes as c

__all__ = ["LesionFinding", "LesionRegion", "MeasuredValue", "build_measurement_report", "build_summary_report"]


# --------------------------------------------------------------------------- SR
@dataclass(frozen=True)
class MeasuredValue:
    """A numeric measurement of a lesion or of the study.

    ``method`` distinguishes values of the same concept (e.g. a probability per
    MR sequence); ``derivation`` says how voxels were summarised (SCT Mean).
    """

    quantity: Quantity
    value: float
    method: Code | None = None
    derivation: Code | None = None

    def template(self) -> hd.sr.Measurement:
        """The TID 300 Measurement."""
        if not np.isfinite(self.value):
            raise OutputError(f"{self.quantity.key} is not finite ({self.value})")
        if self.derivation is not None and self.quantity.concept == c.VOLUME:
            # TID 1419: a derivation (Mean, Maximum) summarises voxel values; a volume is no such summary.
            raise OutputError(f"{self.quantity.key}: a volume takes no derivation ({self.derivation.meaning})")
        return hd.sr.Measurement(
            name=self.quantity.concept,
            value=significant(self.value),
            unit=self.quantity.unit,
            method=self.method,
            derivation=self.derivation,
        )


@dataclass(frozen=True)
class LesionRegion:
    """Where a lesion is: an ellipse on one slice of the source volume.

    ``points`` are 4 in-plane voxel positions (column, row) on slice
    ``slice_index``: the two ends of the major axis, then of the minor axis
    (DICOM ELLIPSE graphic). They become an SCOORD on that slice's image and an
    SCOORD3D in patient coordinates.
    """

    slice_index: int
    points: np.ndarray

    def __post_init__(self) -> None:
        if np.asarray(self.points).shape != (4, 2):
            raise OutputError("an ellipse region needs 4 (column, row) points")

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> LesionRegion:
        """Ellipse of the lesion on its largest slice, from second moments.

        For a uniform ellipse the variance along an axis is (semi-axis)²/4, so
        the semi-axes are 2·sqrt(eigenvalue) of the pixel covariance (at least
        half a pixel).
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3 or not mask.any():
            raise OutputError("lesion mask must be a non-empty (z, y, x) array")
        k = int(np.argmax(mask.sum(axis=(1, 2))))
        rows, cols = np.nonzero(mask[k])
        coords = np.stack([cols, rows], axis=1).astype(np.float64)
        center = coords.mean(axis=0)
        cov = np.cov(coords.T) if len(coords) > 1 else np.zeros((2, 2))
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        minor_axis, major_axis = eigenvectors[:, 0], eigenvectors[:, 1]
        semi_minor, semi_major = np.maximum(2.0 * np.sqrt(np.maximum(eigenvalues, 0.0)), 0.5)
        points = np.array([
            center + semi_major * major_axis,
            center - semi_major * major_axis,
            center + semi_minor * minor_axis,
            center - semi_minor * minor_axis,
        ])
        return cls(k, points)

    @classmethod
    def circle(cls, center_ijk: Sequence[float], radius_voxels: float) -> LesionRegion:
        """A circle of ``radius_voxels`` around a (column, row, slice) position."""
        i, j, k = (float(v) for v in center_ijk)
        r = max(float(radius_voxels), 0.5)
        points = np.array([[i + r, j], [i - r, j], [i, j + r], [i, j - r]])
        return cls(round(k), points)

    def bounding_box(self) -> np.ndarray:
        """The ellipse's axis-aligned bounding box as a closed polygon of 5 (column, row) points."""
        points = np.asarray(self.points, dtype=np.float64)
        center = (points[0] + points[1]) / 2.0
        major, minor = (points[0] - points[1]) / 2.0, (points[2] - points[3]) / 2.0
        half = np.sqrt(major**2 + minor**2)  # extent of the ellipse along each image axis
        low, high = center - half, center + half
        return np.array([[low[0], low[1]], [high[0], low[1]], [high[0], high[1]], [low[0], high[1]],
                         [low[0], low[1]]])

    def scoord(self, source: Volume) -> hd.sr.ImageRegion:
        """SCOORD on the stored image of the slice (pixel centres at +0.5): the ellipse's bounding
        box as a closed POLYLINE.

        The stored image is the slice's frame of a multi-frame source, or its
        mosaic image (offset to the slice's tile) for a Siemens MOSAIC.
        The exact ellipse is the SCOORD3D. A box is what viewers draw and list: OHIF 3 turns an
        image region POLYLINE of 5 points into a rectangle measurement with the group's values,
        and skips an ELLIPSE it has no tool for ("OBLIQUE ELLIPSE NOT YET SUPPORTED").
        """
        if not 0 <= self.slice_index < source.shape3d[0]:
            raise OutputError(f"slice {self.slice_index} is outside the source volume")
        where = region_reference(source, self.slice_index)
        image = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=where.sop_class_uid,
            referenced_sop_instance_uid=where.sop_instance_uid,
            referenced_frame_numbers=None if where.frame_number is None else [where.frame_number],
        )
        return hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=self.bounding_box() + 0.5 + np.asarray(where.pixel_offset),
            source_image=image,
        )

    def coordinates(self, source: Volume) -> hd.sr.CoordinatesForMeasurement:
        """The :meth:`scoord` box as the spatial coordinates a measurement is inferred from
        (TID 300 INFERRED FROM SCOORD, purpose "Source")."""
        region = self.scoord(source)
        return hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.asarray(region.GraphicData, dtype=np.float64).reshape(-1, 2),
            source_image=region.ContentSequence[0],
        )

    def scoord3d(self, source: Volume) -> hd.sr.ImageRegion3D:
        """SCOORD3D ELLIPSE of the same points in patient coordinates (mm)."""
        ijk = np.column_stack([self.points, np.full(4, float(self.slice_index))])
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSE,
            graphic_data=source.index_to_patient(ijk),
            frame_of_reference_uid=source.frame_of_reference_uid,
        )


@dataclass(frozen=True)
class LesionFinding:
    """One lesion's measurement group (TID 1411 in TID 1500).

    Attributes
    ----------
    tracking_id:
        Human-readable identifier, stable across studies (``"lesion 1"``).
    region:
        Where the lesion is (always written as SCOORD and SCOORD3D).
    measurements:
        Numeric values (volume, rCBV, probability, ...).
    finding_type, finding_sites:
        Coded finding and anatomic sites; default to the template's.
    impression:
        Stated diagnosis (DCM 121073 Impression); a ``probability`` measurement
        in the same group refers to it.
    evaluations:
        Further coded (name, value) qualitative evaluations.
    segment_number:
        Segment of the referenced SEG that delineates the lesion.
    tracking_uid:
        Tracking UID; derived from the source series and ``tracking_id`` if
        not given.
    """

    tracking_id: str
    region: LesionRegion
    measurements: Sequence[MeasuredValue] = ()
    finding_type: Code | None = None
    finding_sites: Sequence[Code] | None = None
    impression: Code | None = None
    evaluations: Sequence[tuple[Code, Code]] = ()
    segment_number: int | None = None
    tracking_uid: str | None = None


@dataclass(frozen=True)
class _Evidence:
    source: Volume
    segmentation: Dataset | None = None
    extra: Sequence[Dataset] = field(default_factory=tuple)


def _observation_context(algorithm: Algorithm) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid("device", algorithm.name),
        name=_observer_name(algorithm.name)[:64],
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=device,
        )
    )


def _lesion_group(
    lesion: LesionFinding,
    template: ReportTemplate,
    evidence: _Evidence,
    algorithm: Algorithm,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    source = evidence.source
    tracking = hd.sr.TrackingIdentifier(
        uid=lesion.tracking_uid or derive_uid(source.series_instance_uid, lesion.tracking_id),
        identifier=lesion.tracking_id,
    )
    evaluations = [hd.sr.QualitativeEvaluation(name, value) for name, value in lesion.evaluations]
    if lesion.impression is not None:
        evaluations.insert(0, hd.sr.QualitativeEvaluation(c.IMPRESSION, lesion.impression))
    sites = lesion.finding_sites
    if sites is None:
        sites = [] if template.finding_site is None else [template.finding_site]
    region_2d = lesion.region.scoord(source)
    referenced_segment = None
    if lesion.segment_number is not None:
        seg = evidence.segmentation
        if seg is None:
            raise OutputError(f"{lesion.tracking_id} names a segment but no SEG was given")
        numbers = {int(item.SegmentNumber) for item in seg.SegmentSequence}
        if lesion.segment_number not in numbers:
            raise OutputError(
                f"{lesion.tracking_id}: segment {lesion.segment_number} not in SEG {sorted(numbers)}"
            )
        # Constructed directly: ReferencedSegment.from_segmentation fails on SEGs
        # whose source images are referenced per frame.
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=lesion.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid),
        )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_regions=None if referenced_segment is not None else [region_2d],
        referenced_segment=referenced_segment,
        finding_type=lesion.finding_type or template.finding_type,
        finding_sites=[hd.sr.FindingSite(site) for site in sites],
        algorithm_id=algorithm.sr_template(),
        measurements=[m.template() for m in lesion.measurements] or None,
        qualitative_evaluations=evaluations or None,
    )
    # Coordinates for viewers (see module docstring), appended after the TID 1411
    # reference so that readers taking the first reference find the standard one.
    items = group[0].ContentSequence
    if referenced_segment is not None:
        items.append(region_2d)
    items.append(lesion.region.scoord3d(source))
    # OHIF 3 turns a group into a measurement of its panel only from the SCOORD under the
    # group's first NUM (TID 300 INFERRED FROM, as its own reports write it); see docs/viewer.md.
    first_num = next((item for item in items if item.ValueType == "NUM"), None)
    if first_num is not None:
        first_num.ContentSequence = [*first_num.get("ContentSequence", []), lesion.region.coordinates(source)]
    return group


def _not_for_clinical_use_container() -> hd.sr.ContainerContentItem:
    """TID 1500 row "Qualitative Evaluations" with the not-for-clinical-use text."""
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(
            name=c.COMMENT,
            value=NOT_FOR_CLINICAL_USE,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ])
    return container


def _report_document(
    template: ReportTemplate,
    groups: list[object],
    evidence: _Evidence,
    algorithm: Algorithm,
    output: OutputSeries | None,
    texts: Sequence[tuple[Code, str]] = (),
    evaluations: Sequence[tuple[Code, Code]] = (),
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=template.procedure,
        imaging_measurements=groups or None,  # type: ignore[arg-type]
        title=template.title,
    )
    container = _not_for_clinical_use_container()
    for name, value in evaluations:
        container.ContentSequence.append(
            hd.sr.CodeContentItem(name=name, value=value,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        )
    for name, text in texts:
        container.ContentSequence.append(
            hd.sr.TextContentItem(name=name, value=text,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        )
    report[0].ContentSequence.append(container)
    series_uid, sop_uid, number, description = (output or OutputSeries()).resolve(
        evidence.source, algorithm, "SR",
        _SR_SERIES_NUMBER,
    )
    if evidence.source.frame_numbers is None and any(
            int(h.get("NumberOfFrames", 1) or 1) > 1 for h in evidence.source.headers):
        # The SCOORD on a referenced image needs the frame number of every slice.
        raise OutputError("SR on a multi-frame source read without its frame numbers is not supported")
    documents = list(source_images(evidence.source).images) + list(evidence.extra)
    if evidence.segmentation is not None:
        documents.append(evidence.segmentation)
    sr = hd.sr.Comprehensive3DSR(
        evidence=documents,
        content=report,
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=sop_uid,
        instance_number=(output or OutputSeries()).instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    _stamp(sr, description, None)
    sr.ManufacturerModelName = algorithm.name
    sr.SoftwareVersions = algorithm.version
    return sr


def build_measurement_report(
    source: Volume,
    template: ReportTemplate,
    lesions: Sequence[LesionFinding],
    algorithm: Algorithm,
    output: OutputSeries | None = None,
    *,
    segmentation: Dataset | None = None,
    study_measurements: Sequence[MeasuredValue] = (),
    texts: Sequence[tuple[Code, str]] = (),
    evidence: Sequence[Dataset] = (),
    evaluations: Sequence[tuple[Code, Code]] = (),
    study_evaluations: Sequence[tuple[Code, Code]] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report (Comprehensive 3D SR) with one group per lesion.

    Parameters
    ----------
    source:
        The analyzed series: referenced by every group's image region.
    template:
        The analyzer's report content (title, procedure, default finding).
    lesions:
        Measurement groups, in order. May be empty (e.g. no metastasis found).
    segmentation:
        The SEG written by the same job; lesions with a ``segment_number``
        reference its segment.
    study_measurements:
        Values not tied to one lesion (e.g. number of lesions); written as a
        TID 1501 group with tracking identifier ``"study"``.
    texts:
        Free-text statements added to the report's Qualitative Evaluations
        (which always hold the not-for-clinical-use text).
    evidence:
        Other instances referenced (e.g. a prior study's SR).
    evaluations:
        Coded statements about the whole study, added to the report's
        Qualitative Evaluations (TID 1500 row "Qualitative Evaluations"), e.g.
        ``(codes.MENINGIOMA, codes.ABSENT)`` when the analyzer found nothing:
        the "nothing found" outcome is then a coded finding, not a missing one.
    study_evaluations:
        Coded evaluations of the ``"study"`` group (with ``study_measurements``),
        e.g. the same absent finding next to the probability that it is there.
    """
    refs = _Evidence(source, segmentation, tuple(evidence))
    groups: list[object] = [_lesion_group(les, template, refs, algorithm) for les in lesions]
    ids = [les.tracking_id for les in lesions]
    if len(set(ids)) != len(ids):
        raise OutputError(f"tracking identifiers must be unique, got {ids}")
    if study_measurements:
        groups.append(_study_group(source, template, algorithm, study_measurements, study_evaluations))
    return _report_document(template, groups, refs, algorithm, output, texts, evaluations)


def _study_group(
    source: Volume,
    template: ReportTemplate,
    algorithm: Algorithm,
    measurements: Sequence[MeasuredValue],
    evaluations: Sequence[tuple[Code, Code]],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(source.series_instance_uid, algorithm.name, "study"),
            identifier="study",
        ),
        finding_type=template.finding_type,
        algorithm_id=algorithm.sr_template(),
        measurements=[m.template() for m in measurements] or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(n, v) for n, v in evaluations]
        or None,
    )


def build_summary_report(
    source: Volume,
    template: ReportTemplate,
    algorithm: Algorithm,
    output: OutputSeries | None = None,
    *,
    measurements: Sequence[MeasuredValue] = (),
    evaluations: Sequence[tuple[Code, Code]] = (),
    texts: Sequence[tuple[Code, str]] = (),
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report without lesions (e.g. QC): key findings of the series.

    Numeric ``measurements`` and coded ``evaluations`` form one TID 1501 group
    (tracking identifier ``"study"``); ``texts`` and the not-for-clinical-use
    statement go to the report's Qualitative Evaluations.
    """
    if not (measurements or evaluations or texts):
        raise OutputError("a summary report needs measurements, evaluations or texts")
    groups: list[object] = []
    if measurements or evaluations:
        groups.append(_study_group(source, template, algorithm, measurements, evaluations))
    return _report_document(template, groups, _Evidence(source), algorithm, output, texts)
