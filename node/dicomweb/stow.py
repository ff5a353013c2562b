"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}``.

The body is ``multipart/related; type="application/dicom"``; it is parsed as it
arrives and every part goes through :meth:`node.ingest.Ingestor.ingest_part10`, the
same checks and the same durability as C-STORE. Parts are ingested by
``[http] stow_workers`` threads side by side, so their fsyncs overlap; at most 64 parts
(256 MiB) wait in memory at a time. The answer (PS3.18 Table 10.5.3-1) comes only
after every part was handled:

* 200: every instance is on disk and indexed;
* 202: some were stored, others failed (``FailedSOPSequence`` with a FailureReason per
  instance; the reasons in words in ``Warning`` headers);
* 409: none was stored;
* 400: the multipart body itself is malformed (the message says where);
* 413: the body is larger than ``[http] max_upload_mb`` (when parts before the limit were
  stored, a 202 lists them and reports the rest of the body as one failure instead);
* 415: the Content-Type is not multipart/related with application/dicom parts;
* 507: the storage ran out of space (``OutOfResources``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from node.dataset_checks import DECODE_ERRORS
from node.dicomweb.multipart import (
    MalformedMultipart,
    MultipartReader,
    Part,
    PayloadTooLarge,
    UnsupportedMediaType,
    parse_media_type,
)
from node.dicomweb.service import DicomwebService, dicom_json_response
from node.errors import DatasetMismatch, InvalidDataset, NodeError, OutOfResources
from node.ingest import IngestOutcome

__all__ = ["PartResult", "store_instances"]

log = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 64
_UNREADABLE: tuple[type[BaseException], ...] = (*DECODE_ERRORS, OSError)
_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class PartResult:
    """What happened to one part: stored (``outcome``) or failed (``error``)."""

    number: int
    outcome: IngestOutcome | None = None
    error: NodeError | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def _uids(data: bytes) -> tuple[str, str, str]:
    """(SOP class, SOP instance, study) UIDs of a part, for the failure report and the study
    check; empty strings when the part is not readable (ingest then says why)."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        return (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                str(ds.get("StudyInstanceUID", "")))
    except _UNREADABLE:
        return "", "", ""


def _ingest(service: DicomwebService, part: Part, study: str | None, calling: str) -> PartResult:
    media = part.content_type
    if media is not None and media.type not in ("application/dicom", "application/octet-stream"):
        return PartResult(part.number, error=InvalidDataset(
            f"part {part.number} is {media.type}; STOW-RS here takes application/dicom parts"))
    if study:
        sop_class, sop_uid, part_study = _uids(part.body)
        if part_study and part_study != study:
            return PartResult(part.number, error=DatasetMismatch(
                f"part {part.number}: Study Instance UID {part_study} differs from the study "
                f"{study} in the request path"), sop_class_uid=sop_class, sop_instance_uid=sop_uid)
    try:
        outcome = service.ingestor.ingest_part10(part.body, calling_ae=calling)
    except NodeError as exc:
        exc.prefix(f"part {part.number}: ")
        # the UIDs are read here, on failure only, for the FailedSOPSequence
        sop_class, sop_uid, _ = _uids(part.body)
        return PartResult(part.number, error=exc, sop_class_uid=sop_class,
                          sop_instance_uid=sop_uid)
    return PartResult(part.number, outcome=outcome, sop_class_uid=outcome.sop_class_uid,
                      sop_instance_uid=outcome.sop_instance_uid)


def _check_content_type(header: str | None) -> str:
    if not header:
        raise UnsupportedMediaType('STOW-RS needs Content-Type: multipart/related; '
                                   'type="application/dicom"; boundary=...')
    media = parse_media_type(header)
    if media.type != "multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", not {media.type}")
    kind = media.params.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise UnsupportedMediaType(
            f"STOW-RS here takes parts of type application/dicom, not {kind} (the JSON + bulk "
            "data form is not supported)")
    boundary = media.params.get("boundary")
    if not boundary:
        raise MalformedMultipart("the Content-Type has no boundary parameter")
    return boundary


def _reference(base: str, result: PartResult) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [result.sop_class_uid]} if result.sop_class_uid
        else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [result.sop_instance_uid]} if result.sop_instance_uid
        else {"vr": "UI"},
    }
    if result.outcome is not None:
        o = result.outcome
        item["00081190"] = {"vr": "UR", "Value": [
            f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}"
            f"/instances/{o.sop_instance_uid}"]}
    else:
        assert result.error is not None
        item["00081197"] = {"vr": "US", "Value": [result.error.dimse]}
    return item


def _response(base: str, study: str | None, results: list[PartResult]) -> Response:
    stored = [r for r in results if r.outcome is not None]
    failed = [r for r in results if r.error is not None]
    body: dict[str, Any] = {}
    studies = {r.outcome.study_instance_uid for r in stored if r.outcome}
    if study or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study or next(iter(studies))}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_reference(base, r) for r in failed]}
    body["00081199"] = {"vr": "SQ", "Value": [_reference(base, r) for r in stored]}
    if any(isinstance(r.error, OutOfResources) for r in failed):
        status = 507
    elif not failed:
        status = 200
    elif stored:
        status = 202
    else:
        status = 409
    warnings = [f'299 pacsnode "{_header_text(r.error.message[:300])}"' for r in failed[:20] if r.error]
    response = dicom_json_response(dict(sorted(body.items())), status)
    for warning in warnings:
        response.headers.append("Warning", warning)
    return response


def _header_text(text: str) -> str:
    """``text`` as a quoted-string of an HTTP header: visible ASCII only (a sender's UID can hold
    control characters, which would make the server drop the connection instead of answering)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


async def store_instances(service: DicomwebService, request: Request) -> Response:
    """Answer a STOW-RS request (see the module docstring for the statuses)."""
    boundary = _check_content_type(request.headers.get("content-type"))
    limit = int(service.http.max_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {int(declared)} bytes; [http] max_upload_mb allows "
                              f"{limit} ({service.http.max_upload_mb:g} MB)")
    study = request.path_params.get("study")
    # SourceApplicationEntityTitle of the stored files: the token's name, else the service's
    calling = getattr(request.state, "token_name", "") or "STOW-RS"
    reader = MultipartReader(boundary)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[PartResult]] = []
    sizes: dict[asyncio.Future[PartResult], int] = {}
    received = 0
    overflow: PayloadTooLarge | None = None
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if overflow is not None:
                if received > 2 * limit:
                    break  # what was read is reported; the client sees the answer or a reset
                continue  # read on (not stored), so that the client can read the answer
            if received > limit:  # the parts within the limit are still stored
                chunk = chunk[:len(chunk) - (received - limit)]
            for part in reader.feed(chunk):
                future = loop.run_in_executor(service.pool, _ingest, service, part, study,
                                              calling)
                pending.append(future)
                sizes[future] = len(part.body)
            # bounded: parts wait in memory only while the workers are busy with others
            while True:
                unfinished = [f for f in pending[-_MAX_IN_FLIGHT * 4:] if not f.done()]
                if (len(unfinished) <= _MAX_IN_FLIGHT
                        and sum(sizes[f] for f in unfinished) <= _MAX_IN_FLIGHT_BYTES):
                    break
                await asyncio.wait(unfinished, return_when=asyncio.FIRST_COMPLETED)
            if received > limit:
                overflow = PayloadTooLarge(
                    f"the body exceeds [http] max_upload_mb ({service.http.max_upload_mb:g} MB); "
                    f"what followed part {len(pending)} was not stored: send it in a smaller request")
        if overflow is None:
            reader.close()
    except (NodeError, ClientDisconnect):
        # Parts already handed to ingest finish (stored instances stay stored); then the error.
        if pending:
            await asyncio.wait(pending)
        raise
    results = [await f for f in pending]
    if overflow is not None:
        if not any(r.outcome is not None for r in results):
            raise overflow
        # Some parts are stored: a 202 lists them, and the rest of the body as one failure.
        results.append(PartResult(len(results) + 1, error=overflow))
    if not results:
        raise MalformedMultipart("the multipart body has no part")
    for result in results:
        if result.error is not None:
            log.warning("STOW-RS from %s: %s", calling, result.error.detail)
    return _response(service.base_url(request), study, results)
