"""The study's readout: lesion / normal-tissue ratios and the prior-informed reading.

Method of "Using pretreatment MRI perfusion to inform subsequent MRI perfusion"
(Ademola et al., 2025; ``papers/dce-pretreatment-perfusion-recurrence-vs-necrosis``):

* rKtrans and rVP = mean over the whole enhancing lesion / mean over the
  contralateral normal-appearing white matter. A ratio whose reference mean is below a
  stated floor is *not computable* (NaN with the reason): a near-zero denominator makes
  any ratio, and any probability computed from it, meaningless (normal white matter with
  an intact barrier has Ktrans ≈ 0). Default floors: Ktrans 0.005 /min, vp 0.005 (see
  the analyzer's settings and docs/analyzers/dce.md).
* Hyperperfusion: a ratio ≥ 1.5 (the study's threshold; a setting here). The lesion is
  *hyperperfused* when rKtrans or rVP reaches the threshold, and shows *absent
  hyperperfusion* when both ratios are below it (the study's "ratios < 1.5").
* Prior-informed rule: when the same lesion had a pre-treatment DCE study and showed no
  hyperperfusion then, absent hyperperfusion now is an *unreliable marker of
  recurrence* and is not read as necrosis. Otherwise hyperperfusion favours recurrence
  and its absence favours radiation necrosis.
* Lesions are matched with the prior by the distance between their centroids in patient
  coordinates (mm); no registration is done, so the tolerance absorbs repositioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analyzers.dce.errors import DceInputError

__all__ = [
    "LesionRatios",
    "PriorLesion",
    "Reading",
    "is_hyperperfused",
    "lesion_ratios",
    "match_prior_lesion",
    "prior_informed_reading",
]


class Reading(StrEnum):
    """The interpretation of one lesion's perfusion."""

    FAVOURS_RECURRENCE = "hyperperfusion: favours recurrent tumour"
    FAVOURS_NECROSIS = "absent hyperperfusion: favours radiation necrosis"
    UNRELIABLE = ("absent hyperperfusion, but the lesion was not hyperperfused before "
                  "treatment: perfusion is an unreliable marker of recurrence")


@dataclass(frozen=True)
class LesionRatios:
    """Lesion-to-reference ratios of one lesion.

    Attributes
    ----------
    r_ktrans, r_vp:
        Lesion mean / reference mean (dimensionless); NaN when undefined.
    lesion_ktrans, lesion_vp, reference_ktrans, reference_vp:
        The means (1/min, ml/ml) over voxels with a successful fit.
    n_lesion, n_reference:
        Voxels with a successful fit in each region.
    r_ktrans_note, r_vp_note:
        Why the ratio is not computable ("" when it is).
    """

    r_ktrans: float
    r_vp: float
    lesion_ktrans: float
    lesion_vp: float
    reference_ktrans: float
    reference_vp: float
    n_lesion: int
    n_reference: int
    r_ktrans_note: str = ""
    r_vp_note: str = ""


def _region_mean(values: NDArray[np.float64], mask: NDArray[np.bool_]) -> tuple[float, int]:
    sel = values[mask]
    sel = sel[np.isfinite(sel)]
    return (float(sel.mean()) if sel.size else float("nan")), int(sel.size)


def _ratio(lesion: float, reference: float, floor: float, name: str, unit: str) -> tuple[float, str]:
    if not np.isfinite(reference):
        return float("nan"), f"r{name} not computable: no fitted reference voxel"
    if not np.isfinite(lesion):
        return float("nan"), f"r{name} not computable: no fitted lesion voxel"
    if reference < floor or reference <= 0:
        return float("nan"), (f"r{name} not computable: reference {name} {reference:.4g}{unit} is "
                              f"below the floor {floor:g}{unit}")
    return lesion / reference, ""


def lesion_ratios(ktrans: ArrayLike, vp: ArrayLike, lesion: ArrayLike, reference: ArrayLike, *,
                  floor_ktrans: float = 0.0, floor_vp: float = 0.0) -> LesionRatios:
    """Ratios of the lesion mean to the reference (normal white matter) mean.

    Parameters
    ----------
    ktrans, vp:
        Parameter maps (NaN = fit failure, ignored in the means).
    lesion, reference:
        Boolean masks of the same shape as the maps.
    floor_ktrans, floor_vp:
        Smallest reference mean a ratio is computed from (1/min, ml/ml); below it the
        ratio is NaN and its note says why.

    Returns
    -------
    LesionRatios
        The ratios and the region means.
    """
    if floor_ktrans < 0 or floor_vp < 0:
        raise DceInputError("ratio floors must be >= 0")
    k = np.asarray(ktrans, dtype=np.float64)
    v = np.asarray(vp, dtype=np.float64)
    les = np.asarray(lesion, dtype=bool)
    ref = np.asarray(reference, dtype=bool)
    if not (k.shape == v.shape == les.shape == ref.shape):
        raise DceInputError("maps and masks must have the same shape")
    if np.any(les & ref):
        raise DceInputError("the lesion and reference masks overlap")
    lk, n_les = _region_mean(k, les)
    lv, _ = _region_mean(v, les)
    rk, n_ref = _region_mean(k, ref)
    rv, _ = _region_mean(v, ref)
    r_k, note_k = _ratio(lk, rk, floor_ktrans, "Ktrans", " /min")
    r_v, note_v = _ratio(lv, rv, floor_vp, "VP", "")
    return LesionRatios(r_ktrans=float(r_k), r_vp=float(r_v), lesion_ktrans=lk, lesion_vp=lv,
                        reference_ktrans=rk, reference_vp=rv, n_lesion=n_les, n_reference=n_ref,
                        r_ktrans_note=note_k, r_vp_note=note_v)


def is_hyperperfused(r_ktrans: float, r_vp: float, threshold: float = 1.5) -> bool | None:
    """The study's hyperperfusion judgement from the ratios that are computable (not NaN).

    True when a computable ratio reaches ``threshold``; False when *both* are computable
    and below it (the study's "ratios < 1.5"); None when one is NaN and the other is below
    the threshold: absent hyperperfusion cannot be concluded from one ratio.

    Raises
    ------
    DceInputError
        If both ratios are NaN: hyperperfusion cannot be judged.
    """
    if not threshold > 0:
        raise DceInputError(f"the hyperperfusion threshold must be > 0, got {threshold}")
    if np.isnan(r_ktrans) and np.isnan(r_vp):
        raise DceInputError("both ratios are undefined; hyperperfusion cannot be judged")
    if (r_ktrans >= threshold) or (r_vp >= threshold):
        return True
    return None if (np.isnan(r_ktrans) or np.isnan(r_vp)) else False


@dataclass(frozen=True)
class PriorLesion:
    """A lesion of an earlier (pre-treatment) ``dce`` result.

    Attributes
    ----------
    centroid_mm:
        Centroid in patient coordinates (mm).
    r_ktrans, r_vp:
        Its ratios then.
    hyperperfused:
        Its hyperperfusion status then.
    study_date, study_instance_uid, job_id:
        Identity of the prior study, for the report.
    lesion_id:
        Tracking identifier of the lesion in the prior result.
    """

    centroid_mm: tuple[float, float, float]
    r_ktrans: float
    r_vp: float
    hyperperfused: bool
    study_date: str | None
    study_instance_uid: str
    job_id: str
    lesion_id: str

    @classmethod
    def from_findings(cls, lesion: Mapping[str, Any], *, study_date: str | None,
                      study_instance_uid: str, job_id: str) -> PriorLesion:
        """Build from one entry of a prior result's ``findings["lesions"]``."""
        try:
            centroid = tuple(float(c) for c in lesion["centroid_mm"])
            r_k = float(lesion["r_ktrans"]) if lesion["r_ktrans"] is not None else float("nan")
            r_v = float(lesion["r_vp"]) if lesion["r_vp"] is not None else float("nan")
            hyper = bool(lesion["hyperperfused"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DceInputError(f"prior lesion entry is incomplete: {exc}") from exc
        if len(centroid) != 3:
            raise DceInputError("prior lesion centroid must have three coordinates")
        return cls(centroid_mm=(centroid[0], centroid[1], centroid[2]), r_ktrans=r_k, r_vp=r_v,
                   hyperperfused=hyper, study_date=study_date,
                   study_instance_uid=study_instance_uid, job_id=job_id,
                   lesion_id=str(lesion.get("lesion_id", "")))


def match_prior_lesion(centroid_mm: ArrayLike, candidates: Sequence[PriorLesion], *,
                       max_distance_mm: float = 20.0) -> PriorLesion | None:
    """The prior lesion whose centroid is nearest, if within ``max_distance_mm``.

    Parameters
    ----------
    centroid_mm:
        Centroid of the current lesion in patient coordinates (mm).
    candidates:
        Lesions of the prior study.
    max_distance_mm:
        Largest centroid distance accepted as the same lesion.

    Returns
    -------
    PriorLesion or None
        The match, or None when no candidate is close enough.
    """
    if not max_distance_mm > 0:
        raise DceInputError("max_distance_mm must be > 0")
    c = np.asarray(centroid_mm, dtype=np.float64).reshape(3)
    best, best_d = None, np.inf
    for cand in candidates:
        d = float(np.linalg.norm(np.asarray(cand.centroid_mm) - c))
        if d < best_d:
            best, best_d = cand, d
    return best if best_d <= max_distance_mm else None


def prior_informed_reading(hyperperfused_now: bool, prior: PriorLesion | None) -> Reading:
    """Apply the study's rule.

    Parameters
    ----------
    hyperperfused_now:
        Hyperperfusion of the lesion in the current (post-treatment) study.
    prior:
        The matched pre-treatment lesion, or None when there is none.

    Returns
    -------
    Reading
        ``FAVOURS_RECURRENCE`` with hyperperfusion now; without it, ``UNRELIABLE`` when the
        matched prior lesion was not hyperperfused, else ``FAVOURS_NECROSIS``.
    """
    if hyperperfused_now:
        return Reading.FAVOURS_RECURRENCE
    if prior is not None and not prior.hyperperfused:
        return Reading.UNRELIABLE
    return Reading.FAVOURS_NECROSIS
