"""Exceptions of the DCE analyzer's numerical library."""

from __future__ import annotations

__all__ = ["DceInputError", "RecurrenceModelError"]


class DceInputError(ValueError):
    """An array, an acquisition parameter or a setting cannot be used as given.

    The message names the quantity and what would make it usable; the analyzer turns it
    into :class:`analyzers.contract.UnsuitableInput` where the input itself is at fault.
    """


class RecurrenceModelError(ValueError):
    """A recurrence-probability model folder is missing, incomplete or of another kind."""
