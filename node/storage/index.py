"""The SQLite index: patients, studies, series and instances, and the queries on them.

WAL mode; one writer connection per process guarded by a lock (a commit in WAL mode
does not wait for the disk, the instance file itself was fsynced before), and one
reader connection per thread so C-FIND and QIDO never wait for ingest. Processes that
write the same index (the node and its DIMSE receiver processes) take turns through an
exclusive ``flock`` on ``<index>.writer`` around every write transaction: a blocked
writer wakes as soon as the lock is free, where SQLite's own busy handler would sleep
1, 2, 5, 10 ... ms between retries. A commit that a
process crash could lose is impossible (SQLite has written it to the WAL before
``commit`` returns); after a power loss the start-up reconciliation re-indexes
any stored file the index does not know (see ``node.ingest.Ingestor.reconcile``).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import IndexUnreadable
from node.storage.attributes import ATTRIBUTES
from node.storage.matching import pn_match
from node.storage.query import Query, build_sql

__all__ = ["CommitHook", "DuplicateOutcome", "Index", "IndexCounts", "IndexUnreadable", "InstanceRecord",
           "RebuildProgress"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class InstanceRecord:
    """One instance as the index stores it: its attributes by keyword plus storage facts."""

    values: dict[str, Any]
    path: str
    size: int
    digest: str
    transfer_syntax_uid: str
    calling_ae: str = ""
    received_at: float = field(default_factory=time.time)
    series_attributes: dict[str, Any] = field(default_factory=dict)
    inserted: bool = True
    """Set when the row is written: False when it replaced a row of the same SOP Instance UID
    (commit hooks count the instances a series gained from it)."""

    @property
    def sop_uid(self) -> str:
        return str(self.values["SOPInstanceUID"])


CommitHook = Callable[[sqlite3.Connection, Sequence[InstanceRecord]], Callable[[], None] | None]
"""Runs inside the transaction that adds instance rows; may return an action for after the commit."""


@dataclass(frozen=True)
class DuplicateOutcome:
    """What the index did with an instance whose SOP Instance UID it already had."""

    identical: bool
    existing_path: str


@dataclass(frozen=True)
class IndexCounts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


@dataclass
class RebuildProgress:
    """How far a rebuild of the index from the stored files has come (node.storage.rebuild)."""

    total: int = 0
    done: int = 0
    unreadable: int = 0
    finished: bool = False


def _columns_for(table: str) -> dict[str, type]:
    types: dict[str, type] = {}
    for attr in ATTRIBUTES:
        if attr.table == table:
            types[attr.column] = int if attr.vr in ("IS", "US") else str
    return types


class Index:
    """The node's index at ``path`` (created when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._process_lock = os.open(f"{self.path}.writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._local = threading.local()
        # Set while the index is being rebuilt from the stored files (/readyz is not ready).
        self.rebuild: RebuildProgress | None = None
        try:
            self._writer = self._connect()
            self._create_schema()
        except sqlite3.DatabaseError as exc:  # "file is not a database", a damaged schema
            raise IndexUnreadable(
                f"the index {self.path} cannot be read ({exc}); stop the node and run `pacsnode index "
                "rebuild`, or start it: a node rebuilds an unreadable index from the stored files"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.create_function("pn_match", 2, pn_match, deterministic=True)
        return conn

    def _create_schema(self) -> None:
        with self._writing():
            exists = self._writer.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'patients'").fetchone()
            if exists is None:
                # Imported only here: sqlite_utils imports pandas, 36 MB in every process that
                # opens the index (the DIMSE receivers among them), for a schema made once.
                import sqlite_utils

                db = sqlite_utils.Database(self._writer)
                db.table("patients").create(
                    {"patient_key": str, **_columns_for("patients")}, pk="patient_key"
                )
                db.table("studies").create(
                    {"study_uid": str, "patient_key": str, **_columns_for("studies"),
                     "created_at": float, "updated_at": float},
                    pk="study_uid",
                    foreign_keys=[("patient_key", "patients", "patient_key")],
                )
                db.table("series").create(
                    {"series_uid": str, "study_uid": str, **_columns_for("series"),
                     "attributes": str, "first_received": float, "last_received": float,
                     "calling_ae": str},
                    pk="series_uid",
                    foreign_keys=[("study_uid", "studies", "study_uid")],
                )
                db.table("instances").create(
                    {"sop_uid": str, "series_uid": str, "study_uid": str,
                     **_columns_for("instances"), "transfer_syntax_uid": str, "path": str,
                     "size": int, "digest": str, "calling_ae": str, "received_at": float},
                    pk="sop_uid",
                    foreign_keys=[("series_uid", "series", "series_uid")],
                )
                db.table("duplicates").create(
                    {"id": int, "sop_uid": str, "received_at": float, "calling_ae": str,
                     "identical": int, "policy": str, "kept_path": str, "other_path": str},
                    pk="id",
                )
                db.table("meta").create({"key": str, "value": str}, pk="key")
                db.table("meta").insert({"key": "schema_version", "value": str(SCHEMA_VERSION)})
                db.table("studies").create_index(["patient_key"])
                db.table("series").create_index(["study_uid"])
                db.table("series").create_index(["last_received"])
                db.table("instances").create_index(["series_uid", "instance_number"])
                db.table("instances").create_index(["study_uid"])
                for column in ("patient_name",):
                    db.table("patients").create_index([column])
                for column in ("study_date", "accession_number"):
                    db.table("studies").create_index([column])
            # Added after the first schema: C-FIND and QIDO match studies by PatientID, which
            # scanned every study without it.
            self._writer.execute("CREATE INDEX IF NOT EXISTS idx_patients_patient_id ON patients (patient_id)")

    # -- connections -------------------------------------------------------------------------

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's writer lock, then the lock shared with the other processes."""
        with self._write_lock:
            fcntl.flock(self._process_lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._process_lock, fcntl.LOCK_UN)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE … COMMIT`` (rolled back on error)."""
        with self._writing():
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
            if self._process_lock >= 0:
                os.close(self._process_lock)
                self._process_lock = -1
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- writes ------------------------------------------------------------------------------

    def lookup_instance(self, sop_uid: str) -> tuple[str, str] | None:
        """``(path, digest)`` of a stored instance, or ``None``."""
        row = self.reader().execute(
            "SELECT path, digest FROM instances WHERE sop_uid = ?", (sop_uid,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def add_instance(self, record: InstanceRecord) -> None:
        """Insert or replace the instance and its patient/study/series rows in one transaction."""
        self.add_instances([record])

    def add_instances(self, records: Sequence[InstanceRecord],
                      hooks: Sequence[CommitHook] = ()) -> list[Callable[[], None]]:
        """Insert or replace several instances in one transaction (a group commit: concurrent
        associations share one commit instead of taking turns for one each).

        ``hooks`` run inside the same transaction after the rows are written (each in a
        savepoint: a failing hook is logged and undone, the rows still commit); what they
        return is to be run after the commit, and is returned.
        """
        after: list[Callable[[], None]] = []
        with self.transaction() as conn:
            for record in records:
                _insert_instance(conn, record)
            for hook in hooks:
                conn.execute("SAVEPOINT pacsnode_hook")
                try:
                    action = hook(conn, records)
                except (sqlite3.Error, KeyError, TypeError, ValueError):
                    conn.execute("ROLLBACK TO pacsnode_hook")
                    log.exception("index commit hook %r failed; its changes were undone", hook)
                    action = None
                conn.execute("RELEASE pacsnode_hook")
                if action is not None:
                    after.append(action)
        return after

    def record_duplicate(self, sop_uid: str, *, identical: bool, policy: str, kept_path: str,
                         other_path: str, calling_ae: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO duplicates (sop_uid, received_at, calling_ae, identical, policy, "
                "kept_path, other_path) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, time.time(), calling_ae, int(identical), policy, kept_path, other_path),
            )

    # -- reads -------------------------------------------------------------------------------

    def find(self, query: Query) -> list[dict[str, Any]]:
        """Rows matching ``query``, each a keyword → value dict (the unique key always present)."""
        sql, params, keywords = build_sql(query)
        unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                  "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[query.level]
        rows = []
        for row in self.reader().execute(sql, params):
            item = dict(zip(keywords, row[:-1], strict=True))
            if query.level == "PATIENT":
                item.setdefault("PatientID", row[-1].split("\x00", 1)[0])
            else:
                item.setdefault(unique, row[-1])
            rows.append(item)
        return rows

    def instance_paths(self, *, study_uid: str | None = None, series_uid: str | None = None,
                       sop_uid: str | None = None) -> list[tuple[str, str, str]]:
        """``(sop_uid, sop_class_uid, path)`` of the instances under the given UIDs, in order."""
        conditions, params = [], []
        for column, value in (("study_uid", study_uid), ("series_uid", series_uid),
                              ("sop_uid", sop_uid)):
            if value:
                conditions.append(f"{column} = ?")
                params.append(value)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        sql = ("SELECT sop_uid, sop_class_uid, path FROM instances" + where
               + " ORDER BY series_uid, instance_number, sop_uid")
        return [tuple(r) for r in self.reader().execute(sql, params)]

    def stored_instances(self, *, study_uid: str, series_uid: str | None = None,
                         sop_uid: str | None = None) -> list[dict[str, Any]]:
        """The stored instances under a study (and series, instance) with what WADO-RS needs
        to answer without opening the files: UIDs, SOP class, transfer syntax, path, size,
        frame count and content digest, in series / instance number order."""
        conditions, params = ["study_uid = ?"], [study_uid]
        for column, value in (("series_uid", series_uid), ("sop_uid", sop_uid)):
            if value:
                conditions.append(f"{column} = ?")
                params.append(value)
        sql = ("SELECT study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax_uid, path, "
               "size, number_of_frames, digest FROM instances WHERE " + " AND ".join(conditions)
               + " ORDER BY series_uid, instance_number, sop_uid")
        keys = ("study_uid", "series_uid", "sop_uid", "sop_class_uid", "transfer_syntax_uid",
                "path", "size", "number_of_frames", "digest")
        return [dict(zip(keys, row, strict=True)) for row in self.reader().execute(sql, params)]

    def syntaxes_of(self, sop_uids: list[str]) -> set[tuple[str, str]]:
        """Distinct ``(sop_class_uid, transfer_syntax_uid)`` pairs of the given instances."""
        found: set[tuple[str, str]] = set()
        for start in range(0, len(sop_uids), 500):
            chunk = sop_uids[start : start + 500]
            sql = ("SELECT DISTINCT sop_class_uid, transfer_syntax_uid FROM instances WHERE sop_uid IN ("
                   + ", ".join("?" for _ in chunk) + ")")
            found.update((r[0], r[1]) for r in self.reader().execute(sql, chunk))
        return found

    def instance_count(self) -> int:
        return int(self.reader().execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def indexed_paths(self) -> set[str]:
        return {r[0] for r in self.reader().execute("SELECT path FROM instances")}

    def counts(self) -> IndexCounts:
        r = self.reader()
        one = lambda sql: int(r.execute(sql).fetchone()[0] or 0)  # noqa: E731
        return IndexCounts(
            patients=one("SELECT COUNT(*) FROM patients"),
            studies=one("SELECT COUNT(*) FROM studies"),
            series=one("SELECT COUNT(*) FROM series"),
            instances=one("SELECT COUNT(*) FROM instances"),
            bytes=one("SELECT SUM(size) FROM instances"),
        )

    def recent_series(self, limit: int = 10) -> list[dict[str, Any]]:
        sql = (
            "SELECT se.series_uid, se.series_description, se.modality, st.study_uid, "
            "st.patient_key, se.last_received, "
            "(SELECT COUNT(*) FROM instances i WHERE i.series_uid = se.series_uid) AS n, "
            "se.calling_ae FROM series se JOIN studies st ON st.study_uid = se.study_uid "
            "ORDER BY se.last_received DESC LIMIT ?"
        )
        keys = ("SeriesInstanceUID", "SeriesDescription", "Modality", "StudyInstanceUID",
                "PatientID", "last_received", "instances", "calling_ae")
        rows = []
        for row in self.reader().execute(sql, (limit,)):
            item = dict(zip(keys, row, strict=True))
            item["PatientID"] = str(item["PatientID"]).split("\x00", 1)[0]
            rows.append(item)
        return rows

    def duplicates(self) -> list[dict[str, Any]]:
        cur = self.reader().execute("SELECT * FROM duplicates ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


def _insert_instance(conn: sqlite3.Connection, record: InstanceRecord) -> None:
    """The instance row and its patient/study/series rows (inside the caller's transaction)."""
    v = record.values
    patient_key = f"{v.get('PatientID', '')}\x00{v.get('IssuerOfPatientID') or ''}"
    now = record.received_at

    def cols(table: str) -> dict[str, Any]:
        return {column: v.get(keyword) for column, keyword in _table_columns(table)}

    patient = {"patient_key": patient_key, **cols("patients")}
    _upsert(conn, "patients", patient, "patient_key")
    study = {"study_uid": v["StudyInstanceUID"], "patient_key": patient_key,
             **cols("studies"), "updated_at": now}
    _upsert(conn, "studies", study, "study_uid", insert_only={"created_at": now}, stamp="updated_at")
    series = {"series_uid": v["SeriesInstanceUID"], "study_uid": v["StudyInstanceUID"],
              **cols("series"), "last_received": now,
              "attributes": _ATTRIBUTES_JSON.encode(record.series_attributes)}
    _upsert(conn, "series", series, "series_uid",
            insert_only={"first_received": now, "calling_ae": record.calling_ae}, stamp="last_received")
    record.inserted = conn.execute("SELECT 1 FROM instances WHERE sop_uid = ?",
                                   (record.sop_uid,)).fetchone() is None
    instance = {"sop_uid": record.sop_uid, "series_uid": v["SeriesInstanceUID"],
                "study_uid": v["StudyInstanceUID"], **cols("instances"),
                "transfer_syntax_uid": record.transfer_syntax_uid, "path": record.path,
                "size": record.size, "digest": record.digest,
                "calling_ae": record.calling_ae, "received_at": now}
    conn.execute(_replace_sql("instances", tuple(instance)), list(instance.values()))


@functools.cache
def _table_columns(table: str) -> tuple[tuple[str, str], ...]:
    """(column, keyword) of the indexed attributes a table holds."""
    return tuple((a.column, a.keyword) for a in ATTRIBUTES if a.table == table)


@functools.cache
def _replace_sql(table: str, names: tuple[str, ...]) -> str:
    return f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"


# One encoder for every row: json.dumps(..., default=str) builds a new JSONEncoder per call,
# which was 7 % of a DIMSE receiver's time per instance.
_ATTRIBUTES_JSON = json.JSONEncoder(default=str)

# A row's time stamp (a study's updated_at, a series' last_received) is moved on when it is
# this many seconds behind: rewriting the row for every instance of a series made each commit
# write its study's and series' pages again (the UI orders by them, retention counts days).
_STAMP_RESOLUTION_S = 1.0


def _upsert(conn: sqlite3.Connection, table: str, row: dict[str, Any], key: str,
            insert_only: dict[str, Any] | None = None, stamp: str | None = None) -> None:
    """Insert the row, or update its non-null values when the key exists and one of them
    differs (or the ``stamp`` column is :data:`_STAMP_RESOLUTION_S` behind): an unchanged
    row is not written again."""
    full = {**row, **(insert_only or {})}
    conn.execute(_upsert_sql(table, tuple(row), tuple(full), key, stamp), list(full.values()))


@functools.cache
def _upsert_sql(table: str, row: tuple[str, ...], inserted: tuple[str, ...], key: str,
                stamp: str | None) -> str:
    """The statement of :func:`_upsert` for these columns (built once per column set):
    ``inserted`` are the columns of a new row, ``row`` those an existing row takes."""
    names = ", ".join(inserted)
    marks = ", ".join("?" for _ in inserted)
    updates = ", ".join(
        f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in row if c != key
    )
    changed = [f"(excluded.{c} IS NOT NULL AND excluded.{c} IS NOT {table}.{c})"
               for c in row if c not in (key, stamp)]
    if stamp is not None:
        changed.append(f"{table}.{stamp} IS NULL OR excluded.{stamp} >= {table}.{stamp} + {_STAMP_RESOLUTION_S}")
    return (f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT({key}) DO UPDATE SET {updates} WHERE {' OR '.join(changed) or '0'}")

