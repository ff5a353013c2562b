"""Sequences, classes and the combination of per-sequence probabilities (no torch needed).

The analyzer module imports this at start-up (the node loads analyzer classes to
validate its routes), so it must stay free of torch; the CNN lives in :mod:`.model`.

The combined probability of a lesion averages the T1 and T2 probabilities weighted by
each model's validation AUC; STIR and post-contrast T1 (T1C) are reported but do not
enter the combination when T1 or T2 is available, because the spine CNN study found
them unreliable (STIR AUC 0.54, T1C 0.72 against T1/T2 0.87-0.93).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analyzers.spine.errors import SpineDataError

__all__ = ["CLASSES", "RELIABLE_SEQUENCES", "SEQUENCES", "CombinedProbability", "combine_probabilities"]

SEQUENCES = ("t1", "t2", "stir", "t1c")
"""Sequences with a model of their own."""
RELIABLE_SEQUENCES = ("t1", "t2")
"""Sequences whose probabilities form the combined probability (as the study found)."""
CLASSES = ("hemangioma", "metastasis")
"""Softmax outputs in order: index 0 is hemangioma, index 1 metastasis."""


@dataclass(frozen=True)
class CombinedProbability:
    """The combined P(hemangioma) of one lesion and how it was formed."""

    probability: float
    sequences: tuple[str, ...]
    weights: tuple[float, ...]
    reliable: bool

    @property
    def label(self) -> str:
        """``hemangioma`` when the probability is at least 0.5, else ``metastasis``."""
        return CLASSES[0] if self.probability >= 0.5 else CLASSES[1]


def combine_probabilities(
    probabilities: Mapping[str, float], validation_aucs: Mapping[str, float]
) -> CombinedProbability:
    """Combine per-sequence P(hemangioma): T1 and T2 weighted by their validation AUC.

    Without T1 and T2 the less reliable sequences (STIR, T1C) are combined the same
    way and the result is flagged ``reliable=False``.

    Parameters
    ----------
    probabilities:
        P(hemangioma) per sequence (``t1``, ``t2``, ``stir``, ``t1c``).
    validation_aucs:
        Held-out AUC of each sequence's model (0.5 when missing).
    """
    if not probabilities:
        raise SpineDataError("no per-sequence probability to combine")
    used = [s for s in RELIABLE_SEQUENCES if s in probabilities]
    reliable = bool(used)
    if not used:
        used = [s for s in SEQUENCES if s in probabilities]
    weights = np.array([max(float(validation_aucs.get(s, 0.5)), 1e-6) for s in used])
    values = np.array([float(probabilities[s]) for s in used])
    value = float(np.sum(weights * values) / np.sum(weights))
    return CombinedProbability(value, tuple(used), tuple(float(w) for w in weights), reliable)
