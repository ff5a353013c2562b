"""The built-in ``qc`` analyzer: geometry consistency of any MR series, as a TID 1500 SR.

It reads the headers of the series (no pixel data for the checks), assesses orientation,
pixel and slice spacing, missing and duplicate slices and the time axis
(:mod:`analyzers.qc.geometry`), then tries to load the series as one regular volume with
:func:`analyzers._shared.volume.load_series` (what the other analyzers need) and reports
whether that works and, if not, why.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import pydicom
from pydantic import Field

from analyzers._shared.volume import SeriesGeometryError, load_series
from analyzers.contract import (
    NOT_FOR_CLINICAL_USE,
    AnalysisInput,
    AnalysisResult,
    AnalyzerSettings,
    UnsuitableInput,
)
from analyzers.qc.geometry import assess_geometry, frames_of
from analyzers.qc.report import build_report

__all__ = ["QcAnalyzer", "QcSettings"]


class QcSettings(AnalyzerSettings):
    """Settings of the ``qc`` route."""

    check_volume: bool = True
    """Also load the pixels as one volume (what the other analyzers do) and report failures."""
    series_number: Annotated[int, Field(ge=1, le=99999)] = 9901
    """SeriesNumber of the SR series."""


class QcAnalyzer:
    """Series geometry QC (see the module docstring)."""

    name: ClassVar[str] = "qc"
    version: ClassVar[str] = "1.0.0"
    needs: ClassVar[dict[str, str]] = {}
    wants_priors: ClassVar[bool] = False
    settings_model: ClassVar[type[AnalyzerSettings]] = QcSettings

    def analyze(self, job: AnalysisInput) -> AnalysisResult:
        settings = job.settings if isinstance(job.settings, QcSettings) else QcSettings()
        datasets = []
        for path in sorted(job.series.files):
            try:  # read each file once: the headers for the checks, the pixels for load_series
                datasets.append(pydicom.dcmread(path, stop_before_pixels=not settings.check_volume))
            except (pydicom.errors.InvalidDicomError, OSError) as exc:
                raise UnsuitableInput(f"{path.name} is not a readable DICOM file: {exc}") from exc
        headers = [h for h in datasets if "ImagePositionPatient" in h or "PerFrameFunctionalGroupsSequence" in h]
        if not headers:
            raise UnsuitableInput("no instance of the series has image geometry (ImagePositionPatient); qc "
                                  "checks cross-sectional image series only")
        try:
            geometry = assess_geometry(frames_of(headers))
        except ValueError as exc:
            raise UnsuitableInput(str(exc)) from exc
        findings = geometry.as_dict()
        if settings.check_volume:
            try:
                volume = load_series(datasets)
                findings["volume_loadable"] = True
                findings["volume_shape"] = list(volume.data.shape)
            except SeriesGeometryError as exc:
                findings["volume_loadable"] = False
                findings["volume_error"] = str(exc)
        findings["notice"] = NOT_FOR_CLINICAL_USE
        sr = build_report(geometry, headers, algorithm_version=self.version, series_number=settings.series_number)
        return AnalysisResult(datasets=[sr], findings=findings)
