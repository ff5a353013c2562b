"""From a completed series to delivered results: the pipeline and its job runner.

:class:`Pipeline` wires the parts (see DESIGN.md, "The way data flows"): the ingest
listener :class:`~node.routing.completion.CompletionTracker` completes series, the
:class:`~node.routing.rules.RouteTable` picks their routes, the
:class:`~node.jobs.ledger.JobLedger` records one job per route, the :class:`JobRunner`
runs queued jobs on an executor, stores their checked outputs through the ingestor, and
hands them to the :class:`~node.outbox.Outbox` in the transaction that marks the job done.

Before a job runs it may wait (back in the queue, no attempt spent): while a series of a
role it needs is still arriving in the study (at most :data:`RELATED_WAIT_S`), and, for
analyzers that want priors, while the patient's earlier study is fetched or analysed
(:class:`~node.jobs.priors.PriorResolver`). A related series that completes after a job
of its study has run makes a new round of that job (:meth:`Pipeline.rerun_dependents`):
the new job's outputs supersede the earlier ones.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analyzers.contract import (
    AnalysisInput,
    AnalyzerSettings,
    EarlierOutput,
    PriorFinding,
    SeriesInput,
    UnsuitableInput,
)
from analyzers.registry import UnknownAnalyzer, load_analyzer
from node.config import ConfigError, Settings
from node.ingest import Ingestor
from node.jobs.executors import Executor, make_executor
from node.jobs.ledger import Job, JobLedger, is_output_uid
from node.jobs.priors import PriorResolver
from node.jobs.work import JobOutcome
from node.ops.logs import log_context
from node.outbox import Outbox
from node.routing.completion import CompletionTracker
from node.routing.rules import RouteError, RouteTable, load_routes
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["RELATED_WAIT_S", "JobRunner", "Pipeline", "reprocess", "series_attributes"]

log = logging.getLogger(__name__)

RELATED_WAIT_S = 300.0
"""How long a job waits (from its creation) for a series of a needed role still arriving in
its study; after that it runs with the complete ones, and the late series re-runs it."""

_WAIT_POLL_S = 2.0


def series_attributes(index: Index, series_uid: str) -> dict[str, Any] | None:
    """The routing attributes of an indexed series, with its study UID and patient ID."""
    row = index.reader().execute(
        "SELECT se.attributes, se.study_uid, se.series_description, se.modality, p.patient_id, st.study_date "
        "FROM series se JOIN studies st ON st.study_uid = se.study_uid "
        "JOIN patients p ON p.patient_key = st.patient_key WHERE se.series_uid = ?", (series_uid,)).fetchone()
    if row is None:
        return None
    attributes = json.loads(row[0] or "{}")
    attributes.setdefault("SeriesDescription", row[2])
    attributes.setdefault("Modality", row[3])
    attributes.setdefault("PatientID", row[4])
    attributes.setdefault("StudyDate", row[5])
    attributes["StudyInstanceUID"] = row[1]
    attributes["SeriesInstanceUID"] = series_uid
    return {k: v for k, v in attributes.items() if v is not None}


class JobRunner:
    """Claims due jobs, runs them on the executor and records what they produced.

    Parameters
    ----------
    ledger, index, store, ingestor, outbox:
        The node's parts.
    table:
        Validated routes (settings, needs and priors of each route's analyzer).
    executor_factory:
        Builds the executor on :meth:`start`.
    scratch_root:
        Where local jobs get their scratch folders.
    calling_ae:
        Recorded as the source of stored outputs.
    priors:
        Makes jobs of analyzers that want priors wait for the patient's earlier study
        (None: they run at once with the findings there are).
    """

    def __init__(self, ledger: JobLedger, index: Index, store: InstanceStore, ingestor: Ingestor, outbox: Outbox,
                 table: RouteTable, executor_factory: Callable[[], Executor], scratch_root: Path,
                 calling_ae: str = "PACSNODE", priors: PriorResolver | None = None) -> None:
        self.ledger = ledger
        self.index = index
        self.store = store
        self.ingestor = ingestor
        self.outbox = outbox
        self.table = table
        self.executor_factory = executor_factory
        self.scratch_root = scratch_root
        self.calling_ae = calling_ae
        self.priors = priors
        self.executor: Executor | None = None
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finisher = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="pacsnode-finish")

    def start(self) -> None:
        requeued = self.ledger.requeue_running()
        if requeued:
            log.warning("%d job(s) were running when the node stopped; queued again", requeued)
        self.executor = self.executor_factory()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsnode-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        self._finisher.shutdown(wait=True)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
            except Exception:  # the loop must survive anything; logged below
                log.exception("job dispatch failed")
            due = self.ledger.next_due()
            timeout = 2.0 if due is None else min(max(due - time.time(), 0.01), 2.0)
            self._wake.wait(timeout)
            self._wake.clear()

    def _dispatch(self) -> None:
        executor = self.executor
        if executor is None:
            return
        with self._lock:
            free = executor.capacity - len(self._in_flight)
        for job in self.ledger.claim(free):
            self._submit(executor, job)

    def _submit(self, executor: Executor, job: Job) -> None:
        try:
            note = self.wait_reason(job)
        except Exception:  # a broken wait check must not stop the job; logged
            log.exception("checking what job %s waits for failed; it runs now", job.id)
            note = None
        if note is not None:
            self.ledger.defer(job.id, _WAIT_POLL_S, note)
            log.debug("job %s (%s) %s", job.id, job.route, note)
            return
        try:
            job_input = self.build_input(job)
        except UnsuitableInput as exc:
            self.ledger.reject(job.id, exc.reason)
            log.warning("job %s (%s) rejected: %s", job.id, job.route, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - recorded as a failed attempt
            self.ledger.fail(job.id, f"preparing the input failed: {exc}")
            return
        with self._lock:
            self._in_flight.add(job.id)
        try:
            future = executor.submit(job.analyzer, job_input)
        except Exception as exc:  # noqa: BLE001 - e.g. the Dask scheduler is gone: a failed attempt
            with self._lock:
                self._in_flight.discard(job.id)
            self.ledger.fail(job.id, f"the executor did not take the job: {exc}")
            return
        future.add_done_callback(lambda f: self._hand_to_finisher(job, job_input, f))

    def _hand_to_finisher(self, job: Job, job_input: AnalysisInput,
                          future: concurrent.futures.Future[JobOutcome]) -> None:
        try:
            self._finisher.submit(self._finish, job, job_input, future)
        except RuntimeError:
            # The node stopped and shut the finisher down before this job ended: its outcome is
            # not recorded, the job stays "running" and is queued again at the next start.
            with self._lock:
                self._in_flight.discard(job.id)
            shutil.rmtree(job_input.scratch, ignore_errors=True)
            log.info("job %s ended after the node stopped; it runs again after the next start", job.id)

    def wait_reason(self, job: Job) -> str | None:
        """What ``job`` waits for before it can run, or ``None`` when it can run now."""
        needs = self.table.needs.get(job.route, {})
        if needs and time.time() - job.created_at < RELATED_WAIT_S:
            # A series completed by count can finish before the study's next series has sent its
            # first instance: wait until the whole study has been quiet for the series' stable_after.
            quiet_for, settle = self._study_quiet(job)
            # One poll beyond the settle time: a related series sent last in the same burst
            # completes by its own quiet timer at the same instant, and must be complete (and so
            # an input) before the job starts, not a moment after (which ran the job twice).
            if quiet_for is not None and quiet_for < settle + _WAIT_POLL_S:
                return f"waiting: the study is still receiving instances ({quiet_for:.1f} s of {settle:g} s quiet)"
            wanted = {w.rstrip("?") for w in needs.values()}
            for uid, state in self._series_states(job.study_uid, exclude=job.series_uid):
                if state != "open":
                    continue
                attributes = series_attributes(self.index, uid)
                if attributes is not None and wanted & {r.name for r in self.table.select(attributes)}:
                    return f"waiting: related series {uid} of the study is still arriving"
        if self.priors is not None:
            return self.priors.check(job, self.table.wants_priors.get(job.route, False))
        return None

    def _study_quiet(self, job: Job) -> tuple[float | None, float]:
        """Seconds since the study's last received instance (None: untracked) and the settle time,
        the ``stable_after`` of the job's own series."""
        reader = self.index.reader()
        tracked = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'series_state'"
        if reader.execute(tracked).fetchone() is None:
            return None, 0.0
        rows = reader.execute(
            "SELECT ss.series_uid, ss.last_received, ss.stable_after FROM series_state ss "
            "JOIN series se ON se.series_uid = ss.series_uid WHERE se.study_uid = ?", (job.study_uid,)).fetchall()
        settle = next((float(r[2]) for r in rows if r[0] == job.series_uid and r[2] is not None), 0.0)
        last = [float(r[1]) for r in rows if not is_output_uid(str(r[0]))]
        return (time.time() - max(last), settle) if last else (None, settle)

    def _series_states(self, study_uid: str, exclude: str) -> list[tuple[str, str | None]]:
        """The study's other series (not the node's outputs) with their completion state (None: untracked)."""
        reader = self.index.reader()
        tracked = reader.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'series_state'"
                                 ).fetchone() is not None
        sql = ("SELECT se.series_uid, ss.state FROM series se LEFT JOIN series_state ss "
               "ON ss.series_uid = se.series_uid WHERE se.study_uid = ? AND se.series_uid != ?" if tracked else
               "SELECT series_uid, NULL FROM series WHERE study_uid = ? AND series_uid != ?")
        rows = reader.execute(sql, (study_uid, exclude)).fetchall()
        return [(str(uid), state) for uid, state in rows if not is_output_uid(uid)]

    def build_input(self, job: Job) -> AnalysisInput:
        """The :class:`AnalysisInput` of a job, from the index and the store.

        Related series are the complete series of the study (never the node's own outputs)
        that take the route a role names; what was used is recorded in the ledger, so a
        related series that completes later re-runs the job (:meth:`Pipeline.rerun_dependents`).
        """
        series = self._series_input(job.series_uid)
        if series is None or not series.files:
            raise UnsuitableInput(f"series {job.series_uid} has no stored instances")
        related: dict[str, list[SeriesInput]] = {}
        used: dict[str, dict[str, int]] = {}
        complete = {uid for uid, state in self._series_states(job.study_uid, exclude=job.series_uid)
                    if state != "open"}
        for role, wanted in self.table.needs.get(job.route, {}).items():
            route_name = wanted.rstrip("?")
            found = [s for s in self._study_series(job.study_uid, exclude=job.series_uid)
                     if s.series_instance_uid in complete
                     and route_name in {r.name for r in self.table.select(s.attributes)}]
            if not found and not wanted.endswith("?"):
                raise UnsuitableInput(f"the {job.analyzer} analyzer needs a series of route {route_name!r} "
                                      f"(role {role!r}) in the same study; none arrived. The job runs again "
                                      f"when one completes (or: `pacsnode reprocess {job.series_uid}`)")
            related[role] = found
            used[role] = {s.series_instance_uid: len(s.files) for s in found}
        self.ledger.record_inputs(job.id, used)
        priors: list[PriorFinding] = []
        if self.table.wants_priors.get(job.route):
            priors = [PriorFinding(p.job_id, p.study_uid, p.series_uid, p.study_date, p.findings, p.analyzer_version)
                      for p in self.ledger.priors(patient_id=job.patient_id, analyzer=job.analyzer,
                                                  exclude_study=job.study_uid)]
        settings = self.table.settings.get(job.route, AnalyzerSettings())
        scratch = self.scratch_root / job.id
        scratch.mkdir(parents=True, exist_ok=True)
        return AnalysisInput(job.id, series, related, priors, settings, scratch, self._superseded_outputs(job.id))

    def _superseded_outputs(self, job_id: str) -> tuple[EarlierOutput, ...]:
        earlier_id = self.ledger.supersedes(job_id)
        earlier = self.ledger.get(earlier_id) if earlier_id else None
        if earlier is None or not earlier.outputs:
            return ()
        marks = ", ".join("?" for _ in earlier.outputs)
        rows = self.index.reader().execute(
            f"SELECT study_uid, series_uid, sop_class_uid, sop_uid FROM instances WHERE sop_uid IN ({marks}) "
            "ORDER BY series_uid, sop_uid", list(earlier.outputs)).fetchall()
        return tuple(EarlierOutput(*map(str, row)) for row in rows)

    def _series_input(self, series_uid: str) -> SeriesInput | None:
        attributes = series_attributes(self.index, series_uid)
        if attributes is None:
            return None
        files = tuple(self.store.absolute(path) for _, _, path in self.index.instance_paths(series_uid=series_uid))
        return SeriesInput(series_uid, str(attributes["StudyInstanceUID"]), files, attributes)

    def _study_series(self, study_uid: str, exclude: str) -> list[SeriesInput]:
        uids = [r[0] for r in self.index.reader().execute(
            "SELECT series_uid FROM series WHERE study_uid = ? AND series_uid != ? ORDER BY series_number",
            (study_uid, exclude)) if not is_output_uid(r[0])]
        return [s for s in (self._series_input(u) for u in uids) if s is not None]

    def _finish(self, job: Job, job_input: AnalysisInput, future: concurrent.futures.Future[JobOutcome]) -> None:
        try:
            with log_context(job_id=job.id, series_uid=job.series_uid, study_uid=job.study_uid):
                self._record(job, future)
        except Exception:  # never lose the job: recorded as a failure below
            log.exception("recording job %s failed", job.id)
            self.ledger.fail(job.id, traceback.format_exc(limit=5))
        finally:
            with self._lock:
                self._in_flight.discard(job.id)
            shutil.rmtree(job_input.scratch, ignore_errors=True)
            self._wake.set()

    def _record(self, job: Job, future: concurrent.futures.Future[JobOutcome]) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - any analyzer failure is a failed attempt
            if self._stop.is_set():  # cut off by the node's stop: stays "running", re-queued at start
                log.info("job %s was cut off by the stop; it runs again after the next start", job.id)
                return
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            state = self.ledger.fail(job.id, detail)
            log.warning("job %s (%s) attempt %d failed (%s): %s", job.id, job.route, job.attempts, state, detail)
            return
        if outcome.rejected is not None:
            self.ledger.reject(job.id, outcome.rejected, outcome.analyzer_version)
            log.warning("job %s (%s) rejected its input: %s", job.id, job.route, outcome.rejected)
            return
        instances: list[tuple[str, str]] = []
        for data in outcome.outputs:
            stored = self.ingestor.ingest_part10(data, calling_ae=self.calling_ae)
            instances.append((stored.sop_instance_uid, stored.series_instance_uid))
        if not outcome.outputs:  # remote: the worker stored them by STOW-RS
            for uid in outcome.output_uids:
                row = self.index.reader().execute("SELECT series_uid FROM instances WHERE sop_uid = ?",
                                                  (uid,)).fetchone()
                if row is None:
                    raise RuntimeError(f"output {uid} of job {job.id} is not stored on this node")
                instances.append((uid, row[0]))
        with self.index.transaction() as conn:
            self.ledger.finish(job.id, outputs=[i[0] for i in instances], findings=outcome.findings,
                               analyzer_version=outcome.analyzer_version, compute_seconds=outcome.compute_seconds,
                               conn=conn)
            self.outbox.enqueue(conn, job_id=job.id, instances=instances, destinations=job.send_to)
        self.outbox.wake()
        log.info("job %s (%s on %s) done: %d output(s)", job.id, job.route, job.series_uid, len(instances))


class Pipeline:
    """Completion → routing → jobs → outbox for one node.

    Raises
    ------
    ConfigError
        ``routes.toml`` is wrong (bad regex, unknown key, settings an analyzer refuses,
        unknown destination).
    """

    def __init__(self, settings: Settings, index: Index, store: InstanceStore, ingestor: Ingestor,
                 executor_factory: Callable[[], Executor] | None = None) -> None:
        self.settings = settings
        self.index = index
        try:
            self.table = load_routes(settings.routing.routes)
            self.warnings = self.table.validate(load_analyzer, [d.name for d in settings.destinations],
                                                missing=UnknownAnalyzer)
        except RouteError as exc:
            raise ConfigError(str(exc)) from exc
        for warning in self.warnings:
            log.warning("%s: %s", self.table.source, warning)
        self.ledger = JobLedger(index, max_attempts=settings.jobs.max_attempts,
                                backoff_seconds=settings.jobs.backoff_seconds)
        self.outbox = Outbox(index, store, settings.destinations, calling_ae=settings.dicom.ae_title)
        destination = settings.destination(settings.priors.destination)
        if settings.priors.source == "pacs" and destination is None:
            raise ConfigError(f"[priors] destination = {settings.priors.destination!r} is not the name of a "
                              f"[[destinations]] entry; name one (e.g. \"pacs\") or set source = \"store\"")
        self.priors = PriorResolver(settings.priors, destination, index, self.ledger, self.table, ingestor,
                                    series_attributes, settings.dicom.ae_title)
        self.runner = JobRunner(self.ledger, index, store, ingestor, self.outbox, self.table,
                                executor_factory or (lambda: make_executor(settings, self._analyzers())),
                                Path(settings.storage.path) / "scratch", calling_ae=settings.dicom.ae_title,
                                priors=self.priors)
        self.completion = CompletionTracker(index, self.table.select, settings.routing.stable_after,
                                            self.on_series_complete)
        ingestor.listeners.append(self.completion)

    def _analyzers(self) -> list[str]:
        return sorted({r.analyzer for r in self.table.routes
                       if r.analyzer is not None and r.name not in self.table.unavailable and r.enabled})

    def start(self) -> None:
        self.runner.start()
        self.outbox.start()
        self.completion.start()

    def stop(self) -> None:
        self.completion.stop()
        self.priors.close()
        self.runner.stop()
        self.outbox.stop()

    def on_series_complete(self, series_uid: str, generation: int, only_routes: Sequence[str] | None) -> None:
        """Queue the jobs of a completed series (idempotent: job ids derive from series, route, round)."""
        attributes = series_attributes(self.index, series_uid)
        if attributes is None:
            return
        with log_context(series_uid=series_uid, study_uid=str(attributes["StudyInstanceUID"])):
            self._queue_jobs(series_uid, attributes, generation, only_routes)

    def _queue_jobs(self, series_uid: str, attributes: dict[str, Any], generation: int,
                    only_routes: Sequence[str] | None) -> None:
        for route in self.table.select(attributes):
            if route.analyzer is not None and route.name in self.table.unavailable:
                log.warning("series %s matches route %r, but %s; not analyzed", series_uid, route.name,
                            self.table.unavailable[route.name])
        routes = [r for r in self.table.runnable(attributes) if only_routes is None or r.name in only_routes]
        with self.index.transaction() as conn:
            for route in routes:
                assert route.analyzer is not None
                self.ledger.enqueue(series_uid=series_uid, study_uid=str(attributes["StudyInstanceUID"]),
                                    patient_id=attributes.get("PatientID"), route=route.name, analyzer=route.analyzer,
                                    send_to=route.send_to, generation=generation, conn=conn)
        rerun = self.rerun_dependents(series_uid, attributes)
        if routes:
            log.info("series %s → %s", series_uid, ", ".join(r.name for r in routes))
        elif not rerun:
            log.info("series %s complete; no route applies", series_uid)
        if routes or rerun:
            self.runner.wake()

    def rerun_dependents(self, series_uid: str, attributes: dict[str, Any]) -> list[str]:
        """New rounds of the jobs of the study that need this just-completed series; returns their ids.

        A route whose analyzer names the series' route in ``needs`` (``dce``: ``vfa`` and ``roi``)
        re-runs on every series of the study it already ran on without this series (or with
        fewer of its instances). A job still queued picks the series up when it runs, so it is
        left alone; so is a job that used the series as it is now (idempotent: completing the
        same series again makes nothing new). The new job records which job it supersedes, and
        waits the route's ``stable_after`` first, so that the related series of one burst (the
        four VFA series of a study) make one new round, not one each.
        """
        labels = {r.name for r in self.table.select(attributes)}
        study_uid = str(attributes["StudyInstanceUID"])
        dependents = [r for r in self.table.routes
                      if r.analyzer is not None and r.enabled and r.name not in self.table.unavailable
                      and labels & {w.rstrip("?") for w in self.table.needs.get(r.name, {}).values()}]
        if not dependents:
            return []
        count = int(self.index.reader().execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?",
                                                (series_uid,)).fetchone()[0])
        created: list[str] = []
        for route in dependents:
            roles = [role for role, w in self.table.needs[route.name].items() if w.rstrip("?") in labels]
            rows = self.index.reader().execute(
                "SELECT DISTINCT series_uid FROM jobs WHERE study_uid = ? AND route = ? AND series_uid != ?",
                (study_uid, route.name, series_uid)).fetchall()
            for (main_uid,) in rows:
                latest = self.ledger.latest(main_uid, route.name)
                if latest is None or latest.state == "queued":
                    continue
                used = self.ledger.inputs(latest.id) or {}
                if all(used.get(role, {}).get(series_uid, -1) >= count for role in roles):
                    continue
                with self.index.transaction() as conn:
                    row = conn.execute("SELECT generation FROM series_state WHERE series_uid = ?",
                                       (main_uid,)).fetchone()
                    generation = max((int(row[0]) if row else 0) + 1, latest.generation + 1)
                    conn.execute("UPDATE series_state SET generation = ? WHERE series_uid = ?",
                                 (generation, main_uid))
                    settle = route.stable_after or self.settings.routing.stable_after
                    job_id = self.ledger.enqueue(
                        series_uid=main_uid, study_uid=study_uid, patient_id=latest.patient_id, route=route.name,
                        analyzer=route.analyzer or latest.analyzer, send_to=route.send_to, generation=generation,
                        supersedes=latest.id, not_before=time.time() + settle, conn=conn)
                created.append(job_id)
                log.info("series %s (%s) completed after job %s of route %r ran on series %s without it: "
                         "job %s runs again with it and supersedes it", series_uid, "/".join(roles), latest.id,
                         route.name, main_uid, job_id)
        return created

    def reprocess(self, series_uid: str, analyzer: str | None = None) -> list[str]:
        """Queue a new round of the series' routes (of one analyzer, if named); returns the job ids."""
        ids = reprocess(self.index, self.table, self.ledger, series_uid, analyzer)
        self.runner.wake()
        return ids


def reprocess(index: Index, table: RouteTable, ledger: JobLedger, series_uid: str,
              analyzer: str | None = None) -> list[str]:
    """Queue a new round of analysis of a stored series; returns the new job ids.

    All the routes the series takes, or only those of ``analyzer`` (when no route of the
    series runs it, the first installed route that does). A running node picks the jobs up
    from the ledger within seconds.

    Raises
    ------
    KeyError
        The series is not in the index, or no installed route runs ``analyzer``.
    """
    attributes = series_attributes(index, series_uid)
    if attributes is None:
        raise KeyError(f"no series {series_uid} in the index")
    routes = [r for r in table.runnable(attributes) if analyzer is None or r.analyzer == analyzer]
    if analyzer is not None and not routes:
        route = next((r for r in table.routes if r.analyzer == analyzer and r.name not in table.unavailable), None)
        if route is None:
            raise KeyError(f"no installed route runs analyzer {analyzer!r}")
        routes = [route]
    ids = []
    with index.transaction() as conn:
        row = conn.execute("SELECT generation FROM series_state WHERE series_uid = ?", (series_uid,)).fetchone()
        generation = max((int(row[0]) if row else 0) + 1, *(ledger.next_generation(series_uid, r.name) for r in routes))
        conn.execute("UPDATE series_state SET generation = ? WHERE series_uid = ?", (generation, series_uid))
        for route in routes:
            assert route.analyzer is not None
            earlier = ledger.latest(series_uid, route.name)
            ids.append(ledger.enqueue(
                series_uid=series_uid, study_uid=str(attributes["StudyInstanceUID"]),
                patient_id=attributes.get("PatientID"), route=route.name, analyzer=route.analyzer,
                send_to=route.send_to, generation=generation, conn=conn,
                supersedes=earlier.id if earlier is not None else None))
    return ids
