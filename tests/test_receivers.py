"""DIMSE receiver processes (node.dimse.receivers): several processes on one port act as one node.

A receiver killed in the middle of a burst loses nothing it acknowledged and is replaced
while the node keeps serving; the node's counters, completion and audit see the instances
every receiver stored; ``max_associations`` holds across the processes; ``workers = 0``
serves in the main process as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread

from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, node_process, query_index, storescu_acknowledged, wait_until

pytestmark = pytest.mark.peers

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def receiver_pids(node: NodeProcess) -> list[int]:
    """The node's receiver processes (children running node.dimse.receiver)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == node.process.pid and b"node.dimse.receiver" in command:
            pids.append(int(entry.name))
    return sorted(pids)



def _received_total(node: NodeProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("pacsnode_received_instances_total")))


def _indexed(node: NodeProcess) -> set[str]:
    return {row[0] for row in query_index(node.storage / "index.sqlite", "SELECT sop_uid FROM instances")}


def test_killing_a_receiver_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "burst", SeriesSpec(slices=240, rows=64, columns=64, seed=21))
    halves = [files[0::2], files[1::2]]
    with node_process(tmp_path / "node", env={"PACSNODE_DICOM__WORKERS": "2"}) as node:
        before = receiver_pids(node)
        assert len(before) == 2
        logs = [tmp_path / f"storescu-{i}.log" for i in range(2)]
        senders = []
        for half, log in zip(halves, logs, strict=True):
            with open(log, "w") as handle:
                senders.append(subprocess.Popen(
                    ["storescu", "-v", "-aec", "PACSNODE", "127.0.0.1", str(node.port), *map(str, half)],
                    stdout=handle, stderr=subprocess.STDOUT, env=NODELAY))
        wait_until(lambda: all(len(storescu_acknowledged(log.read_text())) >= 30 for log in logs), 120,
                   "both associations storing")
        os.kill(before[0], signal.SIGKILL)  # one receiver, while both associations are busy
        for sender in senders:
            sender.wait(120)
        acknowledged = [path for log in logs for path in storescu_acknowledged(log.read_text())]
        assert len(acknowledged) < len(files), "the kill did not cut an association short"
        expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in acknowledged}
        assert expected <= _indexed(node), "acknowledged instances missing"

        # The node keeps serving: a new receiver takes the place of the killed one.
        wait_until(lambda: len(receiver_pids(node)) == 2 and before[0] not in receiver_pids(node), 120,
                   "a new receiver", node.log)
        rest = [p for p in files if str(p) not in set(acknowledged)]
        done = subprocess.run(["storescu", "-aec", "PACSNODE", "127.0.0.1", str(node.port), *map(str, rest)],
                              env=NODELAY, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(_indexed(node)) == len(files)
        # Every committed instance reached the main process's listeners once (one sent again
        # after the kill without having been acknowledged is an identical duplicate: not counted).
        assert _received_total(node) == len(files)
    # A receiver died: the next start reconciles store and index.
    assert (node.storage / ".reconcile").exists()


def test_events_reach_completion_metrics_and_audit(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "series", SeriesSpec(slices=30, rows=32, columns=32, seed=22))
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    env = {"PACSNODE_DICOM__WORKERS": "2", "PACSNODE_ROUTING__STABLE_AFTER": "1"}
    with node_process(tmp_path / "node", env=env) as node:
        chunks = [files[0::3], files[1::3], files[2::3]]
        senders = [subprocess.Popen(["storescu", "-aec", "PACSNODE", "127.0.0.1", str(node.port),
                                     *map(str, chunk)], env=NODELAY) for chunk in chunks]
        assert all(sender.wait(120) == 0 for sender in senders)
        assert _received_total(node) == len(files)
        index = node.storage / "index.sqlite"
        wait_until(lambda: query_index(index, "SELECT state FROM series_state WHERE series_uid = ?",
                                       (series_uid,)) == [("complete",)], 60, "the series completed", node.log)
        assert query_index(index, "SELECT received FROM series_state WHERE series_uid = ?",
                           (series_uid,)) == [(len(files),)]
        wait_until(lambda: query_index(index, "SELECT SUM(json_extract(detail, '$.instances')) FROM audit_log "
                                              "WHERE event = 'instances-stored'") == [(len(files),)],
                   30, "the audit trail counting every instance", node.log)
        accepted = query_index(index, "SELECT COUNT(*) FROM audit_log WHERE event = 'association' "
                                      "AND json_extract(detail, '$.result') = 'accepted'")
        assert accepted == [(3,)]
        assert query_index(index, "SELECT COUNT(*) FROM ingest_events")[0][0] <= len(files)
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=30) as response:
            text = response.read().decode()
        assert f'pacsnode_cstore_seconds_count{{status="0x0000"}} {float(len(files))}' in text


def test_max_associations_holds_across_receivers(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    env = {"PACSNODE_DICOM__WORKERS": "2", "PACSNODE_DICOM__MAX_ASSOCIATIONS": "3"}
    with node_process(tmp_path / "node", env=env) as node:
        ae = AE(ae_title="MANY")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", node.port, ae_title="PACSNODE") for _ in range(3)]
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert extra.is_rejected
        held[0].release()
        time.sleep(0.5)
        again = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert again.is_established and again.send_c_echo().Status == 0
        for assoc in [again, *held[1:]]:
            assoc.release()


def test_workers_0_serves_in_the_main_process(tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "series", SeriesSpec(slices=5, rows=32, columns=32, seed=23))
    with node_process(tmp_path / "node", env={"PACSNODE_DICOM__WORKERS": "0"}) as node:
        assert receiver_pids(node) == []
        done = subprocess.run(["storescu", "-aec", "PACSNODE", "127.0.0.1", str(node.port), *map(str, files)],
                              env=NODELAY, capture_output=True, check=False)
        assert done.returncode == 0
        assert len(_indexed(node)) == 5
        assert _received_total(node) == 5
