"""``/viewer``: the node serves an installed OHIF build under /viewer with its generated
configuration (fast checks on a minimal build laid out like ``@ohif/app``'s ``dist/``; the real
OHIF is driven in Chromium by tests/test_ohif_browser.py).

The stand-in build has what the rewrites touch: ``index.html`` with ``window.PUBLIC_URL="/"`` and
absolute ``src``/``href``, an entry bundle that sets webpack's public path to ``/``, a chunk that
does not, and a style sheet with ``url(/...)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from node.config import load_settings
from node.dicomweb import create_app
from node.storage.index import Index
from node.storage.store import InstanceStore
from node.ui import mount_ui
from node.ui.viewer import OHIF_VERSION, app_config, default_ohif_path
from tests.peers import ROOT, free_port, write_node_config

INDEX = ('<!doctype html><html><head><script>window.PUBLIC_URL="/"</script>'
         '<script src="/app-config.js"></script><link href="/app.bundle.css" rel="stylesheet">'
         '<script defer src="/app.bundle.abc.js"></script></head><body></body></html>')
TOKEN = "viewer-test-token-0123456789"


def _build(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "app.bundle.abc.js").write_text('var x = 1;\n__webpack_require__.p = "/";\n')
    (folder / "12.bundle.def.js").write_text("console.log('chunk');\n")
    (folder / "app.bundle.css").write_text("@font-face{src:url(/font.woff2)}")
    (folder / "font.woff2").write_bytes(b"wOF2")
    return folder


def _client(tmp_path: Path, *, ohif: Path | None, tokens: str = "") -> TestClient:
    folder = tmp_path / "node"
    folder.mkdir()
    viewer = f'\n[viewer]\nohif_path = "{ohif}"\n' if ohif is not None else '\n[viewer]\nohif_path = "/nonexistent"\n'
    settings = load_settings(write_node_config(folder, port=free_port(), http_port=free_port(),
                                               extra=viewer + tokens))
    store = InstanceStore(settings.storage.path)
    index = Index(settings.storage.index_path)
    app = mount_ui(create_app(settings, store=store, index=index), settings, index=index, store=store)
    return TestClient(app, base_url="http://127.0.0.1")


def test_viewer_served_under_its_prefix(tmp_path: Path) -> None:
    with _client(tmp_path, ohif=_build(tmp_path / "dist")) as client:
        assert client.get("/viewer", follow_redirects=False).headers["location"] == "/viewer/"
        page = client.get("/viewer/").text
        assert 'window.PUBLIC_URL="/viewer/"' in page
        assert 'src="/ui/viewer/app-config.js"' in page and 'src="/viewer/app.bundle.abc.js"' in page
        assert 'href="/viewer/app.bundle.css"' in page
        # OHIF's own routes are the single page
        assert client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3").text == page
        bundle = client.get("/viewer/app.bundle.abc.js")
        assert bundle.status_code == 200 and '__webpack_require__.p = "/viewer/"' in bundle.text
        assert client.get("/viewer/12.bundle.def.js").text == "console.log('chunk');\n"
        assert "url(/viewer/font.woff2)" in client.get("/viewer/app.bundle.css").text
        assert client.get("/viewer/font.woff2").content == b"wOF2"
        assert client.get("/viewer/missing.bundle.js").status_code == 404
        assert client.get("/viewer/../pyproject.toml").status_code in (200, 404)  # never outside the build
        assert "[project]" not in client.get("/viewer/%2e%2e/%2e%2e/pyproject.toml").text
        assert client.post("/viewer/").status_code == 405
        config = client.get("/ui/viewer/app-config.js")
        assert config.status_code == 200 and "window.config = config" in config.text
        assert "Authorization" not in config.text  # no tokens configured: nothing to send
        study = client.get("/ui/studies").text
        assert 'href="/viewer/"' in study  # the navigation links the viewer


def test_viewer_off_without_a_build(tmp_path: Path) -> None:
    with _client(tmp_path, ohif=None) as client:
        assert client.get("/viewer/").status_code == 404
        assert client.get("/ui/viewer/app-config.js").status_code == 404
        assert 'href="/viewer/"' not in client.get("/ui/studies").text


def test_viewer_config_carries_the_signed_in_token(tmp_path: Path) -> None:
    tokens = f'\n[[http.tokens]]\ntoken = "{TOKEN}"\nscope = "read"\nname = "radiology"\n'
    with _client(tmp_path, ohif=_build(tmp_path / "dist"), tokens=tokens) as client:
        anonymous = client.get("/ui/viewer/app-config.js")
        assert "window.location.replace('/ui/login?next='" in anonymous.text and TOKEN not in anonymous.text
        signed = client.post("/ui/login", data={"token": TOKEN, "next": "/viewer/"}, follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/viewer/"
        config = client.get("/ui/viewer/app-config.js").text
        assert f"'Bearer ' + \"{TOKEN}\"" in config and '"/dicom-web"' in config
        assert client.get("/ui/viewer/app-config.js", headers={"Cache-Control": "x"}).headers[
            "cache-control"] == "no-store"


def test_app_config_points_at_the_dicomweb_root() -> None:
    config = app_config("/dicom-web", None, "PACSNODE")
    assert 'window.location.origin + "/dicom-web"' in config
    assert '"routerBasename": "/viewer"' in config and '"defaultDataSourceName": "pacsnode"' in config


def test_install_script_pins_the_version_the_node_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    script = (ROOT / "scripts" / "install-ohif.sh").read_text()
    assert f'VERSION="{OHIF_VERSION}"' in script
    monkeypatch.delenv("PACSNODE_OHIF_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    assert default_ohif_path() == Path(f"/cache/pacsnode/ohif-{OHIF_VERSION}")
