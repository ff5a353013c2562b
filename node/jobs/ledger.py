"""The durable job ledger: one row per (series, route, round of analysis) in the index.

States::

    queued ──claim──▶ running ──▶ done
      ▲                  │  ├──▶ rejected   (UnsuitableInput: no retries)
      └──backoff─────────┘  └──▶ failed     (after max_attempts)

A job's id is derived from ``(series UID, route, generation)``, so making the jobs of a
completed series twice makes them once. A job found ``running`` at start-up was cut off
by a crash and is queued again (:meth:`JobLedger.requeue_running`). Output UIDs are
derived from the job id (:func:`output_uid`), so running a job again produces the same
SOP Instance UIDs and the PACS ends up with exactly one set of outputs per job.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from node.storage.index import Index

__all__ = [
    "JOB_STATES",
    "OUTPUT_UID_ROOT",
    "Job",
    "JobLedger",
    "PriorRow",
    "ensure_schema",
    "is_output_uid",
    "job_id_for",
    "output_uid",
]

JOB_STATES = ("queued", "running", "done", "failed", "rejected")

OUTPUT_UID_ROOT = "1.2.826.0.1.3680043.10.1379.5."
"""Root of the UIDs of every object the node's jobs create (series and instances); the
completion tracker ignores series under it, so results are never analyzed again."""

_NAMESPACE = uuid.UUID("8f0b3f6e-3c2f-5d8e-9a53-1b1f6a2f4c10")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    patient_id TEXT,
    route TEXT NOT NULL,
    analyzer TEXT NOT NULL,
    analyzer_version TEXT,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    findings TEXT,
    outputs TEXT,
    send_to TEXT NOT NULL DEFAULT '[]',
    compute_seconds REAL,
    UNIQUE (series_uid, route, generation)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_patient ON jobs (patient_id, analyzer, state)
"""

# Columns added after the first schema: (name, declaration); added to older index files on open.
_ADDED_COLUMNS = (
    ("inputs", "TEXT"),       # JSON {role: {series_uid: instance count}} the job was built with
    ("supersedes", "TEXT"),   # id of the earlier job of the same series and route this one replaces
)


def ensure_schema(index: Index, script: str) -> None:
    """Create tables and indexes (``CREATE ... IF NOT EXISTS`` statements) in the index file."""
    with index.transaction() as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)


def job_id_for(series_uid: str, route: str, generation: int) -> str:
    """The id of the job of ``route`` on ``series_uid`` in round ``generation``."""
    return uuid.uuid5(_NAMESPACE, f"{series_uid}/{route}/{generation}").hex


def output_uid(job_id: str, kind: str, ordinal: int) -> str:
    """A UID for the ``ordinal``-th ``kind`` (``series``, ``instance``) a job creates.

    96 bits of SHA-256 of the job id: the same job always gets the same UIDs.
    """
    digest = hashlib.sha256(f"{job_id}/{kind}/{ordinal}".encode()).hexdigest()[:24]
    return OUTPUT_UID_ROOT + str(int(digest, 16) or 1)


def is_output_uid(uid: str) -> bool:
    """Whether a UID was made by :func:`output_uid`."""
    return uid.startswith(OUTPUT_UID_ROOT)


@dataclass(frozen=True)
class Job:
    """One row of the ledger."""

    id: str
    series_uid: str
    study_uid: str
    patient_id: str | None
    route: str
    analyzer: str
    analyzer_version: str | None
    generation: int
    state: str
    attempts: int
    max_attempts: int
    not_before: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    findings: dict[str, Any] | None
    outputs: list[str] | None
    send_to: list[str]
    compute_seconds: float | None


@dataclass(frozen=True)
class PriorRow:
    """A finished job of the same analyzer for the same patient (a prior)."""

    job_id: str
    study_uid: str
    series_uid: str
    study_date: str | None
    findings: dict[str, Any]
    analyzer_version: str


_COLUMNS = ("id, series_uid, study_uid, patient_id, route, analyzer, analyzer_version, generation, state, "
            "attempts, max_attempts, not_before, created_at, started_at, finished_at, error, findings, "
            "outputs, send_to, compute_seconds")


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    values[16] = json.loads(values[16]) if values[16] else None
    values[17] = json.loads(values[17]) if values[17] else None
    values[18] = json.loads(values[18] or "[]")
    return Job(*values)


class JobLedger:
    """Jobs in the index.

    Parameters
    ----------
    index:
        The node's index.
    max_attempts:
        Attempts before a failing job ends ``failed`` (``[jobs] max_attempts``).
    backoff_seconds:
        Wait before the second attempt; doubles with every further attempt.
    """

    def __init__(self, index: Index, *, max_attempts: int = 3, backoff_seconds: float = 10.0) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_seconds < 0:
            raise ValueError("backoff_seconds must be >= 0")
        self.index = index
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        ensure_schema(index, _SCHEMA)
        with index.transaction() as conn:
            present = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
            for name, declaration in _ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    # -- writes ------------------------------------------------------------------------------

    def enqueue(self, *, series_uid: str, study_uid: str, patient_id: str | None, route: str, analyzer: str,
                send_to: Sequence[str], generation: int = 0, supersedes: str | None = None,
                not_before: float = 0.0, conn: sqlite3.Connection | None = None) -> str:
        """Queue the job of ``route`` on a series (no-op when it exists); returns its id.

        ``supersedes`` names the earlier job of the same series and route whose outputs this
        job's outputs replace (a re-run with new related input); ``not_before`` (epoch
        seconds) holds the job back until then.
        """
        job_id = job_id_for(series_uid, route, generation)
        params = (job_id, series_uid, study_uid, patient_id, route, analyzer, generation, self.max_attempts,
                  time.time(), json.dumps(list(send_to)), supersedes, not_before)
        sql = ("INSERT OR IGNORE INTO jobs (id, series_uid, study_uid, patient_id, route, analyzer, generation, "
               "state, max_attempts, created_at, send_to, supersedes, not_before) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)")
        if conn is not None:
            conn.execute(sql, params)
        else:
            with self.index.transaction() as own:
                own.execute(sql, params)
        return job_id

    def next_generation(self, series_uid: str, route: str) -> int:
        row = self.index.reader().execute(
            "SELECT MAX(generation) FROM jobs WHERE series_uid = ? AND route = ?", (series_uid, route)).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def claim(self, limit: int, now: float | None = None) -> list[Job]:
        """Move up to ``limit`` due queued jobs to ``running`` (one more attempt each)."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        with self.index.transaction() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ? "
                "ORDER BY not_before, created_at LIMIT ?", (now, limit))]
            for job_id in ids:
                conn.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, "
                             "error = NULL WHERE id = ?", (now, job_id))
        return [j for j in (self.get(i) for i in ids) if j is not None]

    def finish(self, job_id: str, *, outputs: Sequence[str], findings: dict[str, Any],
               analyzer_version: str, compute_seconds: float | None = None,
               conn: sqlite3.Connection | None = None) -> None:
        """Mark a job ``done`` with its output SOP Instance UIDs and findings."""
        params = (time.time(), json.dumps(list(outputs)), json.dumps(findings, default=str), analyzer_version,
                  compute_seconds, job_id)
        sql = ("UPDATE jobs SET state = 'done', finished_at = ?, outputs = ?, findings = ?, analyzer_version = ?, "
               "compute_seconds = ?, error = NULL WHERE id = ?")
        if conn is not None:
            conn.execute(sql, params)
        else:
            with self.index.transaction() as own:
                own.execute(sql, params)

    def reject(self, job_id: str, reason: str, analyzer_version: str | None = None) -> None:
        """End a job ``rejected`` (the analyzer cannot work on the input; no retries)."""
        with self.index.transaction() as conn:
            conn.execute("UPDATE jobs SET state = 'rejected', finished_at = ?, error = ?, "
                         "analyzer_version = COALESCE(?, analyzer_version) WHERE id = ?",
                         (time.time(), reason, analyzer_version, job_id))

    def fail(self, job_id: str, error: str) -> str:
        """Record a failed attempt: queue again after the backoff, or end ``failed``; returns the state."""
        with self.index.transaction() as conn:
            row = conn.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            attempts, max_attempts = row
            if attempts < max_attempts:
                delay = self.backoff_seconds * 2 ** max(attempts - 1, 0)
                conn.execute("UPDATE jobs SET state = 'queued', not_before = ?, error = ? WHERE id = ?",
                             (time.time() + delay, error, job_id))
                return "queued"
            conn.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE id = ?",
                         (time.time(), error, job_id))
            return "failed"

    def defer(self, job_id: str, delay: float, note: str) -> None:
        """Put a claimed job back in the queue for ``delay`` seconds without spending an attempt.

        Used while a job waits for something it needs first (a related series still arriving,
        the patient's prior study being fetched or analysed); ``note`` says what, in ``error``.
        """
        with self.index.transaction() as conn:
            conn.execute("UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), not_before = ?, "
                         "error = ? WHERE id = ? AND state = 'running'", (time.time() + delay, note, job_id))

    def record_inputs(self, job_id: str, inputs: dict[str, dict[str, int]]) -> None:
        """Remember the related series (role → series UID → instance count) a job was built with."""
        with self.index.transaction() as conn:
            conn.execute("UPDATE jobs SET inputs = ? WHERE id = ?", (json.dumps(inputs, sort_keys=True), job_id))

    def requeue_running(self) -> int:
        """Queue again the jobs a crash left ``running``; returns how many."""
        with self.index.transaction() as conn:
            # The cut-off attempt did not fail on its own: it does not count against max_attempts.
            cur = conn.execute("UPDATE jobs SET state = 'queued', not_before = 0, attempts = MAX(attempts - 1, 0), "
                               "error = 'interrupted by a node restart' WHERE state = 'running'")
            return int(cur.rowcount)

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        row = self.index.reader().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, state: str | None = None, series_uid: str | None = None, limit: int = 1000) -> list[Job]:
        """Jobs, newest first, optionally of one state or series."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state is one of {', '.join(JOB_STATES)}")
        conditions, params = [], []
        if state:
            conditions.append("state = ?")
            params.append(state)
        if series_uid:
            conditions.append("series_uid = ?")
            params.append(series_uid)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        cur = self.index.reader().execute(
            f"SELECT {_COLUMNS} FROM jobs{where} ORDER BY created_at DESC LIMIT ?", (*params, limit))
        return [_job(r) for r in cur]

    def inputs(self, job_id: str) -> dict[str, dict[str, int]] | None:
        """The related inputs recorded by :meth:`record_inputs` (None: the job was never built)."""
        row = self.index.reader().execute("SELECT inputs FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def supersedes(self, job_id: str) -> str | None:
        """The id of the job whose outputs this job's outputs replace, if any."""
        row = self.index.reader().execute("SELECT supersedes FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def latest(self, series_uid: str, route: str) -> Job | None:
        """The job of the highest generation of ``route`` on a series."""
        row = self.index.reader().execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE series_uid = ? AND route = ? ORDER BY generation DESC LIMIT 1",
            (series_uid, route)).fetchone()
        return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        cur = self.index.reader().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        found = dict.fromkeys(JOB_STATES, 0)
        found.update({state: int(n) for state, n in cur})
        return found

    def next_due(self) -> float | None:
        row = self.index.reader().execute("SELECT MIN(not_before) FROM jobs WHERE state = 'queued'").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def priors(self, *, patient_id: str | None, analyzer: str, exclude_study: str) -> list[PriorRow]:
        """Findings of this patient's finished jobs of ``analyzer`` in other studies, oldest first.

        Of the rounds of one series and route, only the latest finished one counts (a re-run
        with new related input supersedes the earlier findings).
        """
        if not patient_id:
            return []
        cur = self.index.reader().execute(
            "SELECT j.id, j.study_uid, j.series_uid, st.study_date, j.findings, j.analyzer_version "
            "FROM jobs j LEFT JOIN studies st ON st.study_uid = j.study_uid "
            "WHERE j.patient_id = ? AND j.analyzer = ? AND j.state = 'done' AND j.study_uid != ? "
            "AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.series_uid = j.series_uid AND k.route = j.route "
            "AND k.state = 'done' AND k.generation > j.generation) "
            "ORDER BY st.study_date, j.finished_at", (patient_id, analyzer, exclude_study))
        return [PriorRow(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5] or "") for r in cur]
