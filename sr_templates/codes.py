"""Coded concepts used in pacsnode's SEG, Parametric Map and SR outputs.

Every standard code here is taken from DICOM PS3.16 (scheme ``DCM``), SNOMED CT
(``SCT``) as listed in PS3.16, or is a UCUM unit expression (``UCUM``); each was
checked against the concept dictionary that pydicom ships (generated from
PS3.16). Concepts that PS3.16 does not provide (e.g. meningioma grades,
vertebral hemangioma, radiation necrosis, the analyzers' derived ratios) are
defined once below in the private coding scheme :data:`PRIVATE_SCHEME`
(``99PACSNODE``); the ``99`` prefix marks a private scheme as PS3.3 8.2 requires,
and every output that uses it declares it in its Coding Scheme Identification
Sequence (see :func:`coding_scheme_identification`).
"""

from __future__ import annotations

from types import MappingProxyType

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

__all__ = [
    "PRIVATE_SCHEME",
    "PRIVATE_SCHEME_NAME",
    "PRIVATE_SCHEME_UID",
    "coding_scheme_identification",
    "private_code",
]

PRIVATE_SCHEME = "99PACSNODE"
"""Coding scheme designator of pacsnode's own concepts."""

PRIVATE_SCHEME_NAME = "pacsnode local concepts"
"""Human readable name of :data:`PRIVATE_SCHEME`."""

PRIVATE_SCHEME_UID = "1.2.826.0.1.3680043.8.498.41724084369141736859613304306422198422"
"""UID of :data:`PRIVATE_SCHEME`: ``pydicom.uid.generate_uid(entropy_srcs=["pacsnode coding
scheme 99PACSNODE"])``."""


def private_code(value: str, meaning: str) -> Code:
    """A concept of pacsnode's private coding scheme (:data:`PRIVATE_SCHEME`)."""
    if not value or len(value) > 16:
        raise ValueError(f"private code value must have 1-16 characters, got {value!r}")
    return Code(value, PRIVATE_SCHEME, meaning)


def coding_scheme_identification() -> Dataset:
    """An item of the Coding Scheme Identification Sequence describing ``99PACSNODE``."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeUID = PRIVATE_SCHEME_UID
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "pacsnode project"
    return item


# --------------------------------------------------------------------------- DCM
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
PROBABILITY = Code("122157", "DCM", "Probability")
IMPRESSION = Code("121073", "DCM", "Impression")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
QUALITY_FINDING = Code("111052", "DCM", "Quality Finding")
QUALITY_CONTROL = Code("110002", "DCM", "Quality Control")
SIGNAL_TO_NOISE_RATIO = Code("111787", "DCM", "Signal to Noise Ratio")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
KTRANS = Code("126312", "DCM", "Ktrans")
KEP = Code("126313", "DCM", "kep")
VE = Code("126314", "DCM", "ve")
VP = Code("126331", "DCM", "vp")
T1 = Code("113063", "DCM", "T1")
RELATIVE_CBV = Code("126398", "DCM", "Relative Regional Blood Volume")
RELATIVE_CBF = Code("126397", "DCM", "Relative Regional Blood Flow")
ABSOLUTE_CBV = Code("126391", "DCM", "Absolute Regional Blood Volume")
ABSOLUTE_CBF = Code("126390", "DCM", "Absolute Regional Blood Flow")
MEAN_TRANSIT_TIME = Code("113052", "DCM", "Mean Transit Time")
R2_STAR = Code("126395", "DCM", "R2*")
MAXIMUM_SLOPE = Code("126375", "DCM", "Maximum Slope")
SIGNAL_TIME_TO_PEAK = Code("122634", "DCM", "Signal Time to Peak")
PERFUSION_BY_SUSCEPTIBILITY_MR = Code(
    "126303", "DCM", "Perfusion analysis by Susceptibility MR technique"
)
MULTIPARAMETRIC_MRI = Code("126020", "DCM", "Multiparametric MRI")
SUM_OF_SEGMENTED_VOXELS = Code("126030", "DCM", "Sum of segmented voxel method for volume")
PERILESIONAL_WHITE_MATTER = Code("110706", "DCM", "Perilesional White Matter")

# --------------------------------------------------------------------------- SCT
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
NEOPLASM = Code("108369006", "SCT", "Neoplasm")
LESION = Code("52988006", "SCT", "Lesion")
LESION_OF_BRAIN = Code("301766008", "SCT", "Lesion of Brain")
MASS = Code("4147007", "SCT", "Mass")
SECONDARY_MALIGNANT_NEOPLASM = Code("128462008", "SCT", "Secondary malignant neoplasm")
#: The metastasis concept every analyzer uses (finding type, SEG property type, diagnosis):
#: SCT 128462008, the same concept as :data:`SECONDARY_MALIGNANT_NEOPLASM`.
METASTASIS = SECONDARY_MALIGNANT_NEOPLASM
#: SCT 14799000 (a morphology); kept for reading older objects, not used in new outputs.
NEOPLASM_METASTATIC = Code("14799000", "SCT", "Neoplasm, metastatic")
RECURRENT_TUMOR = Code("25173007", "SCT", "Recurrent tumor")
NECROSIS = Code("6574001", "SCT", "Necrosis")
EDEMA = Code("79654002", "SCT", "Edema")
HISTOLOGIC_GRADE = Code("371469007", "SCT", "Histologic grade")
VOLUME = Code("118565006", "SCT", "Volume")
DIAMETER = Code("81827009", "SCT", "Diameter")
MEAN = Code("373098007", "SCT", "Mean")
MEDIAN = Code("373099004", "SCT", "Median")
SCORE = Code("246262008", "SCT", "Score")
RATIO = Code("118586006", "SCT", "Ratio")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")
CONTRALATERAL = Code("255209002", "SCT", "Contralateral")
HEAD = Code("69536005", "SCT", "Head")
BRAIN = Code("12738006", "SCT", "Brain")
WHITE_MATTER = Code("389080008", "SCT", "White Matter")
DURA_MATER = Code("18545000", "SCT", "Dura mater")
MENINGES = Code("1231004", "SCT", "Meninges")
SPINE = Code("421060004", "SCT", "Spine")
THORACOLUMBAR_SPINE = Code("1217256009", "SCT", "Thoraco-lumbar spine")
VERTEBRA = Code("51282000", "SCT", "Vertebra")
ARTERY = Code("51114001", "SCT", "Artery")

VERTEBRAE: MappingProxyType[str, Code] = MappingProxyType({
    "T1": Code("64864005", "SCT", "T1 vertebra"),
    "T2": Code("53733008", "SCT", "T2 vertebra"),
    "T3": Code("1626008", "SCT", "T3 vertebra"),
    "T4": Code("73071006", "SCT", "T4 vertebra"),
    "T5": Code("56401006", "SCT", "T5 vertebra"),
    "T6": Code("45296009", "SCT", "T6 vertebra"),
    "T7": Code("62487009", "SCT", "T7 vertebra"),
    "T8": Code("11068009", "SCT", "T8 vertebra"),
    "T9": Code("82687006", "SCT", "T9 vertebra"),
    "T10": Code("7610001", "SCT", "T10 vertebra"),
    "T11": Code("12989004", "SCT", "T11 vertebra"),
    "T12": Code("23215003", "SCT", "T12 vertebra"),
    "L1": Code("66794005", "SCT", "L1 vertebra"),
    "L2": Code("14293000", "SCT", "L2 vertebra"),
    "L3": Code("36470004", "SCT", "L3 vertebra"),
    "L4": Code("11994002", "SCT", "L4 vertebra"),
    "L5": Code("49668003", "SCT", "L5 vertebra"),
    "S1": Code("65985001", "SCT", "First sacral vertebra"),
})
"""Vertebral levels (SCT) keyed by their usual label (the spine phantom and detector reach S1)."""

# -------------------------------------------------------------------------- UCUM
NO_UNITS = Code("1", "UCUM", "no units")
RATIO_UNIT = Code("{ratio}", "UCUM", "ratio")
PERCENT = Code("%", "UCUM", "Percent")
PER_MINUTE = Code("/min", "UCUM", "/min")
PER_SECOND = Code("/s", "UCUM", "/s")
SECOND = Code("s", "UCUM", "second")
MILLISECOND = Code("ms", "UCUM", "millisecond")
MILLIMETER = Code("mm", "UCUM", "millimeter")
CUBIC_MILLIMETER = Code("mm3", "UCUM", "cubic millimeter")
CUBIC_CENTIMETER = Code("cm3", "UCUM", "cubic centimeter")
ML_PER_100G = Code("ml/[100]g", "UCUM", "milliliter per 100 gram")
ML_PER_100G_PER_MIN = Code("ml/[100]g/min", "UCUM", "milliliter per 100 gram per minute")
ARBITRARY_UNIT = Code("[arb'U]", "UCUM", "arbitrary unit")

# ------------------------------------------------------------- private (99PACSNODE)
# Diagnoses and findings that PS3.16 has no concept for.
MENINGIOMA = private_code("MENINGIOMA", "Meningioma")
DURAL_METASTASIS = private_code("DURALMET", "Dural metastasis")
RADIATION_NECROSIS = private_code("RADNECROSIS", "Radiation necrosis")
VERTEBRAL_HEMANGIOMA = private_code("VERTHEMANGIOMA", "Vertebral hemangioma")
VERTEBRAL_METASTASIS = private_code("VERTMET", "Vertebral metastasis")
WHO_GRADE_1 = private_code("WHOGRADE1", "WHO CNS grade 1")
WHO_GRADE_2_3 = private_code("WHOGRADE2OR3", "WHO CNS grade 2 or 3")
# Derived perfusion quantities without a PS3.16 concept.
PERCENTAGE_SIGNAL_RECOVERY = private_code("PSR", "Percentage signal recovery")
RELATIVE_PSR = private_code("RPSR", "Relative percentage signal recovery")
WASH_IN_TIME = private_code("WASHINTIME", "Wash-in time")
WASH_OUT_SLOPE = private_code("WASHOUTSLOPE", "Wash-out slope")
DELTA_R2_STAR_PEAK = private_code("DR2SPEAK", "Peak delta R2*")
RELATIVE_KTRANS = private_code("RKTRANS", "Relative Ktrans")
RELATIVE_VP = private_code("RVP", "Relative vp")
CHANGE_FROM_PRIOR = private_code("CHANGEPRIOR", "Change from prior study")
RADIOMICS_SCORE = private_code("RADSCORE", "Radiomics score")
RADIOMICS_FEATURE = private_code("RADFEATURE", "Radiomics feature")
CLASSIFIER_T1 = private_code("CNNT1", "Classifier on T1-weighted series")
CLASSIFIER_T2 = private_code("CNNT2", "Classifier on T2-weighted series")
CLASSIFIER_STIR = private_code("CNNSTIR", "Classifier on STIR series")
CLASSIFIER_COMBINED = private_code("CNNCOMBINED", "Combined classifier over sequences")
CLASSIFIER_T1C = private_code("CNNT1C", "Classifier on post-contrast T1 series")
# DSC: leakage and timing quantities without a PS3.16 concept.
LEAKAGE_COEFFICIENT_K2 = private_code("BSWK2", "Leakage coefficient K2")
RELATIVE_WASH_IN_TIME = private_code("RWASHINTIME", "Relative wash-in time")
# Meningioma grading nomogram: deep-feature score and the semantic features it uses.
DEEP_TRANSFER_LEARNING_SCORE = private_code("DTLSCORE", "Deep transfer learning score")
TUMOUR_SHAPE = private_code("TUMSHAPE", "Tumour shape")
REGULAR_SHAPE = private_code("REGULAR", "Regular (round or round-like)")
IRREGULAR_SHAPE = private_code("IRREGULAR", "Irregular")
INDISTINCT_MARGIN = private_code("INDISTMARGIN", "Indistinct margin")
PERITUMORAL_EDEMA = private_code("PERITUMEDEMA", "Peritumoral edema")
LESION_COUNT = private_code("LESIONCOUNT", "Number of lesions")
# Detection stage: the model that decided whether the finding is there at all.
MENINGIOMA_DETECTION = private_code("MENDETECT", "Meningioma detection model")
NOT_FOR_CLINICAL_USE_FLAG = private_code("NOTCLINICAL", "Not for clinical use")
