"""Settings: defaults, environment overrides and the errors a broken config gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_config_loads_with_documented_defaults() -> None:
    settings = load_settings(ROOT / "config" / "node.toml", environ={})
    assert settings.dicom.ae_title == "PACSNODE"
    assert (settings.dicom.host, settings.dicom.port) == ("127.0.0.1", 11112)
    assert settings.storage.path == Path("./var")
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8042)
    assert settings.destinations[0].name == "pacs"
    assert settings.destinations[0].port == 4242


def test_environment_overrides_every_level(tmp_path: Path) -> None:
    env = {
        "PACSNODE_DICOM__PORT": "11113",
        "PACSNODE_DICOM__TLS__CERT": "/c.pem",
        "PACSNODE_DICOM__TLS__KEY": "/k.pem",
        "PACSNODE_DESTINATIONS__0__HOST": "10.0.0.5",
        "PACSNODE_STORAGE__DUPLICATE_POLICY": "overwrite",
        "PACSNODE_CONFIG": "ignored-not-a-section",
    }
    settings = load_settings(ROOT / "config" / "node.toml", environ=env)
    assert settings.dicom.port == 11113
    assert settings.dicom.tls is not None and str(settings.dicom.tls.cert) == "/c.pem"
    assert settings.destinations[0].host == "10.0.0.5"
    assert settings.destinations[0].ae_title == "ORTHANC"
    assert settings.storage.duplicate_policy == "overwrite"


def test_whole_list_from_json_environment() -> None:
    env = {"PACSNODE_DESTINATIONS": '[{"name": "a", "kind": "dicomweb", "url": "http://x/dicom-web"}]'}
    settings = load_settings(None, environ=env)
    assert [d.name for d in settings.destinations] == ["a"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[dicom]\nport = 70000\n", "[dicom] port"),
        ("[dicom]\nprot = 1\n", "unknown key"),
        ("[storage]\nduplicate_policy = 'newest'\n", "'keep_first' or 'overwrite'"),
        ("[dicom]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", "[dicom] ae_title"),
        ("[dicom]\nallow_any = false\n", "[[dicom.peers]]"),
        ("[[destinations]]\nname = 'x'\nkind = 'dimse'\n", "needs ae_title, host and port"),
        ("[dicom\n", "not valid TOML"),
    ],
)
def test_broken_config_names_file_key_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    assert expected in message


def test_bad_environment_value_is_attributed_to_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"PACSNODE_DICOM__PORT": "eleven"})
    assert "PACSNODE_DICOM__PORT" in str(caught.value)


def test_cli_exits_2_with_message_on_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[dicom]\nport = 'x'\n")
    result = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "[dicom] port" in result.stderr and str(path) in result.stderr


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config",
                             str(tmp_path / "nope.toml")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "no such configuration file" in result.stderr
