"""Digital reference objects (phantoms) per sequence: realistic DICOM series plus ground truth.

Each phantom has a generator ``generate_<name>(out, seed=0, cases=1, **options)``
writing ``out/<name>/case-XXXX/<series>/IM*.dcm`` and ``out/<name>/case-XXXX/truth/``
(``maps.npz`` with arrays on the series grid, ``truth.json`` with labels,
lesions in patient coordinates and the model constants) plus a cohort
``labels.csv``; and ``simulate_<name>(seed, case_index, **options)`` giving one
case in memory (:class:`PhantomCase`) for fast tests. Same seed, same bytes.

Anatomy comes from the MNI152 2009a template that ships inside nilearn. Not for
clinical use: the phantoms exist to test and train the analyzers.
"""

from analyzers.phantoms.brainmets import BRAINMETS_LABEL, generate_brainmets, simulate_brainmets
from analyzers.phantoms.dce import DCE_CONSTANTS, DCE_LABELS, HYPERPERFUSION_RATIO, generate_dce, simulate_dce
from analyzers.phantoms.dsc import DSC_CONSTANTS, DSC_LABELS, generate_dsc, simulate_dsc
from analyzers.phantoms.model import Patient, PhantomCase, PhantomError, Scanner, SeriesData, Study
from analyzers.phantoms.spine import SPINE_LABELS, SPINE_LEVELS, generate_spine, simulate_spine
from analyzers.phantoms.t1c import T1C_LABELS, generate_t1c, simulate_t1c

__all__ = [
    "BRAINMETS_LABEL",
    "DCE_CONSTANTS",
    "DCE_LABELS",
    "DSC_CONSTANTS",
    "DSC_LABELS",
    "HYPERPERFUSION_RATIO",
    "SPINE_LABELS",
    "SPINE_LEVELS",
    "T1C_LABELS",
    "Patient",
    "PhantomCase",
    "PhantomError",
    "Scanner",
    "SeriesData",
    "Study",
    "generate_brainmets",
    "generate_dce",
    "generate_dsc",
    "generate_spine",
    "generate_t1c",
    "simulate_brainmets",
    "simulate_dce",
    "simulate_dsc",
    "simulate_spine",
    "simulate_t1c",
]
