"""``brainmets`` end to end: a SPACE phantom study sent with dcmtk ``storescu`` to a running node
(shipped ``brainmets`` route, default reference model) → SEG + SR in Orthanc.

The SEG is fetched back from Orthanc, re-read with highdicom and resampled onto the series
grid; it must overlay, voxel for voxel (Dice 1.0), the lesion mask the analyzer's own code
(reference nnU-Net model, its validated operating point, lesions in the registered brain)
gives for the same files. The SR must count the same lesions. A lesion-free SPACE phantom
(vessels and sinuses only) must come back as one SR saying "No metastasis found." with the
coded absent finding, and no SEG. A separate test checks that importing the analyzer does
not load torch or nnunetv2 (the node imports every registered analyzer at start).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from analyzers._shared.volume import load_segmentation, load_series
from analyzers.brainmets.analyzer import reference_model
from tests.peers import ROOT, VENV_BIN, OrthancProcess, have
from tests.test_dce_e2e import DceNode, node_config, orthanc_sr, shipped_routes, sr_texts, start, storescu

SEED = 1000  # the reference model's held-out seed: not a training case


def test_importing_the_analyzer_loads_neither_torch_nor_nnunet() -> None:
    code = ("import sys, analyzers.brainmets.analyzer; "
            "print(','.join(m for m in ('torch', 'nnunetv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            check=True)
    assert result.stdout.strip() == ""


def _write_space_phantom(folder: Path, metastases: int | None = None) -> Path:
    args = [str(VENV_BIN / "pacsnode"), "phantom", "brainmets", "--out", str(folder), "--seed", str(SEED),
            "--no-progress", "--set", "spacing_mm=2.0"]
    if metastases is not None:
        args += ["--set", f"metastases={metastases}"]
    subprocess.run(args, check=True, capture_output=True, timeout=300, cwd=ROOT)
    series = folder / "brainmets" / "case-0001" / "space"
    assert series.is_dir()
    return series


@pytest.fixture
def brainmets_node(tmp_path: Path, orthanc: OrthancProcess) -> Iterator[DceNode]:
    running = start(node_config(tmp_path / "node", orthanc, routes=shipped_routes(("brainmets",))))
    try:
        yield running
    finally:
        running.node.stop()


def _jobs(node: DceNode) -> list[dict[str, object]]:
    rows = node.query("SELECT id, state, findings, outputs, error FROM jobs WHERE route = 'brainmets'")
    return [{"id": i, "state": s, "findings": json.loads(f) if f else None,
             "outputs": json.loads(o) if o else [], "error": e} for i, s, f, o, e in rows]


def _orthanc_file(orthanc: OrthancProcess, uid: str, folder: Path) -> Path | None:
    import httpx

    found = httpx.post(orthanc.url + "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}},
                       timeout=30).json()
    if not found:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.dcm"
    path.write_bytes(httpx.get(f"{orthanc.url}/instances/{found[0]}/file", timeout=30).content)
    return path


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.skipif(not have("storescu"), reason="dcmtk storescu is missing")
@pytest.mark.skipif(reference_model("space") is None, reason="no SPACE reference model committed")
def test_space_study_by_storescu_gives_seg_and_sr_in_orthanc(
    brainmets_node: DceNode, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    from analyzers._shared.brain import extract_brain
    from analyzers.brainmets.inference import NnUNetModel
    from analyzers.brainmets.operating import OperatingPoint, confident_lesions, grown

    series = _write_space_phantom(tmp_path / "phantom")
    files = sorted(p for p in series.iterdir() if p.is_file())
    started = time.monotonic()
    storescu(brainmets_node.node.port, files)
    brainmets_node.wait(lambda: [j["state"] for j in _jobs(brainmets_node)] in (["done"], ["rejected"], ["failed"]),
                        300, "the brainmets job")
    job = _jobs(brainmets_node)[0]
    assert job["state"] == "done", job["error"]
    brainmets_node.wait(lambda: brainmets_node.delivered(str(job["id"])), 60, "the outputs in Orthanc")
    elapsed = time.monotonic() - started
    findings = job["findings"]
    assert isinstance(findings, dict)
    assert findings["technique"] == "space"
    assert findings["model"]["folder"] == "space"

    # The analyzer's own mask for the same files: reference model, its operating point, lesions in the brain.
    volume = load_series(files)
    folder = reference_model("space")
    assert folder is not None
    probability = NnUNetModel(folder, threads=1).foreground_probability(volume.to_sitk())
    point = OperatingPoint.load(folder)
    assert point.validated  # the shipped model carries the threshold chosen on validation phantoms
    near_brain = grown(extract_brain(volume).mask, volume.spacing, 5.0)
    own, _ = confident_lesions(probability, volume.affine, point, near_brain)
    assert findings["lesion_count"] == len(own.lesions) > 0

    paths = [p for uid in job["outputs"] if (p := _orthanc_file(orthanc, str(uid), tmp_path / "out"))]  # type: ignore[union-attr]
    assert len(paths) == 2
    seg_path = next(p for p in paths if dcmread(p, stop_before_pixels=True).Modality == "SEG")
    seg = hd.seg.segread(seg_path)
    assert len(seg.SegmentSequence) == len(own.lesions)
    masks = load_segmentation([seg_path], volume)
    seg_union = np.zeros(own.labels.shape, dtype=bool)
    for mask in masks.values():
        seg_union |= mask
    own_union = own.labels > 0
    dice = 2.0 * np.count_nonzero(seg_union & own_union) / (np.count_nonzero(seg_union) + np.count_nonzero(own_union))
    assert dice == 1.0

    sr = orthanc_sr(orthanc, [str(u) for u in job["outputs"]], tmp_path / "sr")  # type: ignore[union-attr]
    assert any("not for clinical use" in t.lower() for t in sr_texts(sr))
    assert point.statement() in sr_texts(sr)  # the operating point and what it was validated to give
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(own.lesions)
    print(f"\nSPACE study by storescu → SEG + SR in Orthanc: {elapsed:.1f} s, {len(own.lesions)} lesion(s), "
          f"SEG vs the analyzer's mask Dice {dice:.3f}")


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.skipif(not have("storescu"), reason="dcmtk storescu is missing")
@pytest.mark.skipif(reference_model("space") is None, reason="no SPACE reference model committed")
def test_lesion_free_space_study_gives_a_no_metastasis_sr_in_orthanc(
    brainmets_node: DceNode, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    series = _write_space_phantom(tmp_path / "phantom", metastases=0)
    storescu(brainmets_node.node.port, sorted(p for p in series.iterdir() if p.is_file()))
    brainmets_node.wait(lambda: [j["state"] for j in _jobs(brainmets_node)] in (["done"], ["rejected"], ["failed"]),
                        300, "the brainmets job")
    job = _jobs(brainmets_node)[0]
    assert job["state"] == "done", job["error"]
    brainmets_node.wait(lambda: brainmets_node.delivered(str(job["id"])), 60, "the SR in Orthanc")
    findings = job["findings"]
    assert isinstance(findings, dict) and findings["lesion_count"] == 0
    assert len(job["outputs"]) == 1  # type: ignore[arg-type]  # the SR only: no SEG of lesions that are not there
    sr = orthanc_sr(orthanc, [str(u) for u in job["outputs"]], tmp_path / "sr")  # type: ignore[union-attr]
    assert "No metastasis found." in sr_texts(sr)
    coded = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in sr.ContentSequence[-1].ContentSequence if i.ValueType == "CODE"]
    assert coded == [("128462008", "272519000")]  # Secondary malignant neoplasm: Absent
    assert sr.content.get_volumetric_roi_measurement_groups() == []
