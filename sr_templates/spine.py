"""Report content of the ``spine`` analyzer (vertebral hemangioma vs metastasis).

A small CNN per sequence (T1, T2, STIR) gives the probability that a vertebral
lesion is a metastasis; each probability is a measurement whose method names
the sequence, and the combined probability states the impression.
"""

from __future__ import annotations

from types import MappingProxyType

from pydicom.sr.coding import Code

from sr_templates import Quantity, ReportTemplate, by_key
from sr_templates import codes as c

__all__ = ["TEMPLATE", "vertebra"]

TEMPLATE = ReportTemplate(
    analyzer="spine",
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.IMAGING_PROCEDURE,
    series_description="pacsnode spine lesions",
    finding_type=c.LESION,
    finding_site=c.VERTEBRA,
    quantities=by_key(
        Quantity("probability", c.PROBABILITY, c.PERCENT, "Probability",
                 "Probability of the stated impression (%)"),
        Quantity("volume", c.VOLUME, c.CUBIC_MILLIMETER, "Volume", "Lesion volume (mm3)"),
        Quantity("lesion_count", c.LESION_COUNT, c.NO_UNITS, "Lesions",
                 "Number of vertebral lesions found in the series"),
    ),
    diagnoses=MappingProxyType({
        "hemangioma": c.VERTEBRAL_HEMANGIOMA,
        "metastasis": c.VERTEBRAL_METASTASIS,
    }),
    methods=MappingProxyType({
        "t1": c.CLASSIFIER_T1,
        "t2": c.CLASSIFIER_T2,
        "stir": c.CLASSIFIER_STIR,
        "t1c": c.CLASSIFIER_T1C,
        "combined": c.CLASSIFIER_COMBINED,
    }),
    body_part="SPINE",
)


def vertebra(level: str) -> Code:
    """SCT code of a thoracolumbar or S1 vertebral level (``"T12"``, ``"L1"``, ``"S1"``)."""
    try:
        return c.VERTEBRAE[level.upper()]
    except KeyError:
        raise ValueError(f"unknown vertebral level {level!r}; known: {list(c.VERTEBRAE)}") from None
