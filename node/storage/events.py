"""The ingest event stream: instances committed in other processes, handed to the node's listeners.

The DIMSE receiver processes (:mod:`node.dimse.receivers`) store and index instances
themselves. Each adds one row to ``ingest_events`` inside the transaction that adds an
instance's rows (:class:`EventRecorder`, a commit hook), so an event exists exactly when
its instance is committed: a receiver killed at any moment leaves no committed instance
without its event and no event without its instance. The node's main process follows the
table (:class:`EventFollower`): woken by the receivers (or every ``poll_s`` seconds) it
reads the new rows in order and calls its ingestor's listeners with each, as if the
instance had been stored in the main process (metrics, the audit trail, the status pages,
the stored WADO-RS metadata), and asks the completion tracker to follow the series
(whose state the receivers already updated in the same transaction). Followed rows are
deleted in batches; rows left by a node that stopped are followed at its next start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from node.ingest import Ingestor, IngestOutcome
from node.storage.index import Index, InstanceRecord
from node.storage.store import InstanceStore

__all__ = ["EventFollower", "EventRecorder", "create_table"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,               -- stored | overwritten
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
)
"""
_COLUMNS = ("id", "status", "sop_uid", "sop_class_uid", "series_uid", "study_uid", "path", "size", "digest",
            "transfer_syntax_uid", "calling_ae", "received_at")


def create_table(index: Index) -> None:
    """Create ``ingest_events`` when it is missing."""
    with index.transaction() as conn:
        conn.execute(_SCHEMA)


class EventRecorder:
    """The commit hook of a receiver's ingestor: one event row per committed instance row.

    Added to an :class:`~node.ingest.Ingestor`'s listeners; the ingestor calls
    :meth:`in_commit` inside the transaction that adds the rows, and ``on_commit`` (a wake-up
    for the main process) after it.
    """

    def __init__(self, on_commit: Callable[[], None] | None = None) -> None:
        self.on_commit = on_commit

    def __call__(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """Not called: the ingestor calls :meth:`in_commit` instead."""

    def in_commit(self, conn: sqlite3.Connection, records: Sequence[InstanceRecord]) -> Callable[[], None] | None:
        conn.executemany(
            f"INSERT INTO ingest_events ({', '.join(_COLUMNS[1:])}) VALUES ({', '.join('?' for _ in _COLUMNS[1:])})",
            [("stored" if r.inserted else "overwritten", r.sop_uid, str(r.values.get("SOPClassUID") or ""),
              str(r.values.get("SeriesInstanceUID") or ""), str(r.values.get("StudyInstanceUID") or ""),
              r.path, r.size, r.digest, r.transfer_syntax_uid, r.calling_ae, r.received_at) for r in records])
        return self.on_commit


class EventFollower:
    """Follows ``ingest_events`` in the node's main process (see the module docstring).

    Parameters
    ----------
    index, store:
        The node's index and files.
    ingestor:
        The main process's ingestor; its listeners get the events (those with an
        ``in_commit`` hook, the completion tracker, get :meth:`follow_series` instead when
        they have one).
    poll_s:
        Longest wait between two looks at the table when nobody wakes the follower.
    """

    batch = 500
    delete_every_s = 2.0

    def __init__(self, index: Index, store: InstanceStore, ingestor: Ingestor, *, poll_s: float = 0.5) -> None:
        self.index = index
        self.store = store
        self.ingestor = ingestor
        self.poll_s = poll_s
        self._cursor = 0
        self._deleted_upto = 0
        self._last_delete = time.monotonic()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.followed = 0
        create_table(index)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="pacsnode-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.catch_up()
            self._delete_followed()
        except sqlite3.ProgrammingError:  # the index is closed already
            pass

    def wake(self) -> None:
        """New events were committed (a receiver says so)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            try:
                self.catch_up()
                if time.monotonic() - self._last_delete >= self.delete_every_s:
                    self._delete_followed()
            except sqlite3.ProgrammingError:
                return  # the index was closed: the node is stopping
            except sqlite3.Error:
                log.exception("following the ingest events failed; trying again")

    def catch_up(self) -> int:
        """Hand every event committed so far to the listeners; returns how many."""
        handed = 0
        with self._lock:
            while True:
                rows = self.index.reader().execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM ingest_events WHERE id > ? ORDER BY id LIMIT ?",
                    (self._cursor, self.batch)).fetchall()
                if not rows:
                    return handed
                self._dispatch([dict(zip(_COLUMNS, row, strict=True)) for row in rows])
                self._cursor = int(rows[-1][0])
                handed += len(rows)
                self.followed += len(rows)

    def _dispatch(self, events: list[dict[str, Any]]) -> None:
        series: dict[str, None] = {}
        for event in events:
            outcome = IngestOutcome(
                status=event["status"], sop_instance_uid=event["sop_uid"], sop_class_uid=event["sop_class_uid"],
                series_instance_uid=event["series_uid"], study_instance_uid=event["study_uid"],
                path=self.store.absolute(event["path"]), size=int(event["size"]),
                transfer_syntax_uid=event["transfer_syntax_uid"], calling_ae=event["calling_ae"])
            record = InstanceRecord(
                values={"SOPInstanceUID": event["sop_uid"], "SOPClassUID": event["sop_class_uid"],
                        "SeriesInstanceUID": event["series_uid"], "StudyInstanceUID": event["study_uid"]},
                path=event["path"], size=int(event["size"]), digest=event["digest"],
                transfer_syntax_uid=event["transfer_syntax_uid"], calling_ae=event["calling_ae"],
                received_at=float(event["received_at"]), inserted=event["status"] == "stored")
            series[event["series_uid"]] = None
            for listener in list(self.ingestor.listeners):
                if getattr(listener, "in_commit", None) is not None:
                    continue  # the receiver ran it in its transaction
                try:
                    listener(outcome, record)
                except Exception:
                    log.exception("ingest listener %r failed for %s", listener, event["sop_uid"])
        for listener in list(self.ingestor.listeners):
            follow = getattr(listener, "follow_series", None)
            if follow is not None:
                try:
                    follow(list(series))
                except Exception:
                    log.exception("following series %s failed", ", ".join(series))

    def _delete_followed(self) -> None:
        self._last_delete = time.monotonic()
        upto = self._cursor
        if upto <= self._deleted_upto:
            return
        with self.index.transaction() as conn:
            conn.execute("DELETE FROM ingest_events WHERE id <= ?", (upto,))
        self._deleted_upto = upto

