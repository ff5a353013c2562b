"""One DIMSE receiver process (``python -m node.dimse.receiver``), started by the node.

It reads the node's settings (JSON) from stdin, opens the store and the index, and serves
the connections the node's main process hands it over the Unix socket ``--channel``
(:mod:`node.dimse.receivers` describes the whole). It stores instances through its own
:class:`~node.ingest.Ingestor`, whose commit adds the instances' ``ingest_events`` rows
(:class:`~node.storage.events.EventRecorder`) and updates the completion state of their
series in the same transaction; the main process does the rest.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

import pydicom.config

from node.config import Settings
from node.dimse.guard import NodeAssociationServer
from node.dimse.handlers import DimseHandlers
from node.dimse.receivers import Channel
from node.dimse.server import DimseServer, storage_sop_classes
from node.ingest import Ingestor
from node.ops.audit import AuditTrail
from node.ops.logs import setup_logging
from node.routing.completion import CompletionTracker
from node.routing.rules import load_routes
from node.storage.events import EventRecorder
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["HandedAssociationServer", "main"]

log = logging.getLogger(__name__)

_SLOT_ANSWER_S = 10.0
_FLUSH_S = 0.25
_WAKE_EVERY_S = 0.02


class HandedAssociationServer(NodeAssociationServer):
    """The node's association server without a listening socket: it serves the connections
    the node's main process accepted and handed over (:meth:`take`). ``node_address`` is
    the node's own ``(host, port)`` (what pynetdicom reports as the local address)."""

    def __init__(self, *args: Any, node_address: tuple[str, int], on_closed: Any = None, **kwargs: Any) -> None:
        self._node_address = node_address
        self.on_closed = on_closed
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.server_address = self._node_address
        assert self.socket is not None
        self.socket.close()

    def server_activate(self) -> None:
        pass

    def take(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Serve a handed connection in its own thread (TLS handshake there, as for accepted ones)."""
        sock.settimeout(self.network_timeout)
        self.process_request(sock, address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self.on_closed is not None:
                self.on_closed()

    def shutdown(self) -> None:
        # Nothing runs serve_forever here: socketserver's shutdown would wait for it forever.
        if self in self.ae._servers:
            self.ae._servers.remove(self)


class _Link:
    """The receiver's side of its channel: slots, wake-ups, metrics, closed connections."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._answers: dict[int, tuple[threading.Event, list[bool]]] = {}
        self._lock = threading.Lock()
        self._last_wake = 0.0
        self._observed: list[tuple[float, int]] = []
        self._refused: Counter[tuple[int, str]] = Counter()
        self.limit = 0  # set from [dicom] max_associations (named in refusals)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.channel.send(message)
        except OSError:
            os._exit(0)  # the node is gone: so is this receiver

    # AssociationSlots, asked of the node
    def take(self) -> bool:
        number = next(self._ids)
        answered = threading.Event()
        answer: list[bool] = []
        with self._lock:
            self._answers[number] = (answered, answer)
        self.send({"t": "take", "id": number})
        answered.wait(_SLOT_ANSWER_S)
        with self._lock:
            self._answers.pop(number, None)
        return bool(answer and answer[0])

    def give_back(self) -> None:
        self.send({"t": "give"})

    def answered(self, message: dict[str, Any]) -> None:
        with self._lock:
            waiting = self._answers.get(int(message.get("id") or 0))
        if waiting is not None:
            waiting[1].append(bool(message.get("ok")))
            waiting[0].set()

    # wake-ups of the node's event follower, at most every _WAKE_EVERY_S
    def events(self) -> None:
        now = time.monotonic()
        if now - self._last_wake >= _WAKE_EVERY_S:
            self._last_wake = now
            self.send({"t": "events"})

    def closed(self) -> None:
        self.send({"t": "closed"})

    # the metrics the DIMSE handlers report (NodeMetrics' interface)
    def store_observed(self, seconds: float, status: int) -> None:
        with self._lock:
            self._observed.append((round(seconds, 6), status))

    def store_refused(self, status: int, calling_ae: str = "") -> None:
        with self._lock:
            self._refused[(status, calling_ae)] += 1

    def flush(self) -> None:
        """Send the observations gathered since the last flush (nothing when there are none)."""
        with self._lock:
            observed, self._observed = self._observed, []
            refused, self._refused = self._refused, Counter()
            # under the lock: a concurrent flush cannot overtake this batch on the channel
            if observed or refused:
                self.send({"t": "metrics", "observed": observed,
                           "refused": [[status, ae, count] for (status, ae), count in refused.items()]})

    def flush_forever(self) -> None:
        while True:
            time.sleep(_FLUSH_S)
            self.flush()


class _Operations:
    """What the DIMSE handlers report to: metrics go to the node, audit records into the index."""

    def __init__(self, metrics: _Link, audit: AuditTrail) -> None:
        self.metrics = metrics
        self.audit = audit


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        parent = os.getppid()
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:
            os._exit(1)


def serve(settings: Settings, channel: Channel, number: int) -> None:
    """Serve handed connections until the node closes the channel."""
    storage = settings.storage
    store = InstanceStore(storage.path, fsync=storage.fsync, min_free_bytes=int(storage.min_free_gb * 1e9))
    index = Index(storage.index_path)
    link = _Link(channel)
    ingestor = Ingestor(store, index,
                        allowed_sop_classes=settings.dicom.storage_sop_classes or storage_sop_classes(),
                        duplicate_policy=storage.duplicate_policy, max_sequence_depth=storage.max_sequence_depth)
    # The completion state of a series is updated in the transaction that stores its instances;
    # the node's tracker (main process) runs the timers.
    table = load_routes(settings.routing.routes)
    ingestor.listeners.append(CompletionTracker(index, table.select, settings.routing.stable_after,
                                                lambda *_: None))
    ingestor.listeners.append(EventRecorder(link.events))
    handlers = DimseHandlers(settings, ingestor, index)
    audit = AuditTrail.for_settings(settings, index)
    handlers.operations = _Operations(link, audit)
    server = DimseServer(settings.dicom, handlers, sop_classes=settings.dicom.storage_sop_classes or None)
    link.limit = settings.dicom.max_associations
    server.slots = link  # type: ignore[assignment]  # the node counts associations across receivers
    handed = server.make_server(audit.dimse_bindings(), HandedAssociationServer,
                                node_address=(settings.dicom.host, settings.dicom.port), on_closed=link.closed)
    assert isinstance(handed, HandedAssociationServer)
    threading.Thread(target=link.flush_forever, name="pacsnode-receiver-metrics", daemon=True).start()
    link.send({"t": "ready"})
    log.debug("DIMSE receiver %d serving (pid %d)", number, os.getpid())
    while True:
        try:
            received = channel.receive()
        except OSError:
            received = None
        if received is None:
            break
        message, fd = received
        if message.get("t") == "conn" and fd is not None:
            address = message.get("address") or ["", 0]
            sock = socket.socket(fileno=fd)
            handed.take(sock, (str(address[0]), int(address[1])))
        elif message.get("t") == "slot":
            link.answered(message)
        elif message.get("t") == "flush":
            # /metrics is about to be read: what was answered before must be in it
            link.flush()
            link.send({"t": "flushed", "id": message.get("id")})
        elif fd is not None:
            os.close(fd)
    # The node closed the channel (it stops, or it died): nothing here outlives it.
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.dimse.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", type=int, required=True, help="descriptor of the Unix socket to the node")
    parser.add_argument("--number", type=int, default=0, help="this receiver's number (for the log)")
    args = parser.parse_args(argv)
    _die_with_parent()
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    setup_logging(settings.logging)
    # Instances are stored as received; checking each converted value against its VR's rules
    # (regular expressions, a warning at most) cost 6 % of a receiver's time per instance.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    channel = Channel(socket.socket(fileno=args.channel))
    serve(settings, channel, args.number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
