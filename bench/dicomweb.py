"""DICOMweb benchmark: pacsnode against Orthanc's DICOMweb plugin on the same data, in one run.

Measures, for each server (each a separate process on loopback, durable storage on; the
two take turns request by request so that load on a shared machine hits both alike):

* STOW-RS: instances/s storing a generated MR series (batches of ``--batch`` instances per
  request, one connection, the same client for both servers);
* QIDO-RS: median latency of a study search by PatientID (keep-alive connection);
* WADO-RS: MB/s retrieving the whole series as multipart/related application/dicom in the
  stored transfer syntax (median of ``--repeats``), once with httpx (a Python client, as
  researchers' scripts and dicomweb-client are) and once with ``curl`` writing to
  /dev/null (a client that costs almost nothing, so the row shows the servers' own
  speed; it includes curl's start, a few ms, for both);
* WADO-RS series metadata: median seconds (informative, no target);
* pacsnode's resident memory (VmRSS of the node process, sampled every 20 ms) while it
  streams a ``--rss-instances`` series (2,000 by default) in one WADO-RS request: the
  response streams, so the peak stays far below the series' size.

Run from the project root::

    .venv/bin/python -m bench.dicomweb --instances 1000

and compare the ratios only (the machines are noisy): ratio > 1 means pacsnode is better.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from node.dicomweb.client import StowClient
from node.samples import SeriesSpec, write_mr_series

__all__ = ["Measurement", "main", "measure_servers"]

_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Measurement:
    """One server's numbers (seconds lists are filled measurement by measurement)."""

    name: str
    url: str
    stow_seconds: float = 0.0
    stow_instances: int = 0
    qido: list[float] = field(default_factory=list)
    wado: list[float] = field(default_factory=list)
    wado_bytes: int = 0
    wado_curl: list[float] = field(default_factory=list)
    metadata_first: float = 0.0
    metadata: list[float] = field(default_factory=list)

    @property
    def stow_instances_per_s(self) -> float:
        return self.stow_instances / self.stow_seconds

    @property
    def qido_median_ms(self) -> float:
        return statistics.median(self.qido) * 1000

    @property
    def wado_series_mb_per_s(self) -> float:
        return self.wado_bytes / statistics.median(self.wado) / 1e6

    @property
    def wado_curl_mb_per_s(self) -> float:
        return self.wado_bytes / statistics.median(self.wado_curl) / 1e6 if self.wado_curl else float("nan")

    @property
    def metadata_median_s(self) -> float:
        return statistics.median(self.metadata)


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure_servers(servers: list[Measurement], files: list[Path], *, study_uid: str,
                    series_uid: str, patient_id: str, batch: int, repeats: int,
                    qido_repeats: int) -> None:
    """Store ``files`` into every server, then query and retrieve them. The servers take
    turns request by request (first one, then the other, the order alternating), so a load
    change on a shared machine affects them alike."""
    clients = {m.name: StowClient(m.url, timeout=600) for m in servers}
    https = {m.name: httpx.Client(base_url=m.url, timeout=600) for m in servers}
    expected = sum(p.stat().st_size for p in files)
    try:
        def turns(round_index: int) -> list[Measurement]:
            return servers if round_index % 2 == 0 else servers[::-1]

        for m in servers:  # warm-up: connection, first-study bookkeeping
            clients[m.name].store_files(files[:1])
        rest = files[1:]
        for index, start in enumerate(range(0, len(rest), batch)):
            chunk = rest[start : start + batch]
            for m in turns(index):
                begin = time.perf_counter()
                report = clients[m.name].store_files(chunk, batch_size=batch)
                m.stow_seconds += time.perf_counter() - begin
                if not report.ok or len(report.stored) != len(chunk):
                    raise RuntimeError(f"{m.name}: STOW-RS did not store every instance: "
                                       f"{report.statuses} {report.failed[:3]} {report.warnings[:3]}")
                m.stow_instances += len(chunk)

        def qido(m: Measurement) -> None:
            response = https[m.name].get("/studies", params={"PatientID": patient_id})
            response.raise_for_status()
            if len(response.json()) != 1:
                raise RuntimeError(f"{m.name}: QIDO-RS found {len(response.json())} studies")

        def wado(m: Measurement) -> None:
            received = 0
            with https[m.name].stream("GET", f"/studies/{study_uid}/series/{series_uid}",
                                      headers={"Accept": _ACCEPT_DICOM}) as response:
                response.raise_for_status()
                for block in response.iter_raw(1 << 20):
                    received += len(block)
            if received < expected:
                raise RuntimeError(f"{m.name}: WADO-RS returned {received} bytes, "
                                   f"expected at least {expected}")
            m.wado_bytes = received

        def wado_curl(m: Measurement) -> None:
            done = subprocess.run(
                ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", "-H", f"Accept: {_ACCEPT_DICOM}",
                 f"{m.url}/studies/{study_uid}/series/{series_uid}"], capture_output=True, text=True, check=False)
            if done.returncode != 0 or int(done.stdout or 0) < expected:
                raise RuntimeError(f"{m.name}: curl WADO-RS failed ({done.returncode}): {done.stderr.strip()} "
                                   f"{done.stdout} bytes")

        def metadata(m: Measurement) -> None:
            response = https[m.name].get(f"/studies/{study_uid}/series/{series_uid}/metadata",
                                         headers={"Accept": "application/dicom+json"})
            response.raise_for_status()
            if len(response.json()) != len(files):
                raise RuntimeError(f"{m.name}: metadata of {len(response.json())} instances")

        for m in servers:
            qido(m)
            wado(m)
        for index in range(qido_repeats):
            for m in turns(index):
                m.qido.append(_timed(partial(qido, m)))
        for index in range(repeats):
            for m in turns(index):
                m.wado.append(_timed(partial(wado, m)))
        if shutil.which("curl"):
            for index in range(repeats):
                for m in turns(index):
                    m.wado_curl.append(_timed(partial(wado_curl, m)))
        for m in servers:
            m.metadata_first = _timed(partial(metadata, m))
        for index in range(max(1, repeats // 2)):
            for m in turns(index):
                m.metadata.append(_timed(partial(metadata, m)))
    finally:
        for client in clients.values():
            client.close()
        for http in https.values():
            http.close()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure_streaming_memory(url: str, pid: int, files: list[Path], *, study_uid: str,
                             series_uid: str) -> dict[str, float]:
    """Store ``files`` (one series), then retrieve the whole series once while sampling the
    server's resident memory; returns start and peak MB, the series' MB and MB/s."""
    with StowClient(url, timeout=600) as client:
        for start in range(0, len(files), 100):
            report = client.store_files(files[start:start + 100], batch_size=100)
            if not report.ok:
                raise RuntimeError(f"STOW-RS of the memory series failed: {report.failed[:3]}")
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_rss_mb(pid))
            done.wait(0.02)

    received = 0
    with httpx.Client(base_url=url, timeout=600) as http:
        start_mb = _rss_mb(pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        with http.stream("GET", f"/studies/{study_uid}/series/{series_uid}",
                         headers={"Accept": _ACCEPT_DICOM}) as response:
            response.raise_for_status()
            for block in response.iter_raw(1 << 20):
                received += len(block)
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
    stored = sum(p.stat().st_size for p in files)
    if received < stored:
        raise RuntimeError(f"WADO-RS returned {received} bytes of a {stored}-byte series")
    return {"start_mb": start_mb, "peak_mb": max([*samples, start_mb]), "series_mb": stored / 1e6,
            "mb_per_s": received / seconds / 1e6}


def _table(ours: Measurement, orthanc: Measurement, instances: int, size_kib: float) -> str:
    rows = [
        (f"STOW-RS store {instances} inst, batches (inst/s)", ours.stow_instances_per_s,
         orthanc.stow_instances_per_s, ours.stow_instances_per_s / orthanc.stow_instances_per_s),
        ("QIDO-RS studies?PatientID median (ms)", ours.qido_median_ms, orthanc.qido_median_ms,
         orthanc.qido_median_ms / ours.qido_median_ms),
        (f"WADO-RS whole series, {instances} x {size_kib:.0f} KiB, httpx client (MB/s)",
         ours.wado_series_mb_per_s, orthanc.wado_series_mb_per_s,
         ours.wado_series_mb_per_s / orthanc.wado_series_mb_per_s),
        ("WADO-RS whole series, curl client (MB/s)", ours.wado_curl_mb_per_s, orthanc.wado_curl_mb_per_s,
         ours.wado_curl_mb_per_s / orthanc.wado_curl_mb_per_s),
        ("WADO-RS series metadata, first (s), informative", ours.metadata_first,
         orthanc.metadata_first, orthanc.metadata_first / ours.metadata_first),
        ("WADO-RS series metadata, again, median (s), informative", ours.metadata_median_s,
         orthanc.metadata_median_s, orthanc.metadata_median_s / ours.metadata_median_s),
    ]
    lines = ["| measure | pacsnode | Orthanc | ratio (>1: pacsnode better) |", "|---|---|---|---|"]
    for name, a, b, ratio in rows:
        lines.append(f"| {name} | {a:,.2f} | {b:,.2f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=256, help="image size (rows = columns)")
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--qido-repeats", type=int, default=50)
    parser.add_argument("--rss-instances", type=int, default=2000,
                        help="instances of the series streamed for the memory measurement (0: skip)")
    args = parser.parse_args(argv)
    # the peers' launchers are shared with the tests (free ports, own config, cleanup)
    from tests.peers import have, node_process, orthanc_process

    if not have("Orthanc"):
        print("Orthanc is not installed; nothing to compare with", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        folder = Path(tmp)
        print(f"generating {args.instances} MR instances of {args.rows}x{args.rows} ...",
              flush=True)
        spec = SeriesSpec(slices=args.instances, rows=args.rows, columns=args.rows,
                          patient_id="BENCH-0001", seed=42)
        files = write_mr_series(folder / "series", spec)
        from pydicom import dcmread

        head = dcmread(files[0], stop_before_pixels=True)
        study_uid, series_uid = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
        size_kib = statistics.mean(p.stat().st_size for p in files) / 1024
        with node_process(folder / "pacsnode") as node, \
                orthanc_process(folder / "orthanc") as orthanc:
            ours = Measurement("pacsnode", f"http://127.0.0.1:{node.http_port}/dicom-web")
            theirs = Measurement("Orthanc", f"{orthanc.url}/dicom-web")
            print(f"pacsnode at {ours.url}, Orthanc at {theirs.url} ...", flush=True)
            measure_servers([ours, theirs], files, study_uid=study_uid, series_uid=series_uid,
                            patient_id="BENCH-0001", batch=args.batch, repeats=args.repeats,
                            qido_repeats=args.qido_repeats)
            memory = None
            if args.rss_instances:
                print(f"streaming a {args.rss_instances}-instance series for the memory measurement ...",
                      flush=True)
                big = write_mr_series(folder / "rss", SeriesSpec(slices=args.rss_instances, rows=128, columns=128,
                                                                  patient_id="BENCH-RSS", seed=7))
                head = dcmread(big[0], stop_before_pixels=True)
                memory = measure_streaming_memory(ours.url, node.process.pid, big,
                                                  study_uid=str(head.StudyInstanceUID),
                                                  series_uid=str(head.SeriesInstanceUID))
    print()
    print(_table(ours, theirs, args.instances, size_kib))
    if memory is not None:
        print()
        print(f"| pacsnode RSS while streaming a {args.rss_instances:,}-instance series "
              f"({memory['series_mb']:.0f} MB) by WADO-RS | start MB | peak MB | MB/s |")
        print("|---|---|---|---|")
        print(f"| | {memory['start_mb']:.0f} | {memory['peak_mb']:.0f} | {memory['mb_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
