"""A montage of a phantom case so a person can see it looks right (matplotlib, Agg backend).

One panel per series (the slice through the first lesion, truth outlined in
red) and, for dynamic series, the mean time curve of the lesion, of normal
tissue and of the arterial voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analyzers.phantoms.model import PhantomCase, SeriesData

__all__ = ["render_case"]

_MASK_KEYS = ("lesion_labels", "tumour_mask")


def _lesion_mask(case: PhantomCase, series: SeriesData) -> np.ndarray | None:
    prefix = "pre_" if series.folder.startswith("pre_") else ""
    own = case.truth_maps.get(f"{series.folder}_lesion_labels")
    if own is not None and own.shape == series.grid.shape:
        return own
    for key in _MASK_KEYS:
        mask = case.truth_maps.get(prefix + key)
        if mask is not None and mask.shape == series.grid.shape and mask.any():
            return mask
    # A case without the target lesion: show its other pathology (metastases 3, glioma 4) if any.
    mimics = case.truth_maps.get("mimic_labels")
    if mimics is not None and mimics.shape == series.grid.shape and (mimics >= 3).any():
        return (mimics >= 3).astype(np.uint8)
    return None


def _panel_slice(series: SeriesData, mask: np.ndarray | None) -> tuple[int, int]:
    """(axis, index) of the slice to show: through the lesion when there is one."""
    shape = series.grid.shape
    if mask is not None and mask.any():
        k = int(np.argmax((mask > 0).sum(axis=(1, 2))))
    else:
        k = shape[0] // 2
    return 0, k


def render_case(case: PhantomCase, png: Path, max_series: int = 8) -> Path:
    """Draw ``case`` into ``png`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Dynamics first in importance; with several studies, the structural series of the latest only.
    shown = [s for s in case.series if s.is_dynamic or not s.folder.startswith("pre_")][:max_series]
    dynamics = [s for s in shown if s.is_dynamic]
    n_panels = len(shown) + len(dynamics)
    cols = min(4, n_panels)
    rows = int(np.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2 * cols, 7.0), 3.2 * rows + 0.3), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat:
        ax.axis("off")
    panel = 0
    for series in shown:
        mask = _lesion_mask(case, series)
        _, k = _panel_slice(series, mask)
        frame = 0
        if series.is_dynamic and mask is not None and mask.any():
            # T1 agents (DCE) are shown late, T2* agents (DSC) at the signal minimum.
            curve = series.pixels[:, mask > 0].mean(axis=1)
            frame = series.pixels.shape[0] - 1 if curve[-1] > curve[0] else int(np.argmin(curve))
        image = series.pixels[frame, k]
        ax = flat[panel]
        vmax = float(np.percentile(image, 99.5)) or 1.0
        ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, aspect=series.grid.spacing[1] / series.grid.spacing[2])
        if mask is not None and mask[k].any():
            ax.contour(mask[k] > 0, levels=[0.5], colors="red", linewidths=0.8)
        title = str(series.attributes.get("SeriesDescription", series.folder))
        ax.set_title(
            f"{title}\n{series.folder} slice {k + 1}" + (f" t={frame + 1}" if series.is_dynamic else ""), fontsize=7
        )
        panel += 1
        if series.is_dynamic:
            ax = flat[panel]
            ax.axis("on")
            t = series.times_s
            if mask is not None and mask.any():
                ax.plot(t, series.pixels[:, mask > 0].mean(axis=1), "r-", label="lesion")
            brain = case.truth_maps.get("tissue_labels")
            if brain is not None and brain.shape == series.grid.shape:
                normal = (brain == 3) & ((mask == 0) if mask is not None else True)
                ax.plot(t, series.pixels[:, normal].mean(axis=1), "b-", label="white matter")
            artery = case.truth_maps.get("artery_fraction")
            if artery is not None and artery.shape == series.grid.shape and (artery > 0.45).any():
                a = series.pixels[:, artery >= artery.max() * 0.99].mean(axis=1)
                ax2 = ax.twinx()
                ax2.plot(t, a, "k--", lw=0.8, label="artery")
                ax2.tick_params(labelsize=6)
            ax.set_xlabel("time (s)", fontsize=7)
            ax.set_ylabel("signal", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6, loc="lower right")
            ax.set_title(f"{series.folder}: time curves", fontsize=7)
            panel += 1
    label = case.truth.get("label", "")
    fig.suptitle(
        f"{case.phantom} case {case.case_index + 1} ({case.patient.patient_id}, {case.patient.sex}, "
        f"{case.patient.age_years} y): {label} — synthetic, not for clinical use",
        fontsize=8,
    )
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
