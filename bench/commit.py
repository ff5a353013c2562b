"""Durable-commit schemes for instance files, measured on the disk the node stores to.

Run ``python -m bench.commit [--dir PATH] [--writers 1 4 8] [--files 400] [--rounds 3]``.
Each writer thread stands for one association: it writes 128 KiB instances one after
another and may "answer" one only when that instance is durable (as the node does). For
every scheme and writer count it prints the instances/s over all writers and the median
and 90th percentile of one instance's write-to-durable latency. The schemes take turns
within each round, so load from other processes hits them alike; medians over rounds.

Schemes (see docs/storage.md, "Choosing the durable commit"):

``fsync``
    per file: temporary name, write, ``fsync``, rename (what each instance cost before).
``group``
    per file, group commit: write the temporary file, start its writeback
    (``sync_file_range``), then one committer thread waits for the writeback of every
    file that arrived meanwhile and makes them all durable with one ``fsync`` of the last
    one (a journal commit holds every file created in it); then each file is renamed.
``journal``
    an append-only, preallocated journal segment: each instance is appended, one
    ``fdatasync`` makes every record appended meanwhile durable (group commit); the
    instance file is then written without a flush (it is re-made from the journal after a
    crash).
``odsync``
    the same journal segment opened ``O_DSYNC``: each append is its own flush.
``none``
    no flush at all (``[storage] fsync = false``): the ceiling, not durable.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

SIZE = 128 * 1024
SEGMENT = 32 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def sync_file_range(fd: int, flags: int) -> None:
    if _libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), flags) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


class _Committer:
    """Group commit: callers queue work and wait; one thread runs ``flush(batch)`` for all
    queued items at a time."""

    def __init__(self, flush: Callable[[list[int]], None]) -> None:
        self._flush = flush
        self._lock = threading.Condition()
        self._queued: list[int] = []
        self._done_upto = 0
        self._issued = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wait(self, item: int) -> None:
        with self._lock:
            self._issued += 1
            ticket = self._issued
            self._queued.append(item)
            self._lock.notify_all()
            while self._done_upto < ticket:
                self._lock.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                batch, self._queued = self._queued, []
                upto = self._issued
            self._flush(batch)
            with self._lock:
                self._done_upto = upto
                self._lock.notify_all()

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join()


class Scheme:
    name = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, writer: int, number: int, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _temp(self, writer: int, number: int, data: bytes) -> tuple[Path, Path]:
        final = self.folder / f"{writer}-{number}.dcm"
        return final, final.with_name(f".{final.name}.{zlib.crc32(data):08x}.part")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FsyncEach(Scheme):
    name = "fsync"

    def write(self, writer: int, number: int, data: bytes) -> None:
        final, temp = self._temp(writer, number, data)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)


class NoFlush(Scheme):
    name = "none"

    def write(self, writer: int, number: int, data: bytes) -> None:
        final, temp = self._temp(writer, number, data)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, final)


class GroupFsync(Scheme):
    name = "group"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._fds: dict[int, int] = {}
        self._ids = 0
        self._lock = threading.Lock()
        self._committer = _Committer(self._flush)

    def _flush(self, batch: list[int]) -> None:
        for fd in batch:
            sync_file_range(fd, _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE
                            | _SYNC_FILE_RANGE_WAIT_AFTER)
        os.fsync(batch[-1])  # commits the journal transaction that holds every file's creation

    def write(self, writer: int, number: int, data: bytes) -> None:
        final, temp = self._temp(writer, number, data)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            sync_file_range(fd, _SYNC_FILE_RANGE_WRITE)
            self._committer.wait(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)

    def close(self) -> None:
        self._committer.close()


class Journal(Scheme):
    name = "journal"
    dsync = False

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        path = folder / "journal.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        block = b"\0" * (4 << 20)
        for _ in range(SEGMENT // len(block)):  # written, not just allocated: no extent changes later
            _write_all(fd, block)
        os.fsync(fd)
        os.close(fd)
        self._fd = os.open(path, os.O_RDWR | (os.O_DSYNC if self.dsync else 0))
        self._offset = 0
        self._lock = threading.Lock()
        self._committer = None if self.dsync else _Committer(lambda batch: os.fdatasync(self._fd))

    def write(self, writer: int, number: int, data: bytes) -> None:
        header = f"{writer}-{number}:{len(data)}:{zlib.crc32(data):08x}\n".encode().ljust(64)
        with self._lock:
            at = self._offset
            self._offset = (at + len(header) + len(data) + 4095) // 4096 * 4096 % (SEGMENT - (1 << 20))
        os.pwritev(self._fd, [header, data], at)
        if self._committer is not None:
            self._committer.wait(at)
        NoFlush.write(self, writer, number, data)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._committer is not None:
            self._committer.close()
        os.close(self._fd)


class JournalDsync(Journal):
    name = "odsync"
    dsync = True


class JournalPerWriter(Scheme):
    """One journal segment per writer, each with its own ``fdatasync`` (no grouping)."""

    name = "journal-each"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._journals: dict[int, Journal] = {}
        self._lock = threading.Lock()

    def write(self, writer: int, number: int, data: bytes) -> None:
        with self._lock:
            journal = self._journals.get(writer)
            if journal is None:
                sub = self.folder / f"w{writer}"
                sub.mkdir()
                journal = self._journals[writer] = Journal(sub)
        journal.write(writer, number, data)

    def close(self) -> None:
        for journal in self._journals.values():
            journal.close()


SCHEMES: dict[str, type[Scheme]] = {s.name: s for s in (FsyncEach, GroupFsync, Journal, JournalPerWriter,
                                                         JournalDsync, NoFlush)}


def run(scheme: type[Scheme], folder: Path, writers: int, files: int) -> tuple[float, list[float]]:
    """Instances/s over all writers, and each instance's latency (s)."""
    folder.mkdir(parents=True)
    target = scheme(folder)
    payloads = [os.urandom(SIZE) for _ in range(writers)]
    latencies: list[float] = []
    lock = threading.Lock()
    per_writer = max(1, files // writers)

    def writer(index: int) -> None:
        own = []
        for number in range(per_writer):
            started = time.perf_counter()
            target.write(index, number, payloads[index])
            own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    os.sync()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    target.close()
    return per_writer * writers / elapsed, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="folder on the storage volume (default: a temp folder)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--files", type=int, default=400, help="instances per run, over all writers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pacsnode-commit-", dir=args.dir))
    results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
    try:
        for writers in args.writers:
            for round_number in range(args.rounds):
                for name in args.schemes:
                    folder = root / f"{name}-{writers}-{round_number}"
                    results.setdefault((name, writers), []).append(
                        run(SCHEMES[name], folder, writers, args.files))
                    for path in sorted(folder.rglob("*"), reverse=True):
                        path.unlink() if path.is_file() else path.rmdir()
                    folder.rmdir()
    finally:
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        root.rmdir()
    print("| scheme | writers | instances/s | median ms | p90 ms |")
    print("|---|---|---|---|---|")
    for (name, writers), runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        pooled = sorted(x for r in runs for x in r[1])
        p90 = pooled[int(0.9 * (len(pooled) - 1))]
        print(f"| {name} | {writers} | {rate:.0f} | {statistics.median(pooled) * 1000:.2f} | {p90 * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
