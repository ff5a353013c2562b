"""From a completed series to delivered results: the pipeline and its job runner.

:class:`Pipeline` wires the parts (see DESIGN.md, "The way data flows"): the ingest
listener :class:`~node.routing.completion.CompletionTracker` completes series, the
:class:`~node.routing.rules.RouteTable` picks their routes, the
:class:`~node.jobs.ledger.JobLedger` records one job per route, the :class:`JobRunner`
runs queued jobs on an executor, stores their checked outputs through the ingestor, and
hands them to the :class:`~node.outbox.Outbox` in the transaction that marks the job done.
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

from analyzers.contract import AnalysisInput, AnalyzerSettings, PriorFinding, SeriesInput, UnsuitableInput
from analyzers.registry import UnknownAnalyzer, load_analyzer
from node.config import ConfigError, Settings
from node.ingest import Ingestor
from node.jobs.executors import Executor, make_executor
from node.jobs.ledger import Job, JobLedger
from node.jobs.work import JobOutcome
from node.outbox import Outbox
from node.routing.completion import CompletionTracker
from node.routing.rules import RouteError, RouteTable, load_routes
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["JobRunner", "Pipeline", "reprocess", "series_attributes"]

log = logging.getLogger(__name__)


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
    """

    def __init__(self, ledger: JobLedger, index: Index, store: InstanceStore, ingestor: Ingestor, outbox: Outbox,
                 table: RouteTable, executor_factory: Callable[[], Executor], scratch_root: Path,
                 calling_ae: str = "PACSNODE") -> None:
        self.ledger = ledger
        self.index = index
        self.store = store
        self.ingestor = ingestor
        self.outbox = outbox
        self.table = table
        self.executor_factory = executor_factory
        self.scratch_root = scratch_root
        self.calling_ae = calling_ae
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
        future.add_done_callback(lambda f: self._finisher.submit(self._finish, job, job_input, f))

    def build_input(self, job: Job) -> AnalysisInput:
        """The :class:`AnalysisInput` of a job, from the index and the store."""
        series = self._series_input(job.series_uid)
        if series is None or not series.files:
            raise UnsuitableInput(f"series {job.series_uid} has no stored instances")
        related: dict[str, list[SeriesInput]] = {}
        for role, wanted in self.table.needs.get(job.route, {}).items():
            route_name = wanted.rstrip("?")
            found = [s for s in self._study_series(job.study_uid, exclude=job.series_uid)
                     if route_name in {r.name for r in self.table.select(s.attributes)}]
            if not found and not wanted.endswith("?"):
                raise UnsuitableInput(f"the {job.analyzer} analyzer needs a series of route {route_name!r} "
                                      f"(role {role!r}) in the same study; none arrived. Send it, then run "
                                      f"`pacsnode reprocess {job.series_uid}`")
            related[role] = found
        priors: list[PriorFinding] = []
        if self.table.wants_priors.get(job.route):
            priors = [PriorFinding(p.job_id, p.study_uid, p.series_uid, p.study_date, p.findings, p.analyzer_version)
                      for p in self.ledger.priors(patient_id=job.patient_id, analyzer=job.analyzer,
                                                  exclude_study=job.study_uid)]
        settings = self.table.settings.get(job.route, AnalyzerSettings())
        scratch = self.scratch_root / job.id
        scratch.mkdir(parents=True, exist_ok=True)
        return AnalysisInput(job.id, series, related, priors, settings, scratch)

    def _series_input(self, series_uid: str) -> SeriesInput | None:
        attributes = series_attributes(self.index, series_uid)
        if attributes is None:
            return None
        files = tuple(self.store.absolute(path) for _, _, path in self.index.instance_paths(series_uid=series_uid))
        return SeriesInput(series_uid, str(attributes["StudyInstanceUID"]), files, attributes)

    def _study_series(self, study_uid: str, exclude: str) -> list[SeriesInput]:
        uids = [r[0] for r in self.index.reader().execute(
            "SELECT series_uid FROM series WHERE study_uid = ? AND series_uid != ? ORDER BY series_number",
            (study_uid, exclude))]
        return [s for s in (self._series_input(u) for u in uids) if s is not None]

    def _finish(self, job: Job, job_input: AnalysisInput, future: concurrent.futures.Future[JobOutcome]) -> None:
        try:
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
        self.runner = JobRunner(self.ledger, index, store, ingestor, self.outbox, self.table,
                                executor_factory or (lambda: make_executor(settings, self._analyzers())),
                                Path(settings.storage.path) / "scratch", calling_ae=settings.dicom.ae_title)
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
        self.runner.stop()
        self.outbox.stop()

    def on_series_complete(self, series_uid: str, generation: int, only_routes: Sequence[str] | None) -> None:
        """Queue the jobs of a completed series (idempotent: job ids derive from series, route, round)."""
        attributes = series_attributes(self.index, series_uid)
        if attributes is None:
            return
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
        if routes:
            log.info("series %s → %s", series_uid, ", ".join(r.name for r in routes))
            self.runner.wake()
        else:
            log.info("series %s complete; no route applies", series_uid)

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
            ids.append(ledger.enqueue(
                series_uid=series_uid, study_uid=str(attributes["StudyInstanceUID"]),
                patient_id=attributes.get("PatientID"), route=route.name, analyzer=route.analyzer,
                send_to=route.send_to, generation=generation, conn=conn))
    return ids
