"""Report content of the ``meningioma`` analyzer (WHO grade from T1C radiomics).

IBSI-compliant radiomic features (Zwanenburg et al., Radiology 2020) computed
with pyradiomics feed a nomogram whose output is the probability of WHO grade
2/3 vs grade 1. A detection stage decides first whether the series shows a
meningioma at all: its probability is a study-level measurement whose method is
:data:`~sr_templates.codes.MENINGIOMA_DETECTION`; "no meningioma found" is the
coded statement (Meningioma, Absent) in the report's Qualitative Evaluations.
PS3.16 has no concepts for pyradiomics feature names, so each reported feature
is a ``RADFEATURE`` measurement whose name the analyzer gives with
:func:`feature_concept`.
"""

from __future__ import annotations

import hashlib
from types import MappingProxyType

from pydicom.sr.coding import Code

from sr_templates import Quantity, ReportTemplate, SegmentClass, by_key
from sr_templates import codes as c

__all__ = ["PRESENCE_VALUES", "SEMANTIC_FEATURES", "SHAPE_VALUES", "TEMPLATE", "feature_concept",
           "feature_quantity"]

TEMPLATE = ReportTemplate(
    analyzer="meningioma",
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.IMAGING_PROCEDURE,
    series_description="pacsnode meningioma grade",
    finding_type=c.MENINGIOMA,
    finding_site=c.MENINGES,
    quantities=by_key(
        Quantity("rad_score", c.RADIOMICS_SCORE, c.NO_UNITS, "Rad-score",
                 "Linear radiomics score of the grading nomogram"),
        Quantity("dtl_score", c.DEEP_TRANSFER_LEARNING_SCORE, c.NO_UNITS, "DTL-score",
                 "Linear deep-feature score of the grading nomogram"),
        Quantity("volume", c.VOLUME, c.CUBIC_MILLIMETER, "Volume", "Tumour volume (mm3)"),
        Quantity("probability", c.PROBABILITY, c.PERCENT, "Probability",
                 "Probability of the stated impression (%)"),
    ),
    diagnoses=MappingProxyType({
        "grade1": c.WHO_GRADE_1,
        "grade2_3": c.WHO_GRADE_2_3,
    }),
    methods=MappingProxyType({"detection": c.MENINGIOMA_DETECTION}),
    segment_classes=by_key(
        SegmentClass("tumour", "Meningioma", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                     c.MENINGIOMA, c.MENINGES),
    ),
    body_part="BRAIN",
)


#: Semantic features of the nomogram, reported as qualitative evaluations (name -> concept).
SEMANTIC_FEATURES = MappingProxyType({
    "shape": c.TUMOUR_SHAPE,
    "margin": c.INDISTINCT_MARGIN,
    "edema": c.PERITUMORAL_EDEMA,
})
#: Values of the shape evaluation.
SHAPE_VALUES = MappingProxyType({"regular": c.REGULAR_SHAPE, "irregular": c.IRREGULAR_SHAPE})
#: Values of the margin and edema evaluations (indistinct margin / peritumoral edema present or absent).
PRESENCE_VALUES = MappingProxyType({"present": c.PRESENT, "absent": c.ABSENT})


def feature_concept(feature_name: str) -> Code:
    """Private concept of a radiomic feature (``original_glcm_JointEntropy``).

    The code value is a short stable hash of the name (code values are limited
    to 16 characters); the meaning carries the full feature name.
    """
    digest = hashlib.sha1(feature_name.encode()).hexdigest()[:10].upper()
    return c.private_code(f"RF{digest}", feature_name[:64])


def feature_quantity(feature_name: str) -> Quantity:
    """A :class:`Quantity` for a radiomic feature value (unitless)."""
    key = "f_" + "".join(ch if ch.isalnum() else "_" for ch in feature_name)
    return Quantity(key, feature_concept(feature_name), c.NO_UNITS, "Feature",
                    feature_name[:64])
