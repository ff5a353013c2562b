"""The DIMSE side feeds the audit trail and the refusal metrics of a running node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.peers import node_process

pytestmark = pytest.mark.peers

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def test_associations_and_queries_are_audited(tmp_path: Path, mr_series: list[Path]) -> None:
    with node_process(tmp_path / "node") as node:
        subprocess.run(["storescu", "-aet", "SCANNER1", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                        *map(str, mr_series[:3])], check=True, capture_output=True, env=NODELAY, timeout=60)
        subprocess.run(["findscu", "-S", "-aet", "VIEWER1", "-aec", node.ae_title, "-k",
                        "QueryRetrieveLevel=STUDY", "-k", "PatientID=DEMO*", "-k", "StudyInstanceUID",
                        "127.0.0.1", str(node.port)], check=True, capture_output=True, env=NODELAY, timeout=60)
        time.sleep(1.5)  # stored-instance events are written once a second
        audit = subprocess.run([str(Path(sys.executable).parent / "pacsnode"), "audit", "--config",
                                str(node.config), "--since", "1h", "--json"], capture_output=True, text=True,
                               timeout=60, cwd=node.config.parent)
        assert audit.returncode == 0, audit.stderr
        events = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
    associations = {e["actor"] for e in events if e["event"] == "association"}
    assert {"SCANNER1", "VIEWER1"} <= associations
    queries = [e for e in events if e["event"] == "query"]
    assert len(queries) == 1 and queries[0]["actor"] == "VIEWER1"
    assert queries[0]["detail"]["keys"]["PatientID"] == "DEMO*"


def test_refused_stores_are_counted(tmp_path: Path, mr_series: list[Path]) -> None:
    with node_process(tmp_path / "node", env={"PACSNODE_STORAGE__MIN_FREE_GB": "1e9"}) as node:
        refused = subprocess.run(["storescu", "-aet", "SCANNER1", "-aec", node.ae_title, "127.0.0.1",
                                  str(node.port), str(mr_series[0])], capture_output=True, env=NODELAY,
                                 timeout=60)
        assert refused.returncode != 0
        metrics = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=30).text
    line = next(x for x in metrics.splitlines() if x.startswith("pacsnode_cstore_refusals_total{"))
    assert 'status="0xA700"' in line and 'calling_ae="SCANNER1"' in line
    assert float(line.rsplit(" ", 1)[1]) == 1.0
