"""Report content of the ``dce`` analyzer (DCE-MRI, recurrence vs radiation necrosis).

Quantities of the extended Tofts model (Tofts et al., JMRI 1999; QIBA DCE-MRI
profile): Ktrans, ve, vp, kep, native T1 from variable flip angles, the ratios
rKtrans and rVP to normal tissue, the change from the patient's prior study, and
the probability of recurrence vs radiation necrosis.
"""

from __future__ import annotations

from types import MappingProxyType

from sr_templates import Quantity, ReportTemplate, SegmentClass, by_key
from sr_templates import codes as c

__all__ = ["TEMPLATE"]

TEMPLATE = ReportTemplate(
    analyzer="dce",
    # CID 7021 also has "Dynamic Contrast MR Measurement Report" (126002); OHIF 3 reads only an
    # "Imaging Measurement Report" as TID 1500 (the other titles as plain text), docs/viewer.md.
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.MULTIPARAMETRIC_MRI,
    series_description="pacsnode DCE",
    finding_type=c.LESION_OF_BRAIN,
    finding_site=c.BRAIN,
    quantities=by_key(
        Quantity("ktrans", c.KTRANS, c.PER_MINUTE, "Ktrans",
                 "Volume transfer constant, extended Tofts (1/min)"),
        Quantity("ve", c.VE, c.NO_UNITS, "ve", "Extravascular extracellular volume fraction"),
        Quantity("vp", c.VP, c.NO_UNITS, "vp", "Plasma volume fraction"),
        Quantity("kep", c.KEP, c.PER_MINUTE, "kep", "Rate constant Ktrans/ve (1/min)"),
        Quantity("t1", c.T1, c.MILLISECOND, "T1", "Native T1, variable flip angle (ms)"),
        Quantity("rktrans", c.RELATIVE_KTRANS, c.RATIO_UNIT, "rKtrans",
                 "Ktrans relative to normal-appearing tissue"),
        Quantity("rvp", c.RELATIVE_VP, c.RATIO_UNIT, "rVP",
                 "vp relative to normal-appearing tissue"),
        Quantity("ktrans_change", c.CHANGE_FROM_PRIOR, c.PERCENT, "Ktrans change",
                 "Change of lesion Ktrans from the prior study (%)"),
        Quantity("volume", c.VOLUME, c.CUBIC_MILLIMETER, "Volume", "Lesion volume (mm3)"),
        Quantity("probability", c.PROBABILITY, c.PERCENT, "Probability",
                 "Probability of the stated impression (%)"),
    ),
    diagnoses=MappingProxyType({
        "recurrence": c.RECURRENT_TUMOR,
        "radiation_necrosis": c.RADIATION_NECROSIS,
    }),
    segment_classes=by_key(
        SegmentClass("lesion", "Enhancing lesion", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                     c.LESION, c.BRAIN),
        SegmentClass("reference", "Normal-appearing tissue", c.TISSUE, c.WHITE_MATTER, c.BRAIN),
    ),
    body_part="BRAIN",
)
