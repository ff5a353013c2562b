"""Prometheus metrics of one node, in the text exposition format at ``/metrics``.

Each :class:`NodeMetrics` owns its own :class:`prometheus_client.CollectorRegistry`, so two
nodes in one process (tests, the demo) never share or double-count series. Counters that
follow events (instances received, C-STORE refusals) are fed as the events happen: the
received counters by an ingest listener (:attr:`node.ingest.Ingestor.listeners`), the
refusals by :meth:`NodeMetrics.store_refused`, which the DIMSE C-STORE handler calls with
the status it answers. Everything that lives in the index (jobs by analyzer and state,
deliveries by destination and state, index size) is read from the index when Prometheus
scrapes, so it is always what the ledger says, never a second count that can drift.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.ingest import Ingestor, IngestOutcome
from node.storage.index import Index, InstanceRecord

__all__ = ["IndexCollector", "NodeMetrics"]

log = logging.getLogger(__name__)


def _rows(index: Index, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql``; none when the table is not there yet (a node without a pipeline)."""
    try:
        return list(index.reader().execute(sql))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


class IndexCollector(Collector):
    """Gauges read from the node's index and storage at scrape time.

    Parameters
    ----------
    index:
        The node's index (jobs, deliveries and instance tables live in it).
    storage_root:
        The storage folder, whose file system's free space is reported.
    """

    def __init__(self, index: Index, storage_root: Path) -> None:
        self.index = index
        self.storage_root = Path(storage_root)

    def describe(self) -> list[GaugeMetricFamily]:
        # Describing without reading the index keeps registration free of I/O.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("pacsnode_jobs", "Jobs in the ledger by analyzer and state",
                                 labels=["analyzer", "state"])
        for analyzer, state, count in _rows(
                self.index, "SELECT analyzer, state, COUNT(*) FROM jobs GROUP BY analyzer, state"):
            jobs.add_metric([str(analyzer), str(state)], float(count))  # type: ignore[arg-type]
        yield jobs

        deliveries = GaugeMetricFamily(
            "pacsnode_deliveries", "Deliveries in the outbox by destination and state "
            "(pending, sent, dead = dead-lettered)", labels=["destination", "state"])
        for destination, state, count in _rows(
                self.index,
                "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"):
            deliveries.add_metric([str(destination), str(state)], float(count))  # type: ignore[arg-type]
        yield deliveries

        sizes = _rows(self.index, "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM instances")
        instances, stored_bytes = sizes[0] if sizes else (0, 0)
        yield GaugeMetricFamily("pacsnode_index_instances", "Instances in the index",
                                value=float(instances))  # type: ignore[arg-type]
        yield GaugeMetricFamily("pacsnode_index_stored_bytes",
                                "Bytes of the instance files the index lists",
                                value=float(stored_bytes))  # type: ignore[arg-type]
        for table in ("series", "studies"):
            count = _rows(self.index, f"SELECT COUNT(*) FROM {table}")
            yield GaugeMetricFamily(f"pacsnode_index_{table}", f"{table.capitalize()} in the index",
                                    value=float(count[0][0]) if count else 0.0)  # type: ignore[arg-type]
        index_file = self.index.path
        index_bytes = sum(p.stat().st_size for p in
                          (index_file, index_file.with_name(index_file.name + "-wal"))
                          if p.exists())
        yield GaugeMetricFamily("pacsnode_index_file_bytes",
                                "Size of the SQLite index file and its write-ahead log",
                                value=float(index_bytes))
        yield GaugeMetricFamily("pacsnode_storage_free_bytes",
                                "Free bytes on the file system of the storage folder",
                                value=float(shutil.disk_usage(self.storage_root).free))


class NodeMetrics:
    """The node's metrics: event counters plus the index collector, in one registry.

    Parameters
    ----------
    index:
        The node's index.
    storage_root:
        The storage folder (``[storage] path``).
    ingestor:
        When given, :meth:`on_ingest` is added to its listeners, so every stored instance
        (DIMSE, STOW-RS, job outputs) is counted once.
    """

    def __init__(self, index: Index, storage_root: Path, ingestor: Ingestor | None = None) -> None:
        self.registry = CollectorRegistry()
        self.received_instances = Counter(
            "pacsnode_received_instances", "Instances stored, by calling AE title "
            "(STOW-RS: the token's name)", ["calling_ae"], registry=self.registry)
        self.received_bytes = Counter(
            "pacsnode_received_bytes", "Bytes of instances stored, by calling AE title",
            ["calling_ae"], registry=self.registry)
        self.store_refusals = Counter(
            "pacsnode_cstore_refusals", "C-STORE requests refused, by DIMSE status "
            "(e.g. 0xA700 out of resources)", ["status", "calling_ae"], registry=self.registry)
        self.registry.register(IndexCollector(index, storage_root))
        if ingestor is not None:
            ingestor.listeners.append(self.on_ingest)

    def on_ingest(self, outcome: IngestOutcome, record: InstanceRecord) -> None:
        """Ingest listener: count the stored instance and its bytes."""
        calling = outcome.calling_ae.strip() or "-"
        self.received_instances.labels(calling).inc()
        self.received_bytes.labels(calling).inc(outcome.size)

    def store_refused(self, status: int, calling_ae: str = "") -> None:
        """Count a refused C-STORE; the DIMSE handler calls this with the status it answers."""
        self.store_refusals.labels(f"0x{status:04X}", calling_ae.strip() or "-").inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def routes(self) -> list[Route]:
        """``GET /metrics``."""

        def metrics(_request: Request) -> Response:
            # A sync endpoint: Starlette runs it in its thread pool, off the event loop,
            # because the collector reads SQLite.
            return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics, methods=["GET"])]
