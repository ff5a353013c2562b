"""Durable delivery of results to destinations (C-STORE SCU or STOW-RS).

Every output instance gets one row per destination in the ``deliveries`` table, written
in the same transaction that marks its job done. A thread sends what is due, grouped by
destination (one association or one STOW request per batch). A failure retries with
exponential backoff (``backoff_seconds`` × 2^(attempt-1), at most an hour) up to the
destination's ``max_attempts``; then the delivery is ``dead`` (shown by ``pacsnode
status``) until ``pacsnode outbox retry`` queues it again.

Delivery is at least once on the wire and exactly once in effect: a row is unique per
(instance, destination), the instance's UIDs are derived from its job, and a re-sent
instance (a crash between the peer's success and our commit) carries the same SOP
Instance UID, which the PACS stores as the same object.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from node.config import DestinationSettings
from node.dimse.scu import client_tls, send_files
from node.jobs.ledger import ensure_schema
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["Delivery", "DeliveryFailed", "Outbox", "create_tables", "list_deliveries"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    job_id TEXT,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,               -- pending | sent | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    sent_at REAL,
    error TEXT,
    UNIQUE (sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, not_before)
"""
_MAX_BACKOFF_S = 3600.0
_BATCH = 200


class DeliveryFailed(RuntimeError):
    """A destination did not take a batch (the message says why)."""


@dataclass(frozen=True)
class Delivery:
    """One row of ``deliveries``."""

    id: int
    sop_uid: str
    series_uid: str
    job_id: str | None
    destination: str
    state: str
    attempts: int
    not_before: float
    created_at: float
    sent_at: float | None
    error: str | None


_COLUMNS = "id, sop_uid, series_uid, job_id, destination, state, attempts, not_before, created_at, sent_at, error"


def create_tables(index: Index) -> None:
    """Create the ``deliveries`` table in the index when it is missing."""
    ensure_schema(index, _SCHEMA)


def list_deliveries(index: Index, *, state: str | None = None, job_id: str | None = None) -> list[Delivery]:
    """Deliveries in queue order, optionally of one state or job."""
    conditions, params = [], []
    if state:
        conditions.append("state = ?")
        params.append(state)
    if job_id:
        conditions.append("job_id = ?")
        params.append(job_id)
    where = " WHERE " + " AND ".join(conditions) if conditions else ""
    cur = index.reader().execute(f"SELECT {_COLUMNS} FROM deliveries{where} ORDER BY id", params)
    return [Delivery(*row) for row in cur]


class Outbox:
    """Delivers stored instances to configured destinations.

    Parameters
    ----------
    index, store:
        Where the instances to send are found.
    destinations:
        ``[[destinations]]`` from the settings.
    calling_ae:
        Our AE title on outgoing associations.
    """

    def __init__(self, index: Index, store: InstanceStore, destinations: Sequence[DestinationSettings], *,
                 calling_ae: str = "PACSNODE") -> None:
        self.index = index
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_sent: list[Callable[[str, list[str]], None]] = []
        self.on_failed: list[Callable[[str, int, str], None]] = []  # (destination, instances, reason)
        create_tables(index)

    # -- queueing ----------------------------------------------------------------------------

    def enqueue(self, conn: sqlite3.Connection, *, job_id: str | None, instances: Iterable[tuple[str, str]],
                destinations: Iterable[str]) -> int:
        """Add deliveries of ``(sop_uid, series_uid)`` pairs inside the caller's transaction."""
        added = 0
        now = time.time()
        for destination in destinations:
            for sop_uid, series_uid in instances:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO deliveries (sop_uid, series_uid, job_id, destination, state, created_at) "
                    "VALUES (?, ?, ?, ?, 'pending', ?)", (sop_uid, series_uid, job_id, destination, now))
                added += cur.rowcount
        return added

    def wake(self) -> None:
        self._wake.set()

    def retry(self, *, destination: str | None = None, include_pending: bool = False) -> int:
        """Queue dead deliveries (and, with ``include_pending``, waiting ones) for sending now."""
        states = ("dead", "pending") if include_pending else ("dead",)
        marks = ", ".join("?" for _ in states)
        sql = f"UPDATE deliveries SET state = 'pending', attempts = 0, not_before = 0 WHERE state IN ({marks})"
        params: list[str] = list(states)
        if destination:
            sql += " AND destination = ?"
            params.append(destination)
        with self.index.transaction() as conn:
            count = int(conn.execute(sql, params).rowcount)
        self.wake()
        return count

    # -- reads -------------------------------------------------------------------------------

    def deliveries(self, *, state: str | None = None, job_id: str | None = None) -> list[Delivery]:
        return list_deliveries(self.index, state=state, job_id=job_id)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{destination: {state: count}}``."""
        found: dict[str, dict[str, int]] = {}
        for destination, state, n in self.index.reader().execute(
                "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"):
            found.setdefault(destination, {})[state] = int(n)
        return found

    # -- sending -----------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsnode-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sent_any = self.deliver_due()
            except Exception:  # the loop must survive anything; logged below
                log.exception("outbox pass failed")
                sent_any = False
            if sent_any:
                continue
            self._wake.wait(timeout=self._sleep_time())
            self._wake.clear()

    def _sleep_time(self) -> float:
        row = self.index.reader().execute(
            "SELECT MIN(not_before) FROM deliveries WHERE state = 'pending'").fetchone()
        if row is None or row[0] is None:
            return 5.0
        return float(min(max(row[0] - time.time(), 0.01), 5.0))

    def deliver_due(self, now: float | None = None) -> bool:
        """Send one batch per destination of what is due; returns whether anything was due."""
        now = time.time() if now is None else now
        rows = self.index.reader().execute(
            "SELECT d.id, d.sop_uid, d.destination, i.path, d.attempts FROM deliveries d "
            "LEFT JOIN instances i ON i.sop_uid = d.sop_uid "
            "WHERE d.state = 'pending' AND d.not_before <= ? ORDER BY d.id LIMIT ?", (now, _BATCH * 4)).fetchall()
        if not rows:
            return False
        by_destination: dict[str, list[tuple[int, str, str | None, int]]] = {}
        for delivery_id, sop_uid, destination, path, attempts in rows:
            by_destination.setdefault(destination, []).append((delivery_id, sop_uid, path, attempts))
        for name, items in by_destination.items():
            self._deliver(name, items[:_BATCH])
        return True

    def _deliver(self, name: str, items: list[tuple[int, str, str | None, int]]) -> None:
        destination = self.destinations.get(name)
        if destination is None:
            self._failed([i[0] for i in items], f"destination {name!r} is not configured", dead=True)
            return
        missing = [i for i in items if i[2] is None or not self.store.absolute(i[2]).exists()]
        if missing:
            self._failed([i[0] for i in missing], "the instance is no longer stored", dead=True)
        present = [i for i in items if i not in missing]
        if not present:
            return
        paths = {i[0]: self.store.absolute(str(i[2])) for i in present}
        try:
            failures = self._send(destination, [paths[i[0]] for i in present])
        except (DeliveryFailed, OSError, httpx.HTTPError) as exc:
            failures = {paths[i[0]]: str(exc) for i in present}
        sent = [i for i in present if paths[i[0]] not in failures]
        if sent:
            with self.index.transaction() as conn:
                conn.executemany("UPDATE deliveries SET state = 'sent', sent_at = ?, attempts = attempts + 1, "
                                 "error = NULL WHERE id = ?", [(time.time(), i[0]) for i in sent])
            log.info("delivered %d instance(s) to %s", len(sent), name)
            for callback in self.on_sent:
                callback(name, [i[1] for i in sent])
        failed = [i for i in present if paths[i[0]] in failures]
        if failed:
            reason = failures[paths[failed[0][0]]]
            self._failed([i[0] for i in failed], reason, destination=destination)
            for on_failed in self.on_failed:
                on_failed(name, len(failed), reason)

    def _failed(self, ids: list[int], reason: str, *, destination: DestinationSettings | None = None,
                dead: bool = False) -> None:
        now = time.time()
        with self.index.transaction() as conn:
            for delivery_id in ids:
                attempts = int(conn.execute("SELECT attempts FROM deliveries WHERE id = ?",
                                            (delivery_id,)).fetchone()[0]) + 1
                limit = destination.max_attempts if destination is not None else 1
                if dead or attempts >= limit:
                    conn.execute("UPDATE deliveries SET state = 'dead', attempts = ?, error = ? WHERE id = ?",
                                 (attempts, reason, delivery_id))
                else:
                    assert destination is not None
                    delay = min(destination.backoff_seconds * 2 ** (attempts - 1), _MAX_BACKOFF_S)
                    conn.execute("UPDATE deliveries SET attempts = ?, error = ?, not_before = ? WHERE id = ?",
                                 (attempts, reason, now + delay, delivery_id))
        log.warning("delivery of %d instance(s) failed: %s", len(ids), reason)

    def _send(self, destination: DestinationSettings, paths: list[Path]) -> dict[Path, str]:
        """Send files; returns the ones that failed with their reasons."""
        if destination.kind == "dimse":
            host = str(destination.host)
            report = send_files(paths, ae_title=str(destination.ae_title), host=host,
                                port=int(destination.port or 104), calling_ae=self.calling_ae,
                                tls_args=client_tls(destination.tls, host))
            failed = {Path(p): reason for p, reason in report.failed}
            failed.update({Path(p): reason for p, reason in report.skipped})
            return failed
        return self._stow(destination, paths)

    @staticmethod
    def _stow(destination: DestinationSettings, paths: list[Path]) -> dict[Path, str]:
        from node.dicomweb.client import StowClient, StowError

        try:
            with StowClient(str(destination.url), token=destination.token, timeout=120) as client:
                report = client.store_files(paths, batch_size=len(paths))
        except StowError as exc:
            raise DeliveryFailed(str(exc)) from exc
        refused = {uid: status for uid, status in report.failed}
        # The store names each file after its SOP Instance UID (node.storage.store).
        return {p: f"refused by the destination (status 0x{refused[p.stem]:04X})" for p in paths
                if p.stem in refused}
