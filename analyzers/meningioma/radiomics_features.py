"""Radiomics features with pyradiomics, configured by the analyzer's params file.

The parameters live in ``params.yaml`` beside this module and follow the study
(Li et al., Sci Rep 2025, doi:10.1038/s41598-025-01665-0): fixed bin width 25,
original + wavelet + Laplacian-of-Gaussian images, shape, first-order, GLCM, GLRLM,
GLSZM, GLDM and NGTDM features. The IBSI conventions (Zwanenburg et al., Radiology
2020) that pyradiomics needs to be told about are set there too: ``voxelArrayShift``
0, symmetric GLCM, distance 1, ``gldm_a`` 0.

:class:`RadiomicsSettings` is the one settings object used both by the analyzer and
by the IBSI-1 compliance test, which only overrides what the IBSI-1 digital
phantom requires (no resampling, bin width 1, original image only).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from analyzers.meningioma.errors import FeatureExtractionError

__all__ = [
    "DEFAULT_PARAMS_FILE",
    "RadiomicsSettings",
    "extract_radiomics",
]

DEFAULT_PARAMS_FILE = Path(__file__).with_name("params.yaml")

# Keys that preprocessing carries out itself (SimpleITK, after N4); the extractor
# must not resample again.
_PREPROCESSING_KEYS = ("resampledPixelSpacing", "interpolator")


def _quiet_pyradiomics() -> None:
    # pyradiomics logs every feature class at INFO (and notes such as "Sum Average =
    # 2 * Joint Average" as warnings) to stderr; only its errors matter to the job log.
    logging.getLogger("radiomics").setLevel(logging.ERROR)


@dataclass(frozen=True)
class RadiomicsSettings:
    """pyradiomics parameters (``setting``, ``imageType``, ``featureClass``).

    Parameters
    ----------
    params:
        A pyradiomics parameter mapping; validated against pyradiomics' own schema
        on construction.

    Notes
    -----
    ``setting.resampledPixelSpacing`` and ``setting.interpolator`` describe the
    resampling done by :mod:`analyzers.meningioma.preprocessing`; they are removed
    from what the feature extractor receives.
    """

    params: Mapping[str, Any] = field(repr=False)

    def __post_init__(self) -> None:
        frozen = copy.deepcopy(dict(self.params))
        for section in ("setting", "imageType", "featureClass"):
            frozen.setdefault(section, {})
            if not isinstance(frozen[section], Mapping):
                raise ValueError(f"params section {section!r} must be a mapping")
        object.__setattr__(self, "params", frozen)
        # Validates against pyradiomics' schema (raises on unknown keys or bad values).
        self.feature_extractor()

    @classmethod
    def from_file(cls, path: Path | str = DEFAULT_PARAMS_FILE) -> RadiomicsSettings:
        """Read a pyradiomics YAML params file (the analyzer's own by default)."""
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: a pyradiomics params file must hold a mapping")
        return cls(loaded)

    @property
    def setting(self) -> dict[str, Any]:
        """A copy of the ``setting`` section."""
        return copy.deepcopy(dict(self.params["setting"]))

    @property
    def image_types(self) -> dict[str, Any]:
        """A copy of the ``imageType`` section."""
        return copy.deepcopy(dict(self.params["imageType"]))

    @property
    def target_spacing_mm(self) -> tuple[float, float, float] | None:
        """Voxel size preprocessing resamples to, or None for no resampling."""
        spacing = self.params["setting"].get("resampledPixelSpacing")
        if spacing is None:
            return None
        values = tuple(float(v) for v in spacing)
        if len(values) != 3 or min(values) <= 0:
            raise ValueError(f"resampledPixelSpacing must be 3 positive values, got {spacing}")
        return (values[0], values[1], values[2])

    @property
    def bin_width(self) -> float:
        """Fixed bin width of the intensity discretisation."""
        return float(self.params["setting"]["binWidth"])

    def with_settings(self, **overrides: Any) -> RadiomicsSettings:
        """The same parameters with some ``setting`` entries replaced.

        A value of None removes the entry (pyradiomics' default applies).
        """
        params = copy.deepcopy(dict(self.params))
        for key, value in overrides.items():
            if value is None:
                params["setting"].pop(key, None)
            else:
                params["setting"][key] = value
        return RadiomicsSettings(params)

    def with_image_types(self, image_types: Mapping[str, Mapping[str, Any]]) -> RadiomicsSettings:
        """The same parameters with another ``imageType`` section."""
        params = copy.deepcopy(dict(self.params))
        params["imageType"] = copy.deepcopy(dict(image_types))
        return RadiomicsSettings(params)

    def ibsi_phantom(self) -> RadiomicsSettings:
        """These settings with the overrides the IBSI-1 digital phantom prescribes.

        IBSI reference manual, digital phantom: no image processing (no
        resampling, no normalisation, original image only), fixed bin size 1,
        symmetric GLCM, Chebyshev distance 1, NGLDM coarseness 0; pyradiomics also
        needs ``voxelArrayShift`` 0 and ``minimumROIDimensions`` 1 is harmless.
        """
        return self.with_settings(
            resampledPixelSpacing=None,
            interpolator=None,
            normalize=False,
            binWidth=1,
            voxelArrayShift=0,
            symmetricalGLCM=True,
            distances=[1],
            gldm_a=0,
        ).with_image_types({"Original": {}})

    def extractor_params(self) -> dict[str, Any]:
        """The parameter mapping handed to pyradiomics (resampling removed)."""
        params = copy.deepcopy(dict(self.params))
        for key in _PREPROCESSING_KEYS:
            params["setting"].pop(key, None)
        return params

    def feature_extractor(self) -> Any:
        """A configured ``radiomics.featureextractor.RadiomicsFeatureExtractor``."""
        _quiet_pyradiomics()
        from radiomics import featureextractor

        return featureextractor.RadiomicsFeatureExtractor(self.extractor_params())


def extract_radiomics(
    image: sitk.Image,
    mask: sitk.Image,
    settings: RadiomicsSettings,
    *,
    label: int = 1,
) -> dict[str, float]:
    """Compute the enabled radiomics features of one ROI.

    Parameters
    ----------
    image:
        The (already preprocessed) image, any scalar pixel type.
    mask:
        Label map on the same grid as ``image``.
    settings:
        The parameters; see :class:`RadiomicsSettings`.
    label:
        Value of the ROI in ``mask``.

    Returns
    -------
    dict
        ``"<imageType>_<class>_<feature>" -> value``, diagnostics excluded, in
        pyradiomics' order.

    Raises
    ------
    FeatureExtractionError
        When pyradiomics rejects the ROI (empty, too small, off the image grid).
    """
    image = sitk.Cast(image, sitk.sitkFloat64)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(mask) == label):
        raise FeatureExtractionError(f"the ROI (label {label}) is empty")
    extractor = settings.feature_extractor()
    try:
        raw = extractor.execute(image, mask, label=label)
    except (ValueError, RuntimeError) as error:  # pyradiomics' checkMask and ITK errors
        raise FeatureExtractionError(f"pyradiomics could not use the ROI: {error}") from error
    return {
        name: float(value)
        for name, value in raw.items()
        if not name.startswith("diagnostics_")
    }

