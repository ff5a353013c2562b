"""Where the real scanner series live (``reference-data/scanner-dicom``) and how tests find them.

The folder is part of the shared reference data, not of the repository: tests that use it
skip with a reason where it is absent (as in CI on a clean checkout).
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["SCANNER_DICOM", "requires_scanner_dicom", "series_files"]

SCANNER_DICOM = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference-data" / "scanner-dicom"

requires_scanner_dicom = pytest.mark.skipif(
    not SCANNER_DICOM.is_dir(),
    reason=f"real scanner series not present at {SCANNER_DICOM} (shared reference data, absent in CI)",
)


def series_files(relative: str) -> list[Path]:
    """The DICOM files of one series folder (or one multi-frame file) under scanner-dicom."""
    path = SCANNER_DICOM / relative
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in {".nii", ".json", ".txt"})
