"""Exceptions of the ``spine`` analyzer's library."""

from __future__ import annotations

__all__ = ["SpineDataError", "SpineModelError"]


class SpineDataError(ValueError):
    """Images, masks or a labels file cannot be used as given (the message says why)."""


class SpineModelError(ValueError):
    """A spine model folder is missing, incomplete or holds another kind of model."""
