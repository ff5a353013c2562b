"""Retention: remove old series that are analyzed, delivered and no longer needed as priors.

A series is removed (its instance files, kept duplicates, and its index rows) when all of
these hold:

* its last instance arrived more than ``retention_days`` ago: the largest
  ``retention_days`` of the routes that took it (``routes.toml``), else
  ``[storage] retention_days``; a result series (the node's own SEG/SR/Parametric Maps)
  follows the routes of its source series and of the job that made it. No value anywhere:
  the series is kept;
* it is not still arriving or being completed (``series_state`` is ``complete``);
* none of its jobs is queued or running, and no delivery of its instances or of its
  jobs' results is pending or dead-lettered (an operator resends or gives those up first);
* it is not referenced by a prior comparison: no job of the same patient and analyzer in
  another study, started (last) after this series' job finished or still to run, whose
  analyzer takes priors and whose own series is kept, could have used it (nor any job that
  recorded it among its inputs).
  A result series is kept as long as its source series is.

Job rows (findings, which later jobs read as priors), deliveries and the audit trail stay.
Series and study folders left empty are removed; a running node that writes a re-sent
series afterwards creates its folder again (:meth:`InstanceStore.write`). Every removal
is recorded in the audit trail (``series-removed``, DICOM audit event 110105 "DICOM
Study Deleted").

:class:`Retention` computes the plan and carries it out; :class:`RetentionScheduler` runs it
every ``[storage] retention_interval_hours`` in a serving node (apscheduler);
``pacsnode retention [--dry-run]`` runs it now.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from node.config import Settings
from node.jobs.ledger import is_output_uid
from node.ops.audit import AuditTrail
from node.storage.index import Index
from node.storage.metadata_cache import MetadataCache
from node.storage.store import InstanceStore

__all__ = ["Retention", "RetentionReport", "RetentionScheduler", "SeriesVerdict"]

log = logging.getLogger(__name__)

_DAY = 86400.0


@dataclass(frozen=True)
class SeriesVerdict:
    """What retention decided for one series past its retention time."""

    series_uid: str
    study_uid: str
    last_received: float
    retention_days: int
    instances: int
    bytes: int
    remove: bool
    reason: str


@dataclass
class RetentionReport:
    """One retention pass: the series past their time, removed (or, dry run, to be removed) or kept."""

    dry_run: bool
    at: float
    verdicts: list[SeriesVerdict] = field(default_factory=list)

    @property
    def removed(self) -> list[SeriesVerdict]:
        return [v for v in self.verdicts if v.remove]

    @property
    def kept(self) -> list[SeriesVerdict]:
        return [v for v in self.verdicts if not v.remove]


def _uids_in(value: Any) -> set[str]:
    """Every string key and value inside a JSON structure (the series UIDs of a job's inputs)."""
    found: set[str] = set()
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            found.add(str(key))
            found |= _uids_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= _uids_in(item)
    return found


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


class Retention:
    """Plans and carries out the removal of expired series.

    Parameters
    ----------
    settings:
        The node's settings (``[storage] retention_days``, the AE title as audit source).
    index, store:
        The node's index and instance store.
    route_retention:
        Route name → its ``retention_days`` (routes without one are left out).
    wants_priors:
        Analyzer name → whether its routes take priors; an analyzer not listed is taken to
        want them (the safe side: its series are kept while a later study of the patient is).
    audit:
        Where removals are recorded; by default an :class:`AuditTrail` on the same index.
    select:
        Series attributes → the names of the routes that take the series (labelling routes
        included); with it a route's ``retention_days`` applies to series it took without a job.
    """

    def __init__(self, settings: Settings, index: Index, store: InstanceStore, *,
                 route_retention: Mapping[str, int] | None = None, wants_priors: Mapping[str, bool] | None = None,
                 audit: AuditTrail | None = None,
                 select: Callable[[Mapping[str, Any]], Iterable[str]] | None = None) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.default_days = settings.storage.retention_days
        self.route_retention = dict(route_retention or {})
        self.wants_priors = dict(wants_priors or {})
        self.audit = audit if audit is not None else AuditTrail.for_settings(settings, index)
        self.select = select
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, index: Index, store: InstanceStore, *, table: Any = None,
                     audit: AuditTrail | None = None) -> Retention:
        """A retention bound to the routes of ``table`` (a :class:`~node.routing.rules.RouteTable`).

        Without a table, ``[routing] routes`` is read (a missing or wrong file means no route
        overrides and every analyzer counted as wanting priors).
        """
        if table is None:
            from analyzers.registry import UnknownAnalyzer, load_analyzer
            from node.routing.rules import RouteError, load_routes

            try:
                table = load_routes(settings.routing.routes)
                table.validate(load_analyzer, [d.name for d in settings.destinations], missing=UnknownAnalyzer)
            except (RouteError, OSError) as exc:
                log.warning("retention: routes not read (%s); [storage] retention_days applies to every series",
                            exc)
                table = None
        route_retention: dict[str, int] = {}
        wants: dict[str, bool] = {}
        if table is not None:
            route_retention = {r.name: r.retention_days for r in table.routes if r.retention_days is not None}
            for route in table.routes:
                if route.analyzer is not None and route.name in table.wants_priors:
                    wants[route.analyzer] = wants.get(route.analyzer, False) or table.wants_priors[route.name]
        select = None
        if table is not None and route_retention:
            routes = table

            def select(attributes: Mapping[str, Any]) -> list[str]:
                return [r.name for r in routes.select(attributes)]

        return cls(settings, index, store, route_retention=route_retention, wants_priors=wants, audit=audit,
                   select=select)

    @property
    def configured(self) -> bool:
        """Whether any retention time is set (``[storage]`` or a route)."""
        return self.default_days is not None or bool(self.route_retention)

    # -- planning ----------------------------------------------------------------------------

    def _days_for(self, routes: set[str]) -> int | None:
        values = [self.route_retention[r] for r in routes if r in self.route_retention]
        return max(values) if values else self.default_days

    def plan(self, now: float | None = None) -> RetentionReport:
        """The verdict on every series past its retention time (nothing is changed)."""
        now = time.time() if now is None else now
        report = RetentionReport(dry_run=True, at=now)
        if not self.configured:
            return report
        conn = self.index.reader()
        has_jobs = _table_exists(conn, "jobs")
        has_state = _table_exists(conn, "series_state")
        has_deliveries = _table_exists(conn, "deliveries")
        job_columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")} if has_jobs else set()

        series = conn.execute(
            "SELECT se.series_uid, se.study_uid, se.last_received, COUNT(i.sop_uid), COALESCE(SUM(i.size), 0) "
            "FROM series se LEFT JOIN instances i ON i.series_uid = se.series_uid "
            "GROUP BY se.series_uid").fetchall()
        # jobs by series, and the job (and its series) that made each result series
        jobs_of: dict[str, list[tuple[Any, ...]]] = {}
        source_job: dict[str, tuple[Any, ...]] = {}
        all_jobs: list[tuple[Any, ...]] = []
        if has_jobs:
            inputs_column = ", inputs" if "inputs" in job_columns else ", NULL"
            for row in conn.execute("SELECT id, series_uid, study_uid, patient_id, route, analyzer, state, "
                                    f"created_at, finished_at, outputs{inputs_column}, started_at FROM jobs"):
                all_jobs.append(row)
                jobs_of.setdefault(row[1], []).append(row)
            output_series = {uid for uid, *_ in series if is_output_uid(uid)}
            if output_series:
                sop_series = dict(conn.execute(
                    "SELECT sop_uid, series_uid FROM instances WHERE series_uid IN "
                    f"({', '.join('?' for _ in output_series)})", tuple(output_series)).fetchall())
                for job in all_jobs:
                    for sop in json.loads(job[9] or "[]"):
                        if sop in sop_series:
                            source_job.setdefault(sop_series[sop], job)

        def routes_of(series_uid: str) -> set[str]:
            routes = {j[4] for j in jobs_of.get(series_uid, [])}
            if self.select is not None and not is_output_uid(series_uid):
                from node.jobs.run import series_attributes  # here: node.jobs.run imports node.ops

                attributes = series_attributes(self.index, series_uid)
                routes.update(self.select(attributes) if attributes is not None else ())
            return routes

        expired: dict[str, tuple[str, float, int, int, int]] = {}
        for series_uid, study_uid, last_received, count, size in series:
            made_by = source_job.get(series_uid)
            # a result series is kept as long as the routes of its source series say
            routes = routes_of(series_uid) if made_by is None else {made_by[4], *routes_of(made_by[1])}
            days = self._days_for(routes)
            if days is None or last_received is None or now - float(last_received) < days * _DAY:
                continue
            expired[series_uid] = (study_uid, float(last_received), days, int(count), int(size))

        blocked: dict[str, str] = {}
        for series_uid in expired:
            reason = self._blocked(conn, series_uid, jobs_of.get(series_uid, []), has_state, has_deliveries)
            if reason:
                blocked[series_uid] = reason

        # Prior comparisons: protect the series of a done job while a later job of the same patient
        # and analyzer in another study (whose analyzer wants priors) keeps its own series.
        indexed = {row[0] for row in series}
        peers: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        input_of: dict[str, list[tuple[Any, ...]]] = {}
        for job in all_jobs:
            if job[3]:
                peers.setdefault((job[3], job[5]), []).append(job)
            for uid in _uids_in(json.loads(job[10])) if job[10] else ():
                input_of.setdefault(uid, []).append(job)
        protected: dict[str, str] = {}
        changed = True
        while changed:
            changed = False
            removing = {uid for uid in expired if uid not in blocked and uid not in protected}
            kept = indexed - removing
            for series_uid in removing:
                reason = self._referenced(series_uid, jobs_of.get(series_uid, []), peers, input_of, kept)
                if reason is None and series_uid in source_job and source_job[series_uid][1] in kept:
                    reason = f"its source series {source_job[series_uid][1]} is kept"
                if reason:
                    protected[series_uid] = reason
                    changed = True

        for series_uid, (study_uid, last_received, days, count, size) in sorted(expired.items(),
                                                                              key=lambda kv: kv[1][1]):
            reason = blocked.get(series_uid) or protected.get(series_uid)
            report.verdicts.append(SeriesVerdict(
                series_uid, study_uid, last_received, days, count, size, remove=reason is None,
                reason=reason or f"older than {days} day(s), analyzed and delivered"))
        return report

    @staticmethod
    def _blocked(conn: sqlite3.Connection, series_uid: str, jobs: list[tuple[Any, ...]], has_state: bool,
                 has_deliveries: bool) -> str | None:
        """Why the series cannot go yet (still completing, jobs or deliveries outstanding), or None."""
        if has_state:
            row = conn.execute("SELECT state FROM series_state WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is not None and row[0] != "complete":
                return f"the series is still {row[0]}"
        unfinished = [j[0] for j in jobs if j[6] in ("queued", "running")]
        if unfinished:
            return f"job {unfinished[0]} is not finished"
        if has_deliveries:
            job_ids = [j[0] for j in jobs]
            marks = ", ".join("?" for _ in job_ids)
            where = "series_uid = ?" + (f" OR job_id IN ({marks})" if job_ids else "")
            row = conn.execute(f"SELECT state, COUNT(*) FROM deliveries WHERE ({where}) AND state IN "
                               "('pending', 'dead') GROUP BY state ORDER BY state DESC LIMIT 1",
                               (series_uid, *job_ids)).fetchone()
            if row is not None:
                what = "dead-lettered" if row[0] == "dead" else "pending"
                return f"{row[1]} delivery(ies) of it or its results are {what}"
        return None

    def _referenced(self, series_uid: str, jobs: list[tuple[Any, ...]],
                    peers: Mapping[tuple[str, str], list[tuple[Any, ...]]],
                    input_of: Mapping[str, list[tuple[Any, ...]]], kept: set[str]) -> str | None:
        """The kept job that uses this series (as a prior or a recorded input), or None."""
        for other in input_of.get(series_uid, []):
            if other[1] != series_uid and other[1] in kept:
                return f"job {other[0]} (series {other[1]}) has it among its inputs"
        for job in jobs:
            _id, _series, study, patient, _route, analyzer, state, _created, finished, *_ = job
            if state != "done" or not patient or finished is None or not self.wants_priors.get(analyzer, True):
                continue
            for other in peers.get((patient, analyzer), []):
                # the other job read the priors when it last started: after this one finished, or not yet
                could_use = other[6] in ("queued", "running") or (other[11] is not None and other[11] >= finished)
                if other[2] != study and other[1] in kept and could_use:
                    return f"prior of job {other[0]} (study {other[2]})"
        return None

    # -- removing ----------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False, now: float | None = None) -> RetentionReport:
        """Plan, and unless ``dry_run`` remove what the plan says (each removal audited)."""
        with self._lock:
            report = self.plan(now)
            report.dry_run = dry_run
            if dry_run:
                return report
            for verdict in report.removed:
                try:
                    self._remove(verdict)
                except (OSError, sqlite3.Error) as exc:
                    log.error("retention: removing series %s failed: %s", verdict.series_uid, exc)
            if report.removed:
                log.info("retention removed %d series (%d instances, %.1f MB)", len(report.removed),
                         sum(v.instances for v in report.removed), sum(v.bytes for v in report.removed) / 1e6)
            return report

    def _remove(self, verdict: SeriesVerdict) -> None:
        """Files first, then the rows: a crash in between leaves rows whose files are gone,
        which the next pass removes; never files the index forgot (start-up recovery would
        index them again)."""
        series_uid = verdict.series_uid
        reader = self.index.reader()
        rows = reader.execute("SELECT sop_uid, path FROM instances WHERE series_uid = ?", (series_uid,)).fetchall()
        sops = [r[0] for r in rows]
        paths = [self.store.absolute(r[1]) for r in rows]
        duplicates: list[Path] = []
        if sops:
            marks = ", ".join("?" for _ in sops)
            for kept_path, other_path in reader.execute(
                    f"SELECT kept_path, other_path FROM duplicates WHERE sop_uid IN ({marks})", sops):
                for candidate in (kept_path, other_path):
                    if candidate and "duplicates" in Path(candidate).parts:
                        duplicates.append(self.store.absolute(candidate))
        for path in [*paths, *duplicates]:
            path.unlink(missing_ok=True)
        self.store.prune_empty_dirs([*paths, *duplicates])
        with self.index.transaction() as conn:
            for chunk_start in range(0, len(sops), 500):
                chunk = sops[chunk_start:chunk_start + 500]
                marks = ", ".join("?" for _ in chunk)
                conn.execute(f"DELETE FROM duplicates WHERE sop_uid IN ({marks})", chunk)
                conn.execute(f"DELETE FROM instances WHERE sop_uid IN ({marks})", chunk)
            if _table_exists(conn, "series_state"):
                conn.execute("DELETE FROM series_state WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
            patient = conn.execute("SELECT patient_key FROM studies WHERE study_uid = ?",
                                   (verdict.study_uid,)).fetchone()
            others = conn.execute("SELECT 1 FROM series WHERE study_uid = ? LIMIT 1", (verdict.study_uid,))
            if others.fetchone() is None:
                conn.execute("DELETE FROM studies WHERE study_uid = ?", (verdict.study_uid,))
                if patient is not None and conn.execute("SELECT 1 FROM studies WHERE patient_key = ? LIMIT 1",
                                                        (patient[0],)).fetchone() is None:
                    conn.execute("DELETE FROM patients WHERE patient_key = ?", (patient[0],))
        cache = MetadataCache(self.store.root)  # the series' stored WADO-RS metadata goes too
        try:
            cache.forget_series([series_uid])
        finally:
            cache.close()
        self.audit.series_removed(study_uid=verdict.study_uid, series_uid=series_uid, instances=len(sops),
                                  detail={"bytes": verdict.bytes, "retention_days": verdict.retention_days,
                                          "last_received": datetime.fromtimestamp(verdict.last_received, UTC)
                                          .isoformat(timespec="seconds")})
        log.info("retention: removed series %s of study %s (%d instances, last received %s)", series_uid,
                 verdict.study_uid, len(sops),
                 datetime.fromtimestamp(verdict.last_received, UTC).isoformat(timespec="seconds"))


class RetentionScheduler:
    """Runs :meth:`Retention.run` every ``interval_hours`` (apscheduler, a daemon thread).

    Parameters
    ----------
    retention:
        What to run.
    interval_hours:
        Hours between passes.
    first_delay:
        Seconds from :meth:`start` to the first pass.
    """

    def __init__(self, retention: Retention, interval_hours: float, *, first_delay: float = 60.0) -> None:
        if interval_hours <= 0:
            raise ValueError("interval_hours must be positive")
        self.retention = retention
        self.interval_hours = interval_hours
        self.first_delay = first_delay
        self._scheduler: BackgroundScheduler | None = None
        self.last_report: RetentionReport | None = None

    def _pass(self) -> None:
        try:
            self.last_report = self.retention.run()
        except (OSError, sqlite3.Error) as exc:  # the next pass tries again
            log.error("retention pass failed: %s", exc)

    def start(self) -> None:
        if self._scheduler is not None:
            return
        scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1,
                                                                    "misfire_grace_time": None})
        scheduler.add_job(self._pass, "interval", hours=self.interval_hours, id="pacsnode-retention",
                          next_run_time=datetime.now(UTC) + timedelta(seconds=self.first_delay))
        scheduler.start()
        self._scheduler = scheduler
        log.info("retention runs every %g h (first in %g s)", self.interval_hours, self.first_delay)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
