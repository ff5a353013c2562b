"""Liveness and readiness probes: ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process serves HTTP at all (a container orchestrator
restarts the node when it stops answering). ``/readyz`` answers 200 only when the node can
take new instances: the index accepts a write (and is not being rebuilt), the storage file
system has more free space than ``[storage] min_free_gb`` and, with ``[jobs] executor = "dask"``, the scheduler accepts
a TCP connection. Otherwise it answers 503 with every failed check and why, so a load
balancer stops sending and an operator sees what to fix.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from node.config import Settings
from node.storage.index import Index

__all__ = ["Check", "HealthProbes"]

_PROBE_TABLE = ("CREATE TABLE IF NOT EXISTS ops_readiness "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), checked_at REAL NOT NULL)")


@dataclass(frozen=True)
class Check:
    """The result of one readiness check."""

    name: str
    ok: bool
    detail: str


class HealthProbes:
    """The probes of one node.

    Parameters
    ----------
    settings:
        The node's settings (storage path and threshold, executor).
    index:
        The node's index, written to by the readiness check.
    connect_timeout:
        Seconds to wait for the Dask scheduler's TCP port.
    """

    def __init__(self, settings: Settings, index: Index, *, connect_timeout: float = 2.0) -> None:
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        self.settings = settings
        self.index = index
        self.connect_timeout = connect_timeout

    def check_index(self) -> Check:
        """A real write (one row replaced in a one-row table) in a write transaction; not ready
        while the index is being rebuilt from the stored files."""
        rebuild = self.index.rebuild
        if rebuild is not None and not rebuild.finished:
            return Check("index", False, f"the index is being rebuilt from the stored files: {rebuild.done} "
                                         f"of {rebuild.total or '?'} done; searches miss what is not yet indexed")
        try:
            with self.index.transaction() as conn:
                conn.execute(_PROBE_TABLE)
                conn.execute("INSERT OR REPLACE INTO ops_readiness (id, checked_at) VALUES (1, ?)",
                             (time.time(),))
        except sqlite3.Error as exc:
            return Check("index", False, f"the index {self.index.path} is not writable: {exc}")
        return Check("index", True, "writable")

    def check_disk(self) -> Check:
        storage = self.settings.storage
        try:
            free = shutil.disk_usage(storage.path).free
        except OSError as exc:
            return Check("disk", False, f"cannot read free space of {storage.path}: {exc.strerror}")
        needed = storage.min_free_gb * 1e9
        if free < needed:
            return Check("disk", False,
                         f"{free / 1e9:.2f} GB free on {storage.path}, below [storage] min_free_gb = "
                         f"{storage.min_free_gb:g}; new instances are refused (C-STORE 0xA700, "
                         "STOW-RS 507) until space is freed")
        return Check("disk", True, f"{free / 1e9:.2f} GB free (minimum {storage.min_free_gb:g} GB)")

    def check_executor(self) -> Check:
        jobs = self.settings.jobs
        if jobs.executor != "dask":
            return Check("executor", True, f"{jobs.executor} executor ({jobs.workers} worker processes)")
        address = urlsplit(jobs.scheduler or "")
        host, port = address.hostname, address.port
        if not host or not port:
            return Check("executor", False, f"[jobs] scheduler {jobs.scheduler!r} has no host:port")
        try:
            with socket.create_connection((host, port), timeout=self.connect_timeout):
                pass
        except OSError as exc:
            return Check("executor", False,
                         f"the Dask scheduler at {host}:{port} is not reachable: {exc}")
        return Check("executor", True, f"Dask scheduler {host}:{port} reachable")

    def readiness(self) -> list[Check]:
        return [self.check_index(), self.check_disk(), self.check_executor()]

    def routes(self) -> list[Route]:
        """``GET /healthz`` and ``GET /readyz``."""

        async def healthz(_request: Request) -> JSONResponse:
            return JSONResponse({"status": "up"})

        def readyz(_request: Request) -> JSONResponse:
            # sync: runs in the thread pool, because the checks touch SQLite, disk and network
            checks = self.readiness()
            ready = all(c.ok for c in checks)
            body = {"ready": ready,
                    "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
                    "reasons": [c.detail for c in checks if not c.ok]}
            return JSONResponse(body, status_code=200 if ready else 503)

        return [Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"])]
