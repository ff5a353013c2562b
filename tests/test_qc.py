"""The built-in qc analyzer: geometry findings on deliberately broken series, and its TID 1500 SR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput, SeriesInput, UnsuitableInput
from analyzers.qc import QcAnalyzer, QcSettings
from node.jobs.work import assign_output_uids, check_outputs, to_part10
from node.samples import SeriesSpec, write_mr_series


def _job(files: list[Path], tmp_path: Path) -> AnalysisInput:
    first = dcmread(files[0], stop_before_pixels=True)
    series = SeriesInput(str(first.SeriesInstanceUID), str(first.StudyInstanceUID), tuple(files),
                         {"PatientID": str(first.PatientID)})
    return AnalysisInput("job-qc-test", series, {}, [], QcSettings(), tmp_path)


def _write(tmp_path: Path, **spec: int) -> list[Path]:
    return write_mr_series(tmp_path / "series", SeriesSpec(rows=16, columns=16, **spec))


def test_clean_series_is_acceptable_and_reported(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=10)
    job = _job(files, tmp_path)
    result = QcAnalyzer().analyze(job)
    findings = result.findings
    assert findings["acceptable"] and findings["problems"] == []
    assert (findings["slices"], findings["time_points"], findings["slice_spacing_mm"]) == (10, 1, 4.0)
    assert findings["volume_loadable"] and findings["volume_shape"] == [10, 16, 16]
    [sr] = result.datasets
    assert sr.Modality == "SR" and sr.StudyInstanceUID == job.series.study_instance_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert any(NOT_FOR_CLINICAL_USE in t for t in texts)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == job.series.series_instance_uid
    assert len(evidence.ReferencedSOPSequence) == 10
    assign_output_uids(job.job_id, result.datasets)
    check_outputs(result.datasets, job)


def test_missing_slice(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=10)
    files[4].unlink()
    findings = QcAnalyzer().analyze(_job(files[:4] + files[5:], tmp_path)).findings
    assert findings["missing_slices"] == 1 and findings["slice_spacing_irregular_gaps"] == 1
    assert not findings["acceptable"] and not findings["volume_loadable"]
    assert "missing slice" in findings["volume_error"]


def test_duplicate_position_and_orientation_change(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=6)
    ds = dcmread(files[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "duplicate.dcm", enforce_file_format=True)
    tilted = dcmread(files[5])
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0.996, 0.087]
    tilted.save_as(files[5], enforce_file_format=True)
    findings = QcAnalyzer().analyze(_job([*files, tmp_path / "duplicate.dcm"], tmp_path)).findings
    assert findings["duplicate_positions"] == 1
    assert findings["orientation_max_deviation"] == pytest.approx(0.087, abs=1e-3)
    assert any("orientation" in p for p in findings["problems"])


def test_dynamic_time_axis(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=3, time_points=5)
    clean = QcAnalyzer().analyze(_job(files, tmp_path)).findings
    assert clean["time_points"] == 5 and clean["temporal_resolution_s"] == pytest.approx(1.5)
    assert clean["acceptable"]
    for path in files:  # time point 3 acquired before time point 2
        ds = dcmread(path)
        if int(ds.TemporalPositionIdentifier) == 3:
            ds.TriggerTime = 1000.0
            ds.save_as(path, enforce_file_format=True)
    broken = QcAnalyzer().analyze(_job(files, tmp_path)).findings
    assert broken["time_steps_not_increasing"] == 1 and not broken["acceptable"]
    files[7].unlink()  # one slice misses a time point
    missing = QcAnalyzer().analyze(_job([f for f in files if f.exists()], tmp_path)).findings
    assert missing["missing_time_points"] == 1


def test_series_without_geometry_is_rejected(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=2)
    for path in files:
        ds = dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnsuitableInput, match="geometry"):
        QcAnalyzer().analyze(_job(files, tmp_path))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_sr_is_a_valid_iod(tmp_path: Path) -> None:
    files = _write(tmp_path, slices=4, time_points=2)
    job = _job(files, tmp_path)
    result = QcAnalyzer().analyze(job)
    assign_output_uids(job.job_id, result.datasets)
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_part10(result.datasets[0]))
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
