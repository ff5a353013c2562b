"""Rigid registration of SPACE onto MPRAGE to carry SPACE-drawn labels (setting B).

In the study ("MRI cross-technique transfer learning for brain metastasis
detection", Eur Radiol Exp 2025;9:15) the high-quality annotations were drawn
on the coregistered SPACE and used to train a model on MPRAGE. Here the SPACE
series is registered rigidly to the MPRAGE of the same study with SimpleITK
(Mattes mutual information, Euler 3D transform, three-level pyramid) and the
labels are resampled onto the MPRAGE grid with nearest-neighbour interpolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RegistrationError", "register_rigid", "sitk_image", "transfer_labels"]


class RegistrationError(RuntimeError):
    """The registration did not converge to a usable transform."""


def sitk_image(array_zyx: np.ndarray, affine_ijk: np.ndarray) -> Any:
    """SimpleITK image of a ``(z, y, x)`` array whose affine maps (column, row, slice) to LPS mm."""
    import SimpleITK as sitk

    aff = np.asarray(affine_ijk, dtype=np.float64)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in aff[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (aff[:3, :3] / spacing).ravel()))
    return image


def register_rigid(fixed: Any, moving: Any, *, seed: int = 0, iterations: int = 200) -> Any:
    """Rigid transform mapping points of ``fixed`` (MPRAGE) to ``moving`` (SPACE).

    Parameters
    ----------
    fixed, moving:
        SimpleITK images in patient (LPS) coordinates.
    seed:
        Seed of the metric's random sampling, so the result is reproducible.

    Returns
    -------
    SimpleITK.Euler3DTransform
        ITK convention: it maps a fixed-image physical point to the moving image.
    """
    import SimpleITK as sitk

    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    transform = reg.Execute(fixed_f, moving_f)
    if not np.isfinite(reg.GetMetricValue()):
        raise RegistrationError("mutual information is not finite; the images may not overlap")
    return transform


def transfer_labels(labels: Any, fixed: Any, transform: Any) -> Any:
    """Resample a label image (SPACE grid) onto ``fixed`` (MPRAGE) through ``transform``."""
    import SimpleITK as sitk

    return sitk.Resample(labels, fixed, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
