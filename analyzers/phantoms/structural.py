"""Structural contrast helpers: tissue intensities, smooth bias fields, textures, header styles."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from analyzers.phantoms.anatomy import Anatomy, Grid

__all__ = ["T1C_STYLE", "bias_field", "smooth_texture", "tissue_image"]

#: Post-contrast 3D T1 gradient-echo (MPRAGE-like) header per vendor.
T1C_STYLE: dict[str, dict[str, Any]] = {
    "siemens": {
        "SeriesDescription": "t1_mprage_tra_iso_KM",
        "ProtocolName": "t1_mprage_tra_iso_KM",
        "SequenceName": "*tfl3d1_16ns",
        "ScanningSequence": ["GR", "IR"],
        "SequenceVariant": ["SK", "SP", "MP"],
        "ScanOptions": "",
        "RepetitionTime": 2300.0,
        "EchoTime": 2.32,
        "InversionTime": 900.0,
        "FlipAngle": 8.0,
    },
    "ge": {
        "SeriesDescription": "Ax 3D T1 BRAVO +C",
        "ProtocolName": "BRAIN TUMOR/BRAVO",
        "SequenceName": "efgre3d",
        "ScanningSequence": ["GR", "IR"],
        "SequenceVariant": ["SK", "SS", "MP"],
        "ScanOptions": "",
        "RepetitionTime": 8.2,
        "EchoTime": 3.2,
        "InversionTime": 450.0,
        "FlipAngle": 12.0,
    },
    "philips": {
        "SeriesDescription": "T1W_3D_TFE +C",
        "ProtocolName": "T1W_3D_TFE +C",
        "SequenceName": "T1TFE",
        "ScanningSequence": "GR",
        "SequenceVariant": ["SK", "MP"],
        "ScanOptions": "",
        "RepetitionTime": 8.1,
        "EchoTime": 3.7,
        "FlipAngle": 8.0,
    },
}


def tissue_image(
    anatomy: Anatomy, levels: dict[str, float], tissue_fractions: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Fraction-weighted sum of tissue intensity levels (keys: gm, wm, csf, skull, scalp, plus extras).

    ``tissue_fractions`` overrides or adds fraction maps (e.g. tissue
    fractions already reduced where a lesion displaces them).
    """
    fractions: dict[str, np.ndarray] = {
        "gm": anatomy.gm,
        "wm": anatomy.wm,
        "csf": anatomy.csf,
        "skull": anatomy.skull.astype(np.float32),
        "scalp": anatomy.scalp.astype(np.float32),
    }
    fractions.update(tissue_fractions or {})
    image = np.zeros(anatomy.grid.shape, dtype=np.float32)
    for name, level in levels.items():
        if name in fractions:
            image += np.float32(level) * fractions[name]
    return image


def bias_field(grid: Grid, rng: np.random.Generator, amplitude: float = 0.1) -> np.ndarray:
    """A smooth multiplicative receive-coil field, 1 ± ``amplitude``: a random quadratic in patient space."""
    a = grid.affine
    centre = a[:3, :3] @ ((np.asarray(grid.shape) - 1) / 2.0) + a[:3, 3]
    lin = rng.normal(0, 1, 3)
    quad = rng.normal(0, 0.5, 3)
    axes = [np.arange(n, dtype=np.float32) for n in grid.shape]
    field = np.zeros(grid.shape, dtype=np.float32)
    for c in range(3):
        # One patient coordinate (in units of 10 cm), built by broadcasting, without a coordinate array.
        xc = (
            np.float32((a[c, 3] - centre[c]) / 100.0)
            + (np.float32(a[c, 0] / 100.0) * axes[0])[:, None, None]
            + (np.float32(a[c, 1] / 100.0) * axes[1])[None, :, None]
            + (np.float32(a[c, 2] / 100.0) * axes[2])[None, None, :]
        )
        field += np.float32(lin[c]) * xc + np.float32(quad[c]) * xc * xc
    span = float(np.max(np.abs(field))) or 1.0
    return (1.0 + amplitude * field / span).astype(np.float32)


def smooth_texture(
    shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: float | tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field smoothed by ``sigma_vox`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    std = float(field.std()) or 1.0
    return (field - field.mean()) / std
