"""Who gets in and how: bearer tokens (401/403), CORS for browser viewers, TLS, the
service mounted as a plugin inside another ASGI application, and the node starting it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydicom import dcmread
from starlette.testclient import TestClient

from node.config import Settings
from node.dicomweb import create_app
from node.dicomweb.client import StowClient, StowError
from node.runtime import Node
from node.samples import SeriesSpec, write_mr_series
from tests.dicomweb.conftest import start_service
from tests.peers import free_port, start_node, write_node_config

READ = "read-token-0123456789"
WRITE = "write-token-0123456789"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_mr_series(tmp_path_factory.mktemp("access"),
                           SeriesSpec(slices=2, rows=16, columns=16, seed=11))


def test_bearer_tokens(tmp_path: Path, files: list[Path]) -> None:
    server, settings = start_service(tmp_path, tokens=[
        {"token": READ, "scope": "read"},
        {"token": WRITE, "scope": "read-write", "name": "workers"}])
    try:
        with httpx.Client(base_url=server.url) as http:
            anonymous = http.get("/studies")
            assert anonymous.status_code == 401
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            wrong = http.get("/studies", headers={"Authorization": "Bearer not-a-token-at-all"})
            assert wrong.status_code == 401
            assert http.get("/studies", headers={"Authorization": f"Bearer {READ}"}).json() == []
        with StowClient(server.url, token=READ) as reader, pytest.raises(StowError) as refused:
            reader.store_files(files)
        assert refused.value.status == 403
        with StowClient(server.url, token=WRITE) as writer:
            assert writer.store_files(files).ok
        stored = next((settings.storage.path / "store").rglob("*.dcm"))
        assert dcmread(stored).file_meta.SourceApplicationEntityTitle == "workers"
        with StowClient(server.url) as nobody, pytest.raises(StowError) as unauthenticated:
            nobody.store_files(files)
        assert unauthenticated.value.status == 401
    finally:
        server.stop()


def test_stow_without_a_token_names_the_service_as_source(tmp_path: Path, files: list[Path]) -> None:
    """SourceApplicationEntityTitle of a STOW-stored file is the token's name, else ``STOW-RS``
    (never the client's address, which is no AE title)."""
    server, settings = start_service(tmp_path)
    try:
        with StowClient(server.url) as anyone:
            assert anyone.store_files(files).ok
        stored = sorted((settings.storage.path / "store").rglob("*.dcm"))
        assert len(stored) == len(files)
        assert {dcmread(f).file_meta.SourceApplicationEntityTitle for f in stored} == {"STOW-RS"}
    finally:
        server.stop()


def test_cors_for_a_browser_viewer(tmp_path: Path) -> None:
    viewer = "http://viewer.example:3000"
    server, _ = start_service(tmp_path, cors_origins=[viewer], tokens=[{"token": READ}])
    try:
        with httpx.Client(base_url=server.url) as http:
            preflight = http.options("/studies", headers={
                "Origin": viewer, "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization"})
            assert preflight.status_code == 200  # no token needed for a preflight
            assert preflight.headers["access-control-allow-origin"] == viewer
            simple = http.get("/studies", headers={"Origin": viewer,
                                                   "Authorization": f"Bearer {READ}"})
            assert simple.headers["access-control-allow-origin"] == viewer
            other = http.get("/studies", headers={"Origin": "http://evil.example",
                                                  "Authorization": f"Bearer {READ}"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a "
                                                            "test certificate")
def test_tls(tmp_path: Path, files: list[Path]) -> None:
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, _ = start_service(tmp_path, tls={"cert": str(cert), "key": str(key)})
    try:
        assert server.url.startswith("https://")
        with StowClient(server.url, verify=_context(cert)) as client:
            assert client.store_files(files).ok
        studies = httpx.get(f"{server.url}/studies", verify=_context(cert)).json()
        assert len(studies) == 1
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/studies")  # an unknown certificate is refused
    finally:
        server.stop()


def _context(cert: Path):  # type: ignore[no-untyped-def]
    import ssl

    return ssl.create_default_context(cafile=str(cert))


def test_mounted_as_a_plugin(tmp_path: Path, files: list[Path]) -> None:
    """A site's existing FastAPI service mounts DICOMweb with its own store under /pacs."""
    settings = Settings.model_validate({
        "storage": {"path": str(tmp_path / "var"), "fsync": False, "min_free_gb": 0},
        "http": {"base_path": "/"}})
    site = FastAPI()

    @site.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    site.mount("/pacs", create_app(settings))
    with TestClient(site) as client:
        assert client.get("/health").json() == {"status": "ok"}
        boundary = "plugin-boundary"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                        + p.read_bytes() + b"\r\n" for p in files) + f"--{boundary}--".encode()
        stored = client.post("/pacs/studies", content=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert stored.status_code == 200, stored.text
        (study,) = client.get("/pacs/studies").json()
        assert study["00081190"]["Value"][0].startswith("http://testserver/pacs/studies/")
    assert (tmp_path / "var" / "index.sqlite").exists()


def test_node_serves_dicomweb(tmp_path: Path, files: list[Path]) -> None:
    settings = Settings.model_validate({
        "storage": {"path": str(tmp_path / "var"), "fsync": False, "min_free_gb": 0},
        "http": {"port": free_port()}, "dicom": {"port": free_port()}})
    node = Node(settings, pipeline=False)
    node.start(dimse=False)
    try:
        assert node.http is not None
        with StowClient(node.http.url) as client:
            assert client.store_files(files).ok
        assert node.index.instance_count() == len(files)  # the node's own index
    finally:
        node.stop()
    assert node.http is None


def test_serve_no_dimse_runs_dicomweb_alone(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    config = write_node_config(tmp_path, port=dicom_port, http_port=http_port)
    running = start_node(config, storage=tmp_path / "var", port=http_port, http_port=http_port,
                         log=tmp_path / "node.log", args=("--no-dimse",))
    try:
        assert httpx.get(f"http://127.0.0.1:{http_port}/dicom-web/studies").json() == []
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{dicom_port}/")  # no DIMSE listener
    finally:
        running.stop()
    assert "DICOMweb http://127.0.0.1" in (tmp_path / "node.log").read_text()
