"""The whole chain as a user runs it: pacsnode serve → series by C-STORE → qc → SR in Orthanc.

Also the two durability promises: a destination that is down receives the SR exactly
once when it comes back, and a SIGKILL of the node with jobs queued and running loses
nothing and duplicates nothing after the restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import VENV_BIN, dimse_destination, free_port, query_index, start_node, wait_until, write_node_config

pytestmark = [pytest.mark.peers, pytest.mark.slow]

QC_ONLY = """
[[route]]
name = "qc"
analyzer = "qc"
exclusive = false
match = { Modality = '^MR$' }
send_to = ["pacs"]
"""


def _config(folder: Path, orthanc, *, workers: int = 2, stable_after: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "routes.toml").write_text(QC_ONLY, encoding="utf-8")
    extra = f"""stable_after = {stable_after}

[jobs]
workers = {workers}
backoff_seconds = 0.5

{dimse_destination('pacs', orthanc.ae_title, orthanc.dicom_port, backoff_seconds=0.3, max_attempts=100)}"""
    return write_node_config(folder, port=free_port(), http_port=free_port(), extra=extra)


def _start(config: Path):
    text = config.read_text()
    port = int(text.split("port = ")[1].split()[0])
    http_port = int(text.split("[http]")[1].split("port = ")[1].split()[0])
    return start_node(config, storage=config.parent / "var", port=port, http_port=http_port,
                      log=config.parent / "node.log")


def _query(config: Path, sql: str) -> list[tuple]:
    return query_index(config.parent / "var" / "index.sqlite", sql)


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    wait_until(predicate, timeout, what, log, poll=0.1)


def _orthanc_srs(orthanc) -> list[dict]:
    found = []
    for instance in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        if tags.get("Modality") == "SR":
            found.append(tags)
    return found


def _series(tmp_path: Path, count: int, slices: int = 12) -> list[list[Path]]:
    return [write_mr_series(tmp_path / f"series{n}", SeriesSpec(series_description=f"t1_se_tra {n}", slices=slices,
                                                                rows=32, columns=32, seed=n))
            for n in range(count)]


def _send(node, files: list[Path]) -> None:
    report = send_files(files, ae_title=node.ae_title, host="127.0.0.1", port=node.port, calling_ae="SCANNER")
    assert report.sent == len(files), report.failed


def test_series_to_sr_in_orthanc_exactly_once_across_a_pacs_outage(tmp_path: Path, orthanc) -> None:
    config = _config(tmp_path / "node", orthanc)
    orthanc.stop()  # the PACS is down when the first series arrives
    node = _start(config)
    try:
        first, second = _series(tmp_path, 2)
        _send(node, first)
        _wait(lambda: _query(config, "SELECT attempts FROM deliveries WHERE attempts >= 2"), 120,
              "failed delivery attempts while Orthanc is down", node.log)
        assert _query(config, "SELECT state FROM jobs") == [("done",)]
        orthanc.start_again()
        _wait(lambda: _query(config, "SELECT state FROM deliveries") == [("sent",)], 60, "the delivery", node.log)
        time.sleep(1.0)  # a second delivery would arrive within the backoff
        assert len(_orthanc_srs(orthanc)) == 1
        _send(node, second)  # and with the PACS up, straight through
        _wait(lambda: len(_orthanc_srs(orthanc)) == 2, 120, "the second SR in Orthanc", node.log)
        jobs = json.loads(subprocess.run(
            [str(VENV_BIN / "pacsnode"), "jobs", "--json", "--config", str(config)],
            capture_output=True, text=True, check=True, cwd=config.parent).stdout)
        assert {j["state"] for j in jobs} == {"done"} and {j["route"] for j in jobs} == {"qc"}
        srs = _orthanc_srs(orthanc)
        assert sorted(s["SOPInstanceUID"] for s in srs) == sorted(j["outputs"][0] for j in jobs)
        assert {s["StudyInstanceUID"] for s in srs} == {j["study_uid"] for j in jobs}
        assert _query(config, "SELECT COUNT(*) FROM deliveries") == [(2,)]
        from node.jobs.commands import pipeline_report
        from node.storage.index import Index

        index = Index(config.parent / "var" / "index.sqlite")
        try:
            report = pipeline_report(index)
        finally:
            index.close()
        assert [row["instances"] for row in report] == [12, 12]
        assert [row["completion"] for row in report] == ["complete (count)"] * 2
        assert [[(j["route"], j["state"], j["delivered"]) for j in row["jobs"]] for row in report] == [
            [("qc", "done", {"pacs": (1, 1)})]] * 2
        status = subprocess.run([str(VENV_BIN / "pacsnode"), "status", "--config", str(config)],
                                capture_output=True, text=True, check=True, cwd=config.parent).stdout
        assert "done 2" in status and "sent 2" in status
    finally:
        node.stop()


def test_sigkill_with_jobs_queued_and_running(tmp_path: Path, orthanc) -> None:
    config = _config(tmp_path / "node", orthanc, workers=1)
    node = _start(config)
    series = _series(tmp_path, 3, slices=12)
    for files in series:  # quiet completion: the three series complete together, one job runs, two wait
        for path in files:
            ds = dcmread(path)
            del ds.ImagesInAcquisition
            ds.save_as(path, enforce_file_format=True)
    try:
        _send(node, [path for group in zip(*series, strict=True) for path in group])  # interleaved

        def queued_and_running() -> bool:
            states = [s for (s,) in _query(config, "SELECT state FROM jobs")]
            return "running" in states and "queued" in states

        _wait(queued_and_running, 120, "a running and a queued job", node.log)
        node.kill()
        before = dict(_query(config, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        assert before.get("running", 0) >= 1 and before.get("queued", 0) >= 1
    finally:
        node.stop()
    restarted = _start(config)
    try:
        _wait(lambda: _query(config, "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'") == [(3,)], 180,
              "all three SRs delivered after the restart", restarted.log)
        time.sleep(1.5)
        assert _query(config, "SELECT state, COUNT(*) FROM jobs GROUP BY state") == [("done", 3)]
        assert _query(config, "SELECT COUNT(*) FROM deliveries") == [(3,)]
        srs = _orthanc_srs(orthanc)
        assert len(srs) == 3 and len({s["SOPInstanceUID"] for s in srs}) == 3
        outputs = {json.loads(o)[0] for (o,) in _query(config, "SELECT outputs FROM jobs")}
        assert {s["SOPInstanceUID"] for s in srs} == outputs
        assert "queued again" in restarted.log.read_text()  # the running job was re-queued
    finally:
        restarted.stop()
