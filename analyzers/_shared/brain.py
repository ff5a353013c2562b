"""Brain extraction for real heads: affine registration of the MNI152 template.

:func:`extract_brain` maps the brain mask of the MNI152 2009a template
(ICBM 2009a nonlinear symmetric, Fonov et al., NeuroImage 2011; it ships inside
nilearn, so nothing is downloaded) onto a T1-weighted head series and returns
the mask on the series' own voxel grid, whatever the slice orientation
(axial, sagittal, coronal, oblique), the patient position (head or feet
first, supine, prone, decubitus) and the field of view: everything happens in
DICOM patient coordinates, which are attached to the patient, not to the
scanner or to the pixel array.

Method (SimpleITK, CPU, a few seconds):

1. The series is clipped at its 99.5th percentile, scaled to 0..1 and
   resampled to 3 mm (Gaussian anti-aliasing); the template likewise.
2. Start: the template's brain centre is placed on the centre of the head's
   foreground (Otsu), shifted by -25, 0 and +25 mm along the patient's
   head-foot axis (a field of view with neck or without the vertex moves the
   foreground centre); each start is registered with a similarity transform
   (rotation, isotropic scale, translation) at 6 mm then 3 mm and the best
   Mattes mutual information wins.
3. Refinement: a full affine transform at 3 mm. The metric is evaluated inside
   the template's brain mask grown by 3 mm (brain, CSF and the inner skull
   table), so the scalp, neck and face of the series, which the skull-stripped
   template lacks, do not pull the fit.
4. The template brain mask (template T1 > 0.02, brain parenchyma with sulcal
   and ventricular CSF) is resampled through the inverse transform onto the
   series grid (linear, threshold 0.5).

The fit is checked before it is used: the Pearson correlation between the
series and the mapped template inside the mask must reach ``min_similarity``
(T1 heads measure 0.4-0.95; an image without a brain, e.g. frequency-domain
data or a phantom bottle, measures below 0.1), and ``min_coverage`` of the
template brain must lie inside the field of view. Otherwise :class:`NoBrainFound`
(an :class:`~analyzers.contract.UnsuitableInput`) says which check failed.

The mask is an affine approximation of the brain (a few millimetres at the
cortex): good for "where is the brain", intracranial search regions,
normal-appearing reference tissue and coverage checks, not for volumetry.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyzers._shared.volume import Volume
from analyzers.contract import UnsuitableInput

__all__ = ["BrainExtraction", "NoBrainFound", "extract_brain"]

#: Seed of the metric's sample points (fixed: the fit is reproducible).
_SAMPLING_SEED = 20260707

_TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Template T1 above this (0..1) is brain: the template is skull-stripped with CSF kept.
_BRAIN_LEVEL = 0.02
_WORK_SPACING_MM = 3.0
_METRIC_MARGIN_MM = 3.0
_START_SHIFTS_MM = (0.0, -25.0, 25.0)
# Starting size of the template: adult brains are about 8 % smaller than MNI152 (linear).
_START_SCALE = 0.92


class NoBrainFound(UnsuitableInput):
    """The series does not show enough of a brain for the template to fit it."""


@dataclass(frozen=True)
class BrainExtraction:
    """A brain mask on a series' grid and the fit that produced it.

    Attributes
    ----------
    mask:
        Boolean ``(z, y, x)`` array on the series' grid: brain (parenchyma with
        sulcal and ventricular CSF).
    template_to_patient:
        4x4 affine mapping MNI152 points (LPS mm: MNI x and y negated) to the
        series' patient coordinates (LPS mm).
    similarity:
        Pearson correlation of the series and the mapped template T1 inside
        ``mask`` (0..1; see the module notes).
    coverage:
        Fraction of the template brain that lies inside the field of view.
    volume_ml:
        Volume of ``mask`` (the brain inside the field of view), millilitres.
    """

    mask: np.ndarray
    template_to_patient: np.ndarray
    similarity: float
    coverage: float
    volume_ml: float

    def mni_to_patient(self, points_mni_ras: np.ndarray) -> np.ndarray:
        """Map MNI (RAS mm) points ``(..., 3)`` to the series' patient coordinates (LPS mm)."""
        ras = np.asarray(points_mni_ras, dtype=np.float64)
        lps = ras * np.array([-1.0, -1.0, 1.0])
        return lps @ self.template_to_patient[:3, :3].T + self.template_to_patient[:3, 3]


def _template_path() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise NoBrainFound("brain extraction needs nilearn (its packaged MNI152 template); install nilearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / _TEMPLATE_FILE
    if not path.is_file():
        raise NoBrainFound(f"nilearn's packaged MNI152 template is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _template() -> tuple[Any, Any]:
    """The template T1 (0..1) and its brain mask (0/1 float) as LPS SimpleITK images at 1 mm."""
    import nibabel as nib
    import SimpleITK as sitk

    image: Any = nib.load(str(_template_path()))
    values = np.asarray(image.dataobj, dtype=np.float32) / 255.0  # (x, y, z), RAS
    affine = np.asarray(image.affine, dtype=np.float64)
    to_lps = np.diag([-1.0, -1.0, 1.0])
    t1 = sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    t1.SetSpacing(tuple(float(s) for s in spacing))
    t1.SetOrigin(tuple(float(v) for v in to_lps @ affine[:3, 3]))
    t1.SetDirection(tuple(float(v) for v in (to_lps @ affine[:3, :3] / spacing).ravel()))
    mask = sitk.Cast(t1 > _BRAIN_LEVEL, sitk.sitkFloat32)
    return t1, mask


def _resample_to(image: Any, spacing_mm: float) -> Any:
    """``image`` on a grid of about ``spacing_mm`` (same orientation and extent), anti-aliased."""
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    size = np.asarray(image.GetSize())
    new_size = np.maximum(1, np.round(size * spacing / spacing_mm)).astype(int)
    new_spacing = spacing * size / new_size
    sigmas = [max(0.05, max(0.0, spacing_mm**2 - s**2) ** 0.5 / 2.355) for s in spacing]
    smooth = sitk.SmoothingRecursiveGaussian(image, sigmas)
    # The first voxel centre moves so the new grid covers the same extent.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2.0)
    return sitk.Resample(smooth, [int(v) for v in new_size], sitk.Transform(), sitk.sitkLinear,
                         tuple(float(v) for v in origin), tuple(float(v) for v in new_spacing),
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _physical_points(image: Any, mask: np.ndarray) -> np.ndarray:
    """Patient coordinates of the ``True`` voxels of a ``(z, y, x)`` mask on ``image``'s grid."""
    index = np.argwhere(mask)[:, ::-1].astype(np.float64)  # (x, y, z) = (i, j, k)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    return index @ (direction * spacing).T + np.asarray(image.GetOrigin())


def _register(fixed: Any, moving: Any, fixed_mask: Any, transform: Any, levels: list[int]
              ) -> tuple[Any, float]:
    """Optimise ``transform`` (in place) so it maps ``fixed`` points onto ``moving``."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(fixed_mask)
    # Same input, same output: ITK jitters even REGULAR sample points randomly, seeded from the
    # wall clock unless a seed is given (a healthy brain in another patient position once
    # fitted differently and gave a meningioma candidate).
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.5, _SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(levels)
    method.SetSmoothingSigmasPerLevel([float(level - 1) for level in levels])
    method.SetInitialTransform(transform, inPlace=True)
    # The metric's partial sums over threads are added in varying order, and over 200
    # iterations that moved the fit from run to run: one thread (the global default is what
    # the metric uses) keeps it bit-identical, at about 1 s more per brain.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        method.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return transform, float(method.GetMetricValue())


def extract_brain(
    volume: Volume,
    *,
    time_point: int | None = None,
    min_similarity: float = 0.25,
    min_coverage: float = 0.25,
) -> BrainExtraction:
    """Map the MNI152 brain mask onto a T1-weighted head series.

    Parameters
    ----------
    volume:
        The series (:func:`analyzers._shared.volume.load_series`), any
        orientation, patient position and field of view.
    time_point:
        Which time point of a dynamic series to use (default: the first).
    min_similarity:
        Smallest accepted correlation between series and mapped template.
    min_coverage:
        Smallest accepted fraction of the template brain inside the field of view.

    Returns
    -------
    BrainExtraction
        The mask on ``volume``'s grid with the fit's figures.

    Raises
    ------
    NoBrainFound
        The template does not fit (no brain, or not a T1-weighted contrast the
        template resembles) or too little of the brain is in the field of view.
    """
    import SimpleITK as sitk

    if volume.is_dynamic and time_point is None:
        time_point = 0
    series = sitk.Cast(volume.to_sitk(time_point), sitk.sitkFloat32)
    values = sitk.GetArrayViewFromImage(series)
    top = float(np.percentile(values, 99.5))
    if not np.isfinite(top) or top <= 0:
        raise NoBrainFound("the series is empty (no positive pixel values), so no brain can be found")
    series = sitk.Clamp(series, sitk.sitkFloat32, 0.0, top) / top
    moving = _resample_to(series, _WORK_SPACING_MM)
    template_t1, template_mask = _template()
    fixed = _resample_to(template_t1, _WORK_SPACING_MM)
    fixed_brain = _resample_to(template_mask, _WORK_SPACING_MM) > 0.5
    margin = max(1, round(_METRIC_MARGIN_MM / _WORK_SPACING_MM))
    fixed_mask = sitk.BinaryDilate(sitk.Cast(fixed_brain, sitk.sitkUInt8), [margin] * 3)

    moving_values = sitk.GetArrayFromImage(moving)
    foreground = moving_values > float(np.percentile(moving_values, 50)) * 0.5 + 0.05
    if foreground.sum() < 100:
        raise NoBrainFound("the series has almost no foreground signal, so no brain can be found")
    head_centre = _physical_points(moving, foreground).mean(axis=0)
    brain_centre = _physical_points(fixed, sitk.GetArrayFromImage(fixed_brain).astype(bool)).mean(axis=0)

    best: tuple[float, Any] | None = None
    for shift in _START_SHIFTS_MM:
        start = sitk.Similarity3DTransform()
        start.SetScale(_START_SCALE)
        start.SetCenter(tuple(float(v) for v in brain_centre))
        start.SetTranslation(tuple(float(v) for v in head_centre + np.array([0.0, 0.0, shift]) - brain_centre))
        try:
            similar, _ = _register(fixed, moving, fixed_mask, start, [2, 1])
            refined = sitk.AffineTransform(3)
            refined.SetCenter(similar.GetCenter())
            refined.SetMatrix(similar.GetMatrix())
            refined.SetTranslation(similar.GetTranslation())
            refined, metric = _register(fixed, moving, fixed_mask, refined, [1])
        except RuntimeError:
            continue  # this start left the image; another may not
        if best is None or metric < best[0]:
            best = (metric, refined)
    if best is None:
        raise NoBrainFound("the MNI152 template could not be registered to the series from any start")
    affine = best[1]

    inverse = affine.GetInverse()
    mapped_mask = sitk.Resample(template_mask, series, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.GetArrayFromImage(mapped_mask) > 0.5
    mapped_t1 = sitk.GetArrayFromImage(
        sitk.Resample(template_t1, series, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    series_values = sitk.GetArrayFromImage(series)
    voxel_ml = float(np.prod(series.GetSpacing())) / 1000.0
    volume_ml = float(mask.sum()) * voxel_ml

    # template -> patient: ITK's transform maps template (fixed) points to series points.
    matrix = np.asarray(affine.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre = np.asarray(affine.GetCenter(), dtype=np.float64)
    translation = np.asarray(affine.GetTranslation(), dtype=np.float64)
    template_to_patient = np.eye(4)
    template_to_patient[:3, :3] = matrix
    template_to_patient[:3, 3] = translation + centre - matrix @ centre

    template_ml = float(sitk.GetArrayViewFromImage(template_mask).sum()) * float(
        np.prod(template_mask.GetSpacing())) / 1000.0
    coverage = volume_ml / (template_ml * abs(float(np.linalg.det(matrix))))
    if mask.sum() < 10:
        raise NoBrainFound("the fitted brain lies outside the field of view")
    similarity = float(np.corrcoef(series_values[mask], mapped_t1[mask])[0, 1])
    if not np.isfinite(similarity):
        similarity = 0.0
    if similarity < min_similarity:
        raise NoBrainFound(
            f"no brain found: the MNI152 template fits the series poorly (correlation "
            f"{similarity:.2f} < {min_similarity:.2f}); the series should be a T1-weighted image of a head")
    if coverage < min_coverage:
        raise NoBrainFound(
            f"only {100 * coverage:.0f} % of the brain is in the field of view (at least "
            f"{100 * min_coverage:.0f} % needed); send a series that covers the brain")
    return BrainExtraction(mask=mask, template_to_patient=template_to_patient,
                           similarity=similarity, coverage=float(min(1.0, coverage)), volume_ml=volume_ml)
