"""Exceptions of the meningioma analyzer."""

from __future__ import annotations

__all__ = [
    "FeatureExtractionError",
    "MeningiomaError",
    "ModelError",
    "SegmentationError",
]


class MeningiomaError(Exception):
    """Base of every error raised by :mod:`analyzers.meningioma`."""


class FeatureExtractionError(MeningiomaError):
    """Radiomics or deep features could not be computed for an image and ROI."""


class SegmentationError(MeningiomaError):
    """No enhancing dural-based mass could be segmented automatically."""


class ModelError(MeningiomaError):
    """A model folder or weights file is missing, incomplete or inconsistent."""
