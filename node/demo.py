"""``pacsnode demo``: what a new user runs first.

Starts Debian's Orthanc as the hospital PACS and a node with its own storage
under the demo folder whose results go to that Orthanc; sends the node a
generated MR series with dcmtk's ``storescu`` (as a scanner would); queries it
back with ``findscu``; waits until the series is complete, routed, analysed
(the built-in ``qc`` analyzer) and its Structured Report delivered; prints the
chain as a table and checks the report is in Orthanc. Every step says what it does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
from rich.console import Console
from rich.table import Table

from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.ui.viewer import default_ohif_path, study_url

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _start_orthanc(workdir: Path) -> tuple[subprocess.Popen[bytes], int, int] | None:
    """Debian's Orthanc on free ports with its own configuration, or None when not installed."""
    if shutil.which("Orthanc") is None:
        return None
    dicom_port, http_port = _free_port(), _free_port()
    storage = workdir / "orthanc-db"
    storage.mkdir(parents=True)
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "demo-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "DicomCheckCalledAet": False, "Plugins": [],
    }), encoding="utf-8")
    log = open(workdir / "orthanc.log", "wb")
    process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TCP_NODELAY": "1"})
    if not _wait(dicom_port, process):
        return None
    return process, dicom_port, http_port


def _rejections(index_path: Path) -> list[str]:
    """``route: reason`` of every job an analyzer refused (the demo shows why, not only that)."""
    from node.jobs.commands import pipeline_report

    index = Index(index_path)
    try:
        rows = pipeline_report(index)
    finally:
        index.close()
    return [f"{job['route']}: {job['error']}" for row in rows for job in row["jobs"]
            if job["state"] == "rejected" and job.get("error")]


def _chain_table(index_path: Path) -> tuple[Table, bool]:
    from node.jobs.commands import pipeline_report

    index = Index(index_path)
    try:
        rows = pipeline_report(index)
    finally:
        index.close()
    table = Table(title="series received → route → job → outputs → delivered")
    for column in ("series", "instances", "completion", "route", "job", "outputs", "delivered to pacs"):
        table.add_column(column)
    finished = bool(rows)
    for row in rows:
        jobs = row["jobs"] or [{"route": "-", "state": "-", "outputs": [], "delivered": {}}]
        for job in jobs:
            sent, total = job["delivered"].get("pacs", (0, 0))
            if job["state"] in ("queued", "running") or (job["state"] == "done" and sent < total):
                finished = False
            if job["route"] == "-":
                finished = False
            table.add_row(str(row["description"]), str(row["instances"]), str(row["completion"]),
                          job["route"], job["state"], str(len(job["outputs"])), f"{sent}/{total}")
    return table, finished


def run_demo(workdir: Path, *, keep_running: bool = False) -> int:
    """Run the demo in ``workdir``; returns the process exit code."""
    console = Console()
    for tool in ("storescu", "findscu"):
        if shutil.which(tool) is None:
            console.print(f"[red]{tool} is missing[/red]: install Debian's dcmtk (make demo does it)")
            return 1
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    console.rule("[bold]pacsnode demo")
    orthanc = _start_orthanc(workdir)
    if orthanc is None:
        console.print("[red]Orthanc is missing or did not start[/red]: install Debian's orthanc "
                      "(make demo does it)")
        return 1
    orthanc_process, orthanc_dicom, orthanc_http = orthanc
    console.print(f"0. the hospital PACS: Orthanc as ORTHANC@127.0.0.1:{orthanc_dicom} "
                  f"(http://127.0.0.1:{orthanc_http})")
    port, http_port = _free_port(), _free_port()
    routes = Path(__file__).resolve().parents[1] / "config" / "routes.toml"
    config = workdir / "node.toml"
    config.write_text(
        f'[dicom]\nae_title = "PACSNODE"\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[storage]\npath = "{workdir / "var"}"\nmin_free_gb = 0.1\n\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n\n'
        f'[routing]\nroutes = "{routes}"\nstable_after = 5\n\n'
        f'[[destinations]]\nname = "pacs"\nkind = "dimse"\nae_title = "ORTHANC"\n'
        f'host = "127.0.0.1"\nport = {orthanc_dicom}\n',
        encoding="utf-8",
    )
    console.print(f"1. starting the node: pacsnode serve --config {config}")
    log = open(workdir / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        if not _wait(port, node):
            console.print(f"[red]the node did not start[/red]; its log:\n{(workdir / 'node.log').read_text()}")
            return 1
        console.print(f"   listening as PACSNODE@127.0.0.1:{port}")

        series = write_mr_series(workdir / "scanner", SeriesSpec(slices=24, rows=128, columns=128,
                                                                 series_description="t1_mprage_sag_p2"))
        console.print(f"2. a scanner sends {len(series)} MR images: storescu -aec PACSNODE 127.0.0.1 {port} ...")
        env = {**os.environ, "TCP_NODELAY": "1"}
        started = time.monotonic()
        sent = subprocess.run(["storescu", "-aec", "PACSNODE", "127.0.0.1", str(port),
                               *map(str, series)], capture_output=True, text=True, env=env)
        if sent.returncode != 0:
            console.print(f"[red]storescu failed[/red]:\n{sent.stderr}")
            return 1
        console.print(f"   sent in {time.monotonic() - started:.2f} s, every instance acknowledged")

        console.print("3. a PACS asks what the node holds: findscu -S -k QueryRetrieveLevel=SERIES ...")
        found = subprocess.run(
            ["findscu", "-S", "-aec", "PACSNODE", "-k", "QueryRetrieveLevel=SERIES",
             "-k", "PatientID=DEMO*", "-k", "SeriesDescription", "-k", "SeriesInstanceUID",
             "-k", "NumberOfSeriesRelatedInstances", "127.0.0.1", str(port)],
            capture_output=True, text=True, env=env,
        )
        for line in (found.stdout + found.stderr).splitlines():
            if any(k in line for k in ("SeriesDescription", "NumberOfSeriesRelatedInstances", "Find Response")):
                console.print("   " + line.replace("I: ", ""), soft_wrap=True)

        console.print("4. the node completes the series, routes it, runs the qc analyzer and sends "
                      "its Structured Report to the PACS")
        deadline = time.monotonic() + 180
        table, finished = _chain_table(workdir / "var" / "index.sqlite")
        while not finished and time.monotonic() < deadline:
            time.sleep(1)
            table, finished = _chain_table(workdir / "var" / "index.sqlite")
        console.print(table)
        for rejection in _rejections(workdir / "var" / "index.sqlite"):
            console.print(f"   rejected, with its reason: {rejection}", soft_wrap=True)
        modalities = httpx.get(f"http://127.0.0.1:{orthanc_http}/series?expand", timeout=30).json()
        sr_series = [s for s in modalities if s.get("MainDicomTags", {}).get("Modality") == "SR"]
        console.print(f"5. Orthanc (the PACS) now holds {len(sr_series)} SR series from pacsnode "
                      f"(GET http://127.0.0.1:{orthanc_http}/series)")
        console.print("6. what is stored: pacsnode status")
        subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(config), "--last", "3"])
        console.rule("demo finished" if finished and sr_series else "demo finished with problems")
        if not (finished and sr_series):
            console.print(f"[red]the chain did not finish[/red]; see {workdir / 'node.log'}")
            return 1
        console.print(f"storage: {workdir / 'var'}  log: {workdir / 'node.log'}")
        study = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
        if default_ohif_path().joinpath("index.html").is_file():
            # soft_wrap: the URL stays on one line, whole, to be copied
            console.print(f"7. read it in the OHIF viewer: http://127.0.0.1:{http_port}{study_url(study)}"
                          + ("" if keep_running else " (with --keep-running)"), soft_wrap=True)
        else:
            console.print("7. the OHIF viewer is not installed (scripts/install-ohif.sh, which make demo runs, "
                          "needs the npm registry); /viewer is off")
        if keep_running:
            console.print(f"the node keeps running (pid {node.pid}); stop it with kill {node.pid}")
            return 0
    finally:
        if not keep_running and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(20)
        if not keep_running:
            orthanc_process.terminate()
            orthanc_process.wait(20)
        log.close()
    return 0
