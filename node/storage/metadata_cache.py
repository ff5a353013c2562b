"""Stored WADO-RS metadata: each instance's DICOM JSON, kept beside the index.

``<storage>/cache/metadata.sqlite`` holds one row per instance: its PS3.18 JSON with a
placeholder where the instance's URL goes (the URL depends on how a request reached the
server), keyed by SOP Instance UID and the content tag of the file it was made from
(the index's ``digest``), so a replaced instance is never answered from an old row. A
series' metadata is then one query instead of opening every file. It is derived data:
a missing or stale row is rebuilt from the file, and the file may be deleted at any time
(it is recreated empty). It is a separate database so that filling it never holds the
index's write lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["MetadataCache", "MetadataRow"]

MetadataRow = tuple[str, str, str, str, str]
"""``(sop_uid, series_uid, study_uid, digest, json)``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instance_metadata (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    digest TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_metadata_series ON instance_metadata (series_uid);
"""
_CHUNK = 500


class MetadataCache:
    """The metadata rows of one node (``<storage>/cache/metadata.sqlite``)."""

    def __init__(self, storage_root: Path) -> None:
        self.path = Path(storage_root) / "cache" / "metadata.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # derived data: losing the last rows costs a rebuild
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def lookup(self, wanted: Sequence[tuple[str, str]]) -> dict[str, str]:
        """JSON by SOP Instance UID for the ``(sop_uid, digest)`` pairs whose row is there and
        was made from that content."""
        digests = dict(wanted)
        found: dict[str, str] = {}
        reader = self._reader()
        sops = list(digests)
        for start in range(0, len(sops), _CHUNK):
            chunk = sops[start:start + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for sop_uid, digest, text in reader.execute(
                    f"SELECT sop_uid, digest, json FROM instance_metadata WHERE sop_uid IN ({marks})", chunk):
                if digests.get(sop_uid) == digest:
                    found[sop_uid] = text
        return found

    def known(self, wanted: Sequence[tuple[str, str]]) -> set[str]:
        """The SOP Instance UIDs among ``wanted`` whose row is there for that content."""
        digests = dict(wanted)
        sops = list(digests)
        known: set[str] = set()
        reader = self._reader()
        for start in range(0, len(sops), _CHUNK):
            chunk = sops[start:start + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            known.update(sop for sop, digest in reader.execute(
                f"SELECT sop_uid, digest FROM instance_metadata WHERE sop_uid IN ({marks})", chunk)
                if digests.get(sop) == digest)
        return known

    def put(self, rows: Iterable[MetadataRow]) -> None:
        """Store rows (replacing those of the same instances) in one transaction."""
        rows = list(rows)
        if not rows:
            return
        with self._write_lock:
            self._writer.execute("BEGIN")
            try:
                self._writer.executemany(
                    "INSERT OR REPLACE INTO instance_metadata (sop_uid, series_uid, study_uid, digest, json) "
                    "VALUES (?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def forget_series(self, series_uids: Iterable[str]) -> None:
        """Drop the rows of removed series."""
        with self._write_lock:
            self._writer.executemany("DELETE FROM instance_metadata WHERE series_uid = ?",
                                     [(uid,) for uid in series_uids])

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
