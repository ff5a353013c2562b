"""The one path every arriving instance takes: check → store → index.

C-STORE (``node.dimse.handlers``) and STOW-RS (``node.dicomweb.stow``) both call
:class:`Ingestor`. The dataset bytes are written as received (compressed pixel
data is never decoded here); only the header up to the pixel data is parsed, to
validate and index it. The caller answers success only after :meth:`Ingestor.ingest_dataset`
or :meth:`Ingestor.ingest_part10` returned, i.e. after the file was fsynced and the index
row committed.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from node.dataset_checks import (
    DECODE_ERRORS,
    IMAGE_KEYWORDS,
    check_element_lengths,
    check_pixel_length,
    nests_deeper_than,
)
from node.errors import DatasetMismatch, InvalidDataset, OutOfResources, SopClassNotAllowed
from node.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, encode_file_meta, split_part10
from node.routing.hints import completion_hints
from node.storage.attributes import ATTRIBUTES
from node.storage.index import CommitHook, Index, InstanceRecord
from node.storage.store import InstanceStore, file_tag, safe_component

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "SERIES_ROUTING_KEYWORDS",
    "IngestOutcome",
    "Ingestor",
    "encode_file_meta",
    "split_part10",
]

log = logging.getLogger(__name__)

# Series attributes kept for routing and completion (node.routing): what identifies the
# sequence and how many instances to expect.
SERIES_ROUTING_KEYWORDS = (
    "SeriesDescription", "ProtocolName", "Modality", "ImageType", "MRAcquisitionType",
    "SequenceName", "ScanningSequence", "SequenceVariant", "Manufacturer",
    "ManufacturerModelName", "MagneticFieldStrength", "ImagesInAcquisition",
    "NumberOfTemporalPositions", "NumberOfFrames", "EchoTime", "RepetitionTime", "FlipAngle",
    "BodyPartExamined", "ContrastBolusAgent", "StudyDate", "PatientID", "SOPClassUID",
)
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_REQUIRED_TAGS = tuple((keyword, int(tag_for_keyword(keyword) or 0)) for keyword in _REQUIRED)
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_IMAGE_VR_HINTS = {"Rows": "US", "Columns": "US", "BitsAllocated": "US", "SamplesPerPixel": "US",
                   "NumberOfFrames": "IS"}

Status = Literal["stored", "identical_duplicate", "kept_first", "overwritten"]


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one instance."""

    status: Status
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    path: Path
    size: int
    transfer_syntax_uid: str
    calling_ae: str


Listener = Callable[[IngestOutcome, InstanceRecord], None]


class _GroupCommit:
    """Index rows of concurrent associations committed together (leader/follower).

    Each caller queues its row, then takes the commit lock. Whoever holds it commits every
    queued row in one transaction; a caller whose row was committed by another finds that
    out when it gets the lock and returns at once. One association commits alone, with no
    hand-off; four share commits instead of queueing for one each. A failing batch is
    retried row by row, so one bad row fails only its own instance.
    """

    def __init__(self, index: Index, hooks: Callable[[], Sequence[CommitHook]] = tuple) -> None:
        self._index = index
        self._hooks = hooks
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._queued: list[tuple[InstanceRecord, list[BaseException | None]]] = []

    def add(self, record: InstanceRecord) -> None:
        result: list[BaseException | None] = []
        with self._queue_lock:
            self._queued.append((record, result))
        after: list[Callable[[], None]] = []
        with self._commit_lock:
            if not result:
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                after = self._commit(batch)
        for action in after:  # e.g. completion timers, once the rows are committed
            try:
                action()
            except Exception:
                log.exception("post-commit action %r failed", action)
        if result[0] is not None:
            raise result[0]

    def _add(self, records: list[InstanceRecord]) -> list[Callable[[], None]]:
        hooks = self._hooks()
        if not hooks:
            self._index.add_instances(records)
            return []
        return self._index.add_instances(records, hooks)

    # What adding a row can raise: SQLite errors (a full disk, a constraint) and malformed values.
    _ROW_ERRORS = (sqlite3.Error, KeyError, TypeError, ValueError)

    def _commit(self, batch: list[tuple[InstanceRecord, list[BaseException | None]]]
                ) -> list[Callable[[], None]]:
        try:
            after = self._add([record for record, _ in batch])
        except self._ROW_ERRORS as exc:
            if len(batch) == 1:
                batch[0][1].append(exc)
                return []
            after = []
            for record, result in batch:
                try:
                    after += self._add([record])
                except self._ROW_ERRORS as single:
                    result.append(single)
                else:
                    result.append(None)
            return after
        for _, result in batch:
            result.append(None)
        return after


def _to_python(ds: Dataset, keyword: str, vr_hint: str | None = None) -> Any:
    if keyword not in ds:
        return None
    try:
        value = ds[keyword].value
    except DECODE_ERRORS:  # an element the sender encoded wrongly: not indexed, not fatal
        return None
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    if vr_hint in ("IS", "US"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, bytes):
        return None
    return str(value)


# Converted values of raw elements, by (tag, VR, raw bytes, charset, byte order): patient,
# study and series attributes repeat in every instance of a series, so most of an instance's
# index values are found here instead of being decoded by pydicom again. Bounded by clearing.
_CONVERSION_CACHE_LIMIT = 8192
_CACHEABLE_LENGTH = 256
_MISSING = object()


def _element_key(element: Any, tag: int, charset: bytes | None) -> tuple[Any, ...] | None:
    """A hashable identity of a still-raw short element, or None when it cannot be cached."""
    if not isinstance(element, RawDataElement):
        return None
    value = element.value
    if value is None or len(value) > _CACHEABLE_LENGTH:
        return None
    return (tag, element.VR, value, charset, element.is_little_endian, element.is_implicit_VR)


def _stop_at_pixels(tag: Any, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _parse_header(data: bytes, transfer_syntax: UID, max_depth: int = 32) -> Dataset:
    """Parse the top-level elements before the pixel data (values stay raw until used).

    The offset where parsing stopped (the Pixel Data element, or the end) is kept on the
    dataset as ``_pacsnode_header_end`` for :func:`~node.dataset_checks.check_pixel_length`,
    the four required UIDs as text as ``_pacsnode_uids`` (read from the raw bytes, so the
    elements stay raw) and the parsed elements keyed by int as ``_pacsnode_elements``.
    Sequences nested deeper than ``max_depth`` are refused: measured on the parsed header and
    on any elements after the Pixel Data, or from pydicom's ``RecursionError`` when the nest
    is deeper than it can recurse.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise InvalidDataset(f"deflated dataset cannot be inflated: {exc}") from exc
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    too_deep = InvalidDataset(f"sequences are nested more than {max_depth} levels deep, more than this "
                              "node accepts ([storage] max_sequence_depth); the sender's object is malformed")
    stream = BytesIO(data)
    try:
        ds = read_dataset(stream, implicit, little, stop_when=_stop_at_pixels)
        check_element_lengths(ds)
        elements = _elements_by_int(ds)
        uids: dict[str, str] = {}
        raw_uids: dict[str, str] = {}
        for keyword, tag in _REQUIRED_TAGS:
            element = elements.get(tag)
            if element is None:
                continue
            text = _raw_uid_text(element)
            if text is None:
                value = ds[keyword].value  # converted here, so a broken element fails here
                text = "" if value is None else str(value)
            else:
                raw_uids[keyword] = text
            uids[keyword] = text
    except RecursionError as exc:
        raise too_deep from exc
    except DECODE_ERRORS as exc:
        raise InvalidDataset(
            f"the dataset cannot be decoded ({type(exc).__name__}: {exc}); the sender's "
            "file is corrupt or truncated"
        ) from exc
    # pydicom leaves the stream at the element that stopped the parse.
    header_end = stream.tell()
    if (nests_deeper_than(data, implicit=implicit, little=little, limit=max_depth, end=header_end)
            or nests_deeper_than(data, implicit=implicit, little=little, limit=max_depth,
                                 start=_after_pixels(data, header_end, implicit, little))):
        raise too_deep
    ds._pacsnode_header_end = header_end
    ds._pacsnode_uids = uids  # read once: every later step needs them
    ds._pacsnode_raw_uids = raw_uids  # those read from the raw bytes: the index values too
    ds._pacsnode_elements = elements  # the raw elements, as parsed
    return ds


def _elements_by_int(ds: Dataset) -> dict[int, Any]:
    """The dataset's elements keyed by plain ints: pydicom's keys are ``BaseTag`` objects,
    whose Python-level ``__eq__`` made each lookup cost microseconds."""
    return {int(tag): element for tag, element in ds._dict.items()}


def _elements(ds: Dataset) -> dict[int, Any]:
    """The int-keyed elements noted at the parse (a dataset parsed elsewhere: made now)."""
    elements = getattr(ds, "_pacsnode_elements", None)
    return elements if elements is not None else _elements_by_int(ds)


def _raw_uid_text(element: Any) -> str | None:
    """The text of a still-raw UI element as pydicom would convert it (ISO 8859-1, trailing
    NULs and surrounding spaces removed), without converting the element: it stays raw, so the index
    values of the same element are found in the conversion cache. None when pydicom must
    convert it (already converted, or encoded with another VR)."""
    if not isinstance(element, RawDataElement) or element.VR not in ("UI", None):
        return None
    if element.value is None:
        return ""
    text = element.value.decode("latin-1").rstrip("\0 ")
    return None if "\\" in text else text.strip()  # several values: pydicom's MultiValue


def _after_pixels(data: bytes, at: int, implicit: bool, little: bool) -> int:
    """Where the elements after a native Pixel Data element at ``at`` begin (the end of the
    data when there is none); ``at`` itself for encapsulated pixel data, whose fragments the
    depth walk skips item by item."""
    if at + 12 > len(data):
        return len(data)
    header = 8 if implicit else 12
    (length,) = struct.unpack_from("<I" if little else ">I", data, at + header - 4)
    return at if length == 0xFFFFFFFF else min(len(data), at + header + length)


def _uids(ds: Dataset) -> dict[str, str]:
    """The required UIDs of a parsed dataset, as text (see :func:`_parse_header`)."""
    uids = getattr(ds, "_pacsnode_uids", None)
    if uids is None:
        uids = {k: str(ds[k].value) for k in _REQUIRED if k in ds and ds[k].value is not None}
    return uids


class Ingestor:
    """Validates, stores and indexes instances.

    Parameters
    ----------
    store, index:
        Where files and rows go.
    allowed_sop_classes:
        SOP Class UIDs accepted; anything else is refused (0x0122 / HTTP 415).
    duplicate_policy:
        ``keep_first`` keeps the stored copy and files the differing one under
        ``duplicates/``; ``overwrite`` replaces it and files the old one there. Both
        record the event in the index, so nothing received is lost.
    listeners:
        Called after each instance is stored and indexed (metrics, audit). A listener that
        has an ``in_commit(conn, records)`` method (completion tracking) is called that way
        instead, inside the transaction that adds the instances' rows (once per group
        commit, for all its rows); what it returns runs after the commit.
    max_sequence_depth:
        Instances whose sequences nest deeper are refused (``[storage] max_sequence_depth``).
    """

    def __init__(
        self,
        store: InstanceStore,
        index: Index,
        *,
        allowed_sop_classes: Collection[str],
        duplicate_policy: Literal["keep_first", "overwrite"] = "keep_first",
        listeners: list[Listener] | None = None,
        max_sequence_depth: int = 32,
    ) -> None:
        self.store = store
        self.max_sequence_depth = max_sequence_depth
        self.index = index
        self.allowed_sop_classes = frozenset(allowed_sop_classes)
        self.duplicate_policy = duplicate_policy
        self.listeners: list[Listener] = list(listeners or [])
        self._conversions: dict[tuple[Any, ...], Any] = {}
        self._group_commit = _GroupCommit(index, self._commit_hooks)
        self._index_specs = tuple((a.keyword, a.tag, a.vr) for a in ATTRIBUTES)
        self._routing_specs = tuple((k, int(tag_for_keyword(k) or 0), None)
                                    for k in SERIES_ROUTING_KEYWORDS)
        self._image_specs = tuple((k, int(tag_for_keyword(k) or 0), _IMAGE_VR_HINTS.get(k))
                                  for k in IMAGE_KEYWORDS)

    def _commit_hooks(self) -> list[CommitHook]:
        """Listeners that also offer ``in_commit(conn, records)`` run inside the index
        transaction of the instances (see :class:`Ingestor`)."""
        return [hook for hook in (getattr(listener, "in_commit", None) for listener in self.listeners)
                if hook is not None]

    # -- entry points ------------------------------------------------------------------------

    def ingest_dataset(
        self,
        data: bytes,
        transfer_syntax: str,
        *,
        calling_ae: str = "",
        context_sop_class: str | None = None,
    ) -> IngestOutcome:
        """Store an encoded dataset as it arrived over DIMSE (no file meta, no preamble)."""
        ts = UID(transfer_syntax)
        ds = _parse_header(data, ts, self.max_sequence_depth)
        self._validate(ds, context_sop_class)
        check_pixel_length(ds, data, ts, self._image_values(ds))
        meta = self._file_meta(ds, ts, calling_ae)
        return self._store(ds, meta, data, ts, calling_ae)

    def ingest_part10(self, data: bytes, *, calling_ae: str = "") -> IngestOutcome:
        """Store a DICOM Part 10 file (STOW-RS part, a file sent by ``pacsnode send``)."""
        meta, offset = split_part10(data)
        ts = UID(str(meta.TransferSyntaxUID))
        body = data[offset:]
        ds = _parse_header(body, ts, self.max_sequence_depth)
        self._validate(ds, None)
        check_pixel_length(ds, body, ts, self._image_values(ds))
        own_meta = self._file_meta(ds, ts, calling_ae)
        return self._store(ds, own_meta, body, ts, calling_ae)

    # -- steps -------------------------------------------------------------------------------

    def _validate(self, ds: Dataset, context_sop_class: str | None) -> None:
        uids = _uids(ds)
        # PatientID is Type 2: missing or empty, the instance is indexed under the empty ID (as
        # Orthanc does) and found with the empty-value query PatientID="" (docs/storage.md).
        missing = [k for k in _REQUIRED if not uids.get(k)]
        if missing:
            raise DatasetMismatch(
                f"required attribute(s) missing or empty: {', '.join(missing)}; the node "
                "indexes every instance by patient, study, series and SOP instance"
            )
        sop_class = uids["SOPClassUID"]
        if context_sop_class and sop_class != context_sop_class:
            raise DatasetMismatch(
                f"SOP Class UID {sop_class} in the dataset differs from the presentation "
                f"context's {context_sop_class}"
            )
        if sop_class not in self.allowed_sop_classes:
            raise SopClassNotAllowed(
                f"SOP class {sop_class} is not stored by this node; allow it in "
                "[dicom] storage_sop_classes"
            )
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            try:
                safe_component(uids[keyword])
            except ValueError:
                raise DatasetMismatch(
                    f"{keyword} {uids[keyword]!r} is not a valid UID (digits and dots, "
                    "at most 64 characters)"
                ) from None

    def _file_meta(self, ds: Dataset, ts: UID, calling_ae: str) -> bytes:
        uids = _uids(ds)
        return encode_file_meta(uids["SOPClassUID"], uids["SOPInstanceUID"], str(ts),
                                calling_ae.strip()[:16])

    def _store(self, ds: Dataset, meta: bytes, data: bytes, ts: UID, calling_ae: str) -> IngestOutcome:
        uids = _uids(ds)
        sop_uid = uids["SOPInstanceUID"]
        target = self.store.path_for(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], sop_uid)
        status: Status = "stored"
        existing = self.index.lookup_instance(sop_uid)
        stored_copy = self._stored_copy(existing[0]) if existing is not None else None
        if existing is not None and stored_copy is not None:
            existing_path = existing[0]
            if _dataset_part(stored_copy) == data:
                self.index.record_duplicate(sop_uid, identical=True, policy=self.duplicate_policy,
                                            kept_path=existing_path, other_path="",
                                            calling_ae=calling_ae)
                return self._outcome("identical_duplicate", ds, self.store.absolute(existing_path),
                                     len(meta) + len(data), ts, calling_ae)
            if self.duplicate_policy == "keep_first":
                other = self._duplicate_path(sop_uid, meta + data)
                self.store.check_space(len(meta) + len(data))
                self.store.write(other, (meta, data))
                self.index.record_duplicate(sop_uid, identical=False, policy="keep_first",
                                            kept_path=existing_path,
                                            other_path=self.store.relative(other),
                                            calling_ae=calling_ae)
                log.warning("instance %s arrived again with different content; kept the first, "
                            "filed the new copy as %s", sop_uid, other)
                return self._outcome("kept_first", ds, self.store.absolute(existing_path),
                                     len(meta) + len(data), ts, calling_ae)
            previous = self._duplicate_path(sop_uid, stored_copy)
            self.store.write(previous, (stored_copy,))
            status = "overwritten"
            self.index.record_duplicate(sop_uid, identical=False, policy="overwrite",
                                        kept_path=self.store.relative(target),
                                        other_path=self.store.relative(previous),
                                        calling_ae=calling_ae)
        self.store.check_space(len(meta) + len(data))
        stored = self.store.write_file(target, (meta, data))
        size = stored.size
        record = self._record(ds, target, size, stored.tag, ts, calling_ae)
        try:
            self._group_commit.add(record)
        except sqlite3.OperationalError as exc:
            # Not acknowledged, so not kept: a new file without its index row would be an
            # instance the sender believes failed (an overwritten one keeps its new bytes).
            if status == "stored":
                target.unlink(missing_ok=True)
            if "full" in str(exc).lower():
                raise OutOfResources(
                    "the node's index cannot grow: its disk is full; ask the node's operator to "
                    "free space",
                    detail=f"the index at {self.index.path} cannot grow: the disk is full; free space "
                           "on the storage volume",
                ) from exc
            raise
        outcome = self._outcome(status, ds, target, size, ts, calling_ae)
        for listener in self.listeners:
            if getattr(listener, "in_commit", None) is not None:
                continue  # already ran inside the index transaction
            try:
                listener(outcome, record)
            except Exception:
                log.exception("ingest listener %r failed for %s", listener, sop_uid)
        return outcome

    def _stored_copy(self, relative: str) -> bytes | None:
        """The bytes of the stored file of an indexed instance; None when it is gone (then the
        new copy takes its place)."""
        try:
            return self.store.absolute(relative).read_bytes()
        except OSError:
            return None

    def _duplicate_path(self, sop_uid: str, content: bytes) -> Path:
        """Where a differing copy of an instance is filed: named by its content tag, so the
        same copy arriving again lands on the same file; a different copy whose tag happens
        to be taken gets a numbered name."""
        tag = file_tag(content)
        candidate = self.store.duplicates_dir / f"{sop_uid}.{tag}.dcm"
        number = 1
        while candidate.exists() and candidate.read_bytes() != content:
            number += 1
            candidate = self.store.duplicates_dir / f"{sop_uid}.{tag}.{number}.dcm"
        return candidate

    def _record(self, ds: Dataset, path: Path, size: int, digest: str, ts: UID,
                calling_ae: str) -> InstanceRecord:
        elements = _elements(ds)
        values = self._values(ds, self._index_specs, elements)
        series_attributes = self._values(ds, self._routing_specs, elements)
        series_attributes.update(completion_hints(ds))
        return InstanceRecord(
            values=values,
            path=self.store.relative(path),
            size=size,
            digest=digest,
            transfer_syntax_uid=str(ts),
            calling_ae=calling_ae.strip(),
            received_at=time.time(),
            series_attributes={k: v for k, v in series_attributes.items() if v is not None},
        )

    def _image_values(self, ds: Dataset) -> dict[str, Any] | None:
        """The image attributes the pixel length check needs, converted through the cache; None
        when one is present but could not be converted (the check then reads and reports it)."""
        elements = _elements(ds)
        values = self._values(ds, self._image_specs, elements)
        if any(values[keyword] is None and tag in elements for keyword, tag, _ in self._image_specs):
            return None
        return values

    def _values(self, ds: Dataset, specs: tuple[tuple[str, int, str | None], ...],
                elements: dict[int, Any]) -> dict[str, Any]:
        """``_to_python`` of each attribute, memoised on the element's raw bytes
        (``elements``: :func:`_elements_by_int`)."""
        cache = self._conversions
        if len(cache) > _CONVERSION_CACHE_LIMIT:
            cache.clear()
        charset = getattr(elements.get(0x00080005), "value", None)
        if charset is not None and not isinstance(charset, bytes):
            charset = str(charset).encode()
        known_uids = getattr(ds, "_pacsnode_raw_uids", {})  # read at the parse, as _to_python reads them
        values: dict[str, Any] = {}
        for keyword, tag, vr_hint in specs:
            element = elements.get(tag)
            if element is None:
                values[keyword] = None
                continue
            if keyword in known_uids:
                values[keyword] = known_uids[keyword] or None
                continue
            key = _element_key(element, tag, charset)
            if key is None:
                values[keyword] = _to_python(ds, keyword, vr_hint)
                continue
            key = (*key, vr_hint)
            value = cache.get(key, _MISSING)
            if value is _MISSING:
                value = cache[key] = _to_python(ds, keyword, vr_hint)
            values[keyword] = value
        return values

    @staticmethod
    def _outcome(status: Status, ds: Dataset, path: Path, size: int, ts: UID,
                 calling_ae: str) -> IngestOutcome:
        uids = _uids(ds)
        return IngestOutcome(
            status=status,
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            path=path,
            size=size,
            transfer_syntax_uid=str(ts),
            calling_ae=calling_ae.strip(),
        )

    # -- recovery ----------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Index stored files the index does not know (after a power loss); returns the count.

        First settles the temporary files a crash left: complete ones (their rename may
        have been lost after they were acknowledged) are promoted to their final name and
        indexed, incomplete ones (never acknowledged) are deleted
        (:meth:`~node.storage.store.InstanceStore.recover_partial_files`). A stored file that
        cannot be read is logged and left where it is.
        """
        recovery = self.store.recover_partial_files(
            replace_existing=self.duplicate_policy == "overwrite")
        promoted = {self.store.relative(p) for p in recovery.promoted
                    if p.is_relative_to(self.store.instances_dir)}
        known = self.index.indexed_paths() - promoted
        added = 0
        for path in self.store.iter_instance_files():
            if self.store.relative(path) in known:
                continue
            try:
                self.index_stored_file(path)
            except (InvalidDataset, OSError) as exc:
                log.error("stored file %s cannot be indexed: %s", path, getattr(exc, "detail", exc))
                continue
            added += 1
        if added:
            log.warning("re-indexed %d stored instance(s) missing from the index", added)
        return added

    def index_stored_file(self, path: Path, *, received_at: float | None = None) -> None:
        """Add the index row of a file already in the store (recovery, index rebuild).

        Raises
        ------
        InvalidDataset
            The file is not a readable DICOM instance.
        OSError
            It cannot be read.
        """
        raw = path.read_bytes()
        meta, offset = split_part10(raw)
        ts = UID(str(meta.TransferSyntaxUID))
        body = raw[offset:]
        ds = _parse_header(body, ts, self.max_sequence_depth)
        missing = [k for k in _REQUIRED if not _uids(ds).get(k)]
        if missing:
            raise InvalidDataset(f"{', '.join(missing)} missing")
        calling_ae = str(meta.get("SourceApplicationEntityTitle", "") or "")
        record = self._record(ds, path, len(raw), file_tag(raw), ts, calling_ae)
        if received_at is not None:
            record.received_at = received_at
        self.index.add_instance(record)


def _dataset_part(file_bytes: bytes) -> bytes | None:
    """The dataset of a stored Part 10 file (after its file meta), None when unreadable."""
    try:
        return file_bytes[split_part10(file_bytes)[1]:]
    except InvalidDataset:
        return None
