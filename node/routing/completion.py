"""When is a series complete? Count-based when the headers say how many instances to expect,
otherwise after ``stable_after`` seconds without a new instance.

The state of every series lives in the index (table ``series_state``), never only in
memory: an apscheduler timer per open series fires at its ``due_at``, and on start
:meth:`CompletionTracker.start` re-creates the timers of open series, finishes series
that were being completed when the node died, and opens series whose instances were
indexed but never tracked (a crash between the index commit and the listener).

Expected instance count, by layout (completion must err late, never early: a count that
might be too small is not used, and the quiet timer decides):

* Enhanced MR (``NumberOfFrames`` > 1): ``NumberOfTemporalPositions`` T spread over
  instances that hold k time points each (``TemporalPositionsInInstance``, read from the
  frames at ingest, :mod:`node.routing.hints`): ceil(T / k) instances; Siemens XA writes one
  instance per volume (k = 1: T instances), Philips the whole series in one (k = T: 1).
  Without T the count is unknown.
* Siemens MOSAIC (ImageType ``MOSAIC``): one instance per time point, so T when stated;
  ImagesInAcquisition counts the slices inside each mosaic and is not an instance count.
* GE classic: ImagesInAcquisition N counts every image of the acquisition when it equals
  GE's Locations in Acquisition S (0021,104F) times T, or S alone without T; when N = S
  with T > 1 it counts one volume (N x T). Other combinations: unknown.
* Other classic series: N x T when T > 1 (N read as the images of one time point, as
  Siemens and Philips write it), else N.
* Otherwise no count: the quiet timer decides.

An instance arriving after completion is *late*: it is logged and counted, and re-opens
the series for another round of analysis only for the routes that say
``on_late = "reanalyze"``.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from node.ingest import IngestOutcome
from node.jobs.ledger import ensure_schema, is_output_uid
from node.routing.rules import Route
from node.storage.index import Index, InstanceRecord

__all__ = ["CompletionTracker", "SeriesState", "create_tables", "expected_instances"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series_state (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,                 -- open | completing | complete
    expected INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    stable_after REAL NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    due_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    reason TEXT,                         -- count | quiet
    completed_at REAL,
    late INTEGER NOT NULL DEFAULT 0,
    pending_routes TEXT                  -- JSON list of routes to run on re-analysis, NULL: all
);
CREATE INDEX IF NOT EXISTS series_state_state ON series_state (state);
"""

def create_tables(index: Index) -> None:
    """Create the ``series_state`` table in the index when it is missing."""
    ensure_schema(index, _SCHEMA)


CompleteCallback = Callable[[str, int, Sequence[str] | None], None]
"""``(series_uid, generation, only_routes)``: make the jobs of a completed series (idempotent)."""


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).split("\\")[0])
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _is_mosaic(attributes: Mapping[str, Any]) -> bool:
    image_type = attributes.get("ImageType")
    values = image_type if isinstance(image_type, list | tuple) else str(image_type or "").split("\\")
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


def expected_instances(attributes: Mapping[str, Any]) -> int | None:
    """The instance count that completes a series, or ``None`` when the headers do not say."""
    temporal = _int(attributes.get("NumberOfTemporalPositions"))
    frames = _int(attributes.get("NumberOfFrames"))
    if (frames is not None and frames > 1) or attributes.get("TemporalPositionsInInstance"):
        if temporal is None:
            return None
        per_instance = _int(attributes.get("TemporalPositionsInInstance")) or 1
        return -(-temporal // per_instance)
    if _is_mosaic(attributes):
        return temporal
    images = _int(attributes.get("ImagesInAcquisition"))
    if images is None:
        return None
    if str(attributes.get("Manufacturer", "")).upper().startswith("GE"):
        locations = _int(attributes.get("GELocationsInAcquisition"))
        if locations is None:
            return images * temporal if temporal is not None and temporal > 1 else images
        if temporal is None or temporal == 1:
            return images if images % locations == 0 else None
        if images == locations * temporal:
            return images
        return images * temporal if images == locations else None
    return images * temporal if temporal is not None and temporal > 1 else images


@dataclass(frozen=True)
class SeriesState:
    """One row of ``series_state``."""

    series_uid: str
    study_uid: str
    state: str
    expected: int | None
    received: int
    stable_after: float
    first_received: float
    last_received: float
    due_at: float
    generation: int
    reason: str | None
    completed_at: float | None
    late: int
    pending_routes: tuple[str, ...] | None


class CompletionTracker:
    """Decides when series are complete and calls ``on_complete`` once per round.

    Parameters
    ----------
    index:
        The node's index (the state table is created in its file).
    routes_for:
        The routes a series with given attributes takes (for ``stable_after`` and ``on_late``).
    stable_after:
        Default quiet time in seconds (``[routing] stable_after``).
    on_complete:
        Called from a scheduler thread with ``(series_uid, generation, only_routes)``.
    """

    def __init__(
        self,
        index: Index,
        routes_for: Callable[[Mapping[str, Any]], Sequence[Route]],
        stable_after: float,
        on_complete: CompleteCallback,
    ) -> None:
        if stable_after <= 0:
            raise ValueError("stable_after must be > 0 seconds")
        self.index = index
        self.routes_for = routes_for
        self.stable_after = stable_after
        self.on_complete = on_complete
        self._scheduler: BackgroundScheduler | None = None
        self._finisher: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._timers: dict[str, float] = {}  # series -> when its pending quiet timer fires
        self._timers_lock = threading.Lock()
        ensure_schema(index, _SCHEMA)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the timers: resume open and half-completed series, adopt untracked ones."""
        # apscheduler logs every timer at INFO; one per series is noise in the node's log.
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        scheduler = BackgroundScheduler(
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone=UTC,
        )
        scheduler.start()
        with self._timers_lock:
            self._timers.clear()
        self._scheduler = scheduler
        self._finisher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-complete")
        self._adopt_untracked()
        for row in self.series(states=("open", "completing")):
            if row.state == "completing":
                self._schedule_completion(row.series_uid)
            else:
                self._schedule(row.series_uid, row.due_at)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        if self._finisher is not None:
            self._finisher.shutdown(wait=True)
            self._finisher = None

    # -- ingest listener ---------------------------------------------------------------------

    def __call__(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """The :class:`node.ingest.Ingestor` listener."""
        self.instance_arrived(outcome.series_instance_uid, outcome.study_instance_uid,
                              record.series_attributes, record.received_at)

    def _stable_after(self, routes: Sequence[Route]) -> float:
        values = [r.stable_after for r in routes if r.stable_after is not None]
        return min(values) if values else self.stable_after

    def in_commit(self, conn: sqlite3.Connection, records: Sequence[InstanceRecord]
                  ) -> Callable[[], None] | None:
        """The ingest hook: update the state of the records' series inside the transaction
        that adds their rows (one count per series and group commit, no transaction of its
        own), and return the timer work for after the commit."""
        latest: dict[str, InstanceRecord] = {}
        counts: dict[str, int] = {}
        added: dict[str, int] = {}
        for record in records:
            series_uid = str(record.values.get("SeriesInstanceUID") or "")
            if series_uid and not is_output_uid(series_uid):
                latest[series_uid] = record
                counts[series_uid] = counts.get(series_uid, 0) + 1
                added[series_uid] = added.get(series_uid, 0) + int(record.inserted)
        actions = {uid: self._arrived(conn, uid, str(r.values.get("StudyInstanceUID") or ""),
                                      r.series_attributes, r.received_at, arrived=counts[uid],
                                      added=added[uid])
                   for uid, r in latest.items()}
        if not actions:
            return None

        def after_commit() -> None:
            for uid, action in actions.items():
                self._act(uid, action)

        return after_commit

    def follow_series(self, series_uids: Sequence[str]) -> None:
        """Series whose state another process updated (a DIMSE receiver, in the transaction that
        stored their instances): complete those it marked complete, move their timers."""
        for series_uid in series_uids:
            row = self.get(series_uid)
            if row is None:
                continue
            if row.state == "completing":
                self._schedule_completion(series_uid)
            elif row.state == "open":
                self._schedule(series_uid, row.due_at)

    def instance_arrived(self, series_uid: str, study_uid: str, attributes: Mapping[str, Any],
                         received_at: float | None = None) -> None:
        """Record one stored instance of a series; complete it when its count is reached."""
        if is_output_uid(series_uid):
            return  # results of the node's own jobs are not analyzed again
        with self.index.transaction() as conn:
            action = self._arrived(conn, series_uid, study_uid, attributes, received_at)
        self._act(series_uid, action)

    def _act(self, series_uid: str, action: tuple[bool, float | None]) -> None:
        complete_now, schedule_at = action
        if complete_now:
            self._schedule_completion(series_uid)
        elif schedule_at is not None:
            self._schedule(series_uid, schedule_at)

    def _arrived(self, conn: Any, series_uid: str, study_uid: str, attributes: Mapping[str, Any],
                 received_at: float | None, arrived: int = 1, added: int | None = None
                 ) -> tuple[bool, float | None]:
        """Update ``series_state`` for a series that got ``arrived`` instances, ``added`` of them
        new rows (None: unknown, counted); returns (complete now, timer at).

        The state's ``received`` is kept up to date by adding the new rows, so a large series
        is not counted again for every instance; it is counted whenever the state row is made
        or re-opened, and when ``added`` is not known."""
        now = received_at or time.time()
        schedule_at: float | None = None
        complete_now = False
        row = conn.execute("SELECT state, expected, stable_after, generation, received FROM series_state "
                           "WHERE series_uid = ?", (series_uid,)).fetchone()
        if row is None or added is None or row[0] != "open":
            received = int(conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                        (series_uid,)).fetchone()[0])
        else:
            received = int(row[4]) + added
        if row is None:
            routes = self.routes_for(attributes)
            stable = self._stable_after(routes)
            expected = expected_instances(attributes)
            conn.execute(
                "INSERT INTO series_state (series_uid, study_uid, state, expected, received, "
                "stable_after, first_received, last_received, due_at) "
                "VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?)",
                (series_uid, study_uid, expected, received, stable, now, now, now + stable))
            schedule_at = now + stable
            state = "open"
        else:
            state, expected, stable, generation = row[:4]
            if state == "open":
                conn.execute("UPDATE series_state SET received = ?, last_received = ?, due_at = ? "
                             "WHERE series_uid = ?", (received, now, now + stable, series_uid))
            else:
                state = self._late(conn, series_uid, attributes, received, now, generation, arrived)
                if state == "open":
                    schedule_at = now + stable
        if state == "open" and expected is not None and received >= expected:
            conn.execute("UPDATE series_state SET state = 'completing', reason = 'count' "
                         "WHERE series_uid = ?", (series_uid,))
            complete_now = True
        return complete_now, schedule_at

    def _late(self, conn: Any, series_uid: str, attributes: Mapping[str, Any], received: int,
              now: float, generation: int, arrived: int = 1) -> str:
        reanalyze = [r.name for r in self.routes_for(attributes) if r.on_late == "reanalyze"]
        if not reanalyze:
            conn.execute("UPDATE series_state SET late = late + ?, received = ? WHERE series_uid = ?",
                         (arrived, received, series_uid))
            log.warning("late instance for completed series %s ignored (no route says on_late = "
                        "\"reanalyze\")", series_uid)
            return "complete"
        conn.execute(
            "UPDATE series_state SET state = 'open', late = late + ?, received = ?, last_received = ?, "
            "due_at = ? + stable_after, generation = ?, pending_routes = ?, expected = NULL, reason = NULL "
            "WHERE series_uid = ?",
            (arrived, received, now, now, generation + 1, json.dumps(reanalyze), series_uid))
        log.info("late instance re-opened series %s for re-analysis by %s", series_uid, ", ".join(reanalyze))
        return "open"

    # -- timers ------------------------------------------------------------------------------

    def _schedule(self, series_uid: str, at: float) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return  # not started (tests of the listener alone); start() schedules from the index
        with self._timers_lock:
            pending = self._timers.get(series_uid)
            if pending is not None and pending <= at:
                # A timer fires earlier and then waits again until the series' due time
                # (_on_timer): no new timer per arriving instance.
                return
            self._timers[series_uid] = at
        scheduler.add_job(self._on_timer, "date", run_date=datetime.fromtimestamp(at, UTC),
                          args=(series_uid,), id=f"complete:{series_uid}", replace_existing=True)

    def _schedule_completion(self, series_uid: str) -> None:
        # On the tracker's own thread, not as an apscheduler job: replacing a job of the same id
        # while apscheduler removes the one it just ran can kill its scheduler thread
        # (JobLookupError), and with it every timer. _complete is idempotent.
        finisher = self._finisher
        if finisher is None:
            return
        try:
            finisher.submit(self._complete_logged, series_uid)
        except RuntimeError:
            pass  # stopping: start() resumes series left 'completing'

    def _complete_logged(self, series_uid: str) -> None:
        try:
            self._complete(series_uid)
        except Exception:
            log.exception("completing series %s failed; it is completed at the next start", series_uid)

    def _on_timer(self, series_uid: str) -> None:
        """The quiet timer fired: complete the series, or wait again if an instance came since."""
        with self._timers_lock:
            self._timers.pop(series_uid, None)
        with self.index.transaction() as conn:
            row = conn.execute("SELECT state, due_at FROM series_state WHERE series_uid = ?",
                               (series_uid,)).fetchone()
            if row is None or row[0] != "open":
                return
            if row[1] > time.time() + 0.005:
                later = float(row[1])
            else:
                later = None
                conn.execute("UPDATE series_state SET state = 'completing', reason = 'quiet' "
                             "WHERE series_uid = ?", (series_uid,))
        if later is not None:
            self._schedule(series_uid, later)
        else:
            self._complete(series_uid)

    def _complete(self, series_uid: str) -> None:
        row = self.get(series_uid)
        if row is None or row.state != "completing":
            return
        try:
            self.on_complete(series_uid, row.generation, row.pending_routes)
        except Exception:
            log.exception("making the jobs of completed series %s failed; retrying in 5 s", series_uid)
            self._schedule(series_uid, time.time() + 5)
            with self.index.transaction() as conn:
                conn.execute("UPDATE series_state SET state = 'open', due_at = ? WHERE series_uid = ?",
                             (time.time() + 5, series_uid))
            return
        with self.index.transaction() as conn:
            conn.execute("UPDATE series_state SET state = 'complete', completed_at = ?, pending_routes = NULL "
                         "WHERE series_uid = ? AND state = 'completing'", (time.time(), series_uid))
        log.info("series %s complete (%s, %d instance(s))", series_uid, row.reason, row.received)

    def _adopt_untracked(self) -> None:
        """Open a state row for every indexed series that has none (crash before the listener)."""
        reader = self.index.reader()
        rows = reader.execute(
            "SELECT s.series_uid, s.study_uid, s.attributes, s.first_received, s.last_received FROM series s "
            "LEFT JOIN series_state c ON c.series_uid = s.series_uid WHERE c.series_uid IS NULL").fetchall()
        for series_uid, study_uid, attributes, first, last in rows:
            if is_output_uid(series_uid):
                continue
            attrs = json.loads(attributes or "{}")
            stable = self._stable_after(self.routes_for(attrs))
            with self.index.transaction() as conn:
                received = int(conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                            (series_uid,)).fetchone()[0])
                conn.execute(
                    "INSERT OR IGNORE INTO series_state (series_uid, study_uid, state, expected, received, "
                    "stable_after, first_received, last_received, due_at) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?)",
                    (series_uid, study_uid, expected_instances(attrs), received, stable, first or time.time(),
                     last or time.time(), (last or time.time()) + stable))
            log.warning("series %s was indexed but not tracked; tracking it now", series_uid)

    # -- reads -------------------------------------------------------------------------------

    def get(self, series_uid: str) -> SeriesState | None:
        rows = self._select("WHERE series_uid = ?", (series_uid,))
        return rows[0] if rows else None

    def series(self, states: Sequence[str] | None = None) -> list[SeriesState]:
        if states:
            marks = ", ".join("?" for _ in states)
            return self._select(f"WHERE state IN ({marks})", tuple(states))
        return self._select("", ())

    def _select(self, where: str, params: tuple[Any, ...]) -> list[SeriesState]:
        cur = self.index.reader().execute(
            "SELECT series_uid, study_uid, state, expected, received, stable_after, first_received, "
            f"last_received, due_at, generation, reason, completed_at, late, pending_routes FROM series_state {where} "
            "ORDER BY first_received", params)
        out = []
        for row in cur:
            pending = tuple(json.loads(row[13])) if row[13] else None
            fields = dict(zip(SeriesState.__dataclass_fields__, row[:13], strict=False))
            out.append(SeriesState(**fields, pending_routes=pending))
        return out
