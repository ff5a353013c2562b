"""The Dask executor: the same qc job on a ``distributed.LocalCluster`` with worker processes.

The worker shares no disk with the node: it fetches the series by WADO-RS from the node's
DICOMweb service and stores the SR back by STOW-RS. The result equals what the local
executor computes for the same job (same findings, same output UIDs).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_class=distributed.Nanny) as running:
        yield running


def test_job_on_a_dask_cluster_reads_by_wado_and_writes_by_stow(tmp_path: Path, cluster) -> None:
    pytest.importorskip("node.dicomweb")
    from node.config import load_settings
    from node.jobs.run import JobRunner
    from node.jobs.work import execute_job
    from node.runtime import Node

    (tmp_path / "routes.toml").write_text(
        '[[route]]\nname = "qc"\nanalyzer = "qc"\nmatch = { Modality = "^MR$" }\n', encoding="utf-8")
    port, http_port = free_port(), free_port()
    (tmp_path / "node.toml").write_text(f"""
[dicom]
port = {port}
[storage]
path = "{tmp_path / 'var'}"
min_free_gb = 0
fsync = false
[http]
port = {http_port}
[routing]
routes = "{tmp_path / 'routes.toml'}"
stable_after = 1
[jobs]
executor = "dask"
scheduler = "{cluster.scheduler_address}"
workers = 1
""", encoding="utf-8")
    node = Node(load_settings(tmp_path / "node.toml"))
    node.start()
    try:
        files = write_mr_series(tmp_path / "in", SeriesSpec(slices=8, rows=32, columns=32))
        assert send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=port).sent == 8
        ledger = node.pipeline.ledger
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [j for j in ledger.jobs() if j.state in ("done", "failed")]:
            time.sleep(0.1)
        [job] = ledger.jobs()
        assert job.state == "done", job.error
        [sr_uid] = job.outputs
        assert node.index.lookup_instance(sr_uid) is not None  # arrived by STOW-RS
        runner: JobRunner = node.pipeline.runner
        local = execute_job("qc", runner.build_input(job))  # the same job in this process
        assert local.output_uids == [sr_uid]
        assert local.findings == job.findings
    finally:
        node.stop()


def test_pacsnode_worker_joins_a_scheduler() -> None:
    import subprocess

    from tests.peers import VENV_BIN

    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as scheduler_only, \
            distributed.Client(scheduler_only) as client:
        worker = subprocess.Popen([str(VENV_BIN / "pacsnode"), "worker", "--scheduler",
                                   scheduler_only.scheduler_address, "--name", "pacsnode-test-worker"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            client.wait_for_workers(1, timeout=120)
            assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6
            names = [w["name"] for w in client.scheduler_info()["workers"].values()]
            assert names == ["pacsnode-test-worker"]
        finally:
            worker.terminate()
            worker.wait(30)
