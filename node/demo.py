"""``pacsnode demo``: what a new user runs first.

Starts a node with its own storage under the demo folder, sends it a generated
MR series with dcmtk's ``storescu`` (as a scanner would), queries it back with
``findscu`` and prints what the node stored. Every step says what it does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from node.samples import SeriesSpec, write_mr_series

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
    port, http_port = _free_port(), _free_port()
    config = workdir / "node.toml"
    config.write_text(
        f'[dicom]\nae_title = "PACSNODE"\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[storage]\npath = "{workdir / "var"}"\nmin_free_gb = 0.1\n\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n',
        encoding="utf-8",
    )
    console.rule("[bold]pacsnode demo")
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
                console.print("   " + line.replace("I: ", ""))

        console.print("4. what is stored: pacsnode status")
        subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(config), "--last", "3"])
        console.rule("demo finished")
        console.print(f"storage: {workdir / 'var'}  log: {workdir / 'node.log'}")
        if keep_running:
            console.print(f"the node keeps running (pid {node.pid}); stop it with kill {node.pid}")
            return 0
    finally:
        if not keep_running and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(20)
        log.close()
    return 0
