"""The audit trail: an append-only table in the node's index, optionally sent to syslog.

Recorded events (column ``event``):

``association``
    Every DIMSE association: calling and called AE, peer address, result (accepted,
    rejected, released, aborted). Fed by pynetdicom notification events
    (:meth:`AuditTrail.dimse_bindings`).
``query`` / ``retrieve``
    C-FIND, C-MOVE and C-GET requests (who, which information model, the identifier's
    keys), fed by ``EVT_DIMSE_RECV`` in the same bindings, or by :meth:`AuditTrail.query`
    and :meth:`AuditTrail.retrieve` from any other service.
``instances-stored``
    Instances received, one row per calling AE and study per flush interval (not one row
    per instance, which would double the index writes of ingest), fed by an ingest listener.
``delivery``
    Results delivered to (or given up on for) a destination: :meth:`AuditTrail.delivery`.
``config-load``
    The node's settings were loaded: :meth:`AuditTrail.config_loaded`.
``series-removed``
    The retention job removed a series (files and index rows): :meth:`AuditTrail.series_removed`.
``index-rebuilt``
    The index was rebuilt from the stored files (at start, or ``pacsnode index rebuild``):
    :meth:`AuditTrail.index_rebuilt`.

The table refuses ``UPDATE`` and ``DELETE`` (SQLite triggers), so rows are only ever added.
With a syslog target, each event is also sent as a DICOM audit message (DICOM PS3.15
Annex A.5, the schema derived from RFC 3881) in an RFC 5424 syslog frame over UDP
(RFC 5426), as IHE ATNA's audit record repositories receive them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.events import Event

from node.config import Settings
from node.ingest import IngestOutcome
from node.storage.index import Index, InstanceRecord

__all__ = [
    "EVENT_KINDS",
    "AuditEvent",
    "AuditTrail",
    "InvalidSince",
    "SyslogTarget",
    "dicom_audit_message",
    "parse_since",
]

log = logging.getLogger(__name__)

EVENT_KINDS = ("association", "query", "retrieve", "instances-stored", "delivery", "config-load",
               "series-removed", "operator-action", "index-rebuilt")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
    "event TEXT NOT NULL, outcome TEXT NOT NULL, actor TEXT NOT NULL DEFAULT '', "
    "peer TEXT NOT NULL DEFAULT '', called TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}')",
    "CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)

# DICOM PS3.16 / DCM codes of the audit message (PS3.15 A.5.3).
_EVENT_CODES: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    # event: (EventID code, its meaning, EventActionCode, EventTypeCode or None)
    "association": ("110114", "User Authentication", "E", ("110122", "Login")),
    "query": ("110112", "Query", "E", None),
    "retrieve": ("110104", "DICOM Instances Transferred", "R", None),
    "instances-stored": ("110104", "DICOM Instances Transferred", "C", None),
    "delivery": ("110104", "DICOM Instances Transferred", "R", None),
    "config-load": ("110100", "Application Activity", "E", ("110120", "Application Start")),
    "series-removed": ("110105", "DICOM Study Deleted", "D", None),
    # a person re-queued work (reprocess a series, retry deliveries) from a page or the CLI
    "operator-action": ("110100", "Application Activity", "E", None),
    # the index rebuilt from the stored files
    "index-rebuilt": ("110100", "Application Activity", "E", None),
}
# EventOutcomeIndicator (RFC 3881): 0 success, 4 minor failure, 8 serious failure.
_OUTCOME_CODES = {"success": "0", "minor-failure": "4", "serious-failure": "8"}

_QUERY_MESSAGES = {"C_FIND_RQ": "query", "C_MOVE_RQ": "retrieve", "C_GET_RQ": "retrieve"}
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidSince(ValueError):
    """A ``--since`` value that is not a number and a unit (``30m``, ``12h``, ``1d``, ``2w``)."""


def parse_since(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``12h``, ``1d`` or ``2w``."""
    match = _SINCE.match(text)
    if not match:
        raise InvalidSince(f"{text!r} is not a duration; use a number and s, m, h, d or w, e.g. 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log."""

    at: float
    event: str
    outcome: str
    actor: str = ""
    peer: str = ""
    called: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def __post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise ValueError(f"event is one of {', '.join(EVENT_KINDS)}, not {self.event!r}")
        if self.outcome not in _OUTCOME_CODES:
            raise ValueError(f"outcome is one of {', '.join(_OUTCOME_CODES)}, not {self.outcome!r}")


def dicom_audit_message(event: AuditEvent, source_id: str) -> str:
    """The event as a DICOM audit message (PS3.15 A.5.1 ``AuditMessage`` XML)."""
    code, meaning, action, type_code = _EVENT_CODES[event.event]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": _OUTCOME_CODES[event.outcome]})
    ET.SubElement(ident, "EventID", {"csd-code": code, "codeSystemName": "DCM",
                                     "originalText": meaning})
    if type_code is not None:
        ET.SubElement(ident, "EventTypeCode", {"csd-code": type_code[0], "codeSystemName": "DCM",
                                               "originalText": type_code[1]})
    if event.outcome != "success" and event.detail.get("reason"):
        ET.SubElement(ident, "EventOutcomeDescription").text = str(event.detail["reason"])
    if event.actor or event.peer:
        source = ET.SubElement(root, "ActiveParticipant", {
            "UserID": event.actor or "-", "UserIsRequestor": "true",
            "NetworkAccessPointID": event.peer.rsplit(":", 1)[0] or "-",
            "NetworkAccessPointTypeCode": "2"})
        ET.SubElement(source, "RoleIDCode", {"csd-code": "110153", "codeSystemName": "DCM",
                                             "originalText": "Source Role ID"})
    destination = ET.SubElement(root, "ActiveParticipant", {
        "UserID": event.called or source_id, "UserIsRequestor": "false"})
    ET.SubElement(destination, "RoleIDCode", {"csd-code": "110152", "codeSystemName": "DCM",
                                              "originalText": "Destination Role ID"})
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    for study in event.detail.get("studies", []):
        study_object = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(study), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        ET.SubElement(study_object, "ParticipantObjectIDTypeCode", {
            "csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"})
    if event.event == "query" and event.detail.get("keys"):
        query_object = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(event.detail.get("sop_class", "")),
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "24"})
        ET.SubElement(query_object, "ParticipantObjectIDTypeCode", {
            "csd-code": "110181", "codeSystemName": "DCM", "originalText": "SOP Class UID"})
        ET.SubElement(query_object, "ParticipantObjectQuery").text = json.dumps(event.detail["keys"])
    return ET.tostring(root, encoding="unicode")


@dataclass(frozen=True)
class SyslogTarget:
    """A syslog receiver for audit messages (RFC 5424 over UDP, RFC 5426).

    Parameters
    ----------
    host, port:
        Where to send (an audit record repository).
    app_name:
        The syslog APP-NAME field.
    """

    host: str
    port: int
    app_name: str = "pacsnode"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError("a syslog port is 1 to 65535")

    def frame(self, message: str, at: float) -> bytes:
        # PRI 85 = facility 10 (security/authorization) * 8 + severity 5 (notice), as IHE ATNA
        # uses; MSGID "IHE+RFC-3881" marks the audit XML payload.
        stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
        header = f"<85>1 {stamp} {socket.gethostname()} {self.app_name} - IHE+RFC-3881 - "
        return header.encode() + b"\xef\xbb\xbf" + message.encode()

    def send(self, message: str, at: float) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(self.frame(message, at), (self.host, self.port))


class AuditTrail:
    """Records audit events in the index's ``audit_log`` table (and to syslog).

    Parameters
    ----------
    index:
        The node's index.
    source_id:
        The AuditSourceID of syslog messages (the node's AE title).
    syslog:
        Where to send DICOM audit messages as well; None for the table alone.
    flush_interval:
        Seconds between writes of the aggregated ``instances-stored`` rows.
    """

    def __init__(self, index: Index, *, source_id: str = "PACSNODE", syslog: SyslogTarget | None = None,
                 flush_interval: float = 1.0) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self.index = index
        self.source_id = source_id
        self.syslog = syslog
        self.flush_interval = flush_interval
        with index.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
        self._pending: Counter[tuple[str, str]] = Counter()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_settings(cls, settings: Settings, index: Index) -> AuditTrail:
        """The node's audit trail: its AE title as source, syslog from ``[audit]`` when set."""
        audit = settings.audit
        syslog = (SyslogTarget(audit.syslog_host, audit.syslog_port, audit.app_name)
                  if audit.syslog_host else None)
        return cls(index, source_id=settings.dicom.ae_title, syslog=syslog)

    # -- writing -----------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Append the event to the table and send it to syslog when configured."""
        with self.index.transaction() as conn:
            conn.execute("INSERT INTO audit_log (at, event, outcome, actor, peer, called, detail) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (event.at, event.event, event.outcome, event.actor, event.peer, event.called,
                          json.dumps(event.detail, default=str)))
        if self.syslog is not None:
            try:
                self.syslog.send(dicom_audit_message(event, self.source_id), event.at)
            except OSError as exc:  # the table has it; a lost datagram must not fail the service
                log.warning("audit message to syslog %s:%d not sent: %s", self.syslog.host,
                            self.syslog.port, exc)

    def association(self, calling_ae: str, called_ae: str, peer: str, result: str) -> None:
        """An association was accepted, rejected, released or aborted."""
        outcome = "success" if result in ("accepted", "released") else "minor-failure"
        self.record(AuditEvent(time.time(), "association", outcome, calling_ae.strip(), peer,
                               called_ae.strip(), {"result": result}))

    def query(self, calling_ae: str, peer: str, sop_class: str, keys: dict[str, Any]) -> None:
        """A C-FIND (or QIDO-RS) request: who asked, in which model, for what."""
        self.record(AuditEvent(time.time(), "query", "success", calling_ae.strip(), peer, "",
                               {"sop_class": sop_class, "keys": keys}))

    def retrieve(self, calling_ae: str, peer: str, sop_class: str, keys: dict[str, Any], *,
                 destination: str = "") -> None:
        """A C-MOVE or C-GET (or WADO-RS) request."""
        studies = [keys["StudyInstanceUID"]] if keys.get("StudyInstanceUID") else []
        self.record(AuditEvent(time.time(), "retrieve", "success", calling_ae.strip(), peer,
                               destination, {"sop_class": sop_class, "keys": keys, "studies": studies}))

    def delivery(self, destination: str, *, instances: int, job_id: str | None = None,
                 error: str | None = None) -> None:
        """Instances sent to a destination, or given up on (``error`` says why)."""
        self.record(AuditEvent(time.time(), "delivery", "success" if error is None else "serious-failure",
                               self.source_id, "", destination,
                               {"instances": instances, "job_id": job_id, "reason": error}))

    def series_removed(self, *, study_uid: str, series_uid: str, instances: int, detail: dict[str, Any]) -> None:
        """The retention job removed a series of ``study_uid`` (its files and index rows)."""
        self.record(AuditEvent(time.time(), "series-removed", "success", self.source_id, "", "",
                               {"studies": [study_uid], "series_uid": series_uid, "instances": instances,
                                **detail}))

    def operator_action(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        """A person queued work again: ``action`` is ``reprocess`` or ``retry-deliveries``."""
        self.record(AuditEvent(time.time(), "operator-action", "success", actor, "", self.source_id,
                               {"action": action, **detail}))

    def index_rebuilt(self, actor: str, detail: dict[str, Any]) -> None:
        """The index was rebuilt from the stored files; ``detail`` says why and how many."""
        outcome = "success" if not detail.get("unreadable") else "minor-failure"
        self.record(AuditEvent(time.time(), "index-rebuilt", outcome, actor, "", self.source_id, detail))

    def config_loaded(self, source: str, summary: dict[str, Any]) -> None:
        """The node's settings were loaded from ``source``."""
        self.record(AuditEvent(time.time(), "config-load", "success", self.source_id, "", "",
                               {"source": source, **summary}))

    # -- ingest listener ---------------------------------------------------------------------

    def on_ingest(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """Ingest listener: count the instance for the next ``instances-stored`` row."""
        with self._pending_lock:
            self._pending[(outcome.calling_ae.strip(), outcome.study_instance_uid)] += 1

    def flush(self) -> int:
        """Write the aggregated ``instances-stored`` rows now; returns how many."""
        with self._pending_lock:
            pending, self._pending = self._pending, Counter()
        now = time.time()
        for (calling, study), count in sorted(pending.items()):
            self.record(AuditEvent(now, "instances-stored", "success", calling, "", self.source_id,
                                   {"instances": count, "studies": [study]}))
        return len(pending)

    def start(self) -> None:
        """Flush every ``flush_interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsnode-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write what is pending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except sqlite3.ProgrammingError:  # the index was closed: the node is stopping
                return
            except sqlite3.Error:
                log.exception("audit rows could not be written; retrying")

    # -- DIMSE -------------------------------------------------------------------------------

    def dimse_bindings(self, *, messages: bool = False) -> list[tuple[Any, Any]]:
        """pynetdicom notification handlers for the node's DIMSE server.

        Pass them with the server's ``evt_handlers`` or bind them to the running
        ``ThreadedAssociationServer`` (``server.bind(event, handler)``). They are
        notification events, so they do not replace the node's own handlers.

        Parameters
        ----------
        messages:
            Also bind ``EVT_DIMSE_RECV`` to audit C-FIND, C-MOVE and C-GET requests. Off by
            default: pynetdicom then dispatches an event for every received message, C-STORE
            included, which the node's DIMSE server otherwise avoids on its ingest path; the
            lighter way is for the query/retrieve handlers to call :meth:`query` and
            :meth:`retrieve` themselves.
        """
        bindings: list[tuple[Any, Any]] = [
            (evt.EVT_ACCEPTED, self._on_association),
            (evt.EVT_REJECTED, self._on_association),
            (evt.EVT_RELEASED, self._on_association),
            (evt.EVT_ABORTED, self._on_association),
        ]
        if messages:
            bindings.append((evt.EVT_DIMSE_RECV, self._on_dimse_message))
        return bindings

    @staticmethod
    def _who(event: Event) -> tuple[str, str, str]:
        requestor, acceptor = event.assoc.requestor, event.assoc.acceptor
        # the AE title the peer asked for (not ours, when it asked for a wrong one)
        called = getattr(requestor.primitive, "called_ae_title", None) or acceptor.ae_title
        return requestor.ae_title, str(called), f"{requestor.address}:{requestor.port}"

    def _on_association(self, event: Event) -> None:
        result = {"EVT_ACCEPTED": "accepted", "EVT_REJECTED": "rejected",
                  "EVT_RELEASED": "released", "EVT_ABORTED": "aborted"}[event.event.name]
        self.association(*self._who(event), result)

    def _on_dimse_message(self, event: Event) -> None:
        kind = _QUERY_MESSAGES.get(type(event.message).__name__)
        if kind is None:  # C-STORE and C-ECHO return here at once: no cost on ingest
            return
        calling, _called, peer = self._who(event)
        message = event.message
        sop_class = str(message.command_set.AffectedSOPClassUID)
        keys = _identifier_keys(event)
        if kind == "query":
            self.query(calling, peer, sop_class, keys)
        else:
            destination = str(getattr(message.command_set, "MoveDestination", "") or calling).strip()
            self.retrieve(calling, peer, sop_class, keys, destination=destination)

    # -- reading -----------------------------------------------------------------------------

    def events(self, *, since: float = 0.0, event: str | None = None) -> list[AuditEvent]:
        """Rows at or after ``since`` (epoch seconds), oldest first."""
        return list(read_events(self.index, since=since, event=event))


def _identifier_keys(event: Event) -> dict[str, Any]:
    """The non-empty keys of a query/retrieve identifier (best effort: {} if undecodable)."""
    message = event.message
    contexts = {cx.context_id: cx for cx in event.assoc.accepted_contexts}
    context = contexts.get(message.context_id)
    if context is None or message.data_set is None:
        return {}
    syntax = context.transfer_syntax[0]
    try:
        message.data_set.seek(0)
        identifier: Dataset = decode(message.data_set, syntax.is_implicit_VR, syntax.is_little_endian,
                                     syntax.is_deflated)
        message.data_set.seek(0)
        return {element.keyword or str(element.tag): str(element.value)
                for element in identifier if element.value not in (None, "")}
    except (ValueError, TypeError, AttributeError, NotImplementedError) as exc:
        log.debug("audit: identifier not decoded: %s", exc)
        return {}


def read_events(index: Index, *, since: float = 0.0, event: str | None = None) -> Iterator[AuditEvent]:
    """Audit rows at or after ``since`` (epoch seconds), oldest first; none without a table."""
    sql = ("SELECT id, at, event, outcome, actor, peer, called, detail FROM audit_log WHERE at >= ?"
           + (" AND event = ?" if event else "") + " ORDER BY id")
    params: tuple[Any, ...] = (since, event) if event else (since,)
    try:
        rows = index.reader().execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return
        raise
    for row_id, at, kind, outcome, actor, peer, called, detail in rows:
        yield AuditEvent(at, kind, outcome, actor, peer, called, json.loads(detail), id=row_id)
