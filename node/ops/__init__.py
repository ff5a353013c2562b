"""Operating a node: Prometheus metrics, health probes, the audit trail, retention and logs.

:class:`Operations` bundles them for one node; the HTTP application includes
:meth:`Operations.routes` (``/metrics``, ``/healthz``, ``/readyz``), and the node calls
:meth:`Operations.attach` with its pipeline once it runs (completion and delivery metrics,
the delivery audit, the scheduled retention job).

The names below are imported when first used: a process that needs only the audit trail
or the logs (a DIMSE receiver process) does not load the HTTP side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.ops.audit import AuditEvent, AuditTrail, SyslogTarget
    from node.ops.health import Check, HealthProbes
    from node.ops.metrics import IndexCollector, NodeMetrics
    from node.ops.operations import Operations
    from node.ops.retention import Retention, RetentionScheduler

__all__ = ["AuditEvent", "AuditTrail", "Check", "HealthProbes", "IndexCollector", "NodeMetrics",
           "Operations", "Retention", "RetentionScheduler", "SyslogTarget"]

_WHERE = {
    "AuditEvent": "audit", "AuditTrail": "audit", "SyslogTarget": "audit",
    "Check": "health", "HealthProbes": "health",
    "IndexCollector": "metrics", "NodeMetrics": "metrics",
    "Operations": "operations",
    "Retention": "retention", "RetentionScheduler": "retention",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'node.ops' has no attribute {name!r}")
    return getattr(importlib.import_module(f"node.ops.{module}"), name)
