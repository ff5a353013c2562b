"""Shared fixtures: generated series and real peers (a pacsnode process, Orthanc, dcmtk)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.samples import SeriesSpec, write_mr_series
from tests.peers import NodeProcess, OrthancProcess, have, node_process, orthanc_process


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [p for p in ("storescu", "findscu", "movescu", "getscu", "echoscu") if not have(p)]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"dcmtk tools missing ({', '.join(missing)}): run `make test`, "
                                   "which installs Debian's dcmtk")
    for item in items:
        if "peers" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mr_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A generated 20-slice MR series (Part 10 files)."""
    return write_mr_series(tmp_path_factory.mktemp("mr"), SeriesSpec(slices=20, rows=64, columns=64))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """A fresh ``pacsnode serve`` on free loopback ports with its own storage."""
    with node_process(tmp_path / "node") as running:
        yield running


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    """A Debian Orthanc on free loopback ports (the hospital PACS in tests)."""
    if not have("Orthanc"):
        pytest.skip("Orthanc is missing: run `make test`, which installs Debian's orthanc")
    with orthanc_process(tmp_path / "orthanc") as running:
        yield running


pytest_plugins = ["tests.viewer_study"]  # analyzed_node: every analyzer's phantom study analyzed once
