"""Assembles one running node from its settings: store, index, ingest and the services.

``pacsnode serve`` builds a :class:`Node`, calls :meth:`Node.start` and waits; tests
and the demo do the same in-process or in a subprocess. A marker file tells an
unclean stop (a crash, SIGKILL) from a clean one, so the next start reconciles
the store with the index only when needed. An index that is missing (while ``store/`` holds
instances) or unreadable is rebuilt from the stored files once the services listen, with
``/readyz`` answering 503 until it is done (node.storage.rebuild).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from node.config import Settings
from node.dicomweb import HttpServer, create_app
from node.dimse.handlers import DimseHandlers
from node.dimse.receivers import ReceiverPool
from node.dimse.server import DimseServer, storage_sop_classes
from node.ingest import Ingestor
from node.jobs.run import Pipeline
from node.storage.events import EventFollower
from node.storage.index import Index, RebuildProgress
from node.storage.rebuild import prepare_index, rebuild_index
from node.storage.store import InstanceStore

__all__ = ["Node"]

log = logging.getLogger(__name__)


class Node:
    """One pacsnode: its storage and the services that use it."""

    def __init__(self, settings: Settings, *, pipeline: bool = True) -> None:
        self.settings = settings
        storage = settings.storage
        self.store = InstanceStore(
            storage.path,
            fsync=storage.fsync,
            min_free_bytes=int(storage.min_free_gb * 1e9),
        )
        # Why the index must be rebuilt from the stored files (None: it need not be).
        self.rebuild_reason = prepare_index(storage.index_path, self.store)
        self.index = Index(storage.index_path)
        if self.rebuild_reason is not None:
            self.index.rebuild = RebuildProgress()  # not ready from the first moment
        self.ingestor = Ingestor(
            self.store,
            self.index,
            allowed_sop_classes=settings.dicom.storage_sop_classes or storage_sop_classes(),
            duplicate_policy=storage.duplicate_policy,
            max_sequence_depth=storage.max_sequence_depth,
        )
        self.dimse = DimseServer(
            settings.dicom,
            DimseHandlers(settings, self.ingestor, self.index),
            sop_classes=settings.dicom.storage_sop_classes or None,
        )
        self._marker = Path(storage.path) / ".running"
        # Left when a DIMSE receiver process died: the next start reconciles store and index.
        self._reconcile_marker = Path(storage.path) / ".reconcile"
        self.http: HttpServer | None = None
        self.receivers: ReceiverPool | None = None
        self.events: EventFollower | None = None
        # Completion → routing → jobs → outbox (node.jobs.run); routes are validated here, so a
        # wrong routes.toml stops the node before it listens.
        self.pipeline: Pipeline | None = (
            Pipeline(settings, self.index, self.store, self.ingestor) if pipeline else None)

    def recover(self) -> int:
        """After an unclean stop: drop partial files and index stored files the index lacks."""
        if self._marker.exists() or self._reconcile_marker.exists():
            log.warning("the previous run did not stop cleanly; reconciling store and index")
            added = self.ingestor.reconcile()
            self._reconcile_marker.unlink(missing_ok=True)
            return added
        # A power loss can also lose the marker; a promoted temporary file still needs its row.
        if self.store.recover_partial_files().promoted:
            return self.ingestor.reconcile()
        return 0

    def start(self, *, dimse: bool = True, http: bool | None = None) -> None:
        """Start the services: DIMSE unless ``dimse`` is false, DICOMweb when ``http`` is
        true or, when ``http`` is None, when ``[http] enabled``."""
        if self.rebuild_reason is None:
            self.recover()
        with open(self._marker, "w", encoding="utf-8") as marker:
            marker.write(str(os.getpid()))
            marker.flush()
            os.fsync(marker.fileno())
        if self.pipeline is not None:
            self.pipeline.start()
        app = None
        if self.settings.http.enabled if http is None else http:
            app = create_app(self.settings, store=self.store, index=self.index,
                             ingestor=self.ingestor)
        operations = getattr(app.state, "operations", None) if app is not None else None
        if operations is not None and self.pipeline is not None:
            operations.attach(self.pipeline, self.store)  # completion/delivery metrics, retention job
        if dimse and self.settings.dicom.receiver_processes > 0:
            self._start_receivers(operations)
        elif dimse:
            # The audit trail records associations; the metrics count refused C-STOREs.
            self.dimse.handlers.operations = operations
            self.dimse.start(operations.audit.dimse_bindings() if operations is not None else ())
        if app is not None:
            from node.ui import mount_ui  # the status pages at /ui

            self.http = HttpServer(mount_ui(app, self.settings, index=self.index, store=self.store,
                                            ingestor=self.ingestor, pipeline=self.pipeline), self.settings.http)
            try:
                self.http.start()
            except OSError:
                self.http = None
                self._stop_dimse()
                raise
        if self.rebuild_reason is not None:
            threading.Thread(target=self._rebuild, args=(operations,), name="index-rebuild", daemon=True).start()

    def _rebuild(self, operations: object) -> None:
        """Rebuild the index from the stored files while the services answer (not ready)."""
        from node.ops.audit import AuditTrail

        progress = self.index.rebuild or RebuildProgress()
        step = max(1, progress.total // 10)

        def report(current: RebuildProgress) -> None:
            if current.done % step == 0 or current.done == current.total:
                log.warning("index rebuild: %d of %d stored files", current.done, current.total)

        started = time.time()
        rebuild_index(self.ingestor, progress, report)
        audit = getattr(operations, "audit", None) or AuditTrail.for_settings(self.settings, self.index)
        audit.index_rebuilt("pacsnode serve", {"reason": self.rebuild_reason, "files": progress.done,
                                               "unreadable": progress.unreadable,
                                               "seconds": round(time.time() - started, 1)})
        self.rebuild_reason = None

    def _start_receivers(self, operations: Any) -> None:
        """DIMSE in receiver processes (node.dimse.receivers), their events followed here."""
        self.events = EventFollower(self.index, self.store, self.ingestor)
        self.events.start()  # first hands over what a previous run left unfollowed
        metrics = operations.metrics if operations is not None else None
        if metrics is not None:
            metrics.before_exposition.append(self.events.catch_up)  # /metrics counts all committed

        def observed(stores: list[Any], refusals: list[Any]) -> None:
            if metrics is None:
                return
            for seconds, status in stores:
                metrics.store_observed(float(seconds), int(status))
            for status, calling_ae, count in refusals:
                for _ in range(int(count)):
                    metrics.store_refused(int(status), str(calling_ae))

        def receiver_died() -> None:
            self._reconcile_marker.touch()

        self.receivers = ReceiverPool(self.settings, self.settings.dicom.receiver_processes,
                                      on_events=self.events.wake, on_metrics=observed, on_death=receiver_died)
        if metrics is not None:
            metrics.before_exposition.append(self.receivers.flush_metrics)
        try:
            self.receivers.start()
        except OSError:
            self.receivers = None
            self.events.stop()
            raise

    def _stop_dimse(self) -> None:
        if self.receivers is not None:
            if self.receivers.stop():
                # An association was cut: an instance may have been written but not indexed.
                self._reconcile_marker.touch()
            self.receivers = None
        if self.events is not None:
            self.events.stop()
            self.events = None
        self.dimse.stop()

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        self._stop_dimse()
        if self.pipeline is not None:
            self.pipeline.stop()
        self.index.close()
        self._marker.unlink(missing_ok=True)
