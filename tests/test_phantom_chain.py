"""The phantoms through the whole chain, as issue "Done when" states it.

``pacsnode phantom all --out DIR`` writes the five phantoms (one case each, at the
smallest sizes the generators allow), ``pacsnode send DIR`` sends them to a running
node whose only route is the built-in ``qc`` analyzer, every phantom series gets
its qc SR in Orthanc (the PACS), and Orthanc retrieves the phantom studies from the
node with C-MOVE, so the series themselves are in the PACS beside their SRs.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from analyzers.phantoms.cli import PHANTOMS
from tests.peers import (
    VENV_BIN,
    OrthancProcess,
    free_port,
    have,
    orthanc_process,
    query_index,
    start_node,
    wait_until,
    write_node_config,
)

pytestmark = [pytest.mark.peers, pytest.mark.slow]

QC_ONLY = """
[[route]]
name = "qc"
analyzer = "qc"
exclusive = false
match = { Modality = '^MR$' }
send_to = ["pacs"]
"""


def _pacsnode(*args: str, cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pacsnode"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    wait_until(predicate, timeout, what, log, poll=0.3)


def _expected_series(root: Path) -> dict[str, dict[str, object]]:
    """SeriesInstanceUID -> phantom, study and number of files, from every case's truth.json."""
    series: dict[str, dict[str, object]] = {}
    for truth in sorted(root.glob("*/case-*/truth/truth.json")):
        info = json.loads(truth.read_text())
        for item in info["series"]:
            files = list((truth.parent.parent / item["folder"]).glob("*.dcm"))
            series[item["SeriesInstanceUID"]] = {
                "phantom": info["phantom"], "study": item["StudyInstanceUID"], "files": len(files)
            }
    return series


def _orthanc_srs(orthanc: OrthancProcess) -> list[object]:
    srs = []
    for series in orthanc.get("/series?expand"):  # type: ignore[union-attr]
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for instance in series["Instances"]:
            data = httpx.get(f"{orthanc.url}/instances/{instance}/file", timeout=30).content
            srs.append(dcmread(DicomBytesIO(data)))
    return srs


def _jobs(index: Path) -> list[tuple[str, str]]:
    return query_index(index, "SELECT route, state FROM jobs")


def test_all_phantoms_reach_orthanc_through_the_qc_route(tmp_path: Path) -> None:
    if not have("Orthanc"):
        pytest.skip("Orthanc is missing: run `make test`, which installs Debian's orthanc")
    started = time.monotonic()
    phantoms = tmp_path / "phantoms"
    made = _pacsnode("phantom", "all", "--out", str(phantoms), "--cases", "1", "--small", "--no-progress",
                     cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    expected = _expected_series(phantoms)
    assert {str(v["phantom"]) for v in expected.values()} == set(PHANTOMS)
    studies = {str(v["study"]) for v in expected.values()}

    node_port = free_port()
    with orthanc_process(tmp_path / "orthanc", modalities={"pacsnode": ("PACSNODE", "127.0.0.1", node_port)}
                         ) as orthanc:
        folder = tmp_path / "node"
        folder.mkdir()
        (folder / "routes.toml").write_text(QC_ONLY, encoding="utf-8")
        extra = f"""stable_after = 2.0

[jobs]
workers = 2
backoff_seconds = 0.5

[[destinations]]
name = "pacs"
kind = "dimse"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
backoff_seconds = 0.3

[[dicom.peers]]
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
"""
        http_port = free_port()
        config = write_node_config(folder, port=node_port, http_port=http_port, extra=extra)
        node = start_node(config, storage=folder / "var", port=node_port, http_port=http_port,
                          log=folder / "node.log")
        try:
            sent = _pacsnode("send", str(phantoms), "--to", f"PACSNODE@127.0.0.1:{node_port}", "--quiet",
                             cwd=tmp_path)
            files = sum(int(v["files"]) for v in expected.values())  # type: ignore[call-overload]
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert f"sent {files} of " in sent.stdout  # the truth files (npz, json, csv) are skipped
            index = folder / "var" / "index.sqlite"
            _wait(lambda: len(_jobs(index)) == len(expected) and {s for _, s in _jobs(index)} == {"done"},
                  90, f"{len(expected)} qc jobs done", node.log)
            _wait(lambda: len(orthanc.get("/instances")) >= len(expected), 30,  # type: ignore[arg-type]
                  "the qc SRs in Orthanc", node.log)
            srs = _orthanc_srs(orthanc)
            assert {route for route, _ in _jobs(index)} == {"qc"}
            # One qc SR per phantom series, in the phantom's study, citing that series as evidence.
            cited = {}
            for sr in srs:
                evidence = sr.CurrentRequestedProcedureEvidenceSequence
                series_uids = {s.SeriesInstanceUID for study in evidence for s in study.ReferencedSeriesSequence}
                assert len(series_uids) == 1
                (uid,) = series_uids
                assert uid not in cited, f"two SRs for series {uid}"
                cited[uid] = sr
                assert sr.StudyInstanceUID == expected[uid]["study"]
                assert sr.Manufacturer == "pacsnode"
            assert set(cited) == set(expected)

            # The PACS retrieves the phantom studies from the node (C-MOVE to itself).
            for study in sorted(studies):
                response = httpx.post(f"{orthanc.url}/modalities/pacsnode/move", timeout=60, json={
                    "Level": "Study", "Resources": [{"StudyInstanceUID": study}],
                    "TargetAet": orthanc.ae_title, "Synchronous": True,
                })
                assert response.status_code == 200, response.text
            in_pacs = {s["MainDicomTags"]["SeriesInstanceUID"]: len(s["Instances"])
                       for s in orthanc.get("/series?expand")}  # type: ignore[union-attr]
            for uid, info in expected.items():
                assert in_pacs.get(uid) == info["files"], f"{info['phantom']} series {uid} incomplete in Orthanc"
            assert sum(1 for s in orthanc.get("/series?expand")  # type: ignore[union-attr]
                       if s["MainDicomTags"].get("Modality") == "SR") == len(expected)  # no SR twice
        finally:
            node.stop()
    elapsed = time.monotonic() - started
    print(f"\nphantom chain: {len(expected)} series, {elapsed:.1f} s")
