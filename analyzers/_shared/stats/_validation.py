"""Input checks shared by the statistics modules.

Every public function of :mod:`analyzers._shared.stats` validates its arrays with
these helpers so that a wrong label coding or a length mismatch fails loudly with
a message that names the argument, instead of producing a silently wrong metric.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["StatsInputError", "as_binary_labels", "as_groups", "as_scores"]


class StatsInputError(ValueError):
    """The arrays given to a statistics function cannot be used as they are."""


def as_binary_labels(y: ArrayLike, name: str = "y", *, need_both: bool = True) -> NDArray[np.int_]:
    """Return ``y`` as a 1-D int array of 0/1, checking coding and (optionally) both classes."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise StatsInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(int)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise StatsInputError(f"{name} must be coded 0/1 (1 = positive class)")
    out = arr.astype(int)
    if need_both and (out.sum() == 0 or out.sum() == out.size):
        raise StatsInputError(f"{name} must contain both classes (0 and 1)")
    return out


def as_scores(p: ArrayLike, n: int, name: str = "scores", *, probability: bool = False) -> NDArray[np.float64]:
    """Return ``p`` as a finite 1-D float array of length ``n`` (in [0, 1] when ``probability``)."""
    arr = np.asarray(p, dtype=float)
    if arr.ndim != 1 or arr.size != n:
        raise StatsInputError(f"{name} must be 1-D with {n} values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise StatsInputError(f"{name} contains NaN or infinite values")
    if probability and ((arr < 0).any() or (arr > 1).any()):
        raise StatsInputError(f"{name} must be probabilities in [0, 1]")
    return arr


def as_groups(groups: ArrayLike | None, n: int, name: str = "groups") -> NDArray[np.int_]:
    """Return integer cluster codes (0..k-1) for ``groups``; each row its own cluster when None."""
    if groups is None:
        return np.arange(n)
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.size != n:
        raise StatsInputError(f"{name} must be 1-D with {n} values, got shape {arr.shape}")
    _, codes = np.unique(arr.astype(str) if arr.dtype == object else arr, return_inverse=True)
    return codes.astype(int)
