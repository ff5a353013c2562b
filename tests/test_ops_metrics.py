"""/metrics, /healthz and /readyz of a real ``pacsnode serve`` fed by dcmtk's storescu."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from node.config import load_settings
from node.dicomweb import create_app
from node.ops import NodeMetrics
from node.storage.index import Index
from tests.peers import NodeProcess, node_process, wait_for_port

pytestmark = pytest.mark.peers


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _storescu(node: NodeProcess, files: list[Path], calling: str) -> None:
    subprocess.run(["storescu", "-aet", calling, "-aec", node.ae_title, "127.0.0.1", str(node.port),
                    *map(str, files)], check=True, capture_output=True, timeout=120)


def test_metrics_count_exactly_what_storescu_sent(node: NodeProcess, mr_series: list[Path]) -> None:
    first, second = mr_series[:13], mr_series[13:]
    wait_for_port(node.http_port, process=node.process)
    _storescu(node, first, "MODALITY1")
    _storescu(node, second, "MODALITY2")
    _storescu(node, first[:3], "MODALITY1")  # identical duplicates: stored once, counted once
    base = f"http://127.0.0.1:{node.http_port}"
    response = httpx.get(base + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    sent_bytes = {calling: sum(len(f.read_bytes()) for f in files)
                  for calling, files in (("MODALITY1", first), ("MODALITY2", second))}
    assert samples[("pacsnode_received_instances_total", (("calling_ae", "MODALITY1"),))] == 13
    assert samples[("pacsnode_received_instances_total", (("calling_ae", "MODALITY2"),))] == 7
    assert samples[("pacsnode_index_instances", ())] == len(mr_series)
    assert samples[("pacsnode_index_series", ())] == 1
    received_total = sum(samples[("pacsnode_received_bytes_total", (("calling_ae", c),))]
                         for c in sent_bytes)
    assert received_total == samples[("pacsnode_index_stored_bytes", ())]
    for calling, size in sent_bytes.items():
        received = samples[("pacsnode_received_bytes_total", (("calling_ae", calling),))]
        # the node writes its own file meta (its AE as source), so sizes agree to within
        # the meta header of each file, never by whole instances
        assert abs(received - size) < 300 * (13 if calling == "MODALITY1" else 7)
    assert httpx.get(base + "/healthz", timeout=10).json() == {"status": "up"}
    ready = httpx.get(base + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["index"]["ok"] is True


def test_readyz_refuses_when_disk_is_below_threshold(tmp_path: Path, mr_series: list[Path]) -> None:
    with node_process(tmp_path / "node", env={"PACSNODE_STORAGE__MIN_FREE_GB": "1e9"}) as node:
        wait_for_port(node.http_port, process=node.process)
        ready = httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=10)
        sent = subprocess.run(["storescu", "-v", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                               str(mr_series[0])], capture_output=True, text=True, timeout=60)
        samples = _samples(httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text)
    # the node refused the instance as out of resources and wrote nothing
    assert "refused: outofresources" in (sent.stdout + sent.stderr).lower()  # 0xA7xx
    assert samples[("pacsnode_index_instances", ())] == 0
    assert not any(p.is_file() for p in (node.storage / "store").rglob("*"))
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False
    assert body["checks"]["disk"]["ok"] is False
    assert "min_free_gb" in body["reasons"][0]
    assert body["checks"]["index"]["ok"] is True


def test_unreachable_dask_scheduler_makes_node_unready(tmp_path: Path) -> None:
    settings = load_settings(None, environ={
        "PACSNODE_STORAGE__PATH": str(tmp_path / "var"), "PACSNODE_STORAGE__MIN_FREE_GB": "0",
        "PACSNODE_JOBS__EXECUTOR": "dask", "PACSNODE_JOBS__SCHEDULER": "tcp://127.0.0.1:9"})
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["executor"]["ok"] is False
        assert client.get("/healthz").status_code == 200


def test_refusals_and_jobs_in_a_private_registry(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    try:
        one, two = NodeMetrics(index, tmp_path), NodeMetrics(index, tmp_path)
        one.store_refused(0xA700, "CT1")
        one.store_refused(0xA700, "CT1")
        with index.transaction() as conn:
            conn.execute("CREATE TABLE jobs (analyzer TEXT, state TEXT, started_at REAL, finished_at REAL)")
            conn.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?)",
                             [("dce", "done", 100.0, 103.0), ("dce", "done", 100.0, 170.0),
                              ("dsc", "failed", 50.0, 50.4)])
        samples = _samples(one.exposition().decode())
        dce = (("analyzer", "dce"), ("state", "done"))
        # 3 s and 70 s: bucketed by the ledger's timestamps at scrape time
        assert samples[("pacsnode_job_duration_seconds_count", dce)] == 2
        assert samples[("pacsnode_job_duration_seconds_sum", dce)] == 73.0
        for le, count in (("2.0", 0), ("5.0", 1), ("60.0", 1), ("120.0", 2), ("+Inf", 2)):
            assert samples[("pacsnode_job_duration_seconds_bucket",
                            (("analyzer", "dce"), ("le", le), ("state", "done")))] == count
        assert samples[("pacsnode_job_duration_seconds_bucket",
                        (("analyzer", "dsc"), ("le", "0.5"), ("state", "failed")))] == 1
        assert samples[("pacsnode_cstore_refusals_total",
                        (("calling_ae", "CT1"), ("status", "0xA700")))] == 2
        assert samples[("pacsnode_jobs", (("analyzer", "dce"), ("state", "done")))] == 2
        assert samples[("pacsnode_jobs", (("analyzer", "dsc"), ("state", "failed")))] == 1
        # registries are per node: the second saw no refusal
        assert ("pacsnode_cstore_refusals_total", (("calling_ae", "CT1"), ("status", "0xA700"))) \
            not in _samples(two.exposition().decode())
    finally:
        index.close()
