"""Metrics and JSON-lines logs of a real chain: storescu → pacsnode serve → qc → SR in Orthanc.

One node run, scraped at the end: the C-STORE latency histogram counts every answered
C-STORE by status, the completion lag histogram the completed series, the job-duration
histogram the finished job, the delivery counters every instance sent and every failed
attempt to a destination that is down. The node logs JSON lines to a file; every line
parses, and the lines of the job carry its job, series and study ids, the refused C-STORE
the calling AE.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from node.samples import SeriesSpec, write_mr_series
from tests.peers import OrthancProcess, dimse_destination, free_port, query_index, start_node, write_node_config
from tests.test_bad_input import _encode, _raw_store

pytestmark = pytest.mark.peers


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _query(index: Path, sql: str) -> list[tuple]:
    return query_index(index, sql)


def test_metrics_and_json_logs_of_a_chain_run(tmp_path: Path, orthanc: OrthancProcess) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(
        '[[route]]\nname = "qc"\nanalyzer = "qc"\nexclusive = false\nmatch = { Modality = "^MR$" }\n'
        'send_to = ["pacs", "down"]\n', encoding="utf-8")
    log_file = folder / "logs" / "node.jsonl"
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra=f"""stable_after = 1

[jobs]
workers = 1

{dimse_destination('pacs', orthanc.ae_title, orthanc.dicom_port)}
{dimse_destination('down', 'NOBODY', free_port(), max_attempts=2, backoff_seconds=0.2)}
[logging]
level = "INFO"
format = "json"
file = "{log_file}"
""")
    node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "stdout.log")
    index = folder / "var" / "index.sqlite"
    try:
        files = write_mr_series(tmp_path / "series", SeriesSpec(slices=8, rows=32, columns=32, seed=5))
        started = time.monotonic()
        subprocess.run(["storescu", "-aet", "MODALITY1", "-aec", node.ae_title, "127.0.0.1", str(port),
                        *map(str, files)], check=True, capture_output=True, timeout=120)
        broken = dcmread(files[0])  # one refused C-STORE: no SOP Instance UID
        del broken.SOPInstanceUID
        status, _comment = _raw_store(node, _encode(broken), sop_uid="1.2.3.4.5.6.7")
        assert status != 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = dict(_query(index, "SELECT destination, state FROM deliveries"))
            if states.get("pacs") == "sent" and states.get("down") == "dead":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"deliveries not settled: {_query(index, 'SELECT * FROM deliveries')}\n"
                                 + (folder / "stdout.log").read_text(errors="replace")[-3000:])
        elapsed = time.monotonic() - started
        samples = _samples(httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text)
        [(job_id, series_uid, study_uid)] = _query(index, "SELECT id, series_uid, study_uid FROM jobs")
        [(sr_uid,)] = _query(index, "SELECT sop_uid FROM deliveries WHERE destination = 'pacs'")
    finally:
        node.stop()

    # C-STORE latency: every answered request, by status
    assert samples[("pacsnode_cstore_seconds_count", (("status", "0x0000"),))] == 8
    refused = [v for (name, labels), v in samples.items()
               if name == "pacsnode_cstore_seconds_count" and labels != (("status", "0x0000"),)]
    assert refused == [1]
    assert 0 < samples[("pacsnode_cstore_seconds_sum", (("status", "0x0000"),))] < elapsed
    # completion lag: one series; ImagesInAcquisition completes it by count, well within the run
    assert samples[("pacsnode_completion_lag_seconds_count", ())] == 1
    assert 0 <= samples[("pacsnode_completion_lag_seconds_sum", ())] < elapsed
    # job durations by analyzer and state, from the ledger
    assert samples[("pacsnode_job_duration_seconds_count", (("analyzer", "qc"), ("state", "done")))] == 1
    assert samples[("pacsnode_job_duration_seconds_bucket",
                    (("analyzer", "qc"), ("le", "+Inf"), ("state", "done")))] == 1
    # deliveries: one SR sent to Orthanc; two failed attempts to the destination that is down
    assert samples[("pacsnode_delivery_attempts_total", (("destination", "pacs"), ("result", "sent")))] == 1
    assert samples[("pacsnode_delivery_attempts_total", (("destination", "down"), ("result", "failed")))] == 2
    assert samples[("pacsnode_deliveries", (("destination", "down"), ("state", "dead")))] == 1
    assert samples[("pacsnode_index_file_bytes", ())] > 0
    [stored] = orthanc.get("/instances")
    assert orthanc.get(f"/instances/{stored}/simplified-tags")["SOPInstanceUID"] == sr_uid

    lines = log_file.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    job_lines = [r for r in records if r.get("job_id") == job_id]
    assert any("done" in r["message"] for r in job_lines), job_lines
    assert all(r["series_uid"] == series_uid and r["study_uid"] == study_uid for r in job_lines)
    routed = [r for r in records if r.get("series_uid") == series_uid and "job_id" not in r]
    assert any("qc" in r["message"] for r in routed)  # "series … → qc"
    refusals = [r for r in records if r.get("calling_ae") == "RAWSCU"]
    assert refusals and refusals[0]["level"] == "WARNING" and "refused" in refusals[0]["message"]
