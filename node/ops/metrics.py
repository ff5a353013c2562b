"""Prometheus metrics of one node, in the text exposition format at ``/metrics``.

Each :class:`NodeMetrics` owns its own :class:`prometheus_client.CollectorRegistry`, so two
nodes in one process (tests, the demo) never share or double-count series. Counters that
follow events are fed as the events happen: the received counters by an ingest listener
(:attr:`node.ingest.Ingestor.listeners`), the refusals and the C-STORE latency by
:meth:`NodeMetrics.store_observed` / :meth:`NodeMetrics.store_refused`, which the DIMSE
C-STORE handler calls, the completion lag and the delivery attempts by
:meth:`NodeMetrics.attach`, which listens to a node's pipeline (completion tracker and
outbox). Everything that lives in the index (jobs by analyzer and state and their
durations, deliveries by destination and state, index size) is read from the index when
Prometheus scrapes, so it is always what the ledger says, never a second count that can
drift, and it survives restarts.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.ingest import Ingestor, IngestOutcome
from node.storage.index import Index, InstanceRecord

__all__ = ["COMPLETION_LAG_BUCKETS", "CSTORE_BUCKETS", "JOB_DURATION_BUCKETS", "IndexCollector", "NodeMetrics"]

log = logging.getLogger(__name__)

CSTORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from the complete C-STORE request to the status (check, write, fsync, index)."""
COMPLETION_LAG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Seconds from a series' last received instance to its completion (includes ``stable_after``)."""
JOB_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Seconds from a job's (last) start to its end, input fetch and output storage included."""


def _rows(index: Index, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Rows of ``sql``; none when the table is not there yet (a node without a pipeline)."""
    try:
        return list(index.reader().execute(sql, params))
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

    def describe(self) -> list[Metric]:
        # Describing without reading the index keeps registration free of I/O.
        return []

    def _job_durations(self) -> HistogramMetricFamily:
        """Durations of ended jobs by analyzer and end state, bucketed by SQLite at scrape time."""
        family = HistogramMetricFamily(
            "pacsnode_job_duration_seconds", "Seconds from a job's last start to its end (done, failed, "
            "rejected), by analyzer and state; read from the job ledger", labels=["analyzer", "state"])
        le = ", ".join(f"SUM(d <= {b!r})" for b in JOB_DURATION_BUCKETS)
        rows = _rows(self.index, f"SELECT analyzer, state, {le}, COUNT(*), COALESCE(SUM(d), 0) FROM "
                                 "(SELECT analyzer, state, MAX(finished_at - started_at, 0) AS d FROM jobs "
                                 "WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) "
                                 "GROUP BY analyzer, state")
        for analyzer, state, *values in rows:
            *cumulative, count, total = values
            buckets = [(repr(float(b)), float(c)) for b, c in  # type: ignore[arg-type]
                       zip(JOB_DURATION_BUCKETS, cumulative, strict=True)]
            buckets.append(("+Inf", float(count)))  # type: ignore[arg-type]
            family.add_metric([str(analyzer), str(state)], buckets, float(total))  # type: ignore[arg-type]
        return family

    def collect(self) -> Iterator[Metric]:
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
        yield self._job_durations()

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
        self.store_seconds = Histogram(
            "pacsnode_cstore_seconds", "Seconds from a complete C-STORE request to its response status "
            "(check, write, fsync, index), by answered status", ["status"], buckets=CSTORE_BUCKETS,
            registry=self.registry)
        self.completion_lag = Histogram(
            "pacsnode_completion_lag_seconds", "Seconds from a series' last received instance to its "
            "completion (its jobs queued)", buckets=COMPLETION_LAG_BUCKETS, registry=self.registry)
        self.delivery_attempts = Counter(
            "pacsnode_delivery_attempts", "Instances the outbox tried to send, by destination and result "
            "(sent, failed); a failed attempt is retried with backoff or dead-lettered",
            ["destination", "result"], registry=self.registry)
        self.index = index
        #: Called before each exposition (the node hands over the instances its receiver
        #: processes committed, so that the counters include every stored instance).
        self.before_exposition: list[Callable[[], object]] = []
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

    def store_observed(self, seconds: float, status: int) -> None:
        """Record one answered C-STORE: its handling time and status (the DIMSE handler calls this)."""
        self.store_seconds.labels(f"0x{status:04X}").observe(max(seconds, 0.0))

    def series_completed(self, last_received: float, now: float | None = None) -> None:
        """Record the completion lag of a series whose last instance arrived at ``last_received``."""
        self.completion_lag.observe(max((time.time() if now is None else now) - last_received, 0.0))

    def delivered(self, destination: str, sop_uids: Sequence[str]) -> None:
        """Outbox listener: instances sent to ``destination``."""
        self.delivery_attempts.labels(destination, "sent").inc(len(sop_uids))

    def delivery_failed(self, destination: str, count: int, reason: str = "") -> None:
        """Outbox listener: ``count`` instances not taken by ``destination`` this attempt."""
        self.delivery_attempts.labels(destination, "failed").inc(count)

    def attach(self, pipeline: Any) -> None:
        """Listen to a node's pipeline (:class:`node.jobs.run.Pipeline`): completion lag and deliveries.

        The completion tracker's callback is wrapped so each completion, once its jobs are
        queued, observes the time since the series' last instance; the outbox's ``on_sent``
        and ``on_failed`` listeners count delivery attempts.
        """
        completion = pipeline.completion
        inner: Callable[..., None] = completion.on_complete

        def on_complete(series_uid: str, *args: Any) -> None:
            inner(series_uid, *args)
            row = _rows(self.index, "SELECT last_received FROM series_state WHERE series_uid = ?", (series_uid,))
            if row and row[0][0] is not None:
                self.series_completed(float(row[0][0]))  # type: ignore[arg-type]

        completion.on_complete = on_complete
        pipeline.outbox.on_sent.append(self.delivered)
        on_failed = getattr(pipeline.outbox, "on_failed", None)
        if on_failed is not None:
            on_failed.append(self.delivery_failed)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        for hook in self.before_exposition:
            try:
                hook()
            except Exception:
                log.exception("before-exposition hook %r failed", hook)
        return generate_latest(self.registry)

    def routes(self) -> list[Route]:
        """``GET /metrics``."""

        def metrics(_request: Request) -> Response:
            # A sync endpoint: Starlette runs it in its thread pool, off the event loop,
            # because the collector reads SQLite.
            return Response(self.exposition(), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", metrics, methods=["GET"])]
