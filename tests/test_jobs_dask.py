"""The Dask executor: qc jobs on Dask workers that share no disk with the node.

A worker fetches the series by WADO-RS from the node's DICOMweb service and stores the SR
back by STOW-RS. On a ``distributed.LocalCluster`` the result equals what the local
executor computes for the same job (same findings, same output UIDs); with a ``dask
scheduler`` and two ``pacsnode worker`` processes, both workers take jobs of a running
``pacsnode serve`` and every SR reaches the PACS exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import dimse_destination, free_port

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


def test_scheduler_and_two_pacsnode_workers_run_the_nodes_jobs(tmp_path: Path, orthanc) -> None:
    """``dask scheduler`` and two ``pacsnode worker`` processes, a ``pacsnode serve`` with
    executor = "dask": six qc jobs, both workers get some, each SR reaches Orthanc once."""
    import json
    import subprocess

    from pydicom import dcmread

    from tests.peers import VENV_BIN, query_index, start_node, wait_for_port, write_node_config

    scheduler_port = free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[subprocess.Popen[bytes]] = []

    def launch(name: str, *command: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(command), stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                                   cwd=cwd)
        started.append(process)
        return process

    def worker_keys(dask_worker) -> list[str]:  # runs on each worker (client.run); local, so pickled by value
        return sorted({entry[0] for entry in dask_worker.state.log
                       if isinstance(entry[0], str) and entry[0].startswith("pacsnode-job-")
                       and "executing" in entry})

    node = None
    try:
        scheduler = launch("scheduler", str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                           str(scheduler_port), "--no-dashboard")
        wait_for_port(scheduler_port, timeout=60, process=scheduler)
        for n in (1, 2):  # no shared folder: each worker runs in its own empty directory
            (tmp_path / f"w{n}").mkdir()
            launch(f"worker{n}", str(VENV_BIN / "pacsnode"), "worker", "--scheduler", address, "--name", f"w{n}",
                   cwd=tmp_path / f"w{n}")
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert sorted(w["name"] for w in client.scheduler_info()["workers"].values()) == ["w1", "w2"]
            folder = tmp_path / "node"
            folder.mkdir()
            (folder / "routes.toml").write_text(
                '[[route]]\nname = "qc"\nanalyzer = "qc"\nmatch = { Modality = "^MR$" }\nsend_to = ["pacs"]\n',
                encoding="utf-8")
            port, http_port = free_port(), free_port()
            config = write_node_config(folder, port=port, http_port=http_port, extra=f"""stable_after = 1

[jobs]
executor = "dask"
scheduler = "{address}"
workers = 4

{dimse_destination('pacs', orthanc.ae_title, orthanc.dicom_port)}""")
            node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "node.log")
            for n in range(6):
                files = write_mr_series(tmp_path / f"in{n}", SeriesSpec(
                    series_description=f"t1 {n}", patient_id=f"P{n}", slices=4, rows=16, columns=16, seed=n))
                for path in files:  # no expected count: the six series complete together after 1 s of quiet,
                    ds = dcmread(path)  # so six jobs are in flight at once and both workers are offered work
                    del ds.ImagesInAcquisition
                    ds.save_as(path, enforce_file_format=True)
                assert send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=port).sent == 4
            index = folder / "var" / "index.sqlite"

            def rows(sql: str) -> list[tuple]:
                return query_index(index, sql)

            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if rows("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'") == [(6,)]:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError(f"jobs: {rows('SELECT state, error FROM jobs')}\n"
                                     + (folder / "node.log").read_text(errors="replace")[-3000:])
            per_worker = client.run(worker_keys)
        time.sleep(1.0)  # a duplicate delivery would arrive within this
        jobs = rows("SELECT id, state, outputs FROM jobs")
        assert len(jobs) == 6 and {state for _, state, _ in jobs} == {"done"}
        ran = {key.split("-")[2]: worker for worker, keys in per_worker.items() for key in keys}
        assert sorted(ran) == sorted(job_id for job_id, _, _ in jobs)  # every job ran on a worker
        assert len(per_worker) == 2 and all(per_worker.values()), per_worker  # both got work
        assert sum(len(keys) for keys in per_worker.values()) == 6  # each job once
        outputs = sorted(json.loads(o)[0] for _, _, o in jobs)
        assert rows("SELECT COUNT(*), SUM(attempts) FROM deliveries") == [(6, 6)]
        in_orthanc = sorted(orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                            for i in orthanc.get("/instances"))
        assert in_orthanc == outputs  # each SR once, stored back by STOW-RS and delivered by the node
    finally:
        if node is not None:
            node.stop()
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
