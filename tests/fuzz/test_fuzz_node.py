"""Bounded fuzzing of a serving node (part of ``make test``; ``python -m bench.fuzz --minutes N``
runs the same properties for longer): DIMSE association requests, PDU streams, C-STORE
datasets and C-FIND identifiers, STOW-RS bodies, QIDO-RS and WADO-RS requests. Every input is
answered (a DICOM status, an HTTP status below 500, A-ABORT or a closed connection for a
broken PDU) and the node answers C-ECHO afterwards with no handler exception in its log.

The example budget per property is ``PACSNODE_FUZZ_EXAMPLES`` (default 80) and the runs are
derandomised, so ``make test`` explores the same inputs every time.
"""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz import strategies
from tests.fuzz.harness import (
    STORED,
    FuzzTarget,
    check_association_request,
    check_c_find,
    check_c_store,
    check_pdu_stream,
    check_qido,
    check_stow,
    check_wado,
)

pytestmark = [pytest.mark.peers]

_BOUNDED = settings(max_examples=int(os.environ.get("PACSNODE_FUZZ_EXAMPLES", "80")), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@_BOUNDED
@given(request=strategies.association_requests())
def test_association_requests(fuzz_target: FuzzTarget, request: bytes) -> None:
    since = fuzz_target.log_position()
    check_association_request(fuzz_target, request)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(stream=strategies.pdu_streams())
def test_pdu_streams(fuzz_target: FuzzTarget, stream: bytes) -> None:
    since = fuzz_target.log_position()
    check_pdu_stream(fuzz_target, stream)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(case=strategies.datasets())
def test_c_store_datasets(fuzz_target: FuzzTarget, case: tuple[bytes, bool]) -> None:
    since = fuzz_target.log_position()
    check_c_store(fuzz_target, *case)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(identifier=strategies.find_identifiers())
def test_c_find_identifiers(fuzz_target: FuzzTarget, identifier: bytes) -> None:
    since = fuzz_target.log_position()
    check_c_find(fuzz_target, identifier)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(case=strategies.stow_bodies())
def test_stow_bodies(fuzz_target: FuzzTarget, http_client: httpx.Client, case: tuple[bytes, str]) -> None:
    since = fuzz_target.log_position()
    check_stow(fuzz_target, http_client, *case)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(case=strategies.qido_requests())
def test_qido_requests(fuzz_target: FuzzTarget, http_client: httpx.Client,
                       case: tuple[str, list[tuple[str, str]]]) -> None:
    since = fuzz_target.log_position()
    check_qido(fuzz_target, http_client, *case)
    fuzz_target.assert_healthy(since)


@_BOUNDED
@given(case=strategies.wado_paths(*STORED))
def test_wado_requests(fuzz_target: FuzzTarget, http_client: httpx.Client, case: tuple[str, dict[str, str]]) -> None:
    since = fuzz_target.log_position()
    check_wado(fuzz_target, http_client, *case)
    fuzz_target.assert_healthy(since)
