"""Related series that complete after the ``dce`` job of their study ran (issue 5, "Completion";
issue 6, "When a SEG for the study arrives later, the route re-runs").

The dynamic series arrives alone and is analysed with the fixed T10 and automatic lesion
segmentation. Then the VFA series arrive (``storescu``): the node runs the study's ``dce``
job again, now with the VFA T1 map; the new job supersedes the first, and both SRs are in
Orthanc. The same VFA files sent again change nothing (idempotent). Then a lesion SEG
arrives (pynetdicom): the job runs once more, with the SEG's lesion.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from node.dimse.scu import send_files
from tests.peers import OrthancProcess
from tests.test_dce_e2e import (
    DceNode,
    dce_node,
    orthanc_sr,
    sr_texts,
    storescu,
    study_files,
    write_phantom,
    write_truth_seg,
)

__all__ = ["dce_node"]  # the fixture, used by name below

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 1: a lesion that enhances like white matter; a SEG drawn on it arrives late."""
    found = write_phantom(tmp_path_factory.mktemp("dce-phantom"), seed=1, label="recurrence")
    write_truth_seg(found, "")
    return found


def _by_generation(node: DceNode) -> list[dict[str, Any]]:
    return sorted(node.jobs(), key=lambda j: j["generation"])


def _settled(node: DceNode, minimum: int) -> bool:
    return len(node.jobs()) >= minimum and node.settled(1)


def test_late_vfa_and_seg_rerun_the_dce_job(case: Path, dce_node: DceNode, orthanc: OrthancProcess,
                                           tmp_path: Path) -> None:
    started = time.monotonic()
    storescu(dce_node.node.port, study_files(case, "", vfa=False))
    dce_node.wait(lambda: _settled(dce_node, 1), 120, "the first dce job")
    (first,) = dce_node.jobs()
    assert first["findings"]["t10_source"] != "variable flip angle" and first["inputs"]["vfa"] == {}
    assert first["findings"]["lesion_source"].startswith("automatic") and first["supersedes"] is None

    vfa_files = [p for folder in sorted(case.glob("vfa_fa*")) for p in sorted(folder.iterdir())]
    storescu(dce_node.node.port, vfa_files)
    dce_node.wait(lambda: _settled(dce_node, 2) and len(_by_generation(dce_node)[-1]["inputs"]["vfa"]) == 4,
                  150, "a dce job with the four VFA series")
    jobs = _by_generation(dce_node)
    with_vfa = jobs[-1]
    assert with_vfa["findings"]["t10_source"] == "variable flip angle"
    assert with_vfa["findings"]["vfa_flip_angles"] == [2.0, 5.0, 10.0, 15.0]
    assert {j["series_uid"] for j in jobs} == {first["series_uid"]}
    # each new round names the round it supersedes; the outputs differ (ids derive from the job)
    assert [j["supersedes"] for j in jobs[1:]] == [j["id"] for j in jobs[:-1]]
    assert not set(with_vfa["outputs"]) & set(first["outputs"])
    first_sr = orthanc_sr(orthanc, first["outputs"], tmp_path / "first")
    vfa_sr = orthanc_sr(orthanc, with_vfa["outputs"], tmp_path / "vfa")
    assert any("T10 of tissue: variable flip angle" in t for t in sr_texts(vfa_sr))
    # the new report cites the report it replaces (PS3.3 C.17.2.3), as Orthanc holds both
    replaced_sr = orthanc_sr(orthanc, jobs[-2]["outputs"], tmp_path / "replaced")
    [study_ref] = vfa_sr.PredecessorDocumentsSequence
    [series_ref] = study_ref.ReferencedSeriesSequence
    [sop_ref] = series_ref.ReferencedSOPSequence
    assert (study_ref.StudyInstanceUID, series_ref.SeriesInstanceUID, sop_ref.ReferencedSOPInstanceUID) == (
        replaced_sr.StudyInstanceUID, replaced_sr.SeriesInstanceUID, replaced_sr.SOPInstanceUID)
    assert sop_ref.ReferencedSOPClassUID == replaced_sr.SOPClassUID
    assert "PredecessorDocumentsSequence" not in first_sr
    assert any("T10 of tissue: fixed" in t for t in sr_texts(first_sr))

    storescu(dce_node.node.port, vfa_files)  # the same instances again: nothing new to analyse
    time.sleep(6.0)  # > stable_after (1.5 s) + the runner's poll
    assert len(dce_node.jobs()) == len(jobs)

    report = send_files(sorted((case / "seg").iterdir()), ae_title="PACSNODE", host="127.0.0.1",
                        port=dce_node.node.port, calling_ae="WORKSTATION")
    assert report.sent == 1, report.failed
    dce_node.wait(lambda: _settled(dce_node, len(jobs) + 1), 120, "the dce job with the SEG")
    with_seg = _by_generation(dce_node)[-1]
    assert with_seg["supersedes"] == with_vfa["id"] and len(with_seg["inputs"]["roi"]) == 1
    assert len(with_seg["inputs"]["vfa"]) == 4
    assert with_seg["findings"]["lesion_source"] == "SEG of the study"
    assert len(with_seg["findings"]["lesions"]) == 1
    seg_sr = orthanc_sr(orthanc, with_seg["outputs"], tmp_path / "seg")
    assert any(t.startswith("lesion 1:") for t in sr_texts(seg_sr))
    print(f"\nlate VFA then late SEG, {len(dce_node.jobs())} dce rounds: {time.monotonic() - started:.1f} s")
