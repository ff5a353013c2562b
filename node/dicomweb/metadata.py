"""WADO-RS metadata made when instances arrive, so the first request is answered from storage.

:class:`MetadataStore` listens to the node's ingest (``on_ingest``; instances received by
the DIMSE receiver processes reach it through the node's event stream). A background
thread turns each new instance into its DICOM JSON (PS3.18 F.2, bulk data as
BulkDataURIs) once ingest has been quiet for :attr:`MetadataStore.quiet_s` seconds, so
a burst of C-STOREs is not slowed by it, and stores it in the
:class:`~node.storage.metadata_cache.MetadataCache`. A request finds every instance
there; one that is not there yet (asked for in the middle of a burst, or stored before
the node started) is made from its file on the spot and stored as well.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread

from node.dataset_checks import DECODE_ERRORS
from node.dicomweb.dicom_json import dataset_to_json, element_path
from node.ingest import IngestOutcome
from node.storage.index import InstanceRecord
from node.storage.metadata_cache import MetadataCache, MetadataRow
from node.storage.store import InstanceStore

__all__ = ["URL_MARK", "URL_MARK_JSON", "MetadataStore", "instance_metadata"]

log = logging.getLogger(__name__)

# Stands for the instance URL in stored metadata; NUL characters make it impossible in a
# DICOM text value, and JSON writes them as \u0000.
URL_MARK = "\x00instance-url\x00"
URL_MARK_JSON = json.dumps(URL_MARK)[1:-1]
_DEFER = 1024


def instance_metadata(path: Path, instance_url: str) -> dict[str, Any]:
    """The PS3.18 JSON metadata of the instance at ``path``; binary values above 768 bytes
    (and Pixel Data) become BulkDataURIs under ``instance_url``."""
    ds = dcmread(path, defer_size=_DEFER)
    return dataset_to_json(ds, bulk=lambda p: f"{instance_url}/bulkdata/{element_path(p)}")


def _metadata_text(path: Path) -> str:
    return json.dumps(instance_metadata(path, URL_MARK), ensure_ascii=False, separators=(",", ":"))


class MetadataStore:
    """The stored metadata of a node's instances, and the thread that makes it.

    Parameters
    ----------
    store:
        The node's files.
    cache:
        Where the metadata rows go (default: ``<storage>/cache/metadata.sqlite``).
    quiet_s:
        Seconds without a newly stored instance before the background thread works.
    """

    batch = 64
    max_pending = 100_000

    def __init__(self, store: InstanceStore, cache: MetadataCache | None = None, *,
                 quiet_s: float = 1.0) -> None:
        self.store = store
        self.cache = cache or MetadataCache(store.root)
        self.quiet_s = quiet_s
        self._pending: collections.deque[MetadataRow] = collections.deque()
        self._changed = threading.Condition()
        self._last_arrival = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- filling -----------------------------------------------------------------------------

    def on_ingest(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """Ingest listener: remember the instance for the background thread."""
        with self._changed:
            if len(self._pending) >= self.max_pending:
                return  # made on its first request instead
            self._pending.append((outcome.sop_instance_uid, outcome.series_instance_uid,
                                  outcome.study_instance_uid, record.digest, record.path))
            self._last_arrival = time.monotonic()
            self._changed.notify()

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="pacsnode-metadata", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.cache.close()

    def _next_batch(self) -> list[MetadataRow] | None:
        with self._changed:
            while True:
                if self._stopping:
                    return None
                if self._pending:
                    quiet = time.monotonic() - self._last_arrival
                    if quiet >= self.quiet_s:
                        return [self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))]
                    self._changed.wait(self.quiet_s - quiet)
                else:
                    self._changed.wait()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._make([(sop, series, study, digest, self.store.absolute(path))
                            for sop, series, study, digest, path in batch])
            except Exception:  # derived data: a request makes what is missing
                log.exception("storing WADO-RS metadata of %d instance(s) failed", len(batch))

    def _make(self, items: Sequence[tuple[str, str, str, str, Path]]) -> dict[str, str]:
        """Make and store the metadata of instances not stored yet; returns what was made."""
        known = self.cache.known([(sop, digest) for sop, _, _, digest, _ in items])
        made: dict[str, str] = {}
        rows: list[MetadataRow] = []
        for sop, series, study, digest, path in items:
            if sop in known or sop in made:
                continue
            try:
                text = _metadata_text(path)
            except DECODE_ERRORS as exc:  # a file removed meanwhile, or one pydicom cannot read
                log.warning("no WADO-RS metadata for %s: %s: %s", sop, type(exc).__name__, exc)
                continue
            made[sop] = text
            rows.append((sop, series, study, digest, text))
        self.cache.put(rows)
        return made

    # -- answering ---------------------------------------------------------------------------

    def texts(self, rows: Sequence[dict[str, Any]]) -> dict[str, str]:
        """The stored metadata (JSON with :data:`URL_MARK`) of index rows (``sop_uid``,
        ``series_uid``, ``study_uid``, ``digest``, ``path``), by SOP Instance UID; what is
        missing is made from the files now (and stored). An instance whose file cannot be
        read is left out (it raises for a single one)."""
        found = self.cache.lookup([(str(r["sop_uid"]), str(r["digest"])) for r in rows])
        missing = [r for r in rows if r["sop_uid"] not in found]
        if missing:
            found.update(self._make([(r["sop_uid"], r["series_uid"], r["study_uid"], str(r["digest"]),
                                      self.store.absolute(r["path"])) for r in missing]))
        return found
