"""Report content of the ``dsc`` analyzer (DSC perfusion, dural lesions).

Quantities follow the DSC-MRI consensus (Boxerman et al., AJNR 2020) and the
dural-lesion DSC study in ``../shared/papers``: leakage-corrected CBV and CBF
from SVD deconvolution, MTT, percentage signal recovery (PSR), wash-in time,
wash-out slope, and their ratios to contralateral normal-appearing white matter.
The diagnosis is dural metastasis vs meningioma (LDA probability).
"""

from __future__ import annotations

from types import MappingProxyType

from sr_templates import Quantity, ReportTemplate, SegmentClass, by_key
from sr_templates import codes as c

__all__ = ["TEMPLATE"]

TEMPLATE = ReportTemplate(
    analyzer="dsc",
    title=c.IMAGING_MEASUREMENT_REPORT,
    procedure=c.PERFUSION_BY_SUSCEPTIBILITY_MR,
    series_description="pacsnode DSC perfusion",
    finding_type=c.MASS,
    finding_site=c.DURA_MATER,
    quantities=by_key(
        Quantity("cbv", c.ABSOLUTE_CBV, c.ML_PER_100G, "CBV",
                 "Leakage-corrected cerebral blood volume (ml/100 g)"),
        Quantity("cbf", c.ABSOLUTE_CBF, c.ML_PER_100G_PER_MIN, "CBF",
                 "Cerebral blood flow, SVD deconvolution (ml/100 g/min)"),
        Quantity("mtt", c.MEAN_TRANSIT_TIME, c.SECOND, "MTT", "Mean transit time CBV/CBF (s)"),
        Quantity("psr", c.PERCENTAGE_SIGNAL_RECOVERY, c.PERCENT, "PSR",
                 "Percentage signal recovery (%)"),
        Quantity("delta_r2s_peak", c.DELTA_R2_STAR_PEAK, c.PER_SECOND, "dR2* peak",
                 "Peak change of R2* during the bolus (1/s)"),
        Quantity("wash_in_time", c.WASH_IN_TIME, c.SECOND, "Wash-in time",
                 "Time from bolus arrival to peak (s)"),
        Quantity("wash_out_slope", c.WASH_OUT_SLOPE, c.PER_SECOND, "Wash-out slope",
                 "Slope of the normalised signal after the peak (1/s)"),
        Quantity("rcbv", c.RELATIVE_CBV, c.RATIO_UNIT, "rCBV",
                 "CBV relative to contralateral normal white matter"),
        Quantity("rcbf", c.RELATIVE_CBF, c.RATIO_UNIT, "rCBF",
                 "CBF relative to contralateral normal white matter"),
        Quantity("rpsr", c.RELATIVE_PSR, c.RATIO_UNIT, "rPSR",
                 "PSR relative to contralateral normal white matter"),
        Quantity("k2", c.LEAKAGE_COEFFICIENT_K2, c.PER_SECOND, "K2",
                 "Boxerman-Schmainda-Weisskoff leakage coefficient K2 (1/s)"),
        Quantity("rwit", c.RELATIVE_WASH_IN_TIME, c.RATIO_UNIT, "rWiT",
                 "Wash-in time relative to contralateral white matter"),
        Quantity("volume", c.VOLUME, c.CUBIC_MILLIMETER, "Volume", "Lesion volume (mm3)"),
        Quantity("probability", c.PROBABILITY, c.PERCENT, "Probability",
                 "Probability of the stated impression (%)"),
    ),
    diagnoses=MappingProxyType({
        "meningioma": c.MENINGIOMA,
        "dural_metastasis": c.DURAL_METASTASIS,
    }),
    segment_classes=by_key(
        SegmentClass("lesion", "Dural lesion", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, c.MASS,
                     c.DURA_MATER),
        SegmentClass("reference_wm", "Contralateral NAWM", c.TISSUE, c.WHITE_MATTER, c.BRAIN),
        SegmentClass("aif", "Arterial input function voxels", c.ANATOMICAL_STRUCTURE, c.ARTERY, c.BRAIN),
    ),
    body_part="BRAIN",
)
