"""Retention on a real node: series analyzed and delivered, aged through the index timestamps.

A ``pacsnode serve`` with the qc route (SR to Orthanc) stores five series. Their
``last_received`` is then moved into the past in the index, as the days would have:

* X (patient 1): analyzed, SR delivered, 40 days old: removed with its SR series;
* V (patient 3): one of its SRs goes to a destination that is down and is dead-lettered:
  kept, because not everything of it was delivered;
* W (patient 4): a labelling route keeps it 400 days: not even past its time;
* Y, Z (patient 2, two studies): Y 40 days, Z 10 days old. With an analyzer that takes
  priors, Y is Z's prior comparison and is kept; qc takes none, so the node removes Y.

``pacsnode retention --dry-run`` lists and keeps; ``pacsnode retention`` removes files and
index rows and audits every removal; the scheduled job (apscheduler) does the same.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from node.config import load_settings
from node.dimse.scu import send_files
from node.ops.retention import Retention, RetentionScheduler
from node.samples import SeriesSpec, write_mr_series
from node.storage.index import Index
from node.storage.store import InstanceStore
from tests.peers import (
    VENV_BIN,
    OrthancProcess,
    dimse_destination,
    free_port,
    query_index,
    start_node,
    wait_until,
    write_node_config,
)

pytestmark = pytest.mark.peers

DAY = 86400.0

ROUTES = """
[[route]]
name = "keep-long"
match = { SeriesDescription = "^keep" }
exclusive = false
retention_days = 400

[[route]]
name = "qc-undeliverable"
analyzer = "qc"
match = { SeriesDescription = "^undeliverable" }
send_to = ["down"]

[[route]]
name = "qc"
analyzer = "qc"
exclusive = false
match = { Modality = "^MR$" }
send_to = ["pacs"]
"""


def _query(index: Path, sql: str, params: tuple = ()) -> list[tuple]:
    return query_index(index, sql, params)


def _write(index: Path, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(index, timeout=30)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def _wait(predicate, timeout: float, what: str, log: Path) -> None:
    wait_until(predicate, timeout, what, log)


def _series(folder: Path, description: str, patient: str, seed: int, study_date: str = "20260101") -> list[Path]:
    return write_mr_series(folder / f"{description}-{seed}", SeriesSpec(
        series_description=description, patient_id=patient, slices=4, rows=16, columns=16, seed=seed,
        study_date=study_date))


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pacsnode"), *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=120, cwd=config.parent, check=True)


def _series_of_job_outputs(index: Path, series_uid: str) -> set[str]:
    outputs = [json.loads(o or "[]") for (o,) in _query(index, "SELECT outputs FROM jobs WHERE series_uid = ?",
                                                        (series_uid,))]
    uids = [u for group in outputs for u in group]
    marks = ", ".join("?" for _ in uids)
    return {s for (s,) in _query(index, f"SELECT DISTINCT series_uid FROM instances WHERE sop_uid IN ({marks})",
                                 tuple(uids))}


def test_retention_removes_only_old_delivered_unreferenced_series(tmp_path: Path, orthanc: OrthancProcess) -> None:
    folder = tmp_path / "node"
    folder.mkdir()
    (folder / "routes.toml").write_text(ROUTES, encoding="utf-8")
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra=f"""stable_after = 1

[jobs]
workers = 1

{dimse_destination('pacs', orthanc.ae_title, orthanc.dicom_port)}
{dimse_destination('down', 'NOBODY', free_port(), max_attempts=1)}""")
    text = config.read_text().replace("min_free_gb = 0", "min_free_gb = 0\nretention_days = 30")
    config.write_text(text)
    node = start_node(config, storage=folder / "var", port=port, http_port=http_port, log=folder / "node.log")
    index = folder / "var" / "index.sqlite"
    try:
        first = {"X": _series(tmp_path, "t1 X", "P1", 1), "V": _series(tmp_path, "undeliverable V", "P3", 2),
                 "W": _series(tmp_path, "keep W", "P4", 3), "Y": _series(tmp_path, "t1 Y", "P2", 4, "20250101")}
        for files in first.values():
            assert send_files(files, ae_title="PACSNODE", host="127.0.0.1", port=port).sent == 4

        def settled(jobs: int) -> bool:
            states = _query(index, "SELECT state FROM jobs")
            pending = _query(index, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
            return len(states) == jobs and {s for (s,) in states} == {"done"} and pending == [(0,)]

        _wait(lambda: settled(5), 120, "five jobs done and their deliveries settled", node.log)
        z = _series(tmp_path, "t1 Z", "P2", 5, "20260101")  # patient 2's later study, after Y's job
        assert send_files(z, ae_title="PACSNODE", host="127.0.0.1", port=port).sent == 4
        _wait(lambda: settled(6), 120, "Z's job done and delivered", node.log)

        uid = {name: _query(index, "SELECT series_uid FROM series WHERE series_description = ?",
                            (f"{desc} {name}",))[0][0]
               for name, desc in (("X", "t1"), ("V", "undeliverable"), ("W", "keep"), ("Y", "t1"), ("Z", "t1"))}
        results = {name: _series_of_job_outputs(index, series) for name, series in uid.items()}
        assert len(results["V"]) == 2 and all(len(results[n]) == 1 for n in "XWYZ")
        assert _query(index, "SELECT d.state FROM deliveries d JOIN jobs j ON j.id = d.job_id "
                             "WHERE j.route = 'qc-undeliverable'") == [("dead",)]

        now = time.time()
        for name in "XVWY":
            for series in {uid[name], *results[name]}:
                _write(index, "UPDATE series SET last_received = ? WHERE series_uid = ?", (now - 40 * DAY, series))
        for series in {uid["Z"], *results["Z"]}:
            _write(index, "UPDATE series SET last_received = ? WHERE series_uid = ?", (now - 10 * DAY, series))
        files_before = sorted((folder / "var" / "store").rglob("*.dcm"))
        counts_before = _query(index, "SELECT COUNT(*) FROM instances")

        # dry run: lists, removes nothing
        dry = [json.loads(line) for line in _cli(config, "retention", "--dry-run", "--json").stdout.splitlines()]
        verdict = {row["series_uid"]: row for row in dry}
        to_remove = {uid["X"], *results["X"], uid["Y"], *results["Y"]}
        assert {s for s, row in verdict.items() if row["action"] == "would remove"} == to_remove
        assert {s for s, row in verdict.items() if row["action"] == "kept"} == {uid["V"], *results["V"]}
        assert "dead-lettered" in verdict[uid["V"]]["reason"]
        assert uid["W"] not in verdict and uid["Z"] not in verdict  # 400-day route; 10 days old
        assert sorted((folder / "var" / "store").rglob("*.dcm")) == files_before
        assert _query(index, "SELECT COUNT(*) FROM instances") == counts_before

        # an analyzer that compares with priors: Y is Z's prior and stays (with its SR)
        settings = load_settings(config)
        own = Index(index)
        try:
            retention = Retention.for_settings(settings, own, InstanceStore(settings.storage.path))
            assert retention.wants_priors == {"qc": False} and retention.route_retention == {"keep-long": 400}
            retention.wants_priors = {"qc": True}
            priors = retention.plan()
            kept = {v.series_uid: v.reason for v in priors.kept}
            [(z_job, z_study)] = _query(index, "SELECT id, study_uid FROM jobs WHERE series_uid = ?", (uid["Z"],))
            assert kept[uid["Y"]] == f"prior of job {z_job} (study {z_study})"
            assert all(kept[s] == f"its source series {uid['Y']} is kept" for s in results["Y"])
            assert {v.series_uid for v in priors.removed} == {uid["X"], *results["X"]}
        finally:
            own.close()

        # the real run: qc takes no priors, so X and Y go, files and rows, each audited
        out = _cli(config, "retention").stdout
        assert "removed 4 series (10 instances" in out, out
        removed_paths = [p for p in files_before if not p.exists()]
        assert len(removed_paths) == 10  # 4 + 4 instances, 2 SRs
        assert {p.parent.name for p in removed_paths} == to_remove  # store/<study>/<series>/<sop>.dcm
        assert not any(p.parent.exists() for p in removed_paths)  # emptied series folders go too
        x_study = _query(index, "SELECT study_uid FROM jobs WHERE series_uid = ?", (uid["X"],))[0][0]
        assert not (folder / "var" / "store" / x_study).exists()  # and X's study folder, emptied
        assert (folder / "var" / "store").is_dir()
        for series in to_remove:
            assert _query(index, "SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series,)) == [(0,)]
            assert _query(index, "SELECT COUNT(*) FROM series WHERE series_uid = ?", (series,)) == [(0,)]
        assert _query(index, "SELECT COUNT(*) FROM patients WHERE patient_id = 'P1'") == [(0,)]
        assert _query(index, "SELECT COUNT(*) FROM patients WHERE patient_id = 'P2'") == [(1,)]  # Z's study
        assert _query(index, "SELECT COUNT(*) FROM jobs") == [(6,)]  # findings stay for later priors
        audit = [json.loads(line) for line in
                 _cli(config, "audit", "--event", "series-removed", "--json").stdout.splitlines()]
        assert {a["detail"]["series_uid"] for a in audit} == to_remove
        assert sum(a["detail"]["instances"] for a in audit) == 10
        # the node still serves what remains, and no longer what was removed
        studies = httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies", timeout=10).json()
        remaining = {s["0020000D"]["Value"][0] for s in studies}
        assert remaining == {r[0] for r in _query(index, "SELECT study_uid FROM series WHERE series_uid IN (?, ?, ?)",
                                                   (uid["V"], uid["W"], uid["Z"]))}
        assert len(remaining) == 3
        # X sent again: the serving node recreates the folders retention removed under it
        assert send_files(first["X"], ae_title="PACSNODE", host="127.0.0.1", port=port).sent == 4
        assert _query(index, "SELECT COUNT(*) FROM instances WHERE series_uid = ?", (uid["X"],)) == [(4,)]
        assert len(list((folder / "var" / "store" / x_study / uid["X"]).glob("*.dcm"))) == 4
    finally:
        node.stop()


def test_scheduled_retention_pass(tmp_path: Path) -> None:
    """The apscheduler job runs a pass on its own and removes an expired series (no jobs, no routes)."""
    files = _series(tmp_path, "old", "P9", 9)
    settings = load_settings(None, environ={
        "PACSNODE_STORAGE__PATH": str(tmp_path / "var"), "PACSNODE_STORAGE__RETENTION_DAYS": "7",
        "PACSNODE_ROUTING__ROUTES": str(tmp_path / "no-routes.toml")})
    from node.dimse.server import storage_sop_classes
    from node.ingest import Ingestor

    index = Index(settings.storage.index_path)
    store = InstanceStore(settings.storage.path, fsync=False)
    try:
        ingestor = Ingestor(store, index, allowed_sop_classes=storage_sop_classes())
        for path in files:
            ingestor.ingest_part10(path.read_bytes(), calling_ae="MODALITY")
        assert len(list((tmp_path / "var" / "store").rglob("*.dcm"))) == 4
        with index.transaction() as conn:
            conn.execute("UPDATE series SET last_received = ?", (time.time() - 8 * DAY,))
        scheduler = RetentionScheduler(Retention.for_settings(settings, index, store), interval_hours=1,
                                       first_delay=0.1)
        scheduler.start()
        try:
            deadline = time.monotonic() + 30
            while scheduler.last_report is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            scheduler.stop()
        assert scheduler.last_report is not None and len(scheduler.last_report.removed) == 1
        assert not list((tmp_path / "var" / "store").rglob("*.dcm"))
        assert index.counts().instances == 0 and index.counts().studies == 0
        [event] = [e for e in scheduler.retention.audit.events(event="series-removed")]
        assert event.detail["instances"] == 4 and event.detail["retention_days"] == 7
    finally:
        index.close()
