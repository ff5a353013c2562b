"""DCE-MRI analyzer: T1 mapping, concentration, AIF, extended Tofts maps and the
prior-informed reading of recurrence vs radiation necrosis.

The numerical library (``t1``, ``concentration``, ``aif``, ``tofts``, ``readout``,
``model``) works on numpy arrays and is vectorised over voxels; ``analyzer`` wraps it
as the ``dce`` analyzer of the node. Every clinical output carries
:data:`analyzers.contract.NOT_FOR_CLINICAL_USE`.
"""

from __future__ import annotations

from analyzers.dce.aif import AifResult, parker_aif
from analyzers.dce.arterial import ArterialInput, ArterialSettings, VfaSignals, find_arterial_input
from analyzers.dce.concentration import (
    BolusArrival,
    detect_bolus_arrival,
    relaxivity,
    signal_to_concentration,
)
from analyzers.dce.errors import DceInputError, RecurrenceModelError
from analyzers.dce.model import RecurrenceModel, synthetic_ratio_cohort
from analyzers.dce.readout import (
    LesionRatios,
    PriorLesion,
    Reading,
    is_hyperperfused,
    lesion_ratios,
    match_prior_lesion,
    prior_informed_reading,
)
from analyzers.dce.t1 import VfaFit, default_t10, fit_vfa_linear, fit_vfa_nonlinear, spgr_signal
from analyzers.dce.tofts import (
    FitBounds,
    PatlakFit,
    ToftsFit,
    extended_tofts,
    fit_extended_tofts,
    fit_patlak,
)

__all__ = [
    "AifResult",
    "ArterialInput",
    "ArterialSettings",
    "BolusArrival",
    "DceInputError",
    "FitBounds",
    "LesionRatios",
    "PatlakFit",
    "PriorLesion",
    "Reading",
    "RecurrenceModel",
    "RecurrenceModelError",
    "ToftsFit",
    "VfaFit",
    "VfaSignals",
    "default_t10",
    "detect_bolus_arrival",
    "extended_tofts",
    "find_arterial_input",
    "fit_extended_tofts",
    "fit_patlak",
    "fit_vfa_linear",
    "fit_vfa_nonlinear",
    "is_hyperperfused",
    "lesion_ratios",
    "match_prior_lesion",
    "parker_aif",
    "prior_informed_reading",
    "relaxivity",
    "signal_to_concentration",
    "spgr_signal",
    "synthetic_ratio_cohort",
]
