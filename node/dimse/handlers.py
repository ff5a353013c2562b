"""DIMSE event handlers: thin adapters from pynetdicom events to ingest and the index.

Each handler translates the request, calls the node's own code and maps a
:class:`~node.errors.NodeError` to its DIMSE status in one place
(:func:`_failure`). Nothing here touches the disk directly.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import Tag
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.config import Settings
from node.dataset_checks import DECODE_ERRORS
from node.dimse.fast_find import FindEvent
from node.dimse.find_codec import IdentifierKey, dataset_keys, encode_match
from node.errors import InvalidDataset, NodeError, NotFound, UnknownDestination
from node.ingest import Ingestor
from node.ops.logs import log_context
from node.storage.attributes import DERIVED, by_keyword
from node.storage.index import Index
from node.storage.query import InvalidQuery, Query

__all__ = ["DimseHandlers"]

log = logging.getLogger(__name__)

_LEVEL_UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_QUERY_RETRIEVE_LEVEL = 0x00080052
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"


def _failure(error: NodeError) -> Dataset:
    status = Dataset()
    status.Status = error.dimse
    status.ErrorComment = error.message[:64]
    return status


@dataclass
class _Retrieve:
    """The instances a C-MOVE/C-GET identifier selects."""

    instances: list[tuple[str, str, str]]


class DimseHandlers:
    """Handlers bound to one node's ingest, index and settings."""

    def __init__(self, settings: Settings, ingestor: Ingestor, index: Index) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.index = index
        # node.ops.Operations when the HTTP side runs: refusal metrics and query/retrieve audit.
        self.operations: Any = None

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_CONN_OPEN, self.on_connection_open),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    # -- association ---------------------------------------------------------------------------

    def on_connection_open(self, event: Event) -> None:
        # pynetdicom leaves Nagle on; each small DIMSE response would then stall ~40 ms.
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                log.debug("could not set TCP_NODELAY on %s", event.assoc.requestor.address)

    def on_aborted(self, event: Event) -> None:
        log.warning("association with %s aborted by the peer",
                    event.assoc.requestor.ae_title or event.assoc.requestor.address)

    # -- services ------------------------------------------------------------------------------

    def on_echo(self, event: Event) -> int:
        return 0x0000

    def on_store(self, event: Event) -> int | Dataset:
        started = time.perf_counter()
        with log_context(calling_ae=event.assoc.requestor.ae_title):
            status = self._store(event)
        if self.operations is not None:  # C-STORE latency histogram
            self.operations.metrics.store_observed(time.perf_counter() - started,
                                                   int(getattr(status, "Status", status)))
        return status

    def _store(self, event: Event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title
        try:
            self.ingestor.ingest_dataset(
                _dataset_bytes(event),
                event.context.transfer_syntax,
                calling_ae=calling,
                context_sop_class=event.context.abstract_syntax,
            )
        except NodeError as error:
            log.warning("C-STORE from %s refused (0x%04X): %s", calling, error.dimse, error.detail)
            if self.operations is not None:
                self.operations.metrics.store_refused(error.dimse, calling)
            return _failure(error)
        return 0x0000

    def _audit(self, kind: str, event: Event | FindEvent, identifier: list[IdentifierKey],
               destination: str = "") -> None:
        if self.operations is None:
            return
        requestor = event.assoc.requestor
        keys = {keyword: str(value) for _, keyword, vr, value in identifier if keyword and vr != "SQ"}
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
        peer = f"{requestor.address}:{requestor.port}"
        if kind == "query":
            record = partial(self.operations.audit.query, requestor.ae_title, peer, sop_class, keys)
            if isinstance(event, FindEvent):
                event.after_response.append(record)  # a write transaction: after the answer
            else:
                record()
        else:
            self.operations.audit.retrieve(requestor.ae_title, peer, sop_class, keys,
                                           destination=destination)

    def on_find(self, event: Event | FindEvent) -> Iterator[tuple[int, Dataset | bytes | None]]:
        """Matches as datasets; as their encoded bytes where the node's own reader serves the
        request (:class:`~node.dimse.fast_find.FindEvent`) and ``encode_match`` writes them."""
        syntax = event.syntax if isinstance(event, FindEvent) else None
        try:
            identifier = (event.identifier_keys() if isinstance(event, FindEvent)
                          else dataset_keys(event.identifier))
            self._audit("query", event, identifier)
            query, requested = self._query(identifier, event.request.AffectedSOPClassUID)
            rows = self.index.find(query)
        except NodeError as error:
            yield _failure(error).Status, None
            return
        except DECODE_ERRORS as exc:
            yield 0xC000, None
            log.warning("C-FIND identifier could not be read: %s: %s", type(exc).__name__, exc)
            return
        ae_title = self.settings.dicom.ae_title
        for row in rows:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            if syntax is not None:
                encoded = encode_match(requested, row, query.level, ae_title, *syntax)
                if encoded is not None:
                    yield 0xFF00, encoded
                    continue
            yield 0xFF00, self._response(requested, row, query.level)

    def on_move(self, event: Event) -> Iterator[Any]:
        destination = self.settings.dicom.peer(event.move_destination or "")
        if destination is None:
            error = UnknownDestination(
                f"move destination {event.move_destination!r} is not in [[dicom.peers]]"
            )
            log.warning("C-MOVE refused: %s", error.message)
            yield None, None
            return
        try:
            selection = self._selection(event, destination.ae_title)
        except NodeError as error:
            yield destination.host, destination.port
            yield _failure(error).Status, None
            return
        contexts = _contexts_for(
            self.index.syntaxes_of([sop for sop, _, _ in selection.instances])
        )
        sub_association = _SubAssociation()
        # pynetdicom opens the sub-association in this thread and fires EVT_ESTABLISHED before it
        # asks for the first dataset, so its accepted contexts are known when instances are sent.
        yield destination.host, destination.port, {
            "contexts": contexts, "ae_title": destination.ae_title,
            "evt_handlers": [(evt.EVT_ESTABLISHED, sub_association.established)]}
        yield len(selection.instances)
        yield from self._send(event, selection, lambda: sub_association.accepted)

    def on_get(self, event: Event) -> Iterator[Any]:
        try:
            selection = self._selection(event)
        except NodeError as error:
            yield 0
            yield _failure(error).Status, None
            return
        yield len(selection.instances)
        accepted = list(event.assoc.accepted_contexts)
        yield from self._send(event, selection, lambda: accepted)

    # -- helpers -------------------------------------------------------------------------------

    def _selection(self, event: Event, destination: str = "") -> _Retrieve:
        """The instances a C-MOVE/C-GET identifier selects (audited); an identifier that cannot
        be decoded is an :class:`InvalidQuery`."""
        try:
            identifier = event.identifier
            self._audit("retrieve", event, dataset_keys(identifier), destination)
            return self._retrieve(identifier)
        except DECODE_ERRORS as exc:
            raise InvalidQuery(f"the identifier cannot be decoded ({type(exc).__name__})") from exc

    def _send(self, event: Event, selection: _Retrieve,
              accepted: Callable[[], list[PresentationContext]]) -> Iterator[tuple[int, Dataset | None]]:
        """Pending statuses with each instance in a syntax the peer accepted (``accepted`` is read
        per instance: a C-MOVE sub-association's contexts are known only once it is open)."""
        root = self.ingestor.store.root
        for _, _, relative in selection.instances:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, _in_accepted_syntax(dcmread(Path(root) / relative), accepted())

    def _query(self, identifier: list[IdentifierKey], model: str | None) -> tuple[Query, list[int]]:
        level = next((str(value) for tag, _, _, value in identifier if tag == _QUERY_RETRIEVE_LEVEL),
                     "").upper()
        if level not in _LEVEL_UNIQUE:
            raise InvalidQuery(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
        if level == "PATIENT" and model == StudyRootQueryRetrieveInformationModelFind:
            raise InvalidQuery("the Study Root model has no PATIENT level; use Patient Root")
        if model == PatientRootQueryRetrieveInformationModelFind and level != "PATIENT":
            pass  # patient-level keys are allowed as matching keys below the patient level
        matches: dict[str, str] = {}
        returns: list[str] = []
        requested: list[int] = []
        for tag, keyword, vr, value in identifier:
            if tag in (_QUERY_RETRIEVE_LEVEL, 0x00080005) or tag >> 16 == 0x0002:
                continue
            requested.append(tag)
            if not keyword:
                continue
            if vr == "SQ":
                returns.append(keyword)
                continue
            if by_keyword(keyword) is not None:
                text = "" if value is None else ("\\".join(str(v) for v in value)
                                                  if isinstance(value, list | tuple)
                                                  or type(value).__name__ == "MultiValue"
                                                  else str(value))
                matches[keyword] = text
            elif keyword in DERIVED:
                returns.append(keyword)
        return Query(level=level, matches=matches, returns=tuple(returns)), requested  # type: ignore[arg-type]

    def _response(self, requested: list[int], row: dict[str, Any], level: str) -> Dataset:
        response = Dataset()
        response.QueryRetrieveLevel = level
        text_values = []
        for tag in requested:
            keyword = keyword_for_tag(tag)
            if not keyword:
                continue
            value = row.get(keyword)
            try:
                vr = dictionary_VR(Tag(tag)).split(" or ")[0]  # "OB or OW", "US or SS": one that encodes
            except KeyError:
                continue
            if value is None or value == "":
                response.add_new(tag, vr, None)
                continue
            if vr in ("IS", "US", "UL", "SS", "SL"):
                response.add_new(tag, vr, int(value) if not isinstance(value, str) or
                                 value.isdigit() else value)
            else:
                text = str(value)
                text_values.append(text)
                response.add_new(tag, vr, text.split("\\") if "\\" in text else text)
        unique = _LEVEL_UNIQUE[level]
        if unique not in response:
            setattr(response, unique, row.get(unique))
        response.RetrieveAETitle = self.settings.dicom.ae_title
        if any(not t.isascii() for t in text_values):
            response.SpecificCharacterSet = "ISO_IR 192"
        return response

    def _retrieve(self, identifier: Dataset) -> _Retrieve:
        level = str(identifier.get("QueryRetrieveLevel", "")).upper()
        if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
            raise InvalidQuery(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")

        def uids(keyword: str) -> list[str]:
            value = identifier.get(keyword)
            if not value:
                return []
            if isinstance(value, str):
                return [v for v in value.split("\\") if v]
            return [str(v) for v in value]

        instances: list[tuple[str, str, str]] = []
        if level == "PATIENT":
            patient_ids = uids("PatientID")
            if not patient_ids:
                raise InvalidQuery("a PATIENT-level retrieve needs PatientID")
            for pid in patient_ids:
                for row in self.index.find(Query("STUDY", {"PatientID": pid})):
                    instances += self.index.instance_paths(study_uid=row["StudyInstanceUID"])
        elif level == "STUDY":
            studies = uids("StudyInstanceUID")
            if not studies:
                raise InvalidQuery("a STUDY-level retrieve needs StudyInstanceUID")
            for uid in studies:
                instances += self.index.instance_paths(study_uid=uid)
        elif level == "SERIES":
            series = uids("SeriesInstanceUID")
            if not series:
                raise InvalidQuery("a SERIES-level retrieve needs SeriesInstanceUID")
            for uid in series:
                instances += self.index.instance_paths(series_uid=uid)
        else:
            sops = uids("SOPInstanceUID")
            if not sops:
                raise InvalidQuery("an IMAGE-level retrieve needs SOPInstanceUID")
            for uid in sops:
                instances += self.index.instance_paths(sop_uid=uid)
        if not instances:
            raise NotFound("no stored instance matches the retrieve identifier")
        return _Retrieve(instances)


class _SubAssociation:
    """The presentation contexts a C-MOVE destination accepted on its sub-association."""

    def __init__(self) -> None:
        self.accepted: list[PresentationContext] = []

    def established(self, event: Event) -> None:
        self.accepted = list(event.assoc.accepted_contexts)


def _in_accepted_syntax(dataset: Dataset, accepted: list[PresentationContext]) -> Dataset:
    """``dataset`` in a transfer syntax the C-GET requestor or C-MOVE destination accepted for its SOP class.

    A compressed instance is decompressed when the peer accepted only uncompressed syntaxes
    for its class (as Orthanc transcodes on C-GET and C-MOVE): dcmtk ``getscu`` and ``storescp``
    and most viewers accept little endian only. The stored file stays as received. When the class
    was not accepted at all, or decompression is not possible, the dataset goes unchanged and the
    sub-operation is counted as failed.
    """
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        return dataset
    offered = {str(cx.transfer_syntax[0]) for cx in accepted
               if cx.abstract_syntax == dataset.get("SOPClassUID") and cx.as_scu}
    if str(syntax) in offered or not offered & {_EXPLICIT_LE, _IMPLICIT_LE}:
        return dataset
    try:
        dataset.decompress(generate_instance_uid=False)  # the same instance, not a derived one
    except DECODE_ERRORS as exc:
        log.warning("retrieve: %s cannot be decompressed for the peer (%s: %s)",
                    dataset.get("SOPInstanceUID"), type(exc).__name__, exc)
    return dataset


def _contexts_for(syntaxes: set[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts for a C-MOVE sub-association: each SOP class with its stored
    transfer syntax(es) plus explicit and implicit little endian (at most 128 contexts)."""
    by_class: dict[str, list[str]] = {}
    for sop_class, syntax in sorted(syntaxes):
        by_class.setdefault(sop_class, [])
        if syntax not in by_class[sop_class]:
            by_class[sop_class].append(syntax)
    contexts = []
    for sop_class, stored in list(by_class.items())[:128]:
        proposed = list(dict.fromkeys([*stored, _EXPLICIT_LE, _IMPLICIT_LE]))
        contexts.append(build_context(sop_class, proposed))
    return contexts


def _dataset_bytes(event: Event) -> bytes:
    """The encoded dataset of a C-STORE request, as it arrived."""
    data = getattr(event.request, "DataSet", None)
    if data is None:
        raise InvalidDataset("the C-STORE request carries no dataset")
    return bytes(data.getvalue())
