"""Report content of the ``brainmets`` analyzer (metastasis segmentation).

nnU-Net (Isensee et al., Nat Methods 2021) segments metastases on 3D T1C;
connected components become lesions with a volume, a maximal in-plane diameter
and a tracking identifier so follow-up studies can be compared.
"""

from __future__ import annotations

from types import MappingProxyType

from sr_templates import Quantity, ReportTemplate, SegmentClass, by_key
from sr_templates import codes as c

__all__ = ["TEMPLATE"]

TEMPLATE = ReportTemplate(
    analyzer="brainmets",
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.IMAGING_PROCEDURE,
    series_description="pacsnode brain metastases",
    finding_type=c.METASTASIS,
    finding_site=c.BRAIN,
    quantities=by_key(
        Quantity("volume", c.VOLUME, c.CUBIC_MILLIMETER, "Volume",
                 "Lesion volume, sum of segmented voxels (mm3)"),
        Quantity("diameter", c.DIAMETER, c.MILLIMETER, "Diameter",
                 "Maximal in-plane diameter (mm)"),
        Quantity("lesion_count", c.LESION_COUNT, c.NO_UNITS, "Lesions",
                 "Number of segmented metastases"),
        Quantity("probability", c.PROBABILITY, c.PERCENT, "Probability",
                 "Mean voxel probability of the lesion (%)"),
    ),
    diagnoses=MappingProxyType({"metastasis": c.METASTASIS}),
    segment_classes=by_key(
        SegmentClass("metastasis", "Metastasis", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                     c.SECONDARY_MALIGNANT_NEOPLASM, c.BRAIN),
    ),
    body_part="BRAIN",
)
