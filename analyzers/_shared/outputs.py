"""DICOM outputs every analyzer writes: binary SEG, Parametric Map, TID 1500 SR.

Built on highdicom. Every object

- carries the source series' patient and study (highdicom copies them from the
  source images), a new series whose SeriesDescription names the analyzer,
  Manufacturer ``pacsnode``, the analyzer's name as model and its version as
  software version;
- takes deterministic UIDs when given (the node derives them from the job id,
  see :func:`derive_uid`, so that re-running a job replaces its outputs);
- says "not for clinical use" (``analyzers.contract.NOT_FOR_CLINICAL_USE``).

Viewer needs (DESIGN.md, "Outputs a viewer shows"): SEGs are BINARY (OHIF does
not show FRACTIONAL ones); Parametric Maps are float32 with a Real World Value
Mapping carrying the quantity and UCUM unit; SR measurement groups carry image
coordinates (SCOORD3D and SCOORD) in addition to the SEG reference because OHIF
hides groups without coordinates. TID 1411 lists those references as
alternatives; pacsnode keeps the standard one (the segment, or the image region
without a SEG) first and adds the other coordinates after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from analyzers._shared.numbers import MEASUREMENT_DIGITS, significant
from analyzers._shared.output_sources import OutputError, region_reference, source_images
from analyzers._shared.volume import Volume
from analyzers.contract import NOT_FOR_CLINICAL_USE
from sr_templates import Quantity, ReportTemplate, SegmentClass
from sr_templates import codes as c

__all__ = [
    "MANUFACTURER",
    "MEASUREMENT_DIGITS",
    "Algorithm",
    "LesionFinding",
    "LesionRegion",
    "MeasuredValue",
    "OutputError",
    "OutputSeries",
    "Segment",
    "build_measurement_report",
    "build_parametric_map",
    "build_segmentation",
    "build_summary_report",
    "derive_uid",
    "significant",
]

MANUFACTURER = "pacsnode"
"""Manufacturer of every output."""

# ContentDescription is LO (64 characters): the short form of NOT_FOR_CLINICAL_USE.
_CONTENT_NOTICE = "NOT FOR CLINICAL USE"
_SEG_SERIES_NUMBER = 9100
_PM_SERIES_NUMBER = 9200
#: Largest stored value of an integer-scaled map; the next one marks voxels without a value.
_INTEGER_TOP = 65534
_SR_SERIES_NUMBER = 9300


def _observer_name(algorithm_name: str) -> str:
    """The device's name with pacsnode once (some analyzers name themselves "pacsnode dsc")."""
    if algorithm_name.startswith(MANUFACTURER):
        return algorithm_name
    return f"{MANUFACTURER} {algorithm_name}"


def derive_uid(*parts: str) -> str:
    """A UID determined by ``parts`` (e.g. job id and role), under pydicom's root.

    The same parts give the same UID, so a re-run of a job writes objects with
    the same identity instead of duplicates.
    """
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise OutputError("derive_uid needs one or more non-empty strings")
    # generate_uid hashes the concatenation: length prefixes keep ("ab", "c") and ("a", "bc") apart.
    return str(generate_uid(entropy_srcs=["pacsnode", *(f"{len(p)}:{p}" for p in parts)]))


@dataclass(frozen=True)
class Algorithm:
    """The analyzer that made an output (Algorithm Identification)."""

    name: str
    version: str
    family: Code = c.ARTIFICIAL_INTELLIGENCE
    parameters: tuple[str, ...] = ()
    """TID 4019 Algorithm Parameters of the SR (e.g. the probability model and its
    validation, :meth:`analyzers._shared.probability.ProbabilityCalibration.algorithm_parameters`)."""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise OutputError("algorithm name and version must not be empty")

    def content_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG/PM Algorithm Identification Sequence."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=self.family, version=self.version
        )

    def sr_template(self) -> hd.sr.AlgorithmIdentification:
        """The SR template TID 4019 Algorithm Identification."""
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version, parameters=list(self.parameters) or None
        )


@dataclass(frozen=True)
class OutputSeries:
    """Identity of one output object and its series.

    Leave the UIDs ``None`` to derive them from the source series and the
    description (deterministic as well); the node passes UIDs derived from the
    job id.
    """

    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_number: int = 1

    @classmethod
    def for_job(
        cls,
        job_id: str,
        role: str,
        *,
        series_number: int | None = None,
        series_description: str | None = None,
    ) -> OutputSeries:
        """UIDs derived from the job id and the output's role (``"seg"``, ``"pm-ktrans"``).

        Re-running the job gives the same UIDs, so the PACS replaces instead of
        duplicating its results.
        """
        series_uid = derive_uid(job_id, role, "series")
        return cls(
            series_instance_uid=series_uid,
            sop_instance_uid=derive_uid(job_id, role, "instance", "1"),
            series_number=series_number,
            series_description=series_description,
        )

    def resolve(
        self, source: Volume, algorithm: Algorithm, kind: str, default_number: int
    ) -> tuple[str, str, int, str]:
        """Series UID, SOP UID, series number and description of the object."""
        # Some analyzers name themselves "pacsnode dsc", others "meningioma": one prefix either way.
        name = _observer_name(algorithm.name)
        description = self.series_description or f"{name} {kind}"
        description = description[:64]
        series_uid = self.series_instance_uid or derive_uid(
            source.series_instance_uid, algorithm.name, algorithm.version, kind, "series"
        )
        sop_uid = self.sop_instance_uid or derive_uid(series_uid, str(self.instance_number))
        number = self.series_number if self.series_number is not None else default_number
        return series_uid, sop_uid, number, description


def _uses_private_codes(dataset: Dataset) -> bool:
    """Whether any item of ``dataset`` (recursively) uses :data:`codes.PRIVATE_SCHEME`."""
    for element in dataset:
        if element.VR == "SQ":
            if any(_uses_private_codes(item) for item in element.value):
                return True
        elif element.keyword == "CodingSchemeDesignator" and element.value == c.PRIVATE_SCHEME:
            return True
    return False


def _stamp(dataset: Dataset, description: str, body_part: str | None) -> None:
    """Attributes all outputs share beyond what highdicom sets."""
    dataset.SeriesDescription = description
    if body_part:
        dataset.BodyPartExamined = body_part
    # SOP Common Module: a private coding scheme used in the object is identified in
    # its Coding Scheme Identification Sequence.
    if _uses_private_codes(dataset):
        existing = list(dataset.get("CodingSchemeIdentificationSequence", []))
        if all(item.CodingSchemeDesignator != c.PRIVATE_SCHEME for item in existing):
            dataset.CodingSchemeIdentificationSequence = [
                *existing, c.coding_scheme_identification()
            ]


# --------------------------------------------------------------------------- SEG
@dataclass(frozen=True)
class Segment:
    """One segment of a binary SEG: a class and its mask on the source grid.

    ``tracking_id`` (and ``tracking_uid``, derived like a lesion's in the SR when
    omitted) tie the segment to a lesion's measurement group.
    """

    segment_class: SegmentClass
    mask: np.ndarray
    tracking_id: str | None = None
    tracking_uid: str | None = None


def build_segmentation(
    source: Volume,
    segments: Sequence[Segment],
    algorithm: Algorithm,
    output: OutputSeries | None = None,
    *,
    body_part: str | None = "BRAIN",
    source_datasets: Sequence[Dataset] = (),
) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG with one segment per item of ``segments``.

    Parameters
    ----------
    source:
        The series the masks were drawn on; every slice of its first time
        point is referenced as a source image.
    segments:
        Masks of shape ``source.shape3d``; segment numbers follow their order
        (1, 2, ...).
    algorithm:
        Name and version of the analyzer (Segment Algorithm Identification).
    output:
        UIDs, series number and description of the SEG.
    body_part:
        BodyPartExamined of the SEG series.
    source_datasets:
        Complete source instances, needed only for an Enhanced MR (multi-frame)
        source whose volume was not read from files (otherwise they are re-read
        from the files the volume came from).
    """
    if not segments:
        raise OutputError("a SEG needs at least one segment")
    stacked = []
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        mask = np.asarray(segment.mask)
        if mask.shape != source.shape3d:
            raise OutputError(
                f"mask of segment {number} has shape {mask.shape}, the source {source.shape3d}"
            )
        stacked.append(mask.astype(bool))
        cls = segment.segment_class
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=cls.label,
                segmented_property_category=cls.category,
                segmented_property_type=cls.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm.content_sequence(),
                tracking_id=segment.tracking_id,
                # Same default as the SR's lesion groups so both share the UID.
                tracking_uid=segment.tracking_uid or (
                    None if segment.tracking_id is None
                    else derive_uid(source.series_instance_uid, segment.tracking_id)
                ),
                anatomic_regions=None if cls.anatomic_region is None else [cls.anatomic_region],
            )
        )
    # highdicom wants (frames, rows, columns, segments) with frames in source order.
    pixel_array = np.stack(stacked, axis=-1).astype(np.uint8)
    series_uid, sop_uid, number, description = (output or OutputSeries()).resolve(
        source, algorithm, "SEG", _SEG_SERIES_NUMBER
    )
    sources = source_images(source, source_datasets)
    seg = hd.seg.Segmentation(
        source_images=sources.images,
        pixel_array=pixel_array,
        **sources.geometry,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=sop_uid,
        instance_number=(output or OutputSeries()).instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=MANUFACTURER,
        content_description=_CONTENT_NOTICE,
        content_label="SEGMENTATION",
        # An all-empty SEG still needs frames; otherwise empty frames are omitted.
        omit_empty_frames=bool(pixel_array.any()),
    )
    _stamp(seg, description, body_part)
    return seg


# --------------------------------------------------------------------------- PM
def build_parametric_map(
    source: Volume,
    values: np.ndarray,
    quantity: Quantity,
    algorithm: Algorithm,
    output: OutputSeries | None = None,
    *,
    body_part: str | None = "BRAIN",
    fill_value: float | None = None,
    source_datasets: Sequence[Dataset] = (),
    integer_scaled: bool = False,
) -> hd.pm.ParametricMap:
    """A float32 (or integer-scaled) Parametric Map of one quantity on the source grid.

    Parameters
    ----------
    source:
        Series the map was computed from (its first time point's slices are
        the source images and define the geometry).
    values:
        Map of shape ``source.shape3d`` in the quantity's unit. NaN marks
        voxels without a value (failed fits, outside the analysed region) and
        is stored as NaN (IEEE 754 in Float Pixel Data, which the standard
        allows); ±inf is stored as NaN too.
    quantity:
        Concept, UCUM unit and labels (from :mod:`sr_templates`); stored in the
        Real World Value Mapping (identity slope/intercept, float values).
    algorithm, output:
        As for :func:`build_segmentation`.
    body_part:
        BodyPartExamined; Laterality is copied from the source only when it
        has one (PS3.3 General Series: only for paired body parts).
    fill_value:
        When given, written instead of NaN where ``values`` is not finite, for
        a site whose viewer cannot display NaN (the map then cannot tell a
        failed fit from a true value of ``fill_value``).
    source_datasets:
        As for :func:`build_segmentation` (Enhanced MR sources).
    integer_scaled:
        Write unsigned 16-bit Pixel Data instead of Float Pixel Data, for viewers and
        converters that show no float images: stored value ``s`` means ``s * slope +
        intercept`` over the map's finite range (0 to 65534 mapped, the Real World Value
        Mapping carries slope and intercept); 65535 marks voxels without a value and lies
        outside the mapped range. The description says "int".

    The map's Modality is the source's (an MR map of an MR series).
    """
    data = np.asarray(values, dtype=np.float32)
    if data.shape != source.shape3d:
        raise OutputError(f"map has shape {data.shape}, the source {source.shape3d}")
    finite = np.isfinite(data)
    missing = np.float32(np.nan) if fill_value is None else np.float32(fill_value)
    data = np.where(finite, data, missing).astype(np.float32)
    values_set = data[np.isfinite(data)]
    low, high = (float(values_set.min()), float(values_set.max())) if values_set.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    slope, intercept = 1.0, 0.0
    value_range: tuple[float, float] = (low, high)
    pixels: np.ndarray = data
    if integer_scaled:
        slope, intercept = (high - low) / _INTEGER_TOP, low
        stored = np.round((np.where(np.isfinite(data), data, low) - intercept) / slope)
        pixels = np.where(np.isfinite(data), np.clip(stored, 0, _INTEGER_TOP), _INTEGER_TOP + 1).astype(np.uint16)
        value_range = (0, _INTEGER_TOP)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=quantity.label,
        lut_explanation=quantity.description,
        unit=quantity.unit,
        value_range=value_range,
        slope=slope,
        intercept=intercept,
        quantity_definition=quantity.concept,
    )
    kind = f"{quantity.label} int" if integer_scaled else quantity.label
    series_uid, sop_uid, number, description = (output or OutputSeries()).resolve(
        source, algorithm, kind, _PM_SERIES_NUMBER
    )
    # Window over the central 98 % of the finite non-zero (or non-fill) values so the map is readable at once.
    informative = values_set[values_set != (0.0 if fill_value is None else fill_value)]
    if informative.size:
        w_low, w_high = np.percentile(informative, [1.0, 99.0])
    else:
        w_low, w_high = low, high
    # The window is in stored values: real values for a float map, scaled ones for an integer map.
    w_low, w_high = (w_low - intercept) / slope, (w_high - intercept) / slope
    width = max(float(w_high - w_low), 1e-6)
    sources = source_images(source, source_datasets)
    pm = hd.pm.ParametricMap(
        source_images=sources.images,
        pixel_array=pixels,
        **sources.geometry,
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=sop_uid,
        instance_number=(output or OutputSeries()).instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=MANUFACTURER,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # LINEAR_EXACT allows windows narrower than 1 (maps of fractions such as ve).
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=float(w_low) + width / 2.0,
                window_width=width,
                window_explanation=quantity.label,
                voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,
            )
        ],
        content_label=quantity.label.upper().replace(" ", "_")[:16] or "MAP",
        content_description=_CONTENT_NOTICE,
    )
    _stamp(pm, description, body_part)
    pm.Modality = str(source.headers[0].get("Modality") or pm.Modality)
    # Laterality (Type 2C) only for paired body parts: copy it when the source has one.
    laterality = source.headers[0].get("Laterality", "")
    if laterality:
        pm.Laterality = laterality
    return pm


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
