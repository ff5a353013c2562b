"""The DSC reference object as DICOM studies, and the node's maps scored from the PACS.

:func:`write_case` writes one case of :mod:`bench.dro.dsc_object` (a leak condition at
one SNR) as a classic MR DSC series of its own study (``ep2d_perf`` in the description,
so the shipped ``dsc`` route takes it). :func:`score_case` reads the Parametric Maps the
node delivered to the PACS and scores every patch with the OSIPI tolerances (CBV
1 ml/100 g + 10 %, CBF 15 ml/100 g/min + 10 %) and MTT within 20 %, counts map voxels
that are negative (none may be), and returns the SR's texts. With the object's
literature tissue relaxivity the CBV and CBF maps are divided by the case's
``relaxivity_ratio`` before scoring (an analysis that assumes equal relaxivities reads
them that many times the truth; MTT does not depend on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread

from bench.dro.dicomwrite import Geometry, StudyIdentity, dro_uid, write_mr_series
from bench.dro.dsc_object import DscDroCase
from bench.dro.harness import ParametricMapVolume, read_parametric_maps, sr_texts
from bench.dro.scoring import Patch, PatchScore, score_patches

__all__ = ["CaseResults", "case_name", "patches", "score_case", "write_case"]

#: Stored counts per signal unit: S0 = 1000 → 40,000; a T1-dominant rise and Rician noise stay below 2^16.
_COUNTS_PER_UNIT = 40.0
_SERIES_NUMBER = 30


def case_name(case: DscDroCase) -> str:
    """``"DSC DRO t1 SNR 50"``: names the study, patient and series of a case.

    Cases with the literature tissue relaxivity end in ``"literature r2*"``.
    """
    snr = "noise-free" if case.snr is None else f"SNR {case.snr:g}"
    suffix = " literature r2*" if case.tissue_relaxivity == "literature" else ""
    return f"DSC DRO {case.leak} {snr}{suffix}"


def write_case(case: DscDroCase, folder: Path) -> list[Path]:
    """Write ``case`` as one DSC series in a study of its own; returns the files."""
    name = case_name(case)
    identity = StudyIdentity(name=name, patient_id=f"DRO-{dro_uid(name)[-10:]}",
                             study_uid=dro_uid(name, "study"),
                             frame_of_reference_uid=dro_uid(name, "frame"), field_strength_t=1.5,
                             extra={"ContrastBolusAgent": "gadobutrol"})
    slice_mm, pixel_mm, _ = case.spacing_mm
    geometry = Geometry(pixel_mm=pixel_mm, slice_mm=slice_mm, origin_mm=(-100.0, -100.0, 0.0))
    return write_mr_series(folder, identity, geometry, series_number=_SERIES_NUMBER,
                           description=f"ep2d_perf {name}", signal=case.signal,
                           counts_per_unit=_COUNTS_PER_UNIT, repetition_time_ms=1000.0 * case.tr_s,
                           flip_angle_deg=case.flip_deg, echo_time_ms=1000.0 * case.te_s,
                           times_s=list(case.times),
                           extra={"ScanningSequence": "EP", "MRAcquisitionType": "2D"})


def patches(case: DscDroCase) -> list[Patch]:
    """The scoring patches of ``case`` (truth CBV, CBF, MTT; tags residue and leak)."""
    found = []
    for patch in case.patches:
        mask = case.truth["patch"] == patch.index + 1
        name = f"{patch.residue} MTT {patch.mtt_s:g} CBV {patch.cbv:g}"
        found.append(Patch(name, mask, {"cbv": patch.cbv, "cbf": patch.cbf, "mtt": patch.mtt_s},
                           {"residue": patch.residue, "leak": case.leak}))
    return found


@dataclass(frozen=True)
class CaseResults:
    """One case scored from the PACS.

    Attributes
    ----------
    scores:
        Per patch and parameter (``cbv``, ``cbf``, ``mtt``).
    negative_voxels:
        Voxels below zero in the delivered CBV, CBF and MTT maps (must be 0).
    empty_voxels:
        Voxels of the object (patches and normal tissue) without a value in the CBV map.
    texts:
        The SR's text values.
    maps:
        The Parametric Maps read back, by LUT label.
    """

    scores: list[PatchScore]
    negative_voxels: dict[str, int]
    empty_voxels: int
    texts: list[str]
    maps: dict[str, ParametricMapVolume]

    def fraction(self, parameter: str, residue: str | None = None) -> float:
        """Share of patches in tolerance for ``parameter`` (optionally one residue)."""
        rows = [s for s in self.scores if s.parameter == parameter
                and (residue is None or s.patch.startswith(residue))]
        return sum(s.in_tolerance for s in rows) / len(rows) if rows else float("nan")


def score_case(case: DscDroCase, outputs: Sequence[Path]) -> CaseResults:
    """Score the node's outputs for ``case`` (files fetched from the PACS)."""
    maps = read_parametric_maps(outputs)
    values = {key: maps[label].values for label, key in (("CBV", "cbv"), ("CBF", "cbf"), ("MTT", "mtt"))
              if label in maps}
    negative = {key: int(np.count_nonzero(np.nan_to_num(v, nan=0.0) < 0)) for key, v in values.items()}
    scored = {key: v / case.relaxivity_ratio if key in ("cbv", "cbf") else v for key, v in values.items()}
    tissue = np.isfinite(case.truth["cbv"])
    empty = int(np.count_nonzero(tissue & ~np.isfinite(values["cbv"]))) if "cbv" in values else -1
    sr = next((dcmread(p) for p in outputs if dcmread(p, stop_before_pixels=True).Modality == "SR"), None)
    return CaseResults(scores=score_patches(scored, patches(case)), negative_voxels=negative,
                       empty_voxels=empty, texts=sr_texts(sr) if sr is not None else [], maps=maps)
