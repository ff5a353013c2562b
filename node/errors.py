"""Exception types of the node and the DIMSE / HTTP status each maps to.

Handlers raise these; ``dimse/handlers.py`` and ``dicomweb`` turn them into a
status in one place (:func:`dimse_status`, :func:`http_status`), so the same
fault answers the same way over every protocol.
"""

from __future__ import annotations

__all__ = [
    "DatasetMismatch",
    "IndexUnreadable",
    "InvalidDataset",
    "NodeError",
    "NotFound",
    "OutOfResources",
    "SopClassNotAllowed",
    "UnknownDestination",
    "dimse_status",
    "http_status",
]


class NodeError(Exception):
    """Base of the node's own faults. ``dimse`` and ``http`` are the statuses it answers with."""

    dimse: int = 0xC000
    http: int = 400

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self._detail = detail

    @property
    def detail(self) -> str:
        """The operator's text for the log: like :attr:`message` (what the peer is told), plus
        what only the operator may see, such as local paths."""
        return self._detail or self.message

    def prefix(self, text: str) -> None:
        """Put ``text`` before both the message and the detail (e.g. which part of a request)."""
        self.message = text + self.message
        if self._detail is not None:
            self._detail = text + self._detail


class InvalidDataset(NodeError):
    """The bytes are not a DICOM dataset the node can read (corrupt, truncated, not DICOM)."""

    dimse = 0xC000
    http = 400


class DatasetMismatch(NodeError):
    """The dataset lacks an attribute the node requires, or does not match its SOP class."""

    dimse = 0xA900
    http = 409


class SopClassNotAllowed(NodeError):
    """The SOP class is not one this node stores."""

    dimse = 0x0122
    http = 415


class OutOfResources(NodeError):
    """No room to store the instance (disk below ``storage.min_free_gb`` or a write failed)."""

    dimse = 0xA700
    http = 507


class NotFound(NodeError):
    """No such study, series or instance."""

    dimse = 0xC001
    http = 404


class UnknownDestination(NodeError):
    """A C-MOVE destination AE title that is not a configured peer."""

    dimse = 0xA801
    http = 400


class IndexUnreadable(Exception):
    """The index file exists but SQLite cannot read it; the message says how to rebuild it
    (the command line exits with code 2 and that one line)."""


def dimse_status(error: NodeError) -> int:
    """The DIMSE status code for ``error``."""
    return error.dimse


def http_status(error: NodeError) -> int:
    """The HTTP status code for ``error``."""
    return error.http
