"""DIMSE receiver processes: the node's associations served by several processes on one port.

One Python process spends about a millisecond of CPU per received instance and serialises
its associations on the GIL. With ``[dicom] workers`` > 0 (the default: one per CPU
core) the node's main process only accepts connections on ``[dicom] host:port`` and hands
each to the receiver process with the fewest open connections, over a Unix socket
(``SCM_RIGHTS``). Each receiver (:mod:`node.dimse.receiver`) runs the node's DIMSE
server on the connections it is handed: the association guard (allow-list, TLS handshake,
PDU limits), the fast C-STORE and C-FIND paths, C-MOVE and C-GET. All share the store and
the index (SQLite in WAL mode; writers take turns through a file lock), and the node
still acts as one:

* **events**: a receiver commits each instance together with a row of ``ingest_events``
  (:mod:`node.storage.events`) and wakes the main process, which hands the events to its
  listeners (completion, metrics, audit, the stored WADO-RS metadata, the status pages);
* **max_associations** is one limit across the processes: a receiver asks the main
  process for a slot when it negotiates an association and gives it back when the
  association ends; the slots of a receiver that dies are given back for it;
* **metrics**: receivers send their C-STORE latencies and refusals to the main process
  every quarter second; query, retrieve and association audit records they write into
  the shared index themselves.

A receiver that dies (a crash, ``kill -9``) loses only its open associations, whose
unanswered instances the senders were never told were stored; the main process starts
a new one and asks for a full store/index reconciliation at the next start. Receivers
die with the main process (``PR_SET_PDEATHSIG``, and the end of their Unix socket).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import Settings
from node.dimse.guard import AssociationSlots

__all__ = ["Channel", "ReceiverPool"]

log = logging.getLogger(__name__)

_MESSAGE_BYTES = 1 << 20
_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# glibc gives each thread that allocates its own malloc arena and keeps freed memory there;
# a receiver's association threads each handle ~100 KB buffers per instance.
_MALLOC = {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}


class Channel:
    """One end of a ``SOCK_SEQPACKET`` Unix socket pair: JSON messages, each with at most one
    file descriptor attached. Sending is thread-safe; one thread receives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    @staticmethod
    def pair() -> tuple[Channel, socket.socket]:
        """This process's end and the socket to hand to the other process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(ours), theirs

    def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._send_lock:
            if fd is None:
                self.sock.sendall(data)
            else:
                socket.send_fds(self.sock, [data], [fd])

    def receive(self) -> tuple[dict[str, Any], int | None] | None:
        """The next message and its descriptor; None when the other end closed."""
        data, fds, _flags, _address = socket.recv_fds(self.sock, _MESSAGE_BYTES, 1)
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        return json.loads(data), (fds[0] if fds else None)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass
class _Receiver:
    number: int
    process: subprocess.Popen[bytes]
    channel: Channel
    started: float
    ready: bool = False
    alive: bool = True
    connections: int = 0
    slots: int = 0
    reader: threading.Thread | None = field(default=None, repr=False)


class ReceiverPool:
    """The receiver processes of a node and the listener that feeds them.

    Parameters
    ----------
    settings:
        The node's settings (``[dicom]``: address, ``max_associations``, ``workers``).
    count:
        How many receiver processes.
    on_events:
        Called when a receiver committed instances (wakes the event follower).
    on_metrics:
        Called with each batch of a receiver's C-STORE observations:
        ``(observed [(seconds, status)], refused [(status, calling_ae, count)])``.
    on_death:
        Called when a receiver died (the node then reconciles at its next start).
    """

    def __init__(self, settings: Settings, count: int, *, on_events: Callable[[], None] = lambda: None,
                 on_metrics: Callable[[list[Any], list[Any]], None] | None = None,
                 on_death: Callable[[], None] = lambda: None) -> None:
        if count < 1:
            raise ValueError("a receiver pool needs at least one process")
        self.settings = settings
        self.count = count
        self.on_events = on_events
        self.on_metrics = on_metrics
        self.on_death = on_death
        self.slots = AssociationSlots(settings.dicom.max_associations)
        self._receivers: list[_Receiver | None] = [None] * count
        self._lock = threading.Condition()
        self._pending: deque[tuple[socket.socket, tuple[Any, ...]]] = deque()
        self._listener: socket.socket | None = None
        self._stopping = False
        self._turn = 0
        self._deaths: dict[int, int] = {}
        self._threads: list[threading.Thread] = []
        self._spawns: queue.Queue[tuple[float, int]] = queue.Queue()
        self._flushes: dict[int, threading.Event] = {}
        self._flush_ids = itertools.count(1)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, ready_timeout: float = 120.0) -> None:
        """Start the receivers and listen on ``[dicom] host:port`` once they are ready (or after
        ``ready_timeout`` seconds; connections then wait for the first one to be ready).

        The address is bound first, so a port in use fails here at once."""
        dicom = self.settings.dicom
        family = socket.AF_INET6 if ":" in dicom.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((dicom.host, dicom.port))
        except OSError:
            listener.close()
            raise
        self._listener = listener
        supervisor = threading.Thread(target=self._supervise, name="pacsnode-receivers", daemon=True)
        supervisor.start()
        self._threads.append(supervisor)
        for number in range(self.count):
            self._spawns.put((0.0, number))
        deadline = time.monotonic() + ready_timeout
        with self._lock:
            while not all(r is not None and r.ready for r in self._receivers):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    log.warning("not every DIMSE receiver was ready after %.0f s; listening anyway", ready_timeout)
                    break
                self._lock.wait(min(remaining, 0.5))
        listener.listen(128)
        accept = threading.Thread(target=self._accept_loop, name="pacsnode-dimse-acceptor", daemon=True)
        accept.start()
        self._threads.append(accept)
        log.info("DIMSE listening as %s on %s:%d%s, %d receiver process(es)", dicom.ae_title, dicom.host,
                 dicom.port, " (TLS)" if dicom.tls else "", self.count)

    def stop(self) -> bool:
        """Stop listening, end the receivers (SIGTERM, then SIGKILL after 10 s). Returns whether
        a receiver still had connections open (their associations were cut)."""
        with self._lock:
            self._stopping = True
            receivers = [r for r in self._receivers if r is not None]
            cut = any(r.alive and r.connections for r in receivers)
            pending = list(self._pending)
            self._pending.clear()
            self._lock.notify_all()
        self._spawns.put((0.0, -1))
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        for sock, _ in pending:
            sock.close()
        for receiver in receivers:
            if receiver.process.poll() is None:
                receiver.process.terminate()
        for receiver in receivers:
            try:
                receiver.process.wait(10)
            except subprocess.TimeoutExpired:
                receiver.process.kill()
                receiver.process.wait(5)
            receiver.channel.close()
        return cut

    @property
    def pids(self) -> list[int]:
        """Process ids of the running receivers."""
        with self._lock:
            return [r.process.pid for r in self._receivers if r is not None and r.alive]

    def _supervise(self) -> None:
        """Start receivers as asked, always from this one thread: the kernel's parent-death
        signal of a receiver (``PR_SET_PDEATHSIG``) follows the thread that started it, so
        that thread must live as long as the pool."""
        while True:
            at, number = self._spawns.get()
            if number < 0:
                return
            with self._lock:
                while not self._stopping and time.monotonic() < at:
                    self._lock.wait(at - time.monotonic())
                if self._stopping:
                    return
            try:
                self._spawn(number)
            except OSError:
                log.exception("DIMSE receiver %d could not be started; trying again", number)
                self._spawns.put((time.monotonic() + _RESTART_DELAYS[-1], number))

    def _spawn(self, number: int) -> None:
        channel, theirs = Channel.pair()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **_MALLOC}
        command = [sys.executable, "-m", "node.dimse.receiver", "--channel", str(theirs.fileno()),
                   "--number", str(number)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),), env=environment,
                                   cwd=str(Path.cwd()))
        theirs.close()
        assert process.stdin is not None
        try:
            process.stdin.write(self.settings.model_dump_json().encode())
            process.stdin.close()
        except OSError:
            pass  # it died at once; its channel's end says so
        receiver = _Receiver(number, process, channel, time.monotonic())
        receiver.reader = threading.Thread(target=self._read, args=(receiver,), daemon=True,
                                           name=f"pacsnode-receiver-{number}")
        with self._lock:
            self._receivers[number] = receiver
        receiver.reader.start()

    # -- connections ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, address = self._listener.accept()
            except OSError:
                with self._lock:
                    if self._stopping:
                        return
                time.sleep(0.05)  # e.g. EMFILE: let descriptors free up
                continue
            with self._lock:
                self._pending.append((client, address))
            self._hand_pending()

    def _choose(self) -> _Receiver | None:
        ready = [r for r in self._receivers if r is not None and r.alive and r.ready]
        if not ready:
            return None
        self._turn = (self._turn + 1) % len(ready)
        ordered = ready[self._turn:] + ready[:self._turn]  # ties go round
        return min(ordered, key=lambda r: r.connections)

    def _hand_pending(self) -> None:
        while True:
            with self._lock:
                if self._stopping or not self._pending:
                    return
                receiver = self._choose()
                if receiver is None:
                    return  # handed when a receiver is ready
                client, address = self._pending.popleft()
                receiver.connections += 1
            try:
                receiver.channel.send({"t": "conn", "address": list(address[:2])}, client.fileno())
            except OSError:
                with self._lock:
                    receiver.connections -= 1
                    self._pending.appendleft((client, address))
                    receiver.alive = False
                continue
            client.close()

    def flush_metrics(self, timeout: float = 2.0) -> None:
        """Have every live receiver send its pending C-STORE observations now, and wait (at most
        ``timeout`` seconds) until they were handed to ``on_metrics``, so that an exposition
        includes every C-STORE answered before it."""
        waits: list[tuple[_Receiver, int, threading.Event]] = []
        with self._lock:
            for receiver in self._receivers:
                if receiver is not None and receiver.alive and receiver.ready:
                    number = next(self._flush_ids)
                    self._flushes[number] = threading.Event()
                    waits.append((receiver, number, self._flushes[number]))
        for receiver, number, _ in waits:
            try:
                receiver.channel.send({"t": "flush", "id": number})
            except OSError:
                pass  # it is dying: its reader reports that
        deadline = time.monotonic() + timeout
        for _, number, event in waits:
            event.wait(max(0.0, deadline - time.monotonic()))
            with self._lock:
                self._flushes.pop(number, None)

    # -- messages from a receiver --------------------------------------------------------------

    def _read(self, receiver: _Receiver) -> None:
        while True:
            try:
                received = receiver.channel.receive()
            except OSError:
                received = None
            if received is None:
                self._died(receiver)
                return
            message, fd = received
            if fd is not None:
                os.close(fd)
            try:
                self._handle(receiver, message)
            except Exception:
                log.exception("message %r from receiver %d not handled", message.get("t"), receiver.number)

    def _handle(self, receiver: _Receiver, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "events":
            self.on_events()
        elif kind == "metrics":
            if self.on_metrics is not None:
                self.on_metrics(message.get("observed", []), message.get("refused", []))
        elif kind == "flushed":
            with self._lock:
                waiting = self._flushes.get(int(message.get("id") or 0))
            if waiting is not None:
                waiting.set()
        elif kind == "take":
            ok = self.slots.take()
            with self._lock:
                if ok:
                    receiver.slots += 1
            receiver.channel.send({"t": "slot", "id": message.get("id"), "ok": ok})
        elif kind == "give":
            with self._lock:
                if receiver.slots > 0:
                    receiver.slots -= 1
                    self.slots.give_back()
        elif kind == "closed":
            with self._lock:
                receiver.connections = max(0, receiver.connections - 1)
            self._hand_pending()
        elif kind == "ready":
            with self._lock:
                receiver.ready = True
                self._deaths.pop(receiver.number, None)
                self._lock.notify_all()
            log.info("DIMSE receiver %d ready (pid %d)", receiver.number, receiver.process.pid)
            self._hand_pending()

    def _died(self, receiver: _Receiver) -> None:
        with self._lock:
            receiver.alive = False
            for _ in range(receiver.slots):
                self.slots.give_back()
            receiver.slots = 0
            stopping = self._stopping
            deaths = self._deaths[receiver.number] = self._deaths.get(receiver.number, 0) + 1
        if stopping:
            return
        try:
            code = receiver.process.wait(5)
        except subprocess.TimeoutExpired:
            receiver.process.kill()
            code = receiver.process.wait(5)
        receiver.channel.close()
        log.error("DIMSE receiver %d (pid %d) ended with %s; its open associations are lost, starting "
                  "another", receiver.number, receiver.process.pid, code)
        self.on_death()
        delay = _RESTART_DELAYS[min(deaths, len(_RESTART_DELAYS)) - 1]
        self._spawns.put((time.monotonic() + delay, receiver.number))
