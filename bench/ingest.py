"""C-STORE ingest and C-FIND latency: pacsnode vs Orthanc vs dcmtk storescp, in one run.

Run ``python -m bench.ingest`` (or ``make bench``). It generates a 1,000-instance
256×256 MR series and a 2,000-instance 128×128 dynamic series, then sends each
with dcmtk ``storescu`` into every server, one association and four parallel
associations, measuring instances/s and MB/s; then the median C-FIND STUDY
latency on a reused association; then pacsnode's peak RSS while it ingests
10,000 instances. Every figure is printed with its ratio against Orthanc
(and storescp for the single-association rows) measured in the same run.

Servers: pacsnode (``pacsnode serve``, fsync on), Orthanc (Debian, default
SQLite index, SyncStorageArea on, started with its own configuration) and
``storescp`` writing files to disk (the ceiling). dcmtk tools run with
``TCP_NODELAY=1``; one extra row uses a default (Nagle on) ``storescu``, which is
what sites run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, orthanc_process, wait_for_port, write_node_config

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Server:
    name: str
    ae_title: str
    port: int
    pid: int
    http_port: int | None = None


@contextmanager
def pacsnode_server(folder: Path) -> Iterator[Server]:
    folder.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port)
    # Started here rather than with tests.peers.start_node: on a busy machine importing the
    # node can take longer than that helper's 20 s wait.
    environment = {k: v for k, v in os.environ.items() if k != "PACSNODE_CONFIG"}
    with open(folder / "node.log", "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "pacsnode"), "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=str(folder))
    try:
        wait_for_port(port, timeout=300, process=process)
        yield Server("pacsnode", "PACSNODE", port, process.pid, http_port)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def orthanc_server(folder: Path) -> Iterator[Server]:
    with orthanc_process(folder) as orthanc:
        yield Server("Orthanc", orthanc.ae_title, orthanc.dicom_port, orthanc.process.pid)


@contextmanager
def storescp_server(folder: Path) -> Iterator[Server]:
    out = folder / "storescp"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
                               env=NODELAY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield Server("storescp", "STORESCP", port, process.pid)
    finally:
        process.terminate()
        process.wait(10)


def _send(server: Server, files: list[Path], associations: int, env: dict[str, str]) -> float:
    """Seconds to send ``files`` over ``associations`` parallel storescu processes."""
    chunks = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    processes = []
    for chunk in chunks:
        list_file = Path(tempfile.mkstemp(suffix=".txt")[1])
        processes.append(subprocess.Popen(
            ["storescu", "-aec", server.ae_title, "127.0.0.1", str(server.port), *map(str, chunk)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ))
        list_file.unlink()
    errors = [p.communicate()[1] for p in processes]
    elapsed = time.perf_counter() - started
    failed = [e for p, e in zip(processes, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu into {server.name} failed: {failed[0][-500:]!r}")
    return elapsed


def _settle_disk() -> None:
    """Flush everyone's dirty pages before a timed run.

    On ext4 (data=ordered) an fsync waits for the journal commit, which writes the dirty
    data of other files too: without this, the server measured right after the data were
    generated, or right after storescp (which never fsyncs), pays for their writes.
    """
    os.sync()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _find_latency(server: Server, queries: int = 60) -> float:
    import socket as socketlib

    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assoc.dul.socket.socket.setsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY, 1)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = "BENCH-1"
    identifier.StudyInstanceUID = ""
    identifier.StudyDate = ""
    timings = []
    for _ in range(queries):
        started = time.perf_counter()
        results = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
        timings.append(time.perf_counter() - started)
        if not results or results[-1][0].Status != 0:
            raise RuntimeError(f"C-FIND on {server.name} failed")
    assoc.release()
    return statistics.median(timings[5:]) * 1000


@dataclass
class Row:
    label: str
    values: dict[str, float]
    unit: str


def scraped_received_instances(server: Server) -> int:
    """``pacsnode_received_instances_total`` summed over calling AEs, read from the node's ``/metrics``."""
    url = f"http://127.0.0.1:{server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("pacsnode_received_instances_total")))


def _ingest_rows(data: dict[str, list[Path]], work: Path,
                 servers: dict[str, Callable[[Path], object]], rounds: int = 1,
                 scrapes: list[tuple[str, int, int]] | None = None) -> list[Row]:
    rows: list[Row] = []
    cases = [
        ("1,000 x 128 KiB MR, 1 assoc", "mr", 1, NODELAY),
        ("1,000 x 128 KiB MR, 4 assoc", "mr", 4, NODELAY),
        ("2,000 x 34 KiB dynamic, 1 assoc", "dyn", 1, NODELAY),
        ("1,000 x 128 KiB MR, 1 assoc, Nagle on", "mr", 1, dict(os.environ)),
    ]
    for label, key, associations, env in cases:
        size_mb = sum(p.stat().st_size for p in data[key]) / 1e6
        timings: dict[str, list[float]] = {}
        # Servers take turns within each round, so a burst of load on a shared machine hits
        # them alike; the median over rounds is reported.
        for round_number in range(rounds):
            for name, factory in servers.items():
                if "Nagle" in label and name == "storescp":
                    continue
                folder = work / f"{name}-{key}-{associations}-{round_number}"
                with factory(folder) as server:  # type: ignore[attr-defined]
                    _settle_disk()
                    timings.setdefault(name, []).append(
                        _send(server, data[key], associations, env))
                    if scrapes is not None and getattr(server, "http_port", None):
                        # The node's own count of what it stored, against what storescu sent.
                        scrapes.append((label, len(data[key]), scraped_received_instances(server)))  # type: ignore[arg-type]
                shutil.rmtree(folder, ignore_errors=True)
        values: dict[str, float] = {}
        for name, elapsed in timings.items():
            median = statistics.median(elapsed)
            values[name] = len(data[key]) / median
            values[name + " MB/s"] = size_mb / median
        rows.append(Row(label, values, "inst/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--rss-instances", type=int, default=10_000,
                        help="instances sent for the RSS measurement (10,000)")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rounds", type=int, default=1,
                        help="send each case this many times per server, interleaved; report "
                             "the median (1)")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run `make setup` (installs dcmtk and orthanc)", file=sys.stderr)
            return 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pacsnode-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating data in {work} ...", flush=True)
    data = {
        "mr": write_mr_series(work / "data-mr", SeriesSpec(patient_id="BENCH-1", slices=1000, rows=256,
                                                           columns=256, seed=1)),
        "dyn": write_mr_series(work / "data-dyn", SeriesSpec(patient_id="BENCH-1", slices=20, time_points=100,
                                                             rows=128, columns=128, seed=2,
                                                             series_description="ep2d_perf")),
    }
    servers: dict[str, Callable[[Path], object]] = {
        "pacsnode": pacsnode_server, "Orthanc": orthanc_server, "storescp": storescp_server,
    }
    scrapes: list[tuple[str, int, int]] = []
    rows = _ingest_rows(data, work, servers, rounds=max(1, args.rounds), scrapes=scrapes)

    find_values: dict[str, float] = {}
    for name in ("pacsnode", "Orthanc"):
        with servers[name](work / f"find-{name}") as server:  # type: ignore[attr-defined]
            _send(server, data["mr"][:50], 1, NODELAY)
            _settle_disk()
            find_values[name] = _find_latency(server)
    print()
    print("| C-STORE (storescu) | pacsnode inst/s | Orthanc inst/s | storescp inst/s | pacsnode MB/s | "
          "vs Orthanc | vs storescp |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        v = row.values
        scp = v.get("storescp")
        print(f"| {row.label} | {v['pacsnode']:.0f} | {v['Orthanc']:.0f} | "
              f"{scp:.0f} | " if scp else f"| {row.label} | {v['pacsnode']:.0f} | {v['Orthanc']:.0f} | - | ",
              end="")
        print(f"{v['pacsnode MB/s']:.1f} | {v['pacsnode'] / v['Orthanc']:.2f}x | "
              + (f"{v['pacsnode'] / scp:.2f}x |" if scp else "- |"))
    print()
    print("| /metrics after each pacsnode run | sent by storescu | pacsnode_received_instances_total | match |")
    print("|---|---|---|---|")
    for label, sent, counted in scrapes:
        print(f"| {label} | {sent} | {counted} | {'yes' if sent == counted else 'NO'} |")
    print()
    print("| C-FIND STUDY, reused association | pacsnode ms | Orthanc ms | speed vs Orthanc |")
    print("|---|---|---|---|")
    print(f"| median of 55 | {find_values['pacsnode']:.2f} | {find_values['Orthanc']:.2f} | "
          f"{find_values['Orthanc'] / find_values['pacsnode']:.2f}x |")

    if not args.skip_rss:
        count = args.rss_instances
        files = write_mr_series(work / "data-rss", SeriesSpec(patient_id="BENCH-RSS", slices=count, rows=128,
                                                             columns=128, seed=3))
        with pacsnode_server(work / "rss") as server:
            peak = [_rss_mb(server.pid)]
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.2):
                    peak.append(_rss_mb(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            _settle_disk()
            sampler.start()
            elapsed = _send(server, files, 4, NODELAY)
            done.set()
            sampler.join()
        print()
        print(f"| pacsnode RSS while ingesting {count:,} instances (4 assoc) | start MB | peak MB | inst/s |")
        print("|---|---|---|---|")
        print(f"| | {peak[0]:.0f} | {max(peak):.0f} | {count / elapsed:.0f} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(sent == counted for _, sent, counted in scrapes) else 1


if __name__ == "__main__":
    sys.exit(main())
