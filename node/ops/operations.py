""":class:`Operations`: a node's metrics, health probes, audit trail and retention together.

The HTTP application includes :meth:`Operations.routes` (``/metrics``, ``/healthz``,
``/readyz``), and the node calls :meth:`Operations.attach` with its pipeline once it
runs (completion and delivery metrics, the delivery audit, the scheduled retention job).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute

from node.config import Settings
from node.ingest import Ingestor
from node.ops.audit import AuditTrail, SyslogTarget
from node.ops.health import HealthProbes
from node.ops.metrics import NodeMetrics
from node.ops.retention import Retention, RetentionScheduler
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["Operations"]


class Operations:
    """Metrics, probes and the audit trail of one node.

    Parameters
    ----------
    settings:
        The node's settings.
    index:
        The node's index.
    ingestor:
        The node's ingestor; the metrics and the audit trail listen to it.
    syslog:
        Where audit messages go besides the index (None: ``[audit]`` of the settings).
    """

    def __init__(self, settings: Settings, *, index: Index, ingestor: Ingestor | None = None,
                 syslog: SyslogTarget | None = None) -> None:
        self.settings = settings
        self.index = index
        self.retention: RetentionScheduler | None = None
        self.metrics = NodeMetrics(index, settings.storage.path, ingestor)
        self.health = HealthProbes(settings, index)
        if syslog is None:
            self.audit = AuditTrail.for_settings(settings, index)
        else:
            self.audit = AuditTrail(index, source_id=settings.dicom.ae_title, syslog=syslog)
        if ingestor is not None:
            ingestor.listeners.append(self.audit.on_ingest)
        self.audit.start()
        self.audit.config_loaded("settings", {
            "ae_title": settings.dicom.ae_title, "dicom_port": settings.dicom.port,
            "http_port": settings.http.port, "executor": settings.jobs.executor,
            "storage": str(settings.storage.path)})

    def attach(self, pipeline: Any, store: InstanceStore) -> None:
        """Follow a running node's pipeline (:class:`node.jobs.run.Pipeline`).

        Completion lag and delivery attempts go to the metrics, every delivery (and failed
        attempt) to the audit trail, and with a retention time configured (``[storage]`` or a
        route) the retention job is scheduled every ``[storage] retention_interval_hours``.
        """
        self.metrics.attach(pipeline)
        outbox = pipeline.outbox
        outbox.on_sent.append(lambda name, uids: self.audit.delivery(name, instances=len(uids)))
        if hasattr(outbox, "on_failed"):
            outbox.on_failed.append(
                lambda name, count, reason: self.audit.delivery(name, instances=count, error=reason))
        retention = Retention.for_settings(self.settings, self.index, store, table=pipeline.table, audit=self.audit)
        if retention.configured and self.retention is None:
            self.retention = RetentionScheduler(retention, self.settings.storage.retention_interval_hours)
            self.retention.start()

    def close(self) -> None:
        """Stop the retention job, write pending audit rows and stop the audit flusher."""
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        self.audit.close()

    def routes(self) -> list[BaseRoute]:
        """``/metrics``, ``/healthz`` and ``/readyz``."""
        return [*self.metrics.routes(), *self.health.routes()]
