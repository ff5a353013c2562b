"""Input sanity checks every analyzer applies to the volume it is about to analyze.

A job must never end ``done`` on a volume that was misread or is not what the
method needs. These checks run after :func:`analyzers._shared.volume.load_series`
and raise :class:`~analyzers.contract.UnsuitableInput` with a reason that names
the analyzer, the series' layout and what is wrong:

* :func:`check_static` / :func:`check_dynamic`: the expected dimensionality,
  the number of slices (3D methods need at least three), the in-plane matrix,
  and for a dynamic enough time points with a time axis that increases;
* :func:`check_acquisition`: the acquisition is the kind the method models
  (a T1-weighted spoiled gradient echo for DCE, a T2*-weighted echo time for
  DSC), from EchoTime / RepetitionTime of any layout;
* :func:`check_brain`: the series shows a brain (the MNI152 template fits it,
  :func:`analyzers._shared.brain.extract_brain`) with enough of it in the field
  of view; the fitted brain mask is returned for the analyzer's own use.
"""

from __future__ import annotations

import numpy as np

from analyzers._shared.brain import BrainExtraction, NoBrainFound, extract_brain
from analyzers._shared.volume import Volume
from analyzers.contract import UnsuitableInput

__all__ = ["check_acquisition", "check_brain", "check_dynamic", "check_static"]


def _in_plane(volume: Volume, analyzer: str, min_matrix: int) -> None:
    _, rows, columns = volume.shape3d
    if min(rows, columns) < min_matrix:
        raise UnsuitableInput(
            f"{analyzer} needs images of at least {min_matrix}x{min_matrix} pixels; input: "
            f"{volume.describe()}"
        )


def check_static(volume: Volume, analyzer: str, *, min_slices: int = 3, min_matrix: int = 32) -> None:
    """A static volume of at least ``min_slices`` slices of at least ``min_matrix`` pixels a side.

    Raises
    ------
    UnsuitableInput
        A dynamic series, too few slices, or too small images; the reason names the layout.
    """
    if volume.is_dynamic:
        raise UnsuitableInput(f"{analyzer} needs a static series; input: {volume.describe()}")
    if volume.shape3d[0] < min_slices:
        raise UnsuitableInput(
            f"{analyzer} is a 3D method and needs at least {min_slices} slices; input: {volume.describe()}"
        )
    _in_plane(volume, analyzer, min_matrix)


def check_dynamic(volume: Volume, analyzer: str, *, min_time_points: int = 10, min_matrix: int = 16) -> None:
    """A dynamic volume with a time axis of at least ``min_time_points`` increasing times.

    Raises
    ------
    UnsuitableInput
        A static series, no timing in the headers, too few or non-increasing
        time points, or too small images; the reason names the layout.
    """
    if not volume.is_dynamic or volume.times is None:
        what = "no times in its headers" if volume.is_dynamic else "static"
        raise UnsuitableInput(
            f"{analyzer} needs a dynamic series with a time axis (frame timing); input ({what}): "
            f"{volume.describe()}"
        )
    if len(volume.times) < min_time_points:
        raise UnsuitableInput(
            f"{analyzer} needs at least {min_time_points} time points; input: {volume.describe()}"
        )
    if not np.all(np.diff(volume.times) > 0):
        raise UnsuitableInput(
            f"{analyzer}: the time points do not follow each other in time (repeated or decreasing "
            f"acquisition times); input: {volume.describe()}"
        )
    _in_plane(volume, analyzer, min_matrix)


def _header_value(volume: Volume, keyword: str) -> float | None:
    value = volume.headers[0].get(keyword) if volume.headers else None
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def check_acquisition(volume: Volume, analyzer: str, *, min_echo_ms: float | None = None,
                      max_repetition_ms: float | None = None, hint: str = "") -> None:
    """The series' EchoTime / RepetitionTime are those of the acquisition the method models.

    A value the headers do not give is not checked here (the analyzer says what it misses).

    Raises
    ------
    UnsuitableInput
        EchoTime below ``min_echo_ms`` or RepetitionTime above ``max_repetition_ms``.
    """
    echo = _header_value(volume, "EchoTime")
    repetition = _header_value(volume, "RepetitionTime")
    if min_echo_ms is not None and echo is not None and echo < min_echo_ms:
        raise UnsuitableInput(
            f"{analyzer} needs an echo time of at least {min_echo_ms:g} ms; input: TE {echo:g} ms, "
            f"{volume.describe()}{hint}"
        )
    if max_repetition_ms is not None and repetition is not None and repetition > max_repetition_ms:
        raise UnsuitableInput(
            f"{analyzer} needs a repetition time of at most {max_repetition_ms:g} ms; input: TR "
            f"{repetition:g} ms, {volume.describe()}{hint}"
        )


def check_brain(volume: Volume, analyzer: str, *, min_coverage: float = 0.25) -> BrainExtraction:
    """The brain of a T1-weighted head series (see :mod:`analyzers._shared.brain`).

    Raises
    ------
    UnsuitableInput
        No brain found, or less than ``min_coverage`` of it in the field of view.
    """
    try:
        return extract_brain(volume, min_coverage=min_coverage)
    except NoBrainFound as exc:
        raise UnsuitableInput(f"{analyzer}: {exc.reason} ({volume.describe()})") from exc
