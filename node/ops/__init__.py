"""Operating a node: Prometheus metrics, health probes and the audit trail.

:class:`Operations` bundles them for one node; the HTTP application includes
:meth:`Operations.routes` (``/metrics``, ``/healthz``, ``/readyz``).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from node.config import Settings
from node.ingest import Ingestor
from node.ops.audit import AuditEvent, AuditTrail, SyslogTarget
from node.ops.health import Check, HealthProbes
from node.ops.metrics import IndexCollector, NodeMetrics
from node.storage.index import Index

__all__ = ["AuditEvent", "AuditTrail", "Check", "HealthProbes", "IndexCollector", "NodeMetrics",
           "Operations", "SyslogTarget"]


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
        Where audit messages go besides the index (None: the index alone).
    """

    def __init__(self, settings: Settings, *, index: Index, ingestor: Ingestor | None = None,
                 syslog: SyslogTarget | None = None) -> None:
        self.settings = settings
        self.metrics = NodeMetrics(index, settings.storage.path, ingestor)
        self.health = HealthProbes(settings, index)
        self.audit = AuditTrail(index, source_id=settings.dicom.ae_title, syslog=syslog)
        if ingestor is not None:
            ingestor.listeners.append(self.audit.on_ingest)
        self.audit.start()
        self.audit.config_loaded("settings", {
            "ae_title": settings.dicom.ae_title, "dicom_port": settings.dicom.port,
            "http_port": settings.http.port, "executor": settings.jobs.executor,
            "storage": str(settings.storage.path)})

    def close(self) -> None:
        """Write pending audit rows and stop the audit flusher."""
        self.audit.close()

    def routes(self) -> list[BaseRoute]:
        """``/metrics``, ``/healthz`` and ``/readyz``."""
        return [*self.metrics.routes(), *self.health.routes()]
