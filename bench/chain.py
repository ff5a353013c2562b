"""Benchmark of the chain: last instance acknowledged → qc SR stored in Orthanc.

Starts a Debian Orthanc (the PACS) and ``pacsnode serve`` (qc route only, local executor)
on free loopback ports, then

1. **latency**: sends ``--series`` series of ``--instances`` instances one after the other
   (after one warm-up series that is not counted) and measures, per series, the time from
   the last C-STORE response to the moment Orthanc acknowledged the SR (the node's
   ``deliveries.sent_at``, written right after Orthanc's C-STORE success), minus the qc
   analyzer's own compute time (``jobs.compute_seconds``). Both completion modes: count
   based (ImagesInAcquisition present) and quiet (ImagesInAcquisition removed, the series
   completes after ``--stable-after`` seconds).
2. **throughput**: sends ``--parallel`` series at once from 4 sender threads with
   ``--workers`` job workers and reports series per minute from the first instance sent to
   the last SR stored in Orthanc.

Run: ``.venv/bin/python -m bench.chain`` (``--help`` for the options). Prints a table and a
JSON line. Targets (issue 5): overhead ≤ 1 s when count-based completion applies,
≤ stable_after + 2 s otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from node.dimse.scu import send_files
from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, orthanc_process, start_node, write_node_config

__all__ = ["main"]

_ROUTES = """
[[route]]
name = "qc"
analyzer = "qc"
match = { Modality = '^MR$' }
send_to = ["pacs"]
"""


def _write_series(folder: Path, n: int, instances: int, *, count_based: bool) -> list[Path]:
    spec = SeriesSpec(series_description=f"bench {n}", slices=instances, rows=128, columns=128, seed=n,
                      patient_id=f"BENCH-{n:04d}")
    files = write_mr_series(folder / f"s{n}", spec)
    if not count_based:
        for path in files:
            ds = dcmread(path)
            del ds.ImagesInAcquisition
            ds.save_as(path, enforce_file_format=True)
    return files


def _flush() -> None:
    """Write the generated inputs to disk now: otherwise the node's first fsyncs wait for the
    kernel to flush hundreds of megabytes of them (ext4 ordered mode), which is the benchmark's
    own doing, not the node's."""
    os.sync()


def _series_uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _delivered(index: Path, series_uid: str) -> tuple[float, float] | None:
    """``(sent_at, compute_seconds)`` of the qc SR of a series once delivered."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT d.sent_at, j.compute_seconds FROM jobs j JOIN deliveries d ON d.job_id = j.id "
            "WHERE j.series_uid = ? AND d.state = 'sent'", (series_uid,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return (float(row[0]), float(row[1] or 0.0)) if row else None


def _wait_delivered(index: Path, series_uid: str, timeout: float = 600) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _delivered(index, series_uid)
        if found:
            return found
        time.sleep(0.02)
    raise TimeoutError(f"the SR of {series_uid} was not delivered within {timeout} s")


def _latency(node: Any, index: Path, work: Path, *, series: int, instances: int, count_based: bool,
             offset: int) -> dict[str, Any]:
    overheads, totals, computes = [], [], []
    failures: list[str] = []
    for n in range(series + 1):  # the first one warms the worker processes
        files = _write_series(work, offset + n, instances, count_based=count_based)
        uid = _series_uid(files)
        _flush()
        try:
            report = send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=node.port, calling_ae="BENCH")
        except RuntimeError as exc:  # the association was aborted (a C-STORE answer took > 30 s)
            failures.append(f"series {n}: {exc}")
            continue
        acknowledged = time.time()
        if report.sent != len(files):
            failures.append(f"series {n}: {len(report.failed)} C-STORE failure(s)")
            continue
        sent_at, compute = _wait_delivered(index, uid)
        if n == 0:
            continue
        totals.append(sent_at - acknowledged)
        computes.append(compute)
        overheads.append(sent_at - acknowledged - compute)
    return {"mode": "count" if count_based else "quiet", "series": series, "instances": instances,
            "overhead_median_s": statistics.median(overheads), "overhead_max_s": max(overheads),
            "total_median_s": statistics.median(totals), "compute_median_s": statistics.median(computes),
            "overheads_s": [round(v, 3) for v in overheads], "send_failures": failures}


def _throughput(node: Any, index: Path, work: Path, *, parallel: int, instances: int) -> dict[str, Any]:
    batches = [_write_series(work, 5000 + n, instances, count_based=True) for n in range(parallel)]
    uids = [_series_uid(files) for files in batches]
    _flush()
    queue = list(batches)
    lock = threading.Lock()

    def sender() -> None:
        while True:
            with lock:
                if not queue:
                    return
                files = queue.pop()
            try:
                report = send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=node.port,
                                    calling_ae="BENCH")
                ok = report.sent == len(files)
            except RuntimeError:  # the association was aborted (a C-STORE answer took > 30 s)
                ok = False
            if not ok:
                with lock:
                    failed.append(_series_uid(files))

    failed: list[str] = []
    started = time.time()
    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received = time.time()
    complete = [uid for uid in uids if uid not in failed]
    last = max(_wait_delivered(index, uid)[0] for uid in complete)
    return {"parallel_series": parallel, "instances": instances, "ingest_seconds": received - started,
            "wall_seconds": last - started, "series_per_minute": 60 * len(complete) / (last - started),
            "send_failures": len(failed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10, help="measured series per completion mode (10)")
    parser.add_argument("--instances", type=int, default=200, help="instances per series (200)")
    parser.add_argument("--stable-after", type=float, default=2.0, help="quiet completion seconds (2)")
    parser.add_argument("--parallel", type=int, default=50, help="series sent at once for throughput (50)")
    parser.add_argument("--parallel-instances", type=int, default=200, help="instances per throughput series (200)")
    parser.add_argument("--workers", type=int, default=2, help="job workers (2)")
    parser.add_argument("--skip-quiet", action="store_true", help="only count-based completion")
    parser.add_argument("--workdir", type=Path, help="keep files and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with orthanc_process(work / "orthanc") as orthanc:
            folder = work / "node"
            folder.mkdir()
            (folder / "routes.toml").write_text(_ROUTES, encoding="utf-8")
            port, http_port = free_port(), free_port()
            extra = (f"stable_after = {args.stable_after}\n\n[jobs]\nworkers = {args.workers}\n\n"
                     f"[[destinations]]\nname = \"pacs\"\nkind = \"dimse\"\nae_title = \"{orthanc.ae_title}\"\n"
                     f"host = \"127.0.0.1\"\nport = {orthanc.dicom_port}\nbackoff_seconds = 0.5\n")
            config = write_node_config(folder, port=port, http_port=http_port, extra=extra)
            node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "node.log")
            index = folder / "var" / "index.sqlite"
            try:
                results: dict[str, Any] = {"latency": [], "stable_after_s": args.stable_after,
                                           "workers": args.workers}
                results["latency"].append(_latency(node, index, work, series=args.series, instances=args.instances,
                                                   count_based=True, offset=0))
                if not args.skip_quiet:
                    results["latency"].append(_latency(node, index, work, series=args.series,
                                                       instances=args.instances, count_based=False, offset=1000))
                results["throughput"] = _throughput(node, index, work, parallel=args.parallel,
                                                    instances=args.parallel_instances)
                results["orthanc_instances"] = len(orthanc.get("/instances"))  # type: ignore[arg-type]
            finally:
                node.stop()
    for row in results["latency"]:
        print(f"{row['mode']:>5} completion: overhead median {row['overhead_median_s']:.3f} s "
              f"(max {row['overhead_max_s']:.3f} s), total median {row['total_median_s']:.3f} s, "
              f"qc compute median {row['compute_median_s']:.3f} s over {row['series']} series of "
              f"{row['instances']} instances"
              + (f"; {len(row['send_failures'])} series whose sending failed" if row["send_failures"] else ""))
    t = results["throughput"]
    print(f"throughput: {t['parallel_series']} series × {t['instances']} instances, {args.workers} workers: "
          f"{t['wall_seconds']:.1f} s wall ({t['ingest_seconds']:.1f} s to receive), "
          f"{t['series_per_minute']:.1f} series/min"
          + (f", {t['send_failures']} series whose sending failed (not counted)" if t["send_failures"] else ""))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
