"""Reusable anonymous-memory buffers for the WADO-RS stream.

A fresh 8 MB anonymous mapping costs far more than the data copied into it: every page
is faulted in and zeroed on first touch and returned on ``munmap`` (measured on the
benchmark machine: 6.6 ms to map, fill and free 8 MB, 0.2 ms to refill a mapping that is
already there). A series of 1,000 MR images is sixteen such batches, so the stream
takes its batch buffers from a :class:`BufferPool` and hands them back when sent.

A buffer handed back may still be referenced by the event loop's transport (a slice
written only in part is kept, not copied, by uvloop): it is taken again only once no
memoryview of it is left, which the mapping itself reports (a mapping with exported
buffers refuses to resize).
"""

from __future__ import annotations

import mmap
import threading

__all__ = ["BufferPool"]


def _exported(buffer: mmap.mmap) -> bool:
    try:
        buffer.resize(len(buffer))  # same size: a no-op unless a view of it is alive
    except BufferError:
        return True
    return False


class BufferPool:
    """Anonymous mappings of at least ``size`` bytes, kept for reuse.

    Parameters
    ----------
    size:
        Size of the buffers kept (requests for less get one of these).
    keep:
        Idle buffers kept at most; more are freed when handed back.
    """

    def __init__(self, size: int, keep: int) -> None:
        if size < 1 or keep < 0:
            raise ValueError("size must be positive and keep not negative")
        self.size = size
        self.keep = keep
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes that nothing else uses."""
        if size <= self.size:
            with self._lock:
                for position, buffer in enumerate(self._idle):
                    if not _exported(buffer):
                        return self._idle.pop(position)
        return mmap.mmap(-1, max(size, self.size))

    def give(self, buffer: mmap.mmap) -> None:
        """Hand a buffer back (views of it may still be alive; see the module docstring)."""
        if len(buffer) != self.size:
            return  # an oversized one (a large single instance) is freed with its last view
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(buffer)

    @property
    def idle(self) -> int:
        """Buffers kept for reuse now."""
        with self._lock:
            return len(self._idle)
