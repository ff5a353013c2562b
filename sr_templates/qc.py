"""Report content of the built-in ``qc`` analyzer (series quality summary).

The QC report has no lesions: it states key findings about the series (signal
to noise ratio, number of slices and time points) as measurements and a
quality finding as a qualitative evaluation, plus free text.
"""

from __future__ import annotations

from types import MappingProxyType

from sr_templates import Quantity, ReportTemplate, by_key
from sr_templates import codes as c
from sr_templates.codes import private_code

__all__ = ["TEMPLATE"]

TEMPLATE = ReportTemplate(
    analyzer="qc",
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.IMAGING_PROCEDURE,
    series_description="pacsnode QC",
    finding_type=c.QUALITY_CONTROL,
    quantities=by_key(
        Quantity("snr", c.SIGNAL_TO_NOISE_RATIO, c.NO_UNITS, "SNR",
                 "Mean signal over background standard deviation"),
        Quantity("slices", private_code("NSLICES", "Number of slices"), c.NO_UNITS,
                 "Slices", "Number of slices"),
        Quantity("time_points", private_code("NTIMEPOINTS", "Number of time points"),
                 c.NO_UNITS, "Time points", "Number of time points"),
    ),
    diagnoses=MappingProxyType({
        "acceptable": c.NORMAL,
        "unacceptable": c.ABNORMAL,
    }),
    body_part="BRAIN",
)
