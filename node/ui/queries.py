"""Read-only views of the index for the status pages.

The jobs come from :class:`~node.jobs.ledger.JobLedger`, the deliveries from
:mod:`node.outbox` and the series rows have the shape of
:func:`node.jobs.commands.pipeline_report` (what ``make demo`` prints), so the pages
show what ``pacsnode status``, ``pacsnode jobs`` and ``pacsnode outbox list`` show.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from node.jobs.ledger import JOB_STATES, OUTPUT_UID_ROOT, Job, JobLedger
from node.outbox import Delivery, list_deliveries
from node.routing.rules import RouteTable
from node.storage.index import Index

__all__ = [
    "DiskUse",
    "dashboard",
    "disk_use",
    "job_page",
    "jobs_page",
    "outbox_page",
    "route_test",
    "series_jobs",
    "series_page",
    "studies_page",
    "study_page",
]


def _clean(value: Any) -> str:
    """Index text as shown (patient keys carry an issuer after a NUL)."""
    return "" if value is None else str(value).split("\x00", 1)[0]


def sop_class_name(uid: str | None) -> str:
    """``Comprehensive SR Storage`` for its UID (the UID itself when unknown)."""
    if not uid:
        return ""
    name = UID(uid).name
    return name if name and name != uid else uid


@dataclass(frozen=True)
class DiskUse:
    """The storage volume and what the node keeps on it."""

    total: int
    used: int
    free: int
    stored_bytes: int
    index_bytes: int
    min_free_bytes: int

    @property
    def used_fraction(self) -> float:
        return self.used / self.total if self.total else 0.0

    @property
    def low(self) -> bool:
        """Below ``[storage] min_free_gb``: the node refuses new instances."""
        return self.free < self.min_free_bytes


def disk_use(index: Index, storage_root: Path, min_free_gb: float, stored: int | None = None) -> DiskUse:
    """The storage volume's use; ``stored`` (bytes of indexed files) is summed from the index when not given."""
    usage = shutil.disk_usage(storage_root)
    if stored is None:
        stored = int(index.reader().execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0])
    index_bytes = sum(p.stat().st_size for p in (index.path, index.path.with_name(index.path.name + "-wal"))
                      if p.exists())
    return DiskUse(usage.total, usage.used, usage.free, stored, index_bytes, int(min_free_gb * 1e9))


def series_jobs(index: Index, ledger: JobLedger, series_uid: str) -> list[dict[str, Any]]:
    """The series' jobs, oldest first, as in :func:`~node.jobs.commands.pipeline_report`
    (``route``, ``state``, ``outputs``, ``delivered``, ``error``) plus ``id``, ``analyzer``
    and ``generation``."""
    found = []
    for job in reversed(ledger.jobs(series_uid=series_uid)):
        delivered: dict[str, tuple[int, int]] = {}
        for delivery in list_deliveries(index, job_id=job.id):
            sent, total = delivered.get(delivery.destination, (0, 0))
            delivered[delivery.destination] = (sent + (delivery.state == "sent"), total + 1)
        found.append({"id": job.id, "route": job.route, "analyzer": job.analyzer, "generation": job.generation,
                      "state": job.state, "outputs": job.outputs or [], "delivered": delivered,
                      "error": job.error})
    return found


# -- dashboard ---------------------------------------------------------------------------------


def dashboard(index: Index, ledger: JobLedger, storage_root: Path, min_free_gb: float) -> dict[str, Any]:
    """Everything the dashboard shows that lives in the index."""
    conn = index.reader()
    counts = index.counts()
    queue: dict[str, dict[str, int]] = {}
    for analyzer, state, n in conn.execute("SELECT analyzer, state, COUNT(*) FROM jobs GROUP BY analyzer, state"):
        queue.setdefault(str(analyzer), dict.fromkeys(JOB_STATES, 0))[str(state)] = int(n)
    deliveries: dict[str, dict[str, int]] = {}
    for destination, state, n in conn.execute(
            "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"):
        deliveries.setdefault(str(destination), {"pending": 0, "sent": 0, "dead": 0})[str(state)] = int(n)
    completion = {str(s): int(n) for s, n in conn.execute("SELECT state, COUNT(*) FROM series_state GROUP BY state")}
    failed_jobs = [_job_row(r) for r in conn.execute(
        "SELECT id, route, state, series_uid, error, COALESCE(finished_at, started_at, created_at) FROM jobs "
        "WHERE state IN ('failed', 'rejected') OR (state = 'queued' AND error IS NOT NULL) "
        "ORDER BY COALESCE(finished_at, started_at, created_at) DESC LIMIT 8")]
    dead = [{"sop_uid": r[0], "destination": r[1], "attempts": r[2], "error": r[3], "job_id": r[4]}
            for r in conn.execute("SELECT sop_uid, destination, attempts, error, job_id FROM deliveries "
                                  "WHERE state = 'dead' ORDER BY id DESC LIMIT 8")]
    recent = []
    for row in index.recent_series(12):
        row["is_output"] = str(row["SeriesInstanceUID"]).startswith(OUTPUT_UID_ROOT)
        recent.append(row)
    return {
        "counts": counts,
        "jobs": ledger.counts(),
        "queue": dict(sorted(queue.items())),
        "deliveries": dict(sorted(deliveries.items())),
        "pending_total": sum(d.get("pending", 0) for d in deliveries.values()),
        "dead_total": sum(d.get("dead", 0) for d in deliveries.values()),
        "completion": completion,
        "disk": disk_use(index, storage_root, min_free_gb, stored=counts.bytes),
        "failed_jobs": failed_jobs,
        "dead_letters": dead,
        "recent_series": recent,
    }


def _job_row(row: Sequence[Any]) -> dict[str, Any]:
    return {"id": row[0], "route": row[1], "state": row[2], "series_uid": row[3], "error": row[4], "at": row[5]}


# -- studies, series -----------------------------------------------------------------------------


def studies_page(index: Index, *, query: str = "", limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
    """Studies, most recently updated first, filtered by patient ID/name, accession or description."""
    where, params = "", []
    if query:
        where = ("WHERE p.patient_id LIKE ? OR p.patient_name LIKE ? OR st.accession_number LIKE ? "
                 "OR st.study_description LIKE ? OR st.study_uid = ?")
        like = f"%{query}%"
        params = [like, like, like, like, query]
    conn = index.reader()
    total = int(conn.execute(f"SELECT COUNT(*) FROM studies st JOIN patients p ON p.patient_key = st.patient_key "
                             f"{where}", params).fetchone()[0])
    rows = conn.execute(
        "SELECT st.study_uid, st.study_date, st.study_description, st.accession_number, p.patient_id, "
        "p.patient_name, (SELECT COUNT(*) FROM series se WHERE se.study_uid = st.study_uid), "
        "(SELECT COUNT(*) FROM instances i WHERE i.study_uid = st.study_uid), st.updated_at "
        f"FROM studies st JOIN patients p ON p.patient_key = st.patient_key {where} "
        "ORDER BY st.updated_at DESC LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
    studies = [{"study_uid": r[0], "study_date": r[1], "description": r[2], "accession": r[3],
                "patient_id": _clean(r[4]), "patient_name": _clean(r[5]), "series": r[6], "instances": r[7],
                "updated_at": r[8], "jobs": {}} for r in rows]
    if studies:
        marks = ", ".join("?" for _ in studies)
        by_uid = {s["study_uid"]: s for s in studies}
        for study_uid, state, n in conn.execute(
                f"SELECT study_uid, state, COUNT(*) FROM jobs WHERE study_uid IN ({marks}) GROUP BY study_uid, state",
                list(by_uid)):
            by_uid[study_uid]["jobs"][state] = int(n)
    return studies, total


def study_page(index: Index, ledger: JobLedger, study_uid: str) -> dict[str, Any] | None:
    """A study, its patient and its series with their completion and jobs."""
    conn = index.reader()
    head = conn.execute(
        "SELECT st.study_uid, st.study_date, st.study_time, st.study_description, st.accession_number, "
        "p.patient_id, p.patient_name, p.patient_birth_date, p.patient_sex, st.patient_age "
        "FROM studies st JOIN patients p ON p.patient_key = st.patient_key WHERE st.study_uid = ?",
        (study_uid,)).fetchone()
    if head is None:
        return None
    study = dict(zip(("study_uid", "study_date", "study_time", "description", "accession", "patient_id",
                      "patient_name", "birth_date", "sex", "age"), head, strict=True))
    study["patient_id"], study["patient_name"] = _clean(study["patient_id"]), _clean(study["patient_name"])
    series = []
    for row in conn.execute(
            "SELECT se.series_uid, se.series_number, se.series_description, se.modality, se.first_received, "
            "se.last_received, se.calling_ae, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = se.series_uid), "
            "c.state, c.reason FROM series se LEFT JOIN series_state c ON c.series_uid = se.series_uid "
            "WHERE se.study_uid = ? ORDER BY se.series_number, se.first_received", (study_uid,)):
        item = dict(zip(("series_uid", "number", "description", "modality", "first_received", "last_received",
                         "calling_ae", "instances", "completion", "reason"), row, strict=True))
        item["is_output"] = str(item["series_uid"]).startswith(OUTPUT_UID_ROOT)
        item["jobs"] = series_jobs(index, ledger, item["series_uid"])
        series.append(item)
    study["series"] = series
    return study


def series_page(index: Index, ledger: JobLedger, series_uid: str, *, limit: int = 500) -> dict[str, Any] | None:
    """A series: attributes, completion, instances, its jobs, and the job that made it (outputs)."""
    conn = index.reader()
    row = conn.execute(
        "SELECT se.series_uid, se.study_uid, se.series_number, se.series_description, se.modality, "
        "se.protocol_name, se.body_part_examined, se.manufacturer, se.attributes, se.first_received, "
        "se.last_received, se.calling_ae FROM series se WHERE se.series_uid = ?", (series_uid,)).fetchone()
    if row is None:
        return None
    series = dict(zip(("series_uid", "study_uid", "number", "description", "modality", "protocol", "body_part",
                       "manufacturer", "attributes", "first_received", "last_received", "calling_ae"),
                      row, strict=True))
    series["attributes"] = json.loads(series["attributes"] or "{}")
    state = conn.execute("SELECT state, reason, expected, received, generation, completed_at, late "
                         "FROM series_state WHERE series_uid = ?", (series_uid,)).fetchone()
    series["completion"] = (dict(zip(("state", "reason", "expected", "received", "generation", "completed_at",
                                      "late"), state, strict=True)) if state else None)
    series["instance_total"] = int(conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                                (series_uid,)).fetchone()[0])
    series["instances"] = [
        {"sop_uid": r[0], "number": r[1], "sop_class": sop_class_name(r[2]), "frames": r[3], "rows": r[4],
         "columns": r[5], "size": r[6], "transfer_syntax": r[7], "has_pixels": r[4] is not None}
        for r in conn.execute(
            "SELECT sop_uid, instance_number, sop_class_uid, number_of_frames, rows, columns, size, "
            "transfer_syntax_uid FROM instances WHERE series_uid = ? ORDER BY instance_number, sop_uid LIMIT ?",
            (series_uid, limit))]
    series["jobs"] = series_jobs(index, ledger, series_uid)
    series["is_output"] = series_uid.startswith(OUTPUT_UID_ROOT)
    series["made_by"] = None
    if series["is_output"] and series["instances"]:
        made = conn.execute("SELECT job_id FROM deliveries WHERE series_uid = ? AND job_id IS NOT NULL LIMIT 1",
                            (series_uid,)).fetchone()
        if made is None:
            made = conn.execute("SELECT id FROM jobs WHERE outputs LIKE ? LIMIT 1",
                                (f'%"{series["instances"][0]["sop_uid"]}"%',)).fetchone()
        series["made_by"] = made[0] if made else None
    return series


def middle_instance(index: Index, series_uid: str) -> str | None:
    """The SOP Instance UID in the middle of a series (by instance number), for its thumbnail."""
    uids = [r[0] for r in index.reader().execute(
        "SELECT sop_uid FROM instances WHERE series_uid = ? AND rows IS NOT NULL ORDER BY instance_number, sop_uid",
        (series_uid,))]
    return uids[len(uids) // 2] if uids else None


# -- jobs --------------------------------------------------------------------------------------


def jobs_page(ledger: JobLedger, *, state: str | None, limit: int = 100) -> list[Job]:
    return ledger.jobs(state=state or None, limit=limit)


def job_page(index: Index, ledger: JobLedger, job_id: str) -> dict[str, Any] | None:
    """A job with its input series, outputs (stored or not) and their deliveries."""
    job = ledger.get(job_id)
    if job is None:
        return None
    conn = index.reader()
    source = conn.execute(
        "SELECT se.series_description, se.modality, se.series_number, "
        "(SELECT COUNT(*) FROM instances i WHERE i.series_uid = se.series_uid) FROM series se "
        "WHERE se.series_uid = ?", (job.series_uid,)).fetchone()
    deliveries: dict[str, list[Delivery]] = {}
    for delivery in list_deliveries(index, job_id=job.id):
        deliveries.setdefault(delivery.sop_uid, []).append(delivery)
    outputs = []
    for uid in job.outputs or []:
        row = conn.execute(
            "SELECT i.series_uid, i.study_uid, i.sop_class_uid, i.rows, i.number_of_frames, i.size, "
            "se.modality, se.series_description FROM instances i JOIN series se ON se.series_uid = i.series_uid "
            "WHERE i.sop_uid = ?", (uid,)).fetchone()
        item: dict[str, Any] = {"sop_uid": uid, "stored": row is not None, "deliveries": deliveries.get(uid, [])}
        if row is not None:
            item.update(zip(("series_uid", "study_uid", "sop_class", "rows", "frames", "size", "modality",
                             "description"), row, strict=True))
            item["sop_class"] = sop_class_name(item["sop_class"])
            item["has_pixels"] = row[3] is not None
        outputs.append(item)
    timeline = [("queued", job.created_at)]
    if job.started_at:
        timeline.append((f"attempt {job.attempts} started", job.started_at))
    if job.finished_at:
        timeline.append((job.state, job.finished_at))
    sent = [d.sent_at for ds in deliveries.values() for d in ds if d.sent_at]
    if sent:
        timeline.append((f"{len(sent)} delivery(ies) sent", max(sent)))
    return {
        "job": job,
        "source": (dict(zip(("description", "modality", "number", "instances"), source, strict=True))
                   if source else None),
        "outputs": outputs,
        "deliveries": [d for ds in deliveries.values() for d in ds],
        "timeline": sorted(timeline, key=lambda t: t[1]),
        "findings_scalars": _scalars(job.findings or {}),
        "findings_json": json.dumps(job.findings, indent=2, default=str) if job.findings else "",
        "other_rounds": [j for j in ledger.jobs(series_uid=job.series_uid) if j.id != job.id],
    }


def _scalars(findings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flat ``(name, value)`` rows of the simple values of findings (nested dicts joined by dots)."""
    rows: list[tuple[str, str]] = []
    for key, value in findings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_scalars(value, name + "."))
        elif isinstance(value, bool | int | str) or value is None:
            rows.append((name, str(value)))
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, list | tuple) and len(value) <= 8 and all(
                isinstance(v, bool | int | float | str) for v in value):
            rows.append((name, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)))
    return rows


# -- outbox, routes ----------------------------------------------------------------------------


def outbox_page(index: Index, *, limit: int = 200) -> dict[str, Any]:
    """Counts by destination and state, the pending deliveries and the dead letters."""
    conn = index.reader()
    counts: dict[str, dict[str, int]] = {}
    for destination, state, n in conn.execute(
            "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"):
        counts.setdefault(str(destination), {"pending": 0, "sent": 0, "dead": 0})[str(state)] = int(n)
    pending = list_deliveries(index, state="pending")
    dead = list_deliveries(index, state="dead")
    return {"counts": dict(sorted(counts.items())), "pending": pending[:limit], "pending_total": len(pending),
            "dead": dead[-limit:][::-1], "dead_total": len(dead), "now": time.time()}


def route_test(table: RouteTable, attributes: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each route's verdict on a series with ``attributes`` and the routes it takes: the
    decision ``pacsnode routes test`` prints (:meth:`RouteTable.decide`)."""
    verdicts, chosen = [], []
    for decision in table.decide(attributes):
        route = decision.route
        if decision.selected:
            verdict = "MATCH" + ("" if route.name not in table.unavailable else " (analyzer not installed)")
            chosen.append(route.name)
        else:
            verdict = "matches, not taken" if decision.matched else "no match"
        verdicts.append({"route": route.name, "analyzer": route.analyzer, "verdict": verdict,
                         "selected": decision.selected, "reasons": list(decision.reasons)})
    return verdicts, chosen
