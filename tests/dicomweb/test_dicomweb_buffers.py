"""The WADO-RS batch buffer pool: reuse, and no reuse while a view of a buffer is alive."""

from __future__ import annotations

import pytest

from node.dicomweb.buffers import BufferPool


def test_a_handed_back_buffer_is_reused() -> None:
    pool = BufferPool(1024, keep=2)
    first = pool.take(100)
    assert len(first) == 1024
    pool.give(first)
    assert pool.idle == 1
    assert pool.take(1024) is first
    assert pool.idle == 0


def test_a_buffer_still_viewed_is_not_handed_out() -> None:
    pool = BufferPool(1024, keep=2)
    buffer = pool.take(10)
    buffer[:5] = b"parts"
    in_flight = memoryview(buffer)[:5]  # as a transport keeps a slice it has not written yet
    pool.give(buffer)
    other = pool.take(10)
    assert other is not buffer
    other[:5] = b"other"
    assert bytes(in_flight) == b"parts"
    in_flight.release()
    assert pool.take(10) is buffer


def test_oversized_requests_and_surplus_buffers_are_not_kept() -> None:
    pool = BufferPool(1024, keep=1)
    large = pool.take(4096)
    assert len(large) == 4096
    pool.give(large)
    assert pool.idle == 0
    a, b = pool.take(1), pool.take(1)
    pool.give(a)
    pool.give(b)
    assert pool.idle == 1


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        BufferPool(0, keep=1)
