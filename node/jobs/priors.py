"""The patient's earlier study, analysed before the new one (``[priors]`` in ``node.toml``).

An analyzer that says ``wants_priors`` (``dce``: the pre-treatment study) reads the
findings of the patient's earlier jobs of the same analyzer. When a job of such an
analyzer is about to run, :class:`PriorResolver` makes sure those findings exist:

1. **Store.** Every series of the same PatientID in an earlier study (StudyDate before
   the new study's, within ``lookback_days``) that a route of the same analyzer takes
   must be analysed first: while such a series is still arriving, or its job is queued
   or running, the new job waits (it goes back to the queue without spending an
   attempt); a complete series without a job gets one.
2. **PACS** (``source = "pacs"``, only when step 1 found no earlier study). The
   destination named by ``[priors] destination`` is searched for the patient's earlier
   studies (C-FIND, or QIDO-RS for a DICOMweb destination); the studies with a series
   that a route of the analyzer takes are fetched into the node (C-MOVE to the node's
   own AE title, or WADO-RS), in a background thread. They arrive like any study:
   completion makes their jobs, and step 1 then makes the new job wait for them.

A job waits at most ``wait_s`` seconds (from its creation); after that it runs with the
priors there are, and says so in the log. A fetch is made once per job: its state is
kept in the index (table ``prior_fetches``), so a restart resumes it instead of
repeating a finished one.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmwrite

from node.config import DestinationSettings, PriorsSettings
from node.ingest import Ingestor
from node.jobs.ledger import Job, JobLedger, ensure_schema, is_output_uid
from node.routing.completion import create_tables as create_completion_tables
from node.routing.rules import Route, RouteTable
from node.storage.index import Index

__all__ = ["PriorFetchError", "PriorResolver", "create_tables", "earliest_date"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prior_fetches (
    job_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,               -- running | done | failed
    started_at REAL NOT NULL,
    finished_at REAL,
    studies TEXT,                      -- JSON list of the Study Instance UIDs fetched
    detail TEXT
)
"""

_WAIT_POLL_S = 2.0
_FINISHED = ("done", "failed", "rejected")


class PriorFetchError(RuntimeError):
    """The PACS could not be searched or did not send the prior study."""


def create_tables(index: Index) -> None:
    """Create the ``prior_fetches`` table in the index when it is missing."""
    ensure_schema(index, _SCHEMA)


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(text)[:8], "%Y%m%d").date() if text else None
    except ValueError:
        return None


def earliest_date(current: dt.date, lookback_days: int) -> dt.date:
    """The oldest StudyDate a prior may have."""
    return current - dt.timedelta(days=lookback_days)


@dataclass(frozen=True)
class _Candidate:
    """A study of the PACS that holds a series the analyzer's routes take."""

    study_uid: str
    study_date: str
    series: tuple[str, ...]


class PriorResolver:
    """Decides whether a job may run now or waits for the patient's earlier study.

    Parameters
    ----------
    settings:
        ``[priors]``.
    destination:
        The destination searched with ``source = "pacs"`` (None otherwise).
    index, ledger, table, ingestor:
        The node's parts (the ingestor stores studies fetched by WADO-RS).
    series_attributes:
        The routing attributes of an indexed series (``node.jobs.run.series_attributes``).
    ae_title:
        The node's own AE title: the C-MOVE destination and the calling AE.
    """

    def __init__(self, settings: PriorsSettings, destination: DestinationSettings | None, index: Index,
                 ledger: JobLedger, table: RouteTable, ingestor: Ingestor,
                 series_attributes: Callable[[Index, str], dict[str, Any] | None], ae_title: str) -> None:
        if settings.source == "pacs" and destination is None:
            raise ValueError(f"[priors] destination {settings.destination!r} is not one of [[destinations]]")
        self.settings = settings
        self.destination = destination
        self.index = index
        self.ledger = ledger
        self.table = table
        self.ingestor = ingestor
        self.series_attributes = series_attributes
        self.ae_title = ae_title
        self._fetching: dict[str, concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pacsnode-priors")
        create_tables(index)
        create_completion_tables(index)  # the series_state table read below

    def close(self) -> None:
        """Stop taking fetches; a running one finishes (its state is in the index)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the decision ------------------------------------------------------------------------

    def check(self, job: Job, wants_priors: bool) -> str | None:
        """``None`` when ``job`` may run now, else what it waits for (a line for ``pacsnode jobs``)."""
        if not wants_priors or self.settings.source == "none" or not job.patient_id:
            return None
        current = _date(self._study_date(job.study_uid))
        if current is None:
            return None  # without the new study's date no study is "earlier"
        if time.time() - job.created_at > self.settings.wait_s:
            log.warning("job %s waited %.0f s for the patient's earlier study; running without it", job.id,
                        self.settings.wait_s)
            return None
        waiting, found = self._in_store(job, current)
        if waiting:
            return "waiting: the patient's earlier study is analysed first (" + "; ".join(waiting[:3]) + ")"
        if found or self.settings.source != "pacs":
            return None
        return self._from_pacs(job, current)

    def _study_date(self, study_uid: str) -> str | None:
        row = self.index.reader().execute("SELECT study_date FROM studies WHERE study_uid = ?",
                                          (study_uid,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def _routes(self, attributes: Mapping[str, Any], analyzer: str) -> list[Route]:
        return [r for r in self.table.runnable(attributes) if r.analyzer == analyzer and r.enabled]

    def _in_store(self, job: Job, current: dt.date) -> tuple[list[str], bool]:
        """What the job waits for in the node's own store, and whether an earlier study is there."""
        oldest = earliest_date(current, self.settings.lookback_days)
        rows = self.index.reader().execute(
            "SELECT se.series_uid, se.study_uid, st.study_date, ss.state, ss.generation FROM series se "
            "JOIN studies st ON st.study_uid = se.study_uid JOIN patients p ON p.patient_key = st.patient_key "
            "LEFT JOIN series_state ss ON ss.series_uid = se.series_uid "
            "WHERE p.patient_id = ? AND se.study_uid != ?", (job.patient_id, job.study_uid)).fetchall()
        waiting: list[str] = []
        found = False
        for series_uid, study_uid, study_date, state, generation in rows:
            date = _date(study_date)
            if is_output_uid(series_uid) or date is None or not (oldest <= date < current):
                continue
            attributes = self.series_attributes(self.index, series_uid)
            if attributes is None:
                continue
            for route in self._routes(attributes, job.analyzer):
                found = True
                if state == "open":
                    waiting.append(f"series {series_uid} of {study_date} is still arriving")
                    continue
                latest = self.ledger.latest(series_uid, route.name)
                if latest is None:
                    self.ledger.enqueue(series_uid=series_uid, study_uid=study_uid, patient_id=job.patient_id,
                                        route=route.name, analyzer=job.analyzer, send_to=route.send_to,
                                        generation=int(generation or 0))
                    log.info("job %s waits for the earlier study %s of the patient: its series %s was stored "
                             "but never analysed; queued", job.id, study_uid, series_uid)
                    waiting.append(f"series {series_uid} of {study_date} queued")
                elif latest.state not in _FINISHED:
                    waiting.append(f"job {latest.id} on the study of {study_date} is {latest.state}")
        return waiting, found

    # -- the PACS ----------------------------------------------------------------------------

    def _fetch_row(self, job_id: str) -> tuple[str, str | None] | None:
        row = self.index.reader().execute("SELECT state, detail FROM prior_fetches WHERE job_id = ?",
                                          (job_id,)).fetchone()
        return (str(row[0]), row[1]) if row else None

    def _from_pacs(self, job: Job, current: dt.date) -> str | None:
        assert self.destination is not None
        row = self._fetch_row(job.id)
        with self._lock:
            running = job.id in self._fetching and not self._fetching[job.id].done()
        if row is not None and row[0] != "running":
            if row[0] == "failed":
                log.warning("job %s runs without its prior: %s", job.id, row[1])
            return None  # fetched (its studies are in the store now, or there were none)
        if not running:
            with self.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO prior_fetches (job_id, patient_id, destination, state, "
                             "started_at) VALUES (?, ?, ?, 'running', ?)",
                             (job.id, job.patient_id, self.destination.name, time.time()))
            with self._lock:
                self._fetching[job.id] = self._pool.submit(self._fetch, job, current)
        return f"waiting: searching {self.destination.name} for the patient's earlier study"

    def _fetch(self, job: Job, current: dt.date) -> None:
        assert self.destination is not None and job.patient_id
        state, detail, fetched = "done", None, []
        try:
            candidates = self._search(job.patient_id, current, job.analyzer)
            stored = {r[0] for r in self.index.reader().execute("SELECT study_uid FROM studies")}
            for candidate in candidates:
                if candidate.study_uid in stored:
                    continue
                self._retrieve(candidate.study_uid)
                fetched.append(candidate.study_uid)
            log.info("job %s: %d earlier study(ies) of patient %s fetched from %s", job.id, len(fetched),
                     job.patient_id, self.destination.name)
        except PriorFetchError as exc:
            state, detail = "failed", f"fetching the prior from {self.destination.name} failed: {exc}"
            log.warning("job %s: %s", job.id, detail)
        except Exception as exc:  # a network or parse error must not leave the row "running"
            state, detail = "failed", f"fetching the prior from {self.destination.name} failed: {exc!r}"
            log.exception("job %s: fetching the prior failed", job.id)
        with self.index.transaction() as conn:
            conn.execute("UPDATE prior_fetches SET state = ?, finished_at = ?, studies = ?, detail = ? "
                         "WHERE job_id = ?", (state, time.time(), json.dumps(fetched), detail, job.id))

    def _date_range(self, current: dt.date) -> str:
        oldest = earliest_date(current, self.settings.lookback_days)
        newest = current - dt.timedelta(days=1)
        return f"{oldest:%Y%m%d}-{newest:%Y%m%d}"

    def _search(self, patient_id: str, current: dt.date, analyzer: str) -> list[_Candidate]:
        """The patient's earlier studies in the PACS that hold a series of the analyzer's routes."""
        assert self.destination is not None
        if self.destination.kind == "dimse":
            studies = self._find("STUDY", PatientID=patient_id, StudyDate=self._date_range(current),
                                 StudyInstanceUID="")
        else:
            studies = self._qido_studies(patient_id, self._date_range(current))
        found = []
        for study in studies:
            study_uid = str(study.get("StudyInstanceUID", ""))
            if not study_uid:
                continue
            if self.destination.kind == "dimse":
                series = self._find("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="",
                                    SeriesDescription="", Modality="", SeriesNumber="", ProtocolName="")
            else:
                series = self._qido_series(study_uid)
            matching = []
            for item in series:
                attributes = {k: str(item.get(k)) for k in ("SeriesDescription", "Modality", "ProtocolName")
                              if item.get(k) not in (None, "")}
                attributes["PatientID"] = patient_id
                if self._routes(attributes, analyzer):
                    matching.append(str(item.get("SeriesInstanceUID", "")))
            if matching:
                found.append(_Candidate(study_uid, str(study.get("StudyDate", "")), tuple(matching)))
        return found

    def _retrieve(self, study_uid: str) -> None:
        assert self.destination is not None
        if self.destination.kind == "dimse":
            self._move(study_uid)
        else:
            self._wado(study_uid)

    # DIMSE: C-FIND and C-MOVE (study root) ---------------------------------------------------

    def _associate(self, context: Any) -> Any:
        from pynetdicom import AE

        from node.dimse.scu import client_tls, requestor_handlers

        assert self.destination is not None
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(context)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        host = str(self.destination.host)
        assoc = ae.associate(host, int(self.destination.port or 104), ae_title=str(self.destination.ae_title),
                             evt_handlers=requestor_handlers(), tls_args=client_tls(self.destination.tls, host))
        if not assoc.is_established:
            raise PriorFetchError(f"no association with {self.destination.ae_title}@{self.destination.host}:"
                                  f"{self.destination.port}")
        return assoc

    def _find(self, level: str, **keys: str) -> list[Dataset]:
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
            StudyRootQueryRetrieveInformationModelFind as Find,
        )

        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        assoc = self._associate(Find)
        found = []
        try:
            for status, identifier in assoc.send_c_find(query, Find):
                if not status:
                    raise PriorFetchError("the C-FIND got no answer (timeout or aborted association)")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(identifier)
                elif code not in (0x0000, 0xFF00, 0xFF01):
                    raise PriorFetchError(f"C-FIND at {level} level failed with status 0x{code:04X}")
        finally:
            assoc.release()
        return found

    def _move(self, study_uid: str) -> None:
        from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
            StudyRootQueryRetrieveInformationModelMove as Move,
        )

        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        assoc = self._associate(Move)
        final = None
        try:
            for status, _ in assoc.send_c_move(query, self.ae_title, Move):
                if not status:
                    raise PriorFetchError("the C-MOVE got no answer (timeout or aborted association)")
                final = status
        finally:
            assoc.release()
        code = int(final.Status) if final is not None else -1
        if code not in (0x0000, 0xB000):
            failed = final.get("NumberOfFailedSuboperations", "?") if final is not None else "?"
            raise PriorFetchError(f"C-MOVE of study {study_uid} to {self.ae_title} ended with status "
                                  f"0x{code & 0xFFFF:04X} ({failed} failed sub-operation(s)); does the PACS know "
                                  f"{self.ae_title} as a DICOM peer?")

    # DICOMweb: QIDO-RS and WADO-RS ------------------------------------------------------------

    def _client(self) -> Any:
        from dicomweb_client.api import DICOMwebClient

        assert self.destination is not None
        token = self.destination.token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return DICOMwebClient(url=str(self.destination.url), headers=headers)

    def _qido_studies(self, patient_id: str, dates: str) -> list[Dataset]:
        try:
            found = self._client().search_for_studies(
                search_filters={"PatientID": patient_id, "StudyDate": dates}, get_remaining=True)
        except Exception as exc:  # requests/HTTP errors of dicomweb-client
            raise PriorFetchError(f"QIDO-RS search for studies failed: {exc}") from exc
        return [Dataset.from_json(item) for item in found]

    def _qido_series(self, study_uid: str) -> list[Dataset]:
        try:
            found = self._client().search_for_series(
                study_uid, fields=["SeriesDescription", "Modality", "ProtocolName"], get_remaining=True)
        except Exception as exc:  # requests/HTTP errors of dicomweb-client
            raise PriorFetchError(f"QIDO-RS search for series failed: {exc}") from exc
        return [Dataset.from_json(item) for item in found]

    def _wado(self, study_uid: str) -> None:
        client = self._client()
        try:
            instances = client.iter_study(study_uid)
            for ds in instances:
                buffer = io.BytesIO()
                dcmwrite(buffer, ds, enforce_file_format=True)
                self.ingestor.ingest_part10(buffer.getvalue(), calling_ae=str(self.destination.name
                                                                              if self.destination else ""))
        except PriorFetchError:
            raise
        except Exception as exc:  # HTTP errors, refused instances
            raise PriorFetchError(f"WADO-RS retrieval of study {study_uid} failed: {exc}") from exc
