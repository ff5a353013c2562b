"""DICOMweb benchmark: pacsnode against Orthanc's DICOMweb plugin on the same data, in one run.

Measures, for each server (each a separate process on loopback, durable storage on):

* STOW-RS: instances/s storing a generated MR series (batches of ``--batch`` instances per
  request, one connection, the same client for both servers);
* QIDO-RS: median latency of a study search by PatientID (keep-alive connection);
* WADO-RS: MB/s retrieving the whole series as multipart/related application/dicom in the
  stored transfer syntax (median of ``--repeats``);
* WADO-RS series metadata: median seconds (informative, no target).

Run from the project root::

    .venv/bin/python -m bench.dicomweb --instances 1000

and compare the ratios only (the machines are noisy): ratio > 1 means pacsnode is better.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from node.dicomweb.client import StowClient
from node.samples import SeriesSpec, write_mr_series

__all__ = ["Measurement", "main", "measure_server"]

_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class Measurement:
    """One server's numbers."""

    stow_instances_per_s: float
    qido_median_ms: float
    wado_series_mb_per_s: float
    wado_series_seconds: float
    metadata_median_s: float


def _median_time(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_server(url: str, files: list[Path], *, study_uid: str, series_uid: str,
                   patient_id: str, batch: int, repeats: int, qido_repeats: int) -> Measurement:
    """Store ``files`` into the DICOMweb server at ``url``, then query and retrieve them."""
    with StowClient(url, timeout=600) as client:
        client.store_files(files[:1])  # warm-up: connection, first-study bookkeeping
        start = time.perf_counter()
        report = client.store_files(files[1:], batch_size=batch)
        stow_seconds = time.perf_counter() - start
    if not report.ok or len(report.stored) != len(files) - 1:
        raise RuntimeError(f"{url}: STOW-RS did not store every instance: {report.statuses} "
                           f"{report.failed[:3]} {report.warnings[:3]}")
    with httpx.Client(base_url=url, timeout=600) as http:
        def qido() -> None:
            response = http.get("/studies", params={"PatientID": patient_id})
            response.raise_for_status()
            if len(response.json()) != 1:
                raise RuntimeError(f"{url}: QIDO-RS found {len(response.json())} studies")

        qido()
        qido_median = _median_time(qido, qido_repeats)
        received = 0

        def wado() -> None:
            nonlocal received
            received = 0
            with http.stream("GET", f"/studies/{study_uid}/series/{series_uid}",
                             headers={"Accept": _ACCEPT_DICOM}) as response:
                response.raise_for_status()
                for chunk in response.iter_raw(1 << 20):
                    received += len(chunk)

        wado()
        wado_seconds = _median_time(wado, repeats)
        expected = sum(p.stat().st_size for p in files)
        if received < expected:
            raise RuntimeError(f"{url}: WADO-RS returned {received} bytes, expected ≥ {expected}")

        def metadata() -> None:
            response = http.get(f"/studies/{study_uid}/series/{series_uid}/metadata",
                                headers={"Accept": "application/dicom+json"})
            response.raise_for_status()
            if len(response.json()) != len(files):
                raise RuntimeError(f"{url}: metadata of {len(response.json())} instances")

        metadata_seconds = _median_time(metadata, max(1, repeats // 2))
    return Measurement(
        stow_instances_per_s=(len(files) - 1) / stow_seconds,
        qido_median_ms=qido_median * 1000,
        wado_series_mb_per_s=received / wado_seconds / 1e6,
        wado_series_seconds=wado_seconds,
        metadata_median_s=metadata_seconds,
    )


def _table(ours: Measurement, orthanc: Measurement, instances: int, size_kib: float) -> str:
    rows = [
        (f"STOW-RS store {instances} inst (inst/s)", ours.stow_instances_per_s,
         orthanc.stow_instances_per_s, ours.stow_instances_per_s / orthanc.stow_instances_per_s),
        ("QIDO-RS studies?PatientID median (ms)", ours.qido_median_ms, orthanc.qido_median_ms,
         orthanc.qido_median_ms / ours.qido_median_ms),
        (f"WADO-RS whole series, {instances} x {size_kib:.0f} KiB (MB/s)",
         ours.wado_series_mb_per_s, orthanc.wado_series_mb_per_s,
         ours.wado_series_mb_per_s / orthanc.wado_series_mb_per_s),
        ("WADO-RS series metadata median (s), informative", ours.metadata_median_s,
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
        common = dict(study_uid=study_uid, series_uid=series_uid, patient_id="BENCH-0001",
                      batch=args.batch, repeats=args.repeats, qido_repeats=args.qido_repeats)
        with node_process(folder / "pacsnode") as node:
            url = f"http://127.0.0.1:{node.http_port}/dicom-web"
            print(f"pacsnode at {url} ...", flush=True)
            ours = measure_server(url, files, **common)  # type: ignore[arg-type]
        with orthanc_process(folder / "orthanc") as orthanc:
            url = f"{orthanc.url}/dicom-web"
            print(f"Orthanc at {url} ...", flush=True)
            theirs = measure_server(url, files, **common)  # type: ignore[arg-type]
    print()
    print(_table(ours, theirs, args.instances, size_kib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
