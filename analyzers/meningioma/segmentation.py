"""Automatic segmentation of a dural-based enhancing mass on post-contrast T1.

Used only when the study holds no SEG for the tumour. A rule-based method (no
trained network), in five steps on the N4-corrected image:

1. Head: Otsu foreground with holes filled.
2. Intracranial space: tissue brighter than the Otsu level, eroded by
   ``skull_gap_mm`` to cut the scalp off across the dark skull, largest
   connected component, dilated back and hole-filled.
3. Enhancement: voxels brighter than ``median + k * 1.4826 * MAD`` of the
   intracranial tissue (``k = enhancement_sigmas``), searched within the
   intracranial space grown by ``dural_margin_mm`` (a mass indents the brain
   surface) and opened with a ``opening_mm`` ball to drop vessels and dura.
4. Dural base: connected components of at least ``min_volume_ml`` that come
   within ``dural_margin_mm`` of the intracranial boundary (the inner table);
   the largest one is the mass.
5. Hysteresis: the seed grows into connected voxels brighter than halfway
   between the brain median and the seed's median (partial-volume edge, less
   enhancing parts), opened again to cut dura and vessels off; then closed and
   hole-filled so a necrotic or cystic core belongs to the mass.

It is a reproducible baseline, not a validated segmentation: every automatic ROI
is written back as a DICOM SEG so that a reader can check or replace it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from analyzers.meningioma.errors import SegmentationError

__all__ = ["AutoSegmentationSettings", "dice", "segment_enhancing_mass"]


@dataclass(frozen=True)
class AutoSegmentationSettings:
    """Parameters of :func:`segment_enhancing_mass` (see the module doc)."""

    skull_gap_mm: float = 3.0
    enhancement_sigmas: float = 2.5
    opening_mm: float = 2.0
    dural_margin_mm: float = 6.0
    min_volume_ml: float = 0.3

    def __post_init__(self) -> None:
        if min(self.skull_gap_mm, self.opening_mm, self.dural_margin_mm) <= 0:
            raise ValueError("distances must be positive")
        if self.enhancement_sigmas <= 0 or self.min_volume_ml <= 0:
            raise ValueError("enhancement_sigmas and min_volume_ml must be positive")


def _radius(image: sitk.Image, mm: float) -> list[int]:
    return [max(1, round(mm / s)) for s in image.GetSpacing()]


def _largest_component(binary: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(binary), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def _intracranial(image: sitk.Image, settings: AutoSegmentationSettings) -> sitk.Image:
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    head = otsu.Execute(image)
    head = sitk.BinaryFillhole(head)
    level = otsu.GetThreshold()
    tissue = sitk.Cast(image > level, sitk.sitkUInt8) * head
    gap = _radius(image, settings.skull_gap_mm)
    core = _largest_component(sitk.BinaryErode(tissue, gap, sitk.sitkBall, 0, 1))
    if not np.any(sitk.GetArrayViewFromImage(core)):
        raise SegmentationError("no intracranial tissue found (is this a head T1C?)")
    grown = sitk.BinaryDilate(core, gap, sitk.sitkBall, 0, 1)
    return sitk.BinaryFillhole(sitk.Cast(grown * head, sitk.sitkUInt8))


def segment_enhancing_mass(
    image: sitk.Image, settings: AutoSegmentationSettings | None = None,
    intracranial: sitk.Image | None = None,
) -> sitk.Image:
    """The largest dural-based enhancing mass as a 0/1 mask on ``image``'s grid.

    Parameters
    ----------
    image:
        N4-corrected post-contrast T1.
    settings:
        Parameters; :class:`AutoSegmentationSettings` defaults when None.
    intracranial:
        The intracranial space (0/1 on ``image``'s grid), e.g. the registered
        brain mask of :func:`analyzers._shared.brain.extract_brain`; steps 1-2
        (Otsu and erosion) derive it when None.

    Raises
    ------
    SegmentationError
        When no enhancing component touches the dura.
    """
    settings = settings or AutoSegmentationSettings()
    image = sitk.Cast(image, sitk.sitkFloat32)
    if intracranial is None:
        intracranial = _intracranial(image, settings)
    else:
        intracranial = sitk.Cast(intracranial > 0, sitk.sitkUInt8)
        intracranial.CopyInformation(image)
    pixels = sitk.GetArrayFromImage(image)
    inside = sitk.GetArrayFromImage(intracranial).astype(bool)
    values = pixels[inside]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    threshold = median + settings.enhancement_sigmas * max(spread, 1e-6)
    margin = _radius(image, settings.dural_margin_mm)
    search = sitk.GetArrayFromImage(sitk.BinaryDilate(intracranial, margin, sitk.sitkBall, 0, 1)).astype(bool)
    bright = sitk.GetImageFromArray(((pixels > threshold) & search).astype(np.uint8))
    bright.CopyInformation(image)
    opened = sitk.BinaryMorphologicalOpening(bright, _radius(image, settings.opening_mm), sitk.sitkBall)
    components = sitk.ConnectedComponent(opened)
    labels = sitk.GetArrayFromImage(components)
    # Distance (mm) of every voxel from the intracranial boundary, outside positive.
    distance_map = sitk.SignedMaurerDistanceMap(
        intracranial, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    boundary_distance = np.abs(sitk.GetArrayFromImage(distance_map))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    counts = np.bincount(labels.ravel())
    best_label, best_size = 0, 0
    for label in np.flatnonzero(counts):
        if label == 0 or counts[label] * voxel_ml < settings.min_volume_ml:
            continue
        touches_dura = bool(np.min(boundary_distance[labels == label]) <= settings.dural_margin_mm)
        if touches_dura and counts[label] > best_size:
            best_label, best_size = int(label), int(counts[label])
    if best_label == 0:
        raise SegmentationError(
            "no dural-based enhancing mass of at least "
            f"{settings.min_volume_ml} ml found; provide a tumour SEG for this study"
        )
    seed = labels == best_label
    # Hysteresis: grow the seed into connected voxels brighter than halfway
    # between brain and the seed's own level (the mass's partial-volume edge
    # and its less enhancing parts), then open again to cut off dura and vessels.
    low = 0.5 * (median + float(np.median(pixels[seed])))
    grown = sitk.GetImageFromArray(((pixels > low) & search).astype(np.uint8))
    grown.CopyInformation(image)
    grown = sitk.BinaryMorphologicalOpening(grown, _radius(image, settings.opening_mm), sitk.sitkBall)
    grown_labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(grown))
    touching = np.unique(grown_labels[seed & (grown_labels > 0)])
    region = np.isin(grown_labels, touching[touching > 0]) | seed
    mass = sitk.GetImageFromArray(region.astype(np.uint8))
    mass.CopyInformation(image)
    mass = sitk.BinaryMorphologicalClosing(mass, _radius(image, settings.opening_mm), sitk.sitkBall)
    mass = sitk.BinaryFillhole(mass)
    # Fill holes slice by slice as well: a necrotic core open to one side in 3D
    # is still enclosed in the axial plane.
    array = sitk.GetArrayFromImage(mass)
    for index in range(array.shape[0]):
        if array[index].any():
            filled = sitk.BinaryFillhole(sitk.GetImageFromArray(array[index]))
            array[index] = sitk.GetArrayFromImage(filled)
    result = sitk.GetImageFromArray(array.astype(np.uint8))
    result.CopyInformation(image)
    return result


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice coefficient of two binary arrays (1.0 when both are empty)."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
