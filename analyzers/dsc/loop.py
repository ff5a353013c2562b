"""Per-voxel reference implementation of the DSC oSVD deconvolution.

A straightforward loop over voxels, written from the papers independently of
the vectorised code path (:mod:`analyzers.dsc.deconvolution`): each voxel is
solved with its own truncations and oscillation indices. It is slow on purpose and used
only to check the vectorised library and as the baseline of the benchmark.
"""

from __future__ import annotations

import numpy as np

from analyzers.dsc.deconvolution import (
    BRAIN_DENSITY_G_PER_ML,
    HEMATOCRIT_FACTOR,
    SvdDeconvolver,
    oscillation_index,
)

__all__ = ["perfusion_loop"]


def _osvd_voxel(
    matrix_u: np.ndarray, singular: np.ndarray, matrix_v: np.ndarray, kept_grid: np.ndarray,
    curve: np.ndarray, oi_target: float,
) -> float:
    length = matrix_u.shape[0]
    padded = np.zeros(length)
    padded[: curve.size] = curve
    # From the weakest truncation (most singular values) to the strongest: the
    # first residue whose oscillation index meets the target is kept (Wu 2003).
    residue = np.zeros(length)
    projected = matrix_u.T @ padded
    for kept in kept_grid[::-1]:
        residue = matrix_v[:, :kept] @ (projected[:kept] / singular[:kept])
        if float(oscillation_index(residue)) <= oi_target:
            break
    return float(residue.max())


def perfusion_loop(
    concentration: np.ndarray,
    aif: np.ndarray,
    times: np.ndarray,
    oi_target: float = 0.035,
    k_h: float = HEMATOCRIT_FACTOR,
    density: float = BRAIN_DENSITY_G_PER_ML,
) -> tuple[np.ndarray, np.ndarray]:
    """CBV and CBF (oSVD) voxel by voxel; returns ``(cbv, cbf)`` in ml/100 g and ml/100 g/min."""
    t = np.asarray(times, dtype=np.float64)
    dt = float(t[1] - t[0])
    # The matrix and its threshold grid are the library's (shared definition);
    # the per-voxel inversion, OI test and integration below are independent.
    deconvolver = SvdDeconvolver(aif, dt, method="osvd", oi_target=oi_target)
    matrix_u = deconvolver.left_vectors
    singular = deconvolver.singular_values
    matrix_v = deconvolver.right_vectors
    grid = deconvolver.truncation_grid
    area_aif = float(np.sum((aif[1:] + aif[:-1]) * np.diff(t)) / 2.0)
    conc = np.atleast_2d(np.asarray(concentration, dtype=np.float64))
    cbv = np.empty(conc.shape[0])
    cbf = np.empty(conc.shape[0])
    for i, curve in enumerate(conc):
        area = float(np.sum((curve[1:] + curve[:-1]) * np.diff(t)) / 2.0)
        cbv[i] = 100.0 * k_h / density * area / area_aif
        flow = _osvd_voxel(matrix_u, singular, matrix_v, grid, curve, oi_target)
        cbf[i] = 6000.0 * k_h / density * flow
    return cbv, cbf
