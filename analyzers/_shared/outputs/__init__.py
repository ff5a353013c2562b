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

from analyzers._shared.numbers import MEASUREMENT_DIGITS, significant
from analyzers._shared.output_sources import OutputError
from analyzers._shared.outputs.common import MANUFACTURER, Algorithm, OutputSeries, derive_uid
from analyzers._shared.outputs.images import Segment, build_parametric_map, build_segmentation
from analyzers._shared.outputs.reports import (
    LesionFinding,
    LesionRegion,
    MeasuredValue,
    build_measurement_report,
    build_summary_report,
)

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
