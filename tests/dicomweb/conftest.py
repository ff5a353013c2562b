"""Fixtures of the DICOMweb tests: an in-process DICOMweb server on a free loopback port,
holding one generated MR series, and helpers to build STOW-RS bodies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.config import Settings
from node.dicomweb import HttpServer, create_app
from node.dicomweb.client import StowClient
from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port


@dataclass
class RunningService:
    """A DICOMweb server in this process and what it holds."""

    server: HttpServer
    settings: Settings
    files: list[Path]
    study_uid: str
    series_uid: str

    @property
    def url(self) -> str:
        return self.server.url


def start_service(folder: Path, **http: object) -> tuple[HttpServer, Settings]:
    """Start a DICOMweb server with its own storage under ``folder`` (fsync off: these tests
    check protocol behaviour, the durability tests live with ingest)."""
    settings = Settings.model_validate({
        "storage": {"path": str(folder / "var"), "fsync": False, "min_free_gb": 0},
        "http": {"host": "127.0.0.1", "port": free_port(), **http},
    })
    server = HttpServer(create_app(settings), settings.http)
    server.start()
    return server, settings


def multipart_body(parts: list[bytes], boundary: str = "test-boundary",
                   content_type: str = "application/dicom") -> bytes:
    """A well-formed multipart/related body of ``parts``."""
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """A DICOMweb server holding one 6-slice 64×64 MR series (stored over STOW-RS)."""
    folder = tmp_path_factory.mktemp("dicomweb")
    files = write_mr_series(folder / "in", SeriesSpec(slices=6, rows=64, columns=64,
                                                      patient_name="Doe^Jane"))
    server, settings = start_service(folder)
    try:
        with StowClient(server.url) as client:
            report = client.store_files(files)
        assert report.ok, report
        from pydicom import dcmread

        first = dcmread(files[0], stop_before_pixels=True)
        yield RunningService(server, settings, files, str(first.StudyInstanceUID),
                             str(first.SeriesInstanceUID))
    finally:
        server.stop()
