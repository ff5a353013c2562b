"""Binary SEG and Parametric Map outputs (highdicom), see :mod:`analyzers._shared.outputs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from analyzers._shared.output_sources import OutputError, source_images
from analyzers._shared.outputs.common import (
    _CONTENT_NOTICE,
    _INTEGER_TOP,
    _PM_SERIES_NUMBER,
    _SEG_SERIES_NUMBER,
    MANUFACTURER,
    Algorithm,
    OutputSeries,
    _stamp,
    derive_uid,
)
from analyzers._shared.volume import Volume
from sr_templates import Quantity, SegmentClass

__all__ = ["Segment", "build_parametric_map", "build_segmentation"]


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
        **_identity(series_uid, number, sop_uid, output, algorithm),
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
        **_identity(series_uid, number, sop_uid, output, algorithm),
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


def _identity(series_uid: str, number: int, sop_uid: str, output: OutputSeries | None,
              algorithm: Algorithm) -> dict[str, Any]:
    """The series, instance and device attributes a SEG and a Parametric Map share."""
    return {"series_instance_uid": series_uid, "series_number": number, "sop_instance_uid": sop_uid,
            "instance_number": (output or OutputSeries()).instance_number, "manufacturer": MANUFACTURER,
            "manufacturer_model_name": algorithm.name, "software_versions": algorithm.version,
            "device_serial_number": MANUFACTURER}
