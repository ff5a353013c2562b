"""Input sanity checks every analyzer applies (analyzers._shared.sanity): the reason names the
analyzer, the layout and what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from analyzers._shared.dicom_layouts import MOSAIC
from analyzers._shared.sanity import check_acquisition, check_dynamic, check_static
from analyzers._shared.volume import Volume
from analyzers.contract import UnsuitableInput


def _volume(shape: tuple[int, ...], times: list[float] | None = None, layout: str = MOSAIC,
            **header: float) -> Volume:
    uids = np.full(shape[:-2], "1.2.3", dtype=object)
    ds = Dataset()
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return Volume(np.zeros(shape, np.float32), np.eye(4), (3.0, 2.0, 2.0),
                  None if times is None else np.asarray(times), uids, (ds,), uids.copy(), layout=layout)


def test_static_checks_name_the_layout() -> None:
    check_static(_volume((20, 64, 64)), "brainmets")
    with pytest.raises(UnsuitableInput, match=r"needs a static series; input: Siemens MOSAIC.*4 time points"):
        check_static(_volume((4, 20, 64, 64), [0, 1, 2, 3]), "brainmets")
    with pytest.raises(UnsuitableInput, match="at least 3 slices; input: Siemens MOSAIC"):
        check_static(_volume((2, 64, 64)), "brainmets")
    with pytest.raises(UnsuitableInput, match="at least 32x32 pixels"):
        check_static(_volume((20, 16, 64)), "brainmets")


def test_dynamic_checks_time_axis_and_count() -> None:
    check_dynamic(_volume((12, 5, 32, 32), list(range(12))), "dsc")
    with pytest.raises(UnsuitableInput, match=r"time axis.*input \(static\)"):
        check_dynamic(_volume((5, 32, 32)), "dsc")
    with pytest.raises(UnsuitableInput, match=r"no times in its headers"):
        check_dynamic(_volume((12, 5, 32, 32)), "dsc")
    with pytest.raises(UnsuitableInput, match="at least 10 time points"):
        check_dynamic(_volume((4, 5, 32, 32), [0, 1, 2, 3]), "dsc")
    with pytest.raises(UnsuitableInput, match="do not follow each other"):
        check_dynamic(_volume((12, 5, 32, 32), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10]), "dsc")


def test_acquisition_checks_te_and_tr() -> None:
    check_acquisition(_volume((5, 32, 32), EchoTime=30.0), "dsc", min_echo_ms=10.0)
    with pytest.raises(UnsuitableInput, match=r"echo time of at least 10 ms; input: TE 1\.6 ms"):
        check_acquisition(_volume((5, 32, 32), EchoTime=1.6), "dsc", min_echo_ms=10.0)
    with pytest.raises(UnsuitableInput, match="repetition time of at most 50 ms; input: TR 1500 ms"):
        check_acquisition(_volume((5, 32, 32), RepetitionTime=1500.0), "dce", max_repetition_ms=50.0)
    check_acquisition(_volume((5, 32, 32)), "dce", max_repetition_ms=50.0)  # not stated: not checked here
