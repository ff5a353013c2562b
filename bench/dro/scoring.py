"""Per-patch scoring of maps against a reference object's truth.

A *patch* is a region of constant true parameters. Its measured value is the median
of the map over the patch's voxels (QIBA's DRO evaluation reports patch means and
medians; the median is used because a few failed or railed voxel fits must not move
a patch's value). A patch is *in tolerance* when
``|measured − truth| ≤ atol + rtol·|truth|``, the criterion and the tolerances of the
OSIPI DCE-DSC-MRI code collection's tests (``DCEmodels_data.py``, ``DSCmodels_data.py``,
``T1_mapping``), see ``../shared/reference-data/osipi_dce_dsc/PROVENANCE.md``.

*Bias* of a parameter is the mean over patches of the relative error
``(measured − truth) / truth`` (patches whose truth is 0 are left out of it; their
absolute error is in the tolerance count), *worst* the relative error of largest
magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "OSIPI_TOLERANCE",
    "ParameterSummary",
    "Patch",
    "PatchScore",
    "Tolerance",
    "score_patches",
    "summarize",
    "summary_row",
]


@dataclass(frozen=True)
class Tolerance:
    """``|measured − truth| ≤ atol + rtol·|truth|``."""

    atol: float
    rtol: float

    def accepts(self, measured: float, truth: float) -> bool:
        """True when ``measured`` is a finite value within tolerance of ``truth``."""
        return bool(np.isfinite(measured)) and abs(measured - truth) <= self.atol + self.rtol * abs(truth)


#: OSIPI code-collection tolerances by parameter name (units: Ktrans 1/min, ve/vp ml/ml,
#: R1 1/s, CBV ml/100 ml, CBF ml/100 ml/min). MTT has no OSIPI tolerance: 20 % is the
#: project's bar for it.
OSIPI_TOLERANCE: dict[str, Tolerance] = {
    "ktrans": Tolerance(0.005, 0.1),
    "ve": Tolerance(0.05, 0.0),
    "vp": Tolerance(0.025, 0.0),
    "r1": Tolerance(0.05, 0.05),
    "cbv": Tolerance(1.0, 0.1),
    "cbf": Tolerance(15.0, 0.1),
    "mtt": Tolerance(0.0, 0.2),
}


@dataclass(frozen=True)
class Patch:
    """A region of constant truth.

    Attributes
    ----------
    name:
        Identifier for tables (e.g. ``"K0.05 ve0.2 vp0.01 T1.2"``).
    mask:
        Boolean mask on the map grid (z, y, x).
    truth:
        Parameter name → true value; a parameter missing here is not scored in this
        patch (e.g. ve where Ktrans is 0, undefined).
    tags:
        Free labels for grouping rows (e.g. ``{"t10": "1.2"}``).
    """

    name: str
    mask: NDArray[np.bool_]
    truth: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PatchScore:
    """One parameter of one patch."""

    patch: str
    parameter: str
    truth: float
    measured: float
    in_tolerance: bool
    n_voxels: int
    n_finite: int

    @property
    def relative_error(self) -> float:
        """(measured − truth) / truth; NaN where truth is 0."""
        return (self.measured - self.truth) / self.truth if self.truth != 0 else float("nan")


def score_patches(maps: Mapping[str, NDArray[np.floating]], patches: Sequence[Patch],
                  tolerances: Mapping[str, Tolerance] | None = None) -> list[PatchScore]:
    """Score every patch for every parameter that has both a map and a truth.

    Parameters
    ----------
    maps:
        Parameter name → map (z, y, x) in the truth's units.
    patches:
        The reference object's patches.
    tolerances:
        Parameter name → tolerance; default :data:`OSIPI_TOLERANCE`.
    """
    tol = dict(OSIPI_TOLERANCE if tolerances is None else tolerances)
    scores = []
    for patch in patches:
        for parameter, truth in patch.truth.items():
            if parameter not in maps or parameter not in tol:
                continue
            values = np.asarray(maps[parameter], dtype=np.float64)[patch.mask]
            finite = values[np.isfinite(values)]
            # A patch with fewer than half of its voxels fitted has no trustworthy value.
            measured = float(np.median(finite)) if finite.size * 2 >= values.size else float("nan")
            scores.append(PatchScore(patch.name, parameter, float(truth), measured,
                                     tol[parameter].accepts(measured, float(truth)),
                                     int(values.size), int(finite.size)))
    return scores


@dataclass(frozen=True)
class ParameterSummary:
    """In-tolerance count, bias and worst relative error of one parameter."""

    parameter: str
    n_patches: int
    n_in_tolerance: int
    bias: float
    worst: float
    worst_patch: str
    median_abs_error: float

    @property
    def fraction(self) -> float:
        """Share of patches in tolerance."""
        return self.n_in_tolerance / self.n_patches if self.n_patches else float("nan")


def summarize(scores: Sequence[PatchScore]) -> dict[str, ParameterSummary]:
    """Per-parameter summary of :func:`score_patches` output."""
    out: dict[str, ParameterSummary] = {}
    for parameter in dict.fromkeys(s.parameter for s in scores):
        rows = [s for s in scores if s.parameter == parameter]
        relative = [(s.relative_error, s.patch) for s in rows
                    if s.truth != 0 and np.isfinite(s.measured)]
        bias = float(np.mean([r for r, _ in relative])) if relative else float("nan")
        worst, worst_patch = max(relative, key=lambda r: abs(r[0])) if relative else (float("nan"), "")
        errors = [abs(s.measured - s.truth) for s in rows if np.isfinite(s.measured)]
        out[parameter] = ParameterSummary(parameter, len(rows), sum(s.in_tolerance for s in rows),
                                          bias, float(worst), worst_patch,
                                          float(np.median(errors)) if errors else float("nan"))
    return out


def summary_row(summary: ParameterSummary) -> str:
    """``46/120 (38 %), bias −18.5 %, worst +137 %`` for a table cell."""
    text = f"{summary.n_in_tolerance}/{summary.n_patches} ({100 * summary.fraction:.0f} %)"
    if np.isfinite(summary.bias):
        text += f", bias {100 * summary.bias:+.1f} %, worst {100 * summary.worst:+.0f} %"
    return text
