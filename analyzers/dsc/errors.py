"""Exceptions of the DSC perfusion library."""

from __future__ import annotations

__all__ = ["DscError", "DscInputError", "DscModelError"]


class DscError(ValueError):
    """Base class of every error raised by :mod:`analyzers.dsc`."""


class DscInputError(DscError):
    """The DSC data cannot be analysed (too few frames, no bolus, bad timing, wrong shape)."""


class DscModelError(DscError):
    """A classifier cannot be trained, saved or loaded (the message says why)."""
