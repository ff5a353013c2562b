"""Every ``--small`` phantom seed through its analyzer: done, or rejected with a reason; never failed.

``python -m bench.scanner_layouts --cases phantom-NAME@SEED`` runs more seeds, sizes and patient
positions (brainmets too, whose CPU inference is too slow to repeat here).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from analyzers.contract import AnalysisInput, SeriesInput, UnsuitableInput
from analyzers.phantoms.cli import PHANTOMS, SMALL
from analyzers.phantoms.dicomio import write_case
from analyzers.registry import load_analyzer

CASES = [("dsc", "dsc", "dsc", seed) for seed in range(3)] + [
    ("dce", "dce", "dce", seed) for seed in range(3)] + [
    ("spine", "t1", "spine", seed) for seed in range(5)] + [
    ("t1c", "t1c", "meningioma", seed) for seed in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize(("phantom", "folder", "analyzer", "seed"), CASES)
def test_small_phantom_seed_never_fails(phantom: str, folder: str, analyzer: str, seed: int,
                                        tmp_path: Path) -> None:
    case = PHANTOMS[phantom][1](seed=seed, **SMALL[phantom])
    written = write_case(case, tmp_path / "case")
    files = tuple(sorted((written / folder).iterdir()))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    instance = load_analyzer(analyzer)
    (tmp_path / "work").mkdir()
    job = AnalysisInput(f"{analyzer}-{seed}", SeriesInput(
        str(header.SeriesInstanceUID), str(header.StudyInstanceUID), files,
        {"SeriesDescription": str(header.SeriesDescription)}), {}, (), instance.settings_model(), tmp_path / "work")
    try:
        result = instance.analyze(job)
    except UnsuitableInput as exc:
        assert exc.reason.strip()
        return
    assert result.datasets, "done without outputs"
    assert any(str(d.Modality) == "SR" for d in result.datasets)
