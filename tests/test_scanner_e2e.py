"""Real scanner layouts end to end: dcmtk ``storescu`` → a running node → analyzer → outputs in Orthanc.

* Siemens MOSAIC: a DSC series built from the real VD13 MOSAIC EPI (60 time points, first-pass
  dip) gives Parametric Maps with one frame per real slice, each where dcm2niix (an independent
  reader; its NIfTI of the same prescription ships with the data) puts that slice.
* Siemens XA Enhanced MR, one instance per volume: the real 21-instance series sent one instance
  per association with pauses shorter than ``stable_after`` completes by count with all 21; a DSC
  series built from the real XA volume gives maps whose frames sit on the source's frames.
* Philips Enhanced MR, the whole series in one instance: a DSC object built from the real pCASL
  slices completes at once (count 1) and its maps reference the source frames at their positions.
* Real T1 brains (GE oblique 3D T1, Siemens 2D sagittal T1) sent under post-contrast names.

Skipped where ``reference-data/scanner-dicom`` is absent (CI).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.peers import OrthancProcess, have
from tests.scanner_data import (
    SCANNER_DICOM,
    requires_scanner_dicom,
    series_files,
    write_mosaic_dsc,
    write_philips_dsc,
    write_xa_dsc,
)
from tests.test_dce_e2e import DceNode, node_config, shipped_routes, start, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow, requires_scanner_dicom,
              pytest.mark.skipif(not have("storescu"), reason="dcmtk storescu is missing")]

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _node(tmp_path: Path, orthanc: OrthancProcess, routes: tuple[str, ...], stable_after: float) -> DceNode:
    config = node_config(tmp_path / "node", orthanc, routes=shipped_routes(routes))
    config.write_text(config.read_text().replace("stable_after = 1.5", f"stable_after = {stable_after}"))
    return start(config)


def _job(node: DceNode, route: str) -> dict[str, Any] | None:
    rows = node.query("SELECT id, state, outputs, findings, error FROM jobs WHERE route = ?", (route,))
    if not rows:
        return None
    assert len(rows) == 1, rows
    return dict(zip(("id", "state", "outputs", "findings", "error"), rows[0], strict=True))


def _finished(node: DceNode, route: str, timeout: float) -> dict[str, Any]:
    node.wait(lambda: (_job(node, route) or {}).get("state") in ("done", "failed", "rejected"), timeout,
              f"the {route} job")
    job = _job(node, route)
    assert job is not None
    return job


def _outputs_in_orthanc(node: DceNode, orthanc: OrthancProcess, job: dict[str, Any]) -> list[Dataset]:
    uids = [str(uid) for uid in json.loads(job["outputs"])]
    node.wait(lambda: node.delivered(job["id"]), 120, "the delivery of the outputs")
    datasets = []
    with httpx.Client(timeout=30) as http:
        for uid in uids:
            found = http.post(orthanc.url + "/tools/find",
                              json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}}).json()
            assert found, f"output {uid} is not in Orthanc"
            datasets.append(pydicom.dcmread(io.BytesIO(http.get(f"{orthanc.url}/instances/{found[0]}/file").content)))
    return datasets


def _frame_positions(dataset: Dataset) -> np.ndarray:
    return np.array([[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                     for item in dataset.PerFrameFunctionalGroupsSequence])


def _source_frames(referenced: Dataset, outputs: list[Dataset]) -> list[int]:
    """Frame numbers of the dynamic source an output frame derives from: directly, or through the
    derived pre-bolus image (an output of the same job) whose Source Image Sequence names them."""
    derived = {str(d.SOPInstanceUID): d for d in outputs if d.SOPClassUID == MR_IMAGE}
    image = derived.get(str(referenced.ReferencedSOPInstanceUID))
    if image is None:
        return [int(referenced.ReferencedFrameNumber)]
    assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    return [int(item.ReferencedFrameNumber) for item in image.SourceImageSequence]


def test_mosaic_dsc_maps_have_one_frame_per_real_slice_where_the_slice_is(
        orthanc: OrthancProcess, tmp_path: Path) -> None:
    files = write_mosaic_dsc(tmp_path / "mosaic-dsc", time_points=60)
    # MOSAIC headers give no instance count: the quiet timer completes the series.
    node = _node(tmp_path, orthanc, ("dsc",), stable_after=6.0)
    try:
        storescu(node.node.port, files)
        job = _finished(node, "dsc", 600)
        assert job["state"] == "done", job
        outputs = _outputs_in_orthanc(node, orthanc, job)
    finally:
        node.node.stop()
    maps = [d for d in outputs if d.SOPClassUID == PARAMETRIC_MAP]
    segs = [d for d in outputs if d.SOPClassUID == SEGMENTATION]
    assert maps and segs
    # Where dcm2niix puts the slices of this prescription: the corners of each slice plane.
    reference = nib.load(str(SCANNER_DICOM / "siemens-vd13-mosaic/ax/axasc35/6_ax_asc_35sl.nii"))
    nx, ny, nz = reference.shape[:3]
    corners = np.array([[i, j, k] for k in range(nz) for i in (0, nx - 1) for j in (0, ny - 1)], dtype=float)
    lps = (corners @ reference.affine[:3, :3].T + reference.affine[:3, 3]) * np.array([-1.0, -1.0, 1.0])
    for pm in maps:
        assert (int(pm.NumberOfFrames), int(pm.Rows), int(pm.Columns)) == (nz, 64, 64)
        positions = _frame_positions(pm)
        distance = np.linalg.norm(positions[:, None, :] - lps[None, :, :], axis=-1)
        nearest = distance.argmin(axis=1)
        assert distance.min(axis=1).max() < 0.1  # each frame starts at a corner of a dcm2niix slice
        assert len(set((nearest // 4).tolist())) == nz  # one frame per real slice
    for seg in segs:
        positions = _frame_positions(seg)
        assert np.linalg.norm(positions[:, None, :] - lps[None, :, :], axis=-1).min(axis=1).max() < 0.1


def test_xa_per_volume_series_completes_with_all_instances_despite_pauses(
        orthanc: OrthancProcess, tmp_path: Path) -> None:
    files = series_files("siemens-xa30-enhanced/10_DWI_dir80_PA")
    stable_after = 6.0
    node = _node(tmp_path, orthanc, ("qc",), stable_after=stable_after)
    try:
        for index, path in enumerate(files):
            storescu(node.node.port, [path])  # one association per volume, as a scanner sends them live
            if index < len(files) - 1:
                time.sleep(1.0)  # shorter than stable_after
                state = node.query("SELECT state, expected, received FROM series_state")
                assert state == [("open", 21, index + 1)], (index, state)
        node.wait(lambda: node.query("SELECT state FROM series_state") == [("complete",)], 60, "completion")
        (reason, received, late), = node.query("SELECT reason, received, late FROM series_state")
        assert (reason, received, late) == ("count", 21, 0)
        job = _finished(node, "qc", 300)
        assert job["state"] == "done", job
        (instances,), = node.query("SELECT COUNT(*) FROM instances")
        assert instances >= 21
    finally:
        node.node.stop()


def test_xa_dsc_maps_sit_on_the_source_frames(orthanc: OrthancProcess, tmp_path: Path) -> None:
    # 40 time points: the bolus arrives at the 13th, and the dsc analyzer needs 30 s after arrival.
    files = write_xa_dsc(tmp_path / "xa-dsc", time_points=40)
    # completes by count, not the timer; the job then waits for the study to be quiet this long
    # (dsc takes an optional ROI SEG of the study), so the timer is not made longer than needed
    node = _node(tmp_path, orthanc, ("dsc",), stable_after=6.0)
    try:
        storescu(node.node.port, files)
        job = _finished(node, "dsc", 600)
        assert job["state"] == "done", job
        (reason,), = node.query("SELECT reason FROM series_state")
        assert reason == "count"
        outputs = _outputs_in_orthanc(node, orthanc, job)
    finally:
        node.node.stop()
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    source_positions = _frame_positions(source)
    for output in outputs:
        if output.SOPClassUID not in (PARAMETRIC_MAP, SEGMENTATION):
            continue
        positions = _frame_positions(output)
        if output.SOPClassUID == PARAMETRIC_MAP:
            assert int(output.NumberOfFrames) == len(source_positions) == 39
        distance = np.linalg.norm(positions[:, None, :] - source_positions[None, :, :], axis=-1)
        assert distance.min(axis=1).max() < 0.1
        for item in output.PerFrameFunctionalGroupsSequence:
            referenced = item.DerivationImageSequence[0].SourceImageSequence[0]
            here = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            for number in _source_frames(referenced, outputs):
                assert np.linalg.norm(source_positions[number - 1] - here) < 0.1


def _renamed(files: list[Path], folder: Path, description: str) -> list[Path]:
    """The series under a new SeriesInstanceUID and description (what a site's protocol would name it)."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    written = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / f"{index:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def test_real_t1_brains_as_post_contrast_series(orthanc: OrthancProcess, tmp_path: Path) -> None:
    """The Siemens sagittal T1 of a healthy volunteer under a post-contrast name goes through
    meningioma to a "no meningioma found" SR in Orthanc (no SEG, no grade); the GE series, whose
    pixels show no head, is rejected for that reason, not for its geometry."""
    sagittal = _renamed(series_files("siemens-decubitus-hfs/3_t1_fl2d_sag"), tmp_path / "sag", "t1_fl2d_sag +C")
    ge = _renamed(series_files("ge-signa-pioneer-classic/05_3D_Ax_T1_MP_RAGE_R22"), tmp_path / "ge",
                  "Ax T1 post contrast")
    node = _node(tmp_path, orthanc, ("meningioma",), stable_after=4.0)
    try:
        storescu(node.node.port, sagittal + ge)
        node.wait(lambda: len(node.query("SELECT id FROM jobs WHERE state IN ('done', 'failed', 'rejected')")) == 2,
                  900, "both meningioma jobs")
        rows = node.query("SELECT series_uid, state, error, outputs, id FROM jobs")
        by_series = {row[0]: row for row in rows}
        sagittal_job = by_series[str(pydicom.dcmread(sagittal[0], stop_before_pixels=True).SeriesInstanceUID)]
        ge_job = by_series[str(pydicom.dcmread(ge[0], stop_before_pixels=True).SeriesInstanceUID)]
        assert ge_job[1] == "rejected" and "no brain found" in ge_job[2], ge_job
        assert "orientation" not in ge_job[2] and "regular volume" not in ge_job[2]
        # A healthy volunteer: the report says no meningioma was found (no grade, no SEG).
        assert sagittal_job[1] == "done", sagittal_job
        findings = json.loads(node.query("SELECT findings FROM jobs WHERE id = ?", (sagittal_job[4],))[0][0])
        assert findings["meningioma_found"] is False and findings["grade"] is None, findings
        outputs = _outputs_in_orthanc(node, orthanc, {"id": sagittal_job[4], "outputs": sagittal_job[3]})
        assert [o.Modality for o in outputs] == ["SR"]
        evaluations = outputs[0].ContentSequence[-1].ContentSequence
        assert "No meningioma found." in [str(i.TextValue) for i in evaluations if i.ValueType == "TEXT"]
    finally:
        node.node.stop()


def test_philips_whole_series_dsc_completes_at_once_and_maps_sit_on_its_frames(
        orthanc: OrthancProcess, tmp_path: Path) -> None:
    path = write_philips_dsc(tmp_path / "philips" / "dsc.dcm", time_points=40)
    node = _node(tmp_path, orthanc, ("dsc",), stable_after=6.0)  # one instance holds all: count 1
    try:
        storescu(node.node.port, [path])
        job = _finished(node, "dsc", 600)
        assert job["state"] == "done", job
        assert node.query("SELECT reason, expected, received FROM series_state") == [("count", 1, 1)]
        outputs = _outputs_in_orthanc(node, orthanc, job)
    finally:
        node.node.stop()
    source = pydicom.dcmread(path, stop_before_pixels=True)
    source_positions = _frame_positions(source)
    slices = np.unique(np.round(source_positions, 3), axis=0)
    checked = 0
    for output in outputs:
        if output.SOPClassUID not in (PARAMETRIC_MAP, SEGMENTATION):
            continue
        positions = _frame_positions(output)
        if output.SOPClassUID == PARAMETRIC_MAP:
            assert int(output.NumberOfFrames) == len(slices) == 40
        assert np.linalg.norm(positions[:, None, :] - slices[None, :, :], axis=-1).min(axis=1).max() < 0.1
        for item in output.PerFrameFunctionalGroupsSequence:
            referenced = item.DerivationImageSequence[0].SourceImageSequence[0]
            here = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
            for number in _source_frames(referenced, outputs):
                assert np.linalg.norm(source_positions[number - 1] - here) < 0.1
                checked += 1
    assert checked > 0
