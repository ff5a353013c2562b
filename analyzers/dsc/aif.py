"""Automatic arterial input function, after Mouridsen et al. (MRM 2006;55:524).

1. Candidates: the ``auc_fraction`` (10 %) of brain voxels with the largest area
   under the ΔR2* curve, at most 2000 (arteries carry the most contrast agent).
2. The ``roughness_fraction`` (25 %) most irregular candidates are dropped.
   Irregularity is the root-mean-square second difference of the baseline and
   of the late tail relative to the curve's peak. (Mouridsen's ∫(C'')² over the
   whole curve also grows with the sharpness of a genuine arterial first pass
   and would remove the best arterial curves; roughness outside the first pass
   measures only noise, motion and partial-volume contamination.)
3. k-means (k = 5) on the area-normalised curves; the cluster whose mean curve
   has the highest peak / (time to peak × full width at half maximum), i.e. the
   earliest, highest and narrowest bolus, is kept and clustered again.
   (Mouridsen ranked clusters by the first moment alone; a leaky lesion whose
   late ΔR2* falls below zero has an early first moment too, so peak height and
   width are part of the score here.)
4. The final cluster (at most ``max_voxels``, highest peaks first) is the AIF:
   its voxel indices are returned so that a reader can check them, and the AIF
   is their mean curve.

The clustering is seeded, so the same input always gives the same voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from analyzers.dsc.errors import DscInputError

__all__ = ["AifSelection", "curve_features", "select_aif"]

# Smallest cluster that may be chosen as arterial.
_MIN_CLUSTER_VOXELS = 2
# Deterministic clustering: the same input always picks the same voxels.
_KMEANS_SEED = 0
# At most this many candidate curves are clustered (the largest areas): it bounds
# the k-means cost on large series without changing which curves are arterial.
_MAX_CANDIDATES = 2000


@dataclass(frozen=True)
class AifSelection:
    """The chosen arterial voxels and their mean curve.

    Attributes
    ----------
    indices:
        Positions of the chosen voxels in the candidate array passed to :func:`select_aif`.
    curve:
        Mean ΔR2* curve of the chosen voxels, shape ``(n,)``.
    first_moment_s, peak, fwhm_s:
        Shape descriptors of ``curve``.
    """

    indices: np.ndarray
    curve: np.ndarray
    first_moment_s: float
    peak: float
    fwhm_s: float


def curve_features(curves: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
    """Peak, time to peak, first moment and full width at half maximum of each curve.

    Parameters
    ----------
    curves:
        Shape ``(voxels, n)``, baseline near zero.
    times:
        Shape ``(n,)`` in seconds.
    """
    c = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    t = np.asarray(times, dtype=np.float64)
    positive = np.clip(c, 0.0, None)
    area = np.trapezoid(positive, t, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        moment = np.trapezoid(positive * t, t, axis=1) / area
    peak = c.max(axis=1)
    above = c >= 0.5 * peak[:, None]
    dt = float(np.median(np.diff(t)))
    return {
        "area": area,
        "peak": peak,
        "time_to_peak_s": t[np.argmax(c, axis=1)],
        "first_moment_s": np.where(area > 0, moment, np.inf),
        "fwhm_s": above.sum(axis=1) * dt,
    }


def _irregularity(curves: np.ndarray, baseline_frames: int) -> np.ndarray:
    """RMS second difference outside the first pass, relative to the peak.

    Uses the first three quarters of the baseline (arteries arrive a little
    before the brain average) and the last quarter of the series; 0 for a clean curve.
    """
    n = curves.shape[1]
    head = curves[:, : max(3, (3 * baseline_frames) // 4)]
    tail = curves[:, n - max(3, n // 4) :]
    squares = np.concatenate([np.diff(head, n=2, axis=1), np.diff(tail, n=2, axis=1)], axis=1) ** 2
    peak = np.maximum(curves.max(axis=1), 1e-12)
    return np.sqrt(squares.mean(axis=1)) / peak


def _best_cluster(
    normalised: np.ndarray, raw: np.ndarray, times: np.ndarray, n_clusters: int
) -> np.ndarray:
    """Positions (into the given rows) of the cluster with the earliest, narrowest, highest mean."""
    distinct = np.unique(normalised, axis=0).shape[0]
    k = min(n_clusters, distinct)
    if k < 2:
        return np.arange(normalised.shape[0])
    # Small problems: one thread avoids OpenMP oversubscription on a busy machine.
    with threadpool_limits(limits=1):
        labels = KMeans(n_clusters=k, n_init=4, random_state=_KMEANS_SEED).fit_predict(normalised)
    members = [m for m in (np.nonzero(labels == label)[0] for label in range(k)) if m.size]
    means = np.stack([raw[m].mean(axis=0) for m in members])
    score = _arterial_score(means, times)
    # A cluster of one voxel is an outlier (noise spike, motion), not an artery.
    sizes = np.array([m.size for m in members])
    if np.any(sizes >= _MIN_CLUSTER_VOXELS):
        score = np.where(sizes >= _MIN_CLUSTER_VOXELS, score, -np.inf)
    return members[int(np.argmax(score))]


def _arterial_score(curves: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Peak / (time to peak × FWHM): high, early and narrow curves score highest."""
    features = curve_features(curves, times)
    duration = np.maximum(features["time_to_peak_s"] - times[0], times[1] - times[0])
    width = np.maximum(features["fwhm_s"], times[1] - times[0])
    return features["peak"] / (duration * width)


def select_aif(
    delta_r2: np.ndarray,
    times: np.ndarray,
    auc_fraction: float = 0.1,
    roughness_fraction: float = 0.25,
    n_clusters: int = 5,
    max_voxels: int = 20,
    baseline_frames: int = 5,
) -> AifSelection:
    """Choose arterial voxels automatically among ``delta_r2`` ``(voxels, n)`` curves.

    Parameters
    ----------
    delta_r2:
        Candidate curves (normally every brain voxel), baseline near zero.
    times:
        Frame times in seconds.
    auc_fraction:
        Fraction of voxels with the largest area kept as candidates.
    roughness_fraction:
        Fraction of the most irregular candidates dropped.
    n_clusters:
        k of each k-means round.
    max_voxels:
        At most this many voxels (the highest peaks of the final cluster) form the AIF.
    baseline_frames:
        Number of pre-bolus frames, over which irregularity is measured.

    Raises
    ------
    DscInputError
        Too few voxels with a contrast bolus.
    """
    curves = np.atleast_2d(np.asarray(delta_r2, dtype=np.float64))
    t = np.asarray(times, dtype=np.float64)
    if curves.shape[1] != t.size:
        raise DscInputError("curves and times must have the same number of frames")
    if not (0 < auc_fraction <= 1 and 0 <= roughness_fraction < 1 and n_clusters >= 2):
        raise DscInputError("invalid AIF selection parameters")
    features = curve_features(curves, t)
    area = features["area"]
    valid = np.nonzero(np.isfinite(area) & (area > 0) & np.all(np.isfinite(curves), axis=1))[0]
    if valid.size < n_clusters:
        raise DscInputError("too few voxels with a contrast bolus to find an arterial input")
    keep = min(_MAX_CANDIDATES, max(n_clusters, int(np.ceil(auc_fraction * valid.size))))
    by_area = valid[np.argsort(area[valid])[::-1][:keep]]
    normalised = curves[by_area] / area[by_area, None]
    rough = _irregularity(curves[by_area], baseline_frames)
    smooth_count = max(n_clusters, int(np.ceil((1.0 - roughness_fraction) * by_area.size)))
    order = np.argsort(rough)[:smooth_count]
    candidates = by_area[order]
    normalised = normalised[order]
    first = _best_cluster(normalised, curves[candidates], t, n_clusters)
    chosen = candidates[first]
    if first.size > n_clusters:
        second = _best_cluster(normalised[first], curves[chosen], t, n_clusters)
        chosen = chosen[second]
    if chosen.size > max_voxels:
        chosen = chosen[np.argsort(features["peak"][chosen])[::-1][:max_voxels]]
    chosen = np.sort(chosen)
    curve = curves[chosen].mean(axis=0)
    summary = curve_features(curve[None], t)
    return AifSelection(
        indices=chosen,
        curve=curve,
        first_moment_s=float(summary["first_moment_s"][0]),
        peak=float(summary["peak"][0]),
        fwhm_s=float(summary["fwhm_s"][0]),
    )
