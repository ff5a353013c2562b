"""Facts for the completion count that only an instance's own header knows.

Computed once per instance at ingest (:meth:`node.ingest.Ingestor`) and kept
with the series' routing attributes, so that
:func:`node.routing.completion.expected_instances` can tell layouts apart:

* ``TemporalPositionsInInstance``: how many distinct TemporalPositionIndex
  values the frames of a multi-frame (Enhanced MR) instance hold: 1 for
  Siemens XA's one-instance-per-volume series, all of them for a Philips
  whole-series object;
* ``GELocationsInAcquisition``: GE's private (0021,104F) Locations in
  Acquisition (slices per volume), which tells whether GE's
  ImagesInAcquisition counts one volume or all images.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from node.dataset_checks import DECODE_ERRORS

__all__ = ["HINT_KEYS", "completion_hints"]

HINT_KEYS = ("TemporalPositionsInInstance", "GELocationsInAcquisition")

_GE_RELATIONSHIP_CREATOR = "GEMS_RELA_01"


def _positive_int(value: Any) -> int | None:
    try:
        number = int(str(value).split("\\")[0])
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _temporal_positions(ds: Dataset) -> int | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    positions = set()
    for item in per_frame:
        content = item.get("FrameContentSequence")
        if not content:
            return None
        position = _positive_int(content[0].get("TemporalPositionIndex"))
        if position is None:
            return None
        positions.add(position)
    return len(positions) or None


def _ge_locations(ds: Dataset) -> int | None:
    if not str(ds.get("Manufacturer", "")).upper().startswith("GE"):
        return None
    try:
        block = ds.private_block(0x0021, _GE_RELATIONSHIP_CREATOR)
        return _positive_int(block[0x4F].value)
    except (KeyError, ValueError, TypeError):
        return None


def completion_hints(ds: Dataset) -> dict[str, int]:
    """The hints this instance's header gives (missing keys: the header does not say)."""
    hints: dict[str, int] = {}
    try:
        frames = _positive_int(ds.get("NumberOfFrames"))
        if frames is not None and frames > 1:
            positions = _temporal_positions(ds)
            if positions is not None:
                hints["TemporalPositionsInInstance"] = positions
        locations = _ge_locations(ds)
        if locations is not None:
            hints["GELocationsInAcquisition"] = locations
    except DECODE_ERRORS:
        return hints  # an undecodable private or per-frame element: no hint, the quiet timer decides
    return hints
