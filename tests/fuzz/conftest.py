"""One node serves every fuzz test: short network timeouts (so a cut-off PDU costs seconds,
not a minute), fsync off (durability is tested elsewhere), one stored instance for WADO-RS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fuzz.harness import FUZZ_NODE_ENV, FuzzTarget, store_reference_instance
from tests.peers import node_process, wait_for_port


@pytest.fixture(scope="package")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    folder: Path = tmp_path_factory.mktemp("fuzz") / "node"
    with node_process(folder, env=FUZZ_NODE_ENV) as node:
        wait_for_port(node.http_port)
        target = FuzzTarget(node.port, node.http_port, node.log, index=node.storage / "index.sqlite")
        store_reference_instance(target)
        yield target


@pytest.fixture(scope="package")
def http_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client
