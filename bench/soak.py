"""A long mixed load on one node with kill -9 restarts: ``python -m bench.soak --minutes 30``.

What runs at once against a ``pacsnode serve`` on loopback (fsync on):

* 4 C-STORE senders (pynetdicom), each on its own association, paced at ``--rate``
  instances a second, a new series every 200 instances;
* a QIDO-RS poller (studies of a sender's patient, series of a study), a WADO-RS poller
  (an acknowledged instance and its metadata) and a C-FIND poller (a new association per
  query), a few requests a second each;
* ``--kills`` times, evenly spread, the node is killed with SIGKILL and started again on the
  same storage; the clients reconnect.

Pass criteria, all measured:

* **0 acknowledged instances lost**: every SOP Instance UID a sender got 0x0000 for is in
  the index and its file exists, after the last restart and a clean stop;
* **0 errors**: no failed request while the node is up (the window from a kill until the
  restarted node answers ``/readyz`` 200, plus 3 s, is excluded), no WADO-RS 404 for an
  acknowledged instance, no unhandled exception in the node's log;
* **RSS growth < 50 MB after warm-up**, in every lifetime of the node: the largest RSS (of the
  node's processes together: the main process, its DIMSE receivers, any job workers) after
  the first ``--warmup`` minutes of a lifetime minus the RSS at the end of the warm-up.

Writes a JSON report to ``bench/results/soak-<time>.json`` and exits 1 when a criterion
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.dimse.scu import requestor_handlers
from node.samples import SeriesSpec, write_mr_series
from tests.fuzz.harness import CRASH_MARKERS
from tests.peers import NodeProcess, free_port, query_index, start_node, tree_stats, write_node_config

_ROOT = "1.2.826.0.1.3680043.10.1379.77."
_GRACE = 3.0


@dataclass
class Soak:
    """Shared state of one soak run."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, tuple[str, str]] = field(default_factory=dict)  # sop -> (study, series)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    expected_failures: Counter[str] = field(default_factory=Counter)
    windows: list[list[float]] = field(default_factory=list)  # [kill time, ready + grace]
    rss: list[tuple[float, int, float, int, int]] = field(default_factory=list)  # t, life, MB, threads, fds

    def node_down(self, at: float) -> bool:
        with self.lock:
            return any(start <= at <= (end if end else float("inf")) for start, end in self.windows)

    def failed(self, what: str, detail: str) -> None:
        at = time.monotonic()
        with self.lock:
            if any(start <= at <= (end if end else float("inf")) for start, end in self.windows):
                self.expected_failures[what] += 1
            else:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {detail[:300]}")

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def acked_sample(self) -> tuple[str, str, str] | None:
        with self.lock:
            if not self.acked:
                return None
            sop = random.choice(list(self.acked)) if len(self.acked) < 5000 else next(reversed(self.acked))
            study, series = self.acked[sop]
        return study, series, sop


def _template(folder: Path) -> Dataset:
    path = write_mr_series(folder, SeriesSpec(slices=1, rows=64, columns=64, seed=77))[0]
    return dcmread(path)


def _sender(soak: Soak, number: int, port: int, rate: float, template: Dataset) -> None:
    ds = template
    ds.PatientID = f"SOAK-{number}"
    sent = 0
    study = series = ""
    while not soak.stop.is_set():
        ae = AE(ae_title=f"SOAKSCU{number}")
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE", evt_handlers=requestor_handlers())
        if not assoc.is_established:
            soak.failed("association", f"sender {number}: not established")
            soak.stop.wait(1.0)
            continue
        try:
            while not soak.stop.is_set():
                if sent % 1000 == 0:
                    study = generate_uid(_ROOT)
                if sent % 200 == 0:
                    series = generate_uid(_ROOT)
                sop = generate_uid(_ROOT)
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.InstanceNumber = sent % 200 + 1
                started = time.monotonic()
                try:
                    status = assoc.send_c_store(ds)
                except (RuntimeError, OSError) as exc:  # the association ended under the call (a kill)
                    soak.failed("c-store", f"sender {number}: {exc}")
                    break
                if not assoc.is_established or "Status" not in status:
                    soak.failed("c-store", f"sender {number}: no response (association ended)")
                    break
                if int(status.Status) != 0x0000:
                    soak.failed("c-store", f"sender {number}: status 0x{int(status.Status):04X} "
                                f"{getattr(status, 'ErrorComment', '')}")
                    continue
                with soak.lock:
                    soak.acked[sop] = (study, series)
                    soak.counts["c-store"] += 1
                sent += 1
                soak.stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - started)))
        finally:
            if assoc.is_established:
                assoc.release()


def _get(soak: Soak, client: httpx.Client, what: str, url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        response = client.get(url, **kwargs)
    except httpx.HTTPError as exc:
        soak.failed(what, f"{url}: {type(exc).__name__} {exc}")
        return None
    if response.status_code >= 500:
        soak.failed(what, f"{url}: {response.status_code} {response.text[:200]}")
        return None
    return response


def _qido(soak: Soak, base: str, senders: int) -> None:
    with httpx.Client(timeout=60) as client:
        while not soak.stop.wait(0.2):
            patient = f"SOAK-{random.randrange(senders)}"
            response = _get(soak, client, "qido", f"{base}/studies", params={"PatientID": patient, "limit": "10"})
            if response is None:
                continue
            if response.status_code != 200:
                soak.failed("qido", f"studies: {response.status_code} {response.text[:200]}")
                continue
            soak.count("qido")
            studies = response.json()
            if studies:
                study = studies[0]["0020000D"]["Value"][0]
                series = _get(soak, client, "qido", f"{base}/studies/{study}/series")
                if series is not None and series.status_code == 200:
                    soak.count("qido")


def _wado(soak: Soak, base: str) -> None:
    with httpx.Client(timeout=60) as client:
        while not soak.stop.wait(0.2):
            picked = soak.acked_sample()
            if picked is None:
                continue
            study, series, sop = picked
            url = f"{base}/studies/{study}/series/{series}/instances/{sop}"
            response = _get(soak, client, "wado", url,
                            headers={"Accept": 'multipart/related; type="application/dicom"'})
            if response is None:
                continue
            if response.status_code != 200 or sop.encode() not in response.content:
                soak.failed("wado", f"acknowledged {sop}: {response.status_code}")
                continue
            soak.count("wado")
            if random.random() < 0.3:
                metadata = _get(soak, client, "wado", f"{url}/metadata")
                if metadata is not None and metadata.status_code == 200:
                    soak.count("wado")


def _c_find(soak: Soak, port: int, senders: int) -> None:
    while not soak.stop.wait(0.5):
        ae = AE(ae_title="SOAKFIND")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE", evt_handlers=requestor_handlers())
        if not assoc.is_established:
            soak.failed("c-find", "association not established")
            continue
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = f"SOAK-{random.randrange(senders)}"
        query.StudyInstanceUID = ""
        final = None
        try:
            for status, _identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if "Status" not in status:
                    break
                if int(status.Status) not in (0xFF00, 0xFF01):
                    final = int(status.Status)
        except (RuntimeError, OSError) as exc:  # the association ended under the call (a kill)
            soak.failed("c-find", str(exc))
            continue
        finally:
            if assoc.is_established:
                assoc.release()
        if final != 0x0000:
            soak.failed("c-find", f"final status {final}")
        else:
            soak.count("c-find")


def _wait_ready(http_port: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the node was not ready {timeout:g} s after its start")


def run(minutes: float, kills: int, senders: int, rate: float, warmup: float, workdir: Path) -> dict[str, Any]:
    folder = workdir / "node"
    folder.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra="stable_after = 3600\n")
    storage = folder / "var"
    node: NodeProcess = start_node(config, storage=storage, port=port, http_port=http_port, log=folder / "node.log")
    _wait_ready(http_port)
    soak = Soak()
    life = 0
    lives = [time.monotonic()]
    templates = [_template(workdir / f"template{n}") for n in range(senders)]
    base = f"http://127.0.0.1:{http_port}/dicom-web"
    threads = [threading.Thread(target=_sender, args=(soak, n, port, rate, templates[n]), daemon=True,
                                name=f"sender-{n}") for n in range(senders)]
    threads += [threading.Thread(target=_qido, args=(soak, base, senders), daemon=True, name="qido"),
                threading.Thread(target=_wado, args=(soak, base), daemon=True, name="wado"),
                threading.Thread(target=_c_find, args=(soak, port, senders), daemon=True, name="c-find")]
    started = time.monotonic()
    end = started + minutes * 60
    kill_times = [started + minutes * 60 * (k + 1) / (kills + 1) for k in range(kills)]
    for thread in threads:
        thread.start()
    try:
        next_sample = started
        while time.monotonic() < end:
            now = time.monotonic()
            if kill_times and now >= kill_times[0]:
                kill_times.pop(0)
                with soak.lock:
                    soak.windows.append([now, 0.0])
                node.process.send_signal(signal.SIGKILL)
                node.process.wait(30)
                node = start_node(config, storage=storage, port=port, http_port=http_port, log=folder / "node.log")
                _wait_ready(http_port)
                with soak.lock:
                    soak.windows[-1][1] = time.monotonic() + _GRACE
                life += 1
                lives.append(time.monotonic())
                print(f"[{(time.monotonic() - started) / 60:5.1f} min] kill -9 and restart #{life} "
                      f"({time.monotonic() - now:.1f} s until ready)", flush=True)
            if now >= next_sample and not soak.node_down(now):
                rss, thread_count, fds = tree_stats(node.process.pid)
                with soak.lock:
                    soak.rss.append((now - started, life, rss, thread_count, fds))
                    counts = dict(soak.counts)
                    errors = len(soak.errors)
                if int(now - started) % 60 < 5:
                    print(f"[{(now - started) / 60:5.1f} min] RSS {rss:.0f} MB, threads {thread_count}, fds {fds}, "
                          f"{counts}, errors {errors}", flush=True)
                next_sample = now + 5
            time.sleep(0.2)
        # A client thread that died would lighten the load unnoticed: that is an error too.
        dead = [thread.name for thread in threads if not thread.is_alive()]
        if dead:
            soak.errors.append(f"client threads ended during the run: {', '.join(dead)}")
    finally:
        soak.stop.set()
        for thread in threads:
            thread.join(120)
        node.stop()
    indexed = {row[0] for row in query_index(storage / "index.sqlite", "SELECT sop_uid FROM instances")}
    paths = dict(query_index(storage / "index.sqlite", "SELECT sop_uid, path FROM instances"))
    lost = [sop for sop in soak.acked if sop not in indexed or not (storage / paths[sop]).exists()]
    log = (folder / "node.log").read_text(errors="replace")
    crashes = [marker for marker in CRASH_MARKERS if marker in log]
    growth = []
    for number, born in enumerate(lives):
        samples = [(t, rss) for t, lifetime, rss, _, _ in soak.rss if lifetime == number]
        warm = [rss for t, rss in samples if t + started >= born + warmup * 60]
        if warm:
            growth.append({"life": number, "after_warmup_mb": round(warm[0], 1), "max_mb": round(max(warm), 1),
                           "end_mb": round(warm[-1], 1), "growth_mb": round(max(warm) - warm[0], 1)})
    threads_fds = [(t, n, f) for t, _, _, n, f in soak.rss]
    return {
        "minutes": minutes, "kills": kills, "senders": senders, "rate_per_sender": rate,
        "load_average": os.getloadavg(),
        "counts": dict(soak.counts), "acknowledged": len(soak.acked), "lost": len(lost), "lost_examples": lost[:20],
        "errors": len(soak.errors) + len(crashes), "error_examples": soak.errors[:30] + crashes,
        "expected_failures_during_restarts": dict(soak.expected_failures),
        "restart_windows_s": [round(e - s, 1) for s, e in soak.windows],
        "rss": growth, "max_growth_mb": max((g["growth_mb"] for g in growth), default=None),
        "threads": {"min": min(n for _, n, _ in threads_fds), "max": max(n for _, n, _ in threads_fds)},
        "fds": {"min": min(f for _, _, f in threads_fds), "max": max(f for _, _, f in threads_fds)},
        "stored_bytes": sum(p.stat().st_size for p in (storage / "store").rglob("*.dcm")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (30)")
    parser.add_argument("--kills", type=int, default=2, help="kill -9 restarts, evenly spread (2)")
    parser.add_argument("--senders", type=int, default=4, help="C-STORE associations (4)")
    parser.add_argument("--rate", type=float, default=15.0, help="instances a second per sender (15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="minutes of each node lifetime before RSS counts (3)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the node's storage goes (a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the node's storage")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pacsnode-soak-", dir=args.workdir))
    try:
        report = run(args.minutes, args.kills, args.senders, args.rate, args.warmup, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    out = args.out or Path("bench/results") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    passed = report["lost"] == 0 and report["errors"] == 0 and (report["max_growth_mb"] or 0) < 50
    print(json.dumps({k: v for k, v in report.items() if k not in ("error_examples", "lost_examples")}, indent=1))
    for example in report["error_examples"]:
        print("error:", example)
    print(f"{'PASS' if passed else 'FAIL'}: {report['acknowledged']} acknowledged, {report['lost']} lost, "
          f"{report['errors']} errors, RSS growth after warm-up {report['max_growth_mb']} MB (limit 50); "
          f"report {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
