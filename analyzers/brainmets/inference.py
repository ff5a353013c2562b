"""Run a stock nnU-Net v2 results folder on one 3D post-contrast T1 series.

A model is the folder nnU-Net v2 writes after training
(``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``), so a site
can use any model it trained with stock nnU-Net. Prediction runs in-process
through :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
(``predict_single_npy_array``: no worker processes), ensembling the folds and
optionally mirroring at test time, on CPU or CUDA.

Geometry: the series is read by :func:`analyzers._shared.volume.load_series`,
re-indexed by the analyzer into the array orientation of the training data
(:func:`analyzers._shared.orientation.reorient`: axial, columns to the patient's
left, rows to the back; a permutation and flips, no resampling) and handed to
nnU-Net as the SimpleITK array ``(z, y, x)`` with spacing ``(dz, dy, dx)``,
exactly what nnU-Net's ``SimpleITKIO`` reader produces from a NIfTI written from
the same image; nnU-Net returns the segmentation on that grid and the analyzer
puts it back on the series' own grid voxel for voxel, so a prone, decubitus or
sagittal acquisition is segmented as its axial supine twin would be.

Technique: SPACE-like (black-blood turbo spin echo: SPACE, CUBE, VISTA) or
MPRAGE-like (gradient echo: MPRAGE/tfl3d, BRAVO, FSPGR, 3D TFE), read from
SequenceName, ScanningSequence and SeriesDescription, as in the study
("MRI cross-technique transfer learning for brain metastasis detection",
Eur Radiol Exp 2025;9:15).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "ModelFolderError",
    "NnUNetModel",
    "Technique",
    "TechniqueError",
    "check_model_folder",
    "detect_technique",
]

Technique = Literal["space", "mprage"]

_SPACE_PATTERN = re.compile(r"spc|space|cube|vista|black[ -_]?blood|\bbb\b|_bb\b|\bdb\b|_db\b", re.IGNORECASE)
_MPRAGE_PATTERN = re.compile(r"tfl|mprage|mp-rage|mp2rage|bravo|fspgr|spgr|tfe|\bgre\b|vibe|flash", re.IGNORECASE)


class ModelFolderError(ValueError):
    """The folder is not a usable nnU-Net v2 results folder."""


class TechniqueError(ValueError):
    """The series' headers name neither a SPACE-like nor an MPRAGE-like acquisition."""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def detect_technique(attributes: Mapping[str, Any]) -> Technique:
    """SPACE-like or MPRAGE-like from SequenceName, ScanningSequence and SeriesDescription.

    SequenceName is the most specific header and is read first, then the
    description; ScanningSequence decides last (``SE`` → SPACE-like, ``GR`` →
    MPRAGE-like), since turbo spin echo and gradient echo are the physics that
    make vessels dark or bright.
    """
    for key in ("SequenceName", "SeriesDescription", "ProtocolName"):
        text = _text(attributes.get(key))
        if _SPACE_PATTERN.search(text):
            return "space"
        if _MPRAGE_PATTERN.search(text):
            return "mprage"
    scanning = _text(attributes.get("ScanningSequence")).upper().split()
    if "SE" in scanning and "GR" not in scanning:
        return "space"
    if "GR" in scanning:
        return "mprage"
    raise TechniqueError(
        "cannot tell SPACE-like from MPRAGE-like: SequenceName, SeriesDescription and "
        "ScanningSequence name no known 3D T1 technique"
    )


def check_model_folder(folder: Path) -> list[int | str]:
    """Validate an nnU-Net v2 results folder and return its folds (numbers, or ``"all"``)."""
    folder = Path(folder)
    for name in ("dataset.json", "plans.json"):
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder} has no {name}; point the setting to an nnU-Net v2 results folder")
    names = sorted(p.parent.name.split("_", 1)[1] for p in folder.glob("fold_*/checkpoint_final.pth"))
    folds: list[int | str] = [int(n) for n in names if n.isdigit()] + [n for n in names if n == "all"]
    if not folds:
        raise ModelFolderError(f"{folder} has no fold_*/checkpoint_final.pth")
    return folds


class NnUNetModel:
    """An nnU-Net v2 results folder ready to segment volumes.

    Parameters
    ----------
    folder:
        The results folder (``dataset.json``, ``plans.json``, ``fold_*/checkpoint_final.pth``).
    folds:
        Folds to ensemble (numbers, or ``"all"`` for a model trained on every case);
        all present folds when None.
    mirroring:
        Test-time mirroring along the axes the model allows.
    device:
        ``"cpu"`` or ``"cuda"`` (``"auto"``: CUDA when present).
    threads:
        torch CPU threads.
    tile_step_size:
        Sliding-window step as a fraction of the patch (nnU-Net's default 0.5).
    """

    def __init__(
        self,
        folder: Path | str,
        folds: Sequence[int | str] | None = None,
        *,
        mirroring: bool = True,
        device: Literal["cpu", "cuda", "auto"] = "cpu",
        threads: int = 2,
        tile_step_size: float = 0.5,
    ) -> None:
        self.folder = Path(folder)
        available = check_model_folder(self.folder)
        if folds is not None:
            missing = [f for f in folds if f not in available]
            if missing:
                raise ModelFolderError(f"{self.folder} lacks folds {missing} (has {available})")
        self.folds = tuple(folds) if folds is not None else tuple(available)
        if threads < 1:
            raise ModelFolderError("threads must be at least 1")
        if not 0 < tile_step_size <= 1:
            raise ModelFolderError("tile_step_size must be in (0, 1]")
        self.mirroring = mirroring
        self.device_name = device
        self.threads = threads
        self.tile_step_size = tile_step_size
        self._predictor: Any = None

    def _load(self) -> Any:
        if self._predictor is not None:
            return self._predictor
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        torch.set_num_threads(self.threads)
        use_cuda = self.device_name == "cuda" or (self.device_name == "auto" and torch.cuda.is_available())
        if self.device_name == "cuda" and not torch.cuda.is_available():
            raise ModelFolderError("device 'cuda' was configured but no CUDA device is available")
        predictor = nnUNetPredictor(
            tile_step_size=self.tile_step_size,
            use_gaussian=True,
            use_mirroring=self.mirroring,
            perform_everything_on_device=use_cuda,
            device=torch.device("cuda" if use_cuda else "cpu"),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(self.folder), use_folds=self.folds)
        self._predictor = predictor
        return predictor

    @property
    def foreground_labels(self) -> dict[str, int]:
        """Label names and values of the model (``dataset.json``), background excluded."""
        import json

        labels = json.loads((self.folder / "dataset.json").read_text())["labels"]
        return {str(k): int(v) for k, v in labels.items() if int(v) != 0}

    def predict_array(self, array_zyx: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """Label map ``(z, y, x)`` of one single-channel volume given as SimpleITK orders it."""
        arr = np.asarray(array_zyx, dtype=np.float32)
        if arr.ndim != 3:
            raise ModelFolderError(f"expected a (z, y, x) volume, got shape {arr.shape}")
        predictor = self._load()
        seg = predictor.predict_single_npy_array(arr[np.newaxis], {"spacing": [float(s) for s in spacing_zyx]})
        seg = np.asarray(seg)
        if seg.shape != arr.shape:
            raise ModelFolderError(f"nnU-Net returned shape {seg.shape} for input {arr.shape}")
        return seg.astype(np.uint8)

    def predict_image(self, image: Any) -> np.ndarray:
        """Label map ``(z, y, x)`` of a SimpleITK image (grid of the image)."""
        import SimpleITK as sitk

        return self.predict_array(sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1])

    def foreground_probability(self, image: Any) -> np.ndarray:
        """Probability ``(z, y, x)`` that a voxel is foreground (1 - background), on the image's grid.

        The ensemble's softmax as nnU-Net resamples it back to the input grid;
        its argmax is what :meth:`predict_image` returns.
        """
        import SimpleITK as sitk

        arr = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)
        if arr.ndim != 3:
            raise ModelFolderError(f"expected a (z, y, x) volume, got shape {arr.shape}")
        predictor = self._load()
        _, probabilities = predictor.predict_single_npy_array(
            arr[np.newaxis], {"spacing": [float(s) for s in tuple(image.GetSpacing())[::-1]]},
            save_or_return_probabilities=True,
        )
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if probabilities.shape[1:] != arr.shape:
            raise ModelFolderError(f"nnU-Net returned probabilities {probabilities.shape} for input {arr.shape}")
        return np.clip(1.0 - probabilities[0], 0.0, 1.0)
