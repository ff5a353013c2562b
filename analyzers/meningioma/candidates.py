"""Candidate enhancing masses of a post-contrast T1 and what each looks like.

The detection stage of the ``meningioma`` analyzer decides whether the series
shows a meningioma at all before anything is graded. This module finds every
enhancing region that could be one and measures the evidence a reader uses:

1. Enhancement: voxels brighter than ``enhancement_ratio`` times the series'
   own white matter (:func:`white_matter_level`, the brightest intensity mode
   of the intracranial tissue on T1), searched within the intracranial space
   grown by ``search_margin_mm`` (a meningioma sits on the dura, just outside
   the brain). Holes are filled so ring-enhancing masses become solid.
2. Cores: an opening with a ball of ``core_opening_mm`` keeps masses and drops
   what is thin: cortical veins, arteries, the dural tail, and the dural venous
   sinuses where they run on their own (their radius is 2-4 mm).
3. Each core of at least ``min_volume_ml`` grows back into connected voxels
   brighter than halfway between the brain's median and the core's own median
   within ``grow_mm`` of the core (partial-volume edge, less enhancing parts),
   then is closed and hole-filled so a necrotic or cystic centre belongs to it.
4. A candidate must lie at least ``min_inside_fraction`` inside the brain (a
   meningioma grows inward and displaces it; marrow and fat next to an
   imperfect brain fit lie mostly outside).
5. Evidence per candidate (:data:`CANDIDATE_FEATURES`): size, enhancement
   against the series' own white matter, how much of it lies inside the
   intracranial space, its contact with the dura (distance to the intracranial
   boundary), how deep it reaches, shape (tube-like vessels and sinuses are
   elongated), and how much of it is dark (necrosis of a glioma or a metastasis).

The intracranial space is the brain that :mod:`analyzers._shared.brain` finds by
registering the MNI152 template (:func:`intracranial_space`); enhancement is
searched up to ``search_margin_mm`` outside it (dura and inner table, where a
meningioma sits), so the face, neck, scalp fat and the skull's fatty marrow of a
real head, as bright as enhancement on T1, are never candidates. Without a brain
mask, the image's own inner table stands in (:func:`intracranial_mask`: Otsu
head mask, tissue eroded across the dark skull, largest component, dilated back,
closed, holes filled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.signal import find_peaks

from analyzers._shared.orientation import AXIAL, Reoriented, reorient
from analyzers._shared.volume import Volume
from analyzers.meningioma.errors import SegmentationError
from analyzers.meningioma.preprocessing import N4Settings, n4_bias_correction

__all__ = [
    "CANDIDATE_FEATURES",
    "Candidate",
    "CandidateSettings",
    "LocatedSeries",
    "find_candidates",
    "intracranial_mask",
    "intracranial_space",
    "locate_candidates",
    "white_matter_level",
]

#: The evidence measured for each candidate, in model order.
CANDIDATE_FEATURES = (
    "log_volume_ml",
    "enhancement_ratio",
    "enhancement_p90_ratio",
    "inside_fraction",
    "dural_contact_fraction",
    "boundary_distance_min_mm",
    "depth_max_mm",
    "elongation",
    "flatness",
    "dark_fraction",
    "intensity_cv",
)


@dataclass(frozen=True)
class CandidateSettings:
    """Parameters of :func:`find_candidates` (see the module doc)."""

    skull_gap_mm: float = 3.0
    enhancement_ratio: float = 1.2
    core_opening_mm: float = 3.5
    grow_mm: float = 4.0
    search_margin_mm: float = 3.0
    min_volume_ml: float = 0.3
    max_candidates: int = 12
    min_inside_fraction: float = 0.5

    def __post_init__(self) -> None:
        if min(self.skull_gap_mm, self.core_opening_mm, self.grow_mm, self.search_margin_mm) <= 0:
            raise ValueError("distances must be positive")
        if self.enhancement_ratio <= 1.0:
            raise ValueError("enhancement_ratio must be above 1 (brighter than white matter)")
        if self.min_volume_ml <= 0 or self.max_candidates < 1:
            raise ValueError("min_volume_ml and max_candidates must be positive")
        if not 0.0 <= self.min_inside_fraction <= 1.0:
            raise ValueError("min_inside_fraction must lie in [0, 1]")


@dataclass(frozen=True)
class Candidate:
    """One enhancing region: its mask on the image grid and its evidence."""

    mask: np.ndarray
    features: dict[str, float]

    @property
    def volume_ml(self) -> float:
        """Volume in millilitres."""
        return float(math.exp(self.features["log_volume_ml"]))

    def vector(self) -> np.ndarray:
        """Features in :data:`CANDIDATE_FEATURES` order."""
        return np.array([self.features[name] for name in CANDIDATE_FEATURES], dtype=np.float64)


def _radius(image: sitk.Image, mm: float) -> list[int]:
    return [max(1, round(mm / s)) for s in image.GetSpacing()]


def _as_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def intracranial_mask(image: sitk.Image, skull_gap_mm: float = 3.0, closing_mm: float = 8.0) -> np.ndarray:
    """The intracranial space ``(z, y, x)`` of a head T1 (rule-based, no model).

    Otsu separates head from air; tissue brighter than the Otsu level is eroded
    by ``skull_gap_mm`` to cut the scalp off across the dark skull, the largest
    connected component is the brain, dilated back, closed with a ball of
    ``closing_mm`` (the inner table is smooth) and hole-filled in 3D and slice
    by slice, so sulci, ventricles and necrotic centres belong to it.

    Raises
    ------
    SegmentationError
        When nothing brain-like is left (not a head T1).
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    head = sitk.BinaryFillhole(otsu.Execute(image))
    tissue = sitk.Cast(image > otsu.GetThreshold(), sitk.sitkUInt8) * head
    gap = _radius(image, skull_gap_mm)
    eroded = sitk.BinaryErode(tissue, gap, sitk.sitkBall, 0, 1)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(eroded), sortByObjectSize=True)
    core = sitk.Cast(labels == 1, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(core)):
        raise SegmentationError("no intracranial tissue found (is this a head T1?)")
    grown = sitk.BinaryDilate(core, gap, sitk.sitkBall, 0, 1)
    # The inner table is smooth: a closing bridges sulci and dark lesions that reach the surface.
    closed = sitk.BinaryMorphologicalClosing(grown, _radius(image, closing_mm), sitk.sitkBall)
    filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.Cast(closed * head, sitk.sitkUInt8))).astype(bool)
    # Ventricles and dark lesion centres open to the sulci in 3D are enclosed slice by slice.
    for index in np.flatnonzero(filled.any(axis=(1, 2))):
        filled[index] = ndimage.binary_fill_holes(filled[index])
    return filled


def intracranial_space(image: sitk.Image, brain: np.ndarray | None, skull_gap_mm: float = 3.0) -> np.ndarray:
    """The space candidates are measured against: the brain mask when one is given.

    The brain mask of :func:`analyzers._shared.brain.extract_brain` (the MNI152
    template's brain with sulcal and ventricular CSF, fitted by an affine
    registration) follows the inner surface of the skull, has no holes where a
    lesion is dark, and leaves out face, neck, scalp fat and the fatty marrow of
    the skull, which are as bright as enhancement on a T1. Without one, the
    image's own inner table (:func:`intracranial_mask`) stands in.
    """
    if brain is None:
        return intracranial_mask(image, skull_gap_mm)
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != tuple(reversed(image.GetSize())) or not brain.any():
        raise SegmentationError("the brain mask is empty or not on the image grid")
    return brain


def white_matter_level(values: np.ndarray) -> float:
    """The white-matter intensity of a T1's intracranial voxel ``values``.

    White matter is the brightest large tissue class of a T1 (grey matter,
    CSF and edema are darker; enhancement is small in volume): the rightmost
    clear peak (prominence at least a fifth of the highest) of the smoothed
    histogram of the voxels between the median and the 99.5th percentile.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(values, [50, 99.5])
    if not high > low:
        return float(np.median(values))
    counts, edges = np.histogram(values[(values >= low) & (values <= high)], bins=64)
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), 1.5)
    padded = np.concatenate([[0.0], smooth, [0.0]])
    peaks, _ = find_peaks(padded, prominence=0.2 * float(smooth.max()))
    peak = int(peaks.max()) - 1 if peaks.size else int(np.argmax(smooth))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def _fill_holes(mask: np.ndarray, reference: sitk.Image, closing: list[int]) -> np.ndarray:
    closed = sitk.BinaryMorphologicalClosing(_as_image(mask, reference), closing, sitk.sitkBall)
    array = sitk.GetArrayFromImage(sitk.BinaryFillhole(closed)).astype(bool)
    # Slice by slice as well: a necrotic core open to one side in 3D is enclosed in the axial plane.
    for index in np.flatnonzero(array.any(axis=(1, 2))):
        array[index] = ndimage.binary_fill_holes(array[index])
    return array


def _shape(mask: np.ndarray, spacing_zyx: np.ndarray) -> tuple[float, float]:
    points = np.argwhere(mask) * spacing_zyx
    if len(points) < 4:
        return 1.0, 1.0
    eigen = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1]
    eigen = np.maximum(eigen, 1e-3)
    return float(np.sqrt(eigen[0] / eigen[1])), float(np.sqrt(eigen[1] / eigen[2]))


@dataclass(frozen=True)
class _Context:
    pixels: np.ndarray
    inside: np.ndarray
    signed_depth: np.ndarray
    median: float
    white_matter: float
    spacing_zyx: np.ndarray
    voxel_ml: float


def _features(mask: np.ndarray, ctx: _Context) -> dict[str, float]:
    values = ctx.pixels[mask]
    depth = ctx.signed_depth[mask]
    elongation, flatness = _shape(mask, ctx.spacing_zyx)
    volume = float(mask.sum()) * ctx.voxel_ml
    return {
        "log_volume_ml": math.log(max(volume, 1e-6)),
        "enhancement_ratio": float(np.median(values)) / ctx.white_matter,
        "enhancement_p90_ratio": float(np.percentile(values, 90)) / ctx.white_matter,
        "inside_fraction": float(ctx.inside[mask].mean()),
        "dural_contact_fraction": float((np.abs(depth) <= 3.0).mean()),
        "boundary_distance_min_mm": float(depth.min()),
        "depth_max_mm": float(depth.max()),
        "elongation": elongation,
        "flatness": flatness,
        "dark_fraction": float((values < ctx.white_matter).mean()),
        "intensity_cv": float(values.std() / max(float(values.mean()), 1e-6)),
    }


def find_candidates(
    image: sitk.Image, intracranial: np.ndarray | None = None, settings: CandidateSettings | None = None
) -> list[Candidate]:
    """Every enhancing region that could be a meningioma, largest first.

    Parameters
    ----------
    image:
        N4-corrected post-contrast T1.
    intracranial:
        Intracranial mask on ``image``'s grid ``(z, y, x)``; :func:`intracranial_mask` when None.
    settings:
        :class:`CandidateSettings` defaults when None.

    Returns
    -------
    list of Candidate
        Possibly empty: nothing in the series enhances like a mass.
    """
    settings = settings or CandidateSettings()
    image = sitk.Cast(image, sitk.sitkFloat32)
    inside = intracranial_mask(image, settings.skull_gap_mm) if intracranial is None else intracranial.astype(bool)
    pixels = sitk.GetArrayFromImage(image)
    if inside.shape != pixels.shape or not inside.any():
        raise SegmentationError("the intracranial mask is empty or not on the image grid")
    values = pixels[inside]
    median = float(np.median(values))
    white_matter = white_matter_level(values)
    threshold = settings.enhancement_ratio * white_matter
    inside_image = _as_image(inside, image)
    search = sitk.GetArrayFromImage(
        sitk.BinaryDilate(inside_image, _radius(image, settings.search_margin_mm), sitk.sitkBall, 0, 1)
    ).astype(bool)
    closing = _radius(image, 2.0)
    # Holes first: a ring-enhancing mass becomes solid and survives the opening (its dark centre
    # is measured as dark_fraction).
    bright = _fill_holes((pixels > threshold) & search, image, closing)
    cores = sitk.BinaryMorphologicalOpening(
        _as_image(bright, image), _radius(image, settings.core_opening_mm), sitk.sitkBall
    )
    core_labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(cores))
    spacing_zyx = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    counts = np.bincount(core_labels.ravel())
    order = [int(label) for label in np.argsort(-counts)
             if label != 0 and counts[label] * voxel_ml >= settings.min_volume_ml]
    signed_depth = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(inside_image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    )
    ctx = _Context(pixels, inside, signed_depth, median, white_matter, spacing_zyx, voxel_ml)
    grow_radius = _radius(image, settings.grow_mm)
    candidates: list[Candidate] = []
    taken = np.zeros(pixels.shape, dtype=bool)
    for label in order[: settings.max_candidates]:
        seed = core_labels == label
        low = 0.5 * (median + float(np.median(pixels[seed])))
        near = sitk.GetArrayFromImage(sitk.BinaryDilate(_as_image(seed, image), grow_radius, sitk.sitkBall, 0, 1))
        grown = (pixels > low) & search & near.astype(bool)
        pieces, _ = ndimage.label(grown)
        keep = np.unique(pieces[seed & (pieces > 0)])
        region = (np.isin(pieces, keep[keep > 0]) | seed) & ~taken
        region = _fill_holes(region, image, closing) & ~taken
        if region.sum() * voxel_ml < settings.min_volume_ml:
            continue
        taken |= region
        features = _features(region, ctx)
        # A meningioma grows into the intracranial space; what lies mostly outside the brain
        # (marrow, fat, muscle next to an imperfect brain fit) is not a candidate.
        if features["inside_fraction"] >= settings.min_inside_fraction:
            candidates.append(Candidate(region, features))
    return candidates


@dataclass(frozen=True)
class LocatedSeries:
    """A series in the analyzer's canonical orientation, N4-corrected, with its candidate masses.

    Attributes
    ----------
    canonical:
        The series reoriented to the training data's axial array orientation.
    corrected:
        The N4 bias-corrected canonical image (what candidates and features are computed on).
    candidates:
        Candidate enhancing masses inside the intracranial space.
    """

    canonical: Reoriented
    corrected: sitk.Image
    candidates: list[Candidate]


def locate_candidates(volume: Volume, brain_mask: np.ndarray, settings: CandidateSettings,
                      n4: N4Settings | None = None) -> LocatedSeries:
    """The analyzer's path from a series and its brain mask (series grid) to candidate masses.

    Shared by the analyzer and by the measurements made on labelled cohorts
    (grade calibration on detected ROIs), so both see the same ROI.

    Raises
    ------
    SegmentationError
        No intracranial space can be found.
    """
    canonical = reorient(volume, AXIAL)
    corrected, _ = n4_bias_correction(canonical.to_sitk(), n4)
    inside = intracranial_space(corrected, canonical.forward(np.asarray(brain_mask, dtype=bool)))
    return LocatedSeries(canonical, corrected, find_candidates(corrected, inside, settings))
