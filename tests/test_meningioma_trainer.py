"""Reading a labelled cohort for ``pacsnode train meningioma``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from analyzers.meningioma.trainer import _label, load_cases


def test_labels_accept_grade_names_and_0_1() -> None:
    assert _label("grade2_3") is True and _label("1") is True
    assert _label("grade1") is False and _label(" 0 ") is False
    with pytest.raises(ValueError, match="neither"):
        _label("grade 4")


def test_phantom_cohort_cases_load_with_automatic_rois(tmp_path: Path) -> None:
    t1c = pytest.importorskip("analyzers.phantoms.t1c", reason="t1c phantom not installed")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    root = t1c.generate_t1c(
        tmp_path, seed=5, cases=2, progress=False, matrix=80, slices=40, pixel_mm=2.2, slice_mm=3.5
    )
    cases = load_cases(root / "labels.csv")
    assert len(cases) == 2
    with open(root / "labels.csv") as handle:
        labels = [line.split(",") for line in handle.read().splitlines()]
    column = labels[0].index("label")
    assert [c.high_grade for c in cases] == [row[column] == "grade2_3" for row in labels[1:]]
    for case in cases:
        assert case.bias_corrected
        assert case.header["PatientSex"] in {"F", "M"}
        assert np.count_nonzero(sitk.GetArrayFromImage(case.mask)) > 0
        assert case.mask.GetSize() == case.image.GetSize()
