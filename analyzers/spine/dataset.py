"""Lesion ROIs as the study fed them to the CNN, cohorts, class balancing and the split.

Following ../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt, each lesion
becomes one grayscale image: the region of interest around the lesion, cropped
from the sagittal slice where the lesion is largest and resized to 256×256. The
crop is a square centred on the lesion whose side is the lesion's larger in-plane
extent plus a margin on each side (so the surrounding marrow is seen as the
radiologist sees it); intensities are scaled to [0, 1] between the 1st and 99th
percentile of the crop, as an 8-bit grayscale export would be.

Cohorts come from the spine phantom (:func:`phantom_cohort`) or from a site's
``labels.csv`` (:func:`labelled_cohort`). Classes are balanced by randomly
downsampling the majority class (:func:`downsample_majority`); the train/test
split is 60/40, stratified by class and grouped by patient (:func:`grouped_split`).
"""

from __future__ import annotations

import csv
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from analyzers.spine.errors import SpineDataError
from analyzers.spine.model import CLASSES, INPUT_SIZE, SEQUENCES

__all__ = [
    "LesionCohort",
    "crop_lesion",
    "downsample_majority",
    "grouped_split",
    "labelled_cohort",
    "phantom_cohort",
]


def crop_lesion(
    image: NDArray[np.floating[Any]],
    mask: NDArray[np.bool_],
    *,
    margin: float = 0.5,
    min_side: int = 24,
) -> NDArray[np.float32]:
    """The 256×256 grayscale ROI of a lesion.

    Parameters
    ----------
    image:
        Sagittal volume ``(slice, row, column)``.
    mask:
        The lesion, same shape.
    margin:
        Added on each side as a fraction of the lesion's larger in-plane extent.
    min_side:
        Smallest crop side in pixels (tiny lesions keep some context).
    """
    volume = np.asarray(image, dtype=np.float32)
    lesion = np.asarray(mask, dtype=bool)
    if volume.ndim != 3 or volume.shape != lesion.shape:
        raise SpineDataError(f"image {volume.shape} and mask {lesion.shape} must be the same 3D shape")
    if not lesion.any():
        raise SpineDataError("the lesion mask is empty")
    k = int(np.argmax(lesion.sum(axis=(1, 2))))
    rows, cols = np.nonzero(lesion[k])
    extent = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    side = max(round(extent * (1.0 + 2.0 * margin)), min_side)
    centre_r = (int(rows.min()) + int(rows.max())) // 2
    centre_c = (int(cols.min()) + int(cols.max())) // 2
    top, left = centre_r - side // 2, centre_c - side // 2
    plane = volume[k]
    pad = side
    padded = np.pad(plane, pad, mode="edge")
    crop = padded[top + pad:top + pad + side, left + pad:left + pad + side]
    low, high = np.percentile(crop, [1.0, 99.0])
    scaled = np.clip((crop - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled))[None, None]
    resized = torch.nn.functional.interpolate(
        tensor, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
        antialias=side > INPUT_SIZE,
    )
    return resized[0, 0].numpy()


@dataclass(frozen=True)
class LesionCohort:
    """One row per lesion: its ROI of one sequence, class, patient and primary tumour.

    ``labels`` are class indices (0 hemangioma, 1 metastasis); ``primaries`` name the
    metastasis primary (``breast``, ``lung``, ...) or are empty when unknown.
    """

    sequence: str
    crops: NDArray[np.float32]
    labels: NDArray[np.int64]
    groups: NDArray[np.str_]
    primaries: NDArray[np.str_]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.sequence not in SEQUENCES:
            raise SpineDataError(f"sequence must be one of {SEQUENCES}")
        if self.crops.shape != (n, INPUT_SIZE, INPUT_SIZE) or len(self.groups) != n or len(self.primaries) != n:
            raise SpineDataError("crops, labels, groups and primaries must have one entry per lesion")

    def subset(self, index: NDArray[np.integer[Any]]) -> LesionCohort:
        """The rows ``index``."""
        return LesionCohort(self.sequence, self.crops[index], self.labels[index], self.groups[index],
                            self.primaries[index])

    @property
    def n_patients(self) -> int:
        """Distinct patients."""
        return len(set(self.groups.tolist()))


def _cohort(sequence: str, rows: list[tuple[NDArray[np.float32], int, str, str]]) -> LesionCohort:
    if not rows:
        raise SpineDataError("the cohort has no usable lesion")
    return LesionCohort(
        sequence,
        np.stack([r[0] for r in rows]).astype(np.float32),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.str_),
        np.array([r[3] for r in rows], dtype=np.str_),
    )


def phantom_cohort(
    sequences: Sequence[str],
    cases: int,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LesionCohort]:
    """Lesion ROIs of ``cases`` spine phantom cases (``analyzers.phantoms.spine``), per sequence.

    Cases alternate hemangioma and metastasis patients (a case-control cohort), so
    even a small cohort holds both classes. Lesion masks are the phantom's truth. The
    post-contrast series (``t1c``) is asked for with the phantom's ``post_contrast``
    option when it has one; a sequence the phantom does not simulate (its series
    folders name the sequences) raises :class:`SpineDataError`.
    """
    from analyzers.phantoms.spine import simulate_spine

    options: dict[str, Any] = {}
    if "t1c" in sequences and "post_contrast" in inspect.signature(simulate_spine).parameters:
        options["post_contrast"] = True

    unknown = [s for s in sequences if s not in SEQUENCES]
    if unknown:
        raise SpineDataError(f"unknown sequences {unknown}; the spine sequences are {SEQUENCES}")
    if cases < 2:
        raise SpineDataError("a phantom cohort needs at least 2 cases")
    rows: dict[str, list[tuple[NDArray[np.float32], int, str, str]]] = {s: [] for s in sequences}
    for index in range(cases):
        case = simulate_spine(seed=seed, case_index=index, label=CLASSES[index % 2], **options)
        labels = case.truth_maps["lesion_labels"]
        images = {s.folder: s.pixels[0] for s in case.series}
        absent = [s for s in sequences if s not in images]
        if absent:
            raise SpineDataError(f"the spine phantom has no {', '.join(absent)} series "
                                 f"(it has {', '.join(sorted(images))})")
        for info in case.truth["lesions"]:
            mask = labels == info["id"]
            if not mask.any():
                continue
            for sequence in sequences:
                crop = crop_lesion(images[sequence], mask)
                rows[sequence].append((crop, CLASSES.index(info["label"]), case.patient.patient_id, ""))
        if progress is not None:
            progress(index + 1, cases)
    return {s: _cohort(s, rows[s]) for s in sequences}


def _series_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise SpineDataError(f"{folder}: no DICOM files")
    return files


def labelled_cohort(labels_csv: Path, sequence: str) -> LesionCohort:
    """Lesion ROIs of one sequence from a labels file.

    One row per lesion with ``label`` (``hemangioma`` / ``metastasis``), the patient in
    ``PatientID`` (or ``patient``), optionally ``primary`` (the metastasis' primary
    tumour), and where the images and the lesion are, either

    * the phantom cohort layout written by ``pacsnode phantom spine``: ``case`` (folder
      beside the CSV holding ``<sequence>/`` and ``truth/maps.npz``) and ``lesion_id``; or
    * a site layout: a column named after the sequence (``t1``, ``t2``, ``stir``,
      ``t1c``) with the series folder, and ``seg`` with a DICOM SEG file of the lesion
      (``segment`` picks a SegmentLabel; all segments together otherwise).

    Relative paths are relative to the CSV's folder. Rows without a series of the
    sequence are skipped.
    """
    from analyzers._shared.volume import load_segmentation, load_series

    path = Path(labels_csv)
    try:
        with path.open(newline="") as handle:
            table = list(csv.DictReader(handle))
    except OSError as exc:
        raise SpineDataError(f"{path}: cannot read ({exc})") from exc
    root = path.parent
    volumes: dict[Path, Any] = {}
    rows: list[tuple[NDArray[np.float32], int, str, str]] = []
    for number, row in enumerate(table, start=2):
        label = (row.get("label") or "").strip().lower()
        if label not in CLASSES:
            raise SpineDataError(f"{path}:{number}: label must be one of {CLASSES}, got {label!r}")
        patient = (row.get("PatientID") or row.get("patient") or "").strip()
        if not patient:
            raise SpineDataError(f"{path}:{number}: PatientID (or patient) is empty")
        if row.get("case"):
            folder = root / row["case"] / sequence
            truth = root / row["case"] / "truth" / "maps.npz"
        elif row.get(sequence):
            folder, truth = root / row[sequence], None
        else:
            continue
        if not folder.is_dir():
            continue
        if folder not in volumes:
            volumes[folder] = load_series(_series_files(folder))
        volume = volumes[folder]
        if truth is not None and truth.is_file():
            with np.load(truth) as maps:
                mask = maps["lesion_labels"] == int(row["lesion_id"])
        elif row.get("seg"):
            segments = load_segmentation(root / row["seg"], volume)
            wanted = (row.get("segment") or "").strip()
            if wanted and wanted not in segments:
                raise SpineDataError(f"{path}:{number}: SEG has no segment {wanted!r}")
            chosen = [segments[wanted]] if wanted else list(segments.values())
            mask = np.any(np.stack(chosen), axis=0)
        else:
            raise SpineDataError(f"{path}:{number}: no lesion mask (truth/maps.npz or seg column)")
        if mask.shape != volume.shape3d or not mask.any():
            raise SpineDataError(f"{path}:{number}: lesion mask is empty or not on the series grid")
        crop = crop_lesion(volume.data, mask)
        rows.append((crop, CLASSES.index(label), patient, (row.get("primary") or "").strip().lower()))
    return _cohort(sequence, rows)


def downsample_majority(labels: Iterable[int], seed: int = 0) -> NDArray[np.int64]:
    """Row indices with the majority class randomly reduced to the minority's size."""
    y = np.asarray(list(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    counts = [int(np.sum(y == c)) for c in (0, 1)]
    if min(counts) == 0:
        raise SpineDataError(f"both classes are needed, got counts {counts}")
    keep = [rng.choice(np.nonzero(y == c)[0], size=min(counts), replace=False) for c in (0, 1)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def grouped_split(
    labels: NDArray[np.integer[Any]],
    groups: NDArray[np.str_],
    test_fraction: float = 0.4,
    seed: int = 0,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Train and test row indices: patients split ``1-test_fraction`` / ``test_fraction``.

    Stratified by each patient's majority class, so both parts hold both classes; no
    patient is on both sides.
    """
    if not 0.0 < test_fraction < 1.0:
        raise SpineDataError("test_fraction must be in (0, 1)")
    y = np.asarray(labels)
    g = np.asarray(groups)
    rng = np.random.default_rng(seed)
    patients = sorted(set(g.tolist()))
    patient_class = {p: round(float(np.mean(y[g == p]))) for p in patients}
    test: list[str] = []
    for c in (0, 1):
        members = [p for p in patients if patient_class[p] == c]
        if len(members) < 2:
            raise SpineDataError(f"class {CLASSES[c]} needs at least 2 patients to split")
        order = rng.permutation(len(members))
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test += [members[i] for i in order[:n_test]]
    in_test = np.isin(g, test)
    return np.nonzero(~in_test)[0].astype(np.int64), np.nonzero(in_test)[0].astype(np.int64)
