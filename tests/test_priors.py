"""Priors fetched before the new study is analysed (``[priors]``, issue "Analyzer dce").

Two paths, each with real peers (pacsnode, Orthanc, dcmtk ``storescu``) and one ``dce``
phantom patient (seed 2: a lesion hyperperfused before treatment and after it):

* ``source = "store"``: the pre-treatment study reached the node before the ``dce`` route
  existed, so it was stored and never analysed. After a restart with the route, only the
  follow-up study is sent: the node finds the earlier study in its own store, analyses it
  first, and the follow-up's job waits for it.
* ``source = "pacs"``: the pre-treatment study is only in Orthanc (the hospital PACS).
  Only the follow-up study is sent to the node: the node searches Orthanc (C-FIND, or
  QIDO-RS for a DICOMweb destination), fetches the earlier study (C-MOVE to its own AE
  title, or WADO-RS), analyses it, then the follow-up; the follow-up's SR in Orthanc
  cites the pre-treatment values.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.peers import OrthancProcess, free_port, have, orthanc_process
from tests.test_dce_e2e import (
    DceNode,
    node_config,
    orthanc_sr,
    shipped_routes,
    sr_texts,
    start,
    storescu,
    study_files,
    write_phantom,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow,
              pytest.mark.skipif(not have("Orthanc"), reason="Orthanc is missing: run `make test`")]


@pytest.fixture(scope="module")
def hyper_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 2: hyperperfused before and after treatment; lesions found without a SEG."""
    return write_phantom(tmp_path_factory.mktemp("dce-phantom"), seed=2, label="recurrence")


def _dce_jobs_done(node: DceNode, count: int) -> bool:
    return node.settled(count)


def _check_follow_up_cites_prior(node: DceNode, orthanc: OrthancProcess, pre_study: str, tmp_path: Path) -> None:
    """The follow-up job ran after the pre-treatment job and its SR in Orthanc cites it."""
    jobs = {j["study_uid"]: j for j in node.latest().values()}
    assert len(jobs) == 2 and pre_study in jobs
    pre = jobs.pop(pre_study)
    follow_up = next(iter(jobs.values()))
    finished = dict(node.query("SELECT id, finished_at FROM jobs"))
    started = dict(node.query("SELECT id, started_at FROM jobs"))
    assert finished[pre["id"]] <= started[follow_up["id"]]  # analysed first; the follow-up waited
    lesion = follow_up["findings"]["lesions"][0]
    assert lesion["prior"] is not None and lesion["prior"]["job_id"] == pre["id"]
    assert lesion["prior"]["hyperperfused"] is True and lesion["reading"] == "favours_recurrence"
    pre_lesion = pre["findings"]["lesions"][0]
    node.wait(lambda: node.delivered(follow_up["id"]), 60, "the follow-up's outputs in Orthanc")
    sr = orthanc_sr(orthanc, follow_up["outputs"], tmp_path / "sr")
    impression = next(t for t in sr_texts(sr) if t.startswith("lesion 1:"))
    cited = re.search(r"pre-treatment (\d{8}): rKtrans ([0-9.]+), rVP ([0-9.]+), hyperperfusion (yes|no)", impression)
    assert cited is not None, impression
    assert cited.group(1) == pre["findings"]["study_date"] < follow_up["findings"]["study_date"]
    assert float(cited.group(2)) == pytest.approx(pre_lesion["r_ktrans"], rel=1e-4)
    assert float(cited.group(3)) == pytest.approx(pre_lesion["r_vp"], rel=1e-4)
    assert cited.group(4) == "yes" and "favours recurrent tumour" in impression


def _pre_study_uid(case: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(next(iter(sorted((case / "pre_dce").iterdir()))), stop_before_pixels=True).StudyInstanceUID)


def test_store_path_analyses_the_stored_pre_treatment_study_first(hyper_case: Path, tmp_path: Path,
                                                                  orthanc: OrthancProcess) -> None:
    started = time.monotonic()
    labels_only = node_config(tmp_path / "node", orthanc, routes=shipped_routes(("vfa", "seg")),
                              priors='[priors]\nsource = "store"')
    node = start(labels_only)
    try:
        storescu(node.node.port, study_files(hyper_case, "pre_"))
        node.wait(lambda: node.query("SELECT COUNT(*) FROM series_state WHERE state = 'complete'") == [(5,)], 90,
                  "the pre-treatment study stored and complete")
        assert node.jobs() == []  # no dce route yet: stored, not analysed
    finally:
        node.node.stop()
    (labels_only.parent / "routes.toml").write_text(shipped_routes(), encoding="utf-8")
    node = start(labels_only)
    try:
        storescu(node.node.port, study_files(hyper_case, ""))
        node.wait(lambda: _dce_jobs_done(node, 2), 150, "both dce jobs done")
        _check_follow_up_cites_prior(node, orthanc, _pre_study_uid(hyper_case), tmp_path)
        assert "never analysed; queued" in node.node.log.read_text(errors="replace")
    finally:
        node.node.stop()
    print(f"\nstore path: {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_pacs_path_fetches_the_pre_treatment_study_then_analyses_both(hyper_case: Path, tmp_path: Path,
                                                                      kind: str) -> None:
    started = time.monotonic()
    node_port = free_port()
    with orthanc_process(tmp_path / "orthanc", modalities={"pacsnode": ("PACSNODE", "127.0.0.1", node_port)}
                         ) as orthanc:
        storescu(orthanc.dicom_port, study_files(hyper_case, "pre_"), called=orthanc.ae_title)
        pre_study = _pre_study_uid(hyper_case)
        assert orthanc.get("/studies?expand")[0]["MainDicomTags"]["StudyInstanceUID"] == pre_study  # type: ignore[index]
        config = node_config(tmp_path / "node", orthanc, port=node_port, destination_kind=kind,
                             priors='[priors]\nsource = "pacs"\ndestination = "pacs"\nlookback_days = 1000')
        node = start(config)
        try:
            storescu(node.node.port, study_files(hyper_case, ""))  # only the follow-up study
            node.wait(lambda: _dce_jobs_done(node, 2), 150, "both dce jobs done")
            _check_follow_up_cites_prior(node, orthanc, pre_study, tmp_path)
            fetches = node.query("SELECT state, studies FROM prior_fetches WHERE studies != '[]'")
            assert fetches == [("done", f'["{pre_study}"]')]
            stored = node.query("SELECT COUNT(*) FROM instances i JOIN series s ON s.series_uid = i.series_uid "
                                "WHERE s.study_uid = ?", (pre_study,))
            assert stored[0][0] >= len(study_files(hyper_case, "pre_"))  # the whole study came, VFA included
        finally:
            node.node.stop()
    print(f"\npacs path ({kind}): {time.monotonic() - started:.1f} s")


def test_only_the_latest_round_of_a_series_is_a_prior(tmp_path: Path) -> None:
    from node.jobs.ledger import JobLedger
    from node.storage.index import Index

    index = Index(tmp_path / "index.sqlite")
    try:
        ledger = JobLedger(index)
        ids = [ledger.enqueue(series_uid="1.2.3", study_uid="1.2", patient_id="P1", route="dce", analyzer="dce",
                              send_to=[], generation=g, supersedes=None if g == 0 else f"round {g - 1}")
               for g in (0, 1, 2)]
        for n, job_id in enumerate(ids[:2]):  # rounds 0 and 1 done, round 2 still queued
            ledger.claim(1)
            ledger.finish(job_id, outputs=[], findings={"round": n}, analyzer_version="1")
        priors = ledger.priors(patient_id="P1", analyzer="dce", exclude_study="9.9")
        assert [p.findings for p in priors] == [{"round": 1}]
        assert ledger.supersedes(ids[1]) == "round 0" and ledger.latest("1.2.3", "dce").id == ids[2]
        assert ledger.priors(patient_id="P1", analyzer="dce", exclude_study="1.2") == []
    finally:
        index.close()
