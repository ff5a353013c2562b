"""The qc findings as a TID 1500 Measurement Report (Comprehensive 3D SR, highdicom).

One measurement group (TID 1501, finding type "Quality Control" DCM 110002) holds the
geometry measurements as numeric items with UCUM units and the overall verdict as a
qualitative evaluation (SCT Normal / Abnormal). Concepts PS3.16 does not define use the
private scheme ``99PACSNODE``. A Comment (DCM 121106) carries the problems found and
the "not for clinical use" notice.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from analyzers._shared.numbers import significant
from analyzers.contract import NOT_FOR_CLINICAL_USE
from analyzers.qc.geometry import GeometryFindings
from sr_templates import codes as c

__all__ = ["build_report"]

_UNITS_MM = c.MILLIMETER
_UNITS_S = c.SECOND
_UNITS_NONE = c.NO_UNITS

# (attribute of GeometryFindings, code value, meaning, unit)
_MEASUREMENTS = (
    ("frames", "QCFRAMES", "Number of frames", _UNITS_NONE),
    ("slices", "NSLICES", "Number of slices", _UNITS_NONE),
    ("time_points", "NTIMEPOINTS", "Number of time points", _UNITS_NONE),
    ("slice_spacing_mm", "QCSPACING", "Median slice spacing", _UNITS_MM),
    ("slice_spacing_irregular_gaps", "QCIRRGAPS", "Irregular slice gaps", _UNITS_NONE),
    ("missing_slices", "QCMISSSLC", "Missing slices", _UNITS_NONE),
    ("duplicate_positions", "QCDUPPOS", "Duplicate slice positions", _UNITS_NONE),
    ("missing_time_points", "QCMISSTP", "Missing slice time points", _UNITS_NONE),
    ("orientation_max_deviation", "QCORIDEV", "Maximum orientation cosine deviation", _UNITS_NONE),
    ("temporal_resolution_s", "QCTRES", "Median temporal resolution", _UNITS_S),
    ("time_steps_not_increasing", "QCTNONMON", "Time steps not increasing", _UNITS_NONE),
    ("time_steps_irregular", "QCTIRR", "Irregular time steps", _UNITS_NONE),
)
_VERDICT = c.private_code("QCGEOM", "Series geometry consistency")


def build_report(
    findings: GeometryFindings,
    evidence: Sequence[Dataset],
    *,
    algorithm_version: str,
    series_number: int = 9901,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 SR of the qc findings for the series whose headers are ``evidence``.

    UIDs are placeholders made here; the node replaces them by UIDs derived from the job.
    """
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pacsnode qc", algorithm_version]),
            name="pacsnode qc", manufacturer_name="pacsnode", model_name="qc"),
    )
    measurements = [
        hd.sr.Measurement(name=c.private_code(value, meaning), value=significant(getattr(findings, attribute)),
                          unit=unit)
        for attribute, value, meaning, unit in _MEASUREMENTS
        if getattr(findings, attribute) is not None
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[str(evidence[0].SeriesInstanceUID), "qc"]),
            identifier="series geometry"),
        finding_type=codes.DCM.QualityControl,
        algorithm_id=hd.sr.AlgorithmIdentification(name="pacsnode qc", version=algorithm_version),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            _VERDICT, codes.SCT.Normal if findings.acceptable else codes.SCT.Abnormal)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport,
    )
    comment = "; ".join(findings.problems) if findings.problems else "no geometry problem found"
    root = report[0]
    root.ContentSequence.append(hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=f"{comment}. {NOT_FOR_CLINICAL_USE}"[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    first = evidence[0]
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pacsnode",
        is_complete=True,
        series_description=f"QC {first.get('SeriesDescription', '')}"[:48] + " NOT CLINICAL",
    )
    sr.CodingSchemeIdentificationSequence = [c.coding_scheme_identification()]
    return sr
