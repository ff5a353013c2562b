"""docker/compose.yaml checked as Docker Compose would read it, without a Docker engine.

``docker compose config`` is used when a Docker CLI with the compose plugin is installed;
the schema checks below run either way: build contexts and Dockerfiles exist, every
``depends_on`` names a service, no two services publish the same host port, mounted files
exist, and every ``PACSNODE_*`` variable of a pacsnode service is accepted by the node's own
settings loader (so a typo in a section or key fails here, not at deployment).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
# PACSNODE_* variables that are not settings: the config file path and the health probe's token
NOT_SETTINGS = {"PACSNODE_CONFIG", "PACSNODE_HEALTH_TOKEN"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` with an empty environment."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _dockerfile_env(path: Path) -> dict[str, str]:
    """The ``PACSNODE_*`` ``ENV`` values a Dockerfile sets (``ENV A=1 B=2`` with continuations)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            for name, value in re.findall(r"(\w+)=(\S+)", line):
                if name.startswith(ENV_PREFIX):
                    found[name] = value
    return found


def test_services_builds_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"pacsnode", "scheduler", "worker-1", "worker-2", "orthanc"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: mounted {source} is missing"
            else:
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source} undeclared"
    workers = [s for s in services.values() if "worker" in str(s.get("entrypoint", ""))
               or (s.get("build") or {}).get("dockerfile", "").endswith("gpu-worker")]
    assert len(workers) == 2
    for worker in workers:
        assert "tcp://scheduler:8786" in worker["command"]


def test_published_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            host = str(port).rsplit(":", 1)[0]
            assert host not in seen, f"{name} and {seen.get(host)} both publish host port {host}"
            seen[host] = name


def test_pacsnode_environment_is_valid_for_the_node(compose: dict[str, Any]) -> None:
    base_env = _dockerfile_env(DOCKER / "Dockerfile")
    config = ROOT / "config" / "node.toml"
    checked = 0
    for name, service in compose["services"].items():
        env = _environment(service)
        node_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        if not node_env and "pacsnode" not in name:
            continue
        sections = {k[len(ENV_PREFIX):].split("__", 1)[0].lower() for k in node_env
                    if k not in NOT_SETTINGS}
        unknown = sections - set(Settings.model_fields)
        assert not unknown, f"{name}: PACSNODE_ variables name no settings section: {unknown}"
        # routes.toml inside the image lives at /etc/pacsnode; here, the repository's copy
        full_env = {**base_env, **node_env,
                    "PACSNODE_ROUTING__ROUTES": str(ROOT / "config" / "routes.toml")}
        settings = load_settings(config, environ=full_env)  # raises ConfigError when wrong
        checked += 1
        if name == "pacsnode":
            assert settings.dicom.host == "0.0.0.0" and settings.http.host == "0.0.0.0"
            assert settings.jobs.executor == "dask"
            assert settings.jobs.scheduler == "tcp://scheduler:8786"
            assert [d.url for d in settings.destinations] == ["http://orthanc:8042/dicom-web"]
            assert settings.http.tokens[0].scope == "read-write"
            assert env["PACSNODE_HEALTH_TOKEN"] == settings.http.tokens[0].token
            published = {str(p).rsplit(":", 1)[-1] for p in service["ports"]}
            assert {str(settings.dicom.port), str(settings.http.port)} <= published
    assert checked >= 1
    for dockerfile in ("Dockerfile", "Dockerfile.gpu-worker"):
        env = _dockerfile_env(DOCKER / dockerfile)
        load_settings(config, environ={k: v for k, v in env.items() if k not in NOT_SETTINGS})


def test_orthanc_is_the_destination_and_knows_pacsnode(compose: dict[str, Any]) -> None:
    orthanc = json.loads((DOCKER / "orthanc.json").read_text(encoding="utf-8"))
    assert orthanc["DicomWeb"]["Enable"] is True
    assert orthanc["DicomModalities"]["pacsnode"] == ["PACSNODE", "pacsnode", 11112]
    env = _environment(compose["services"]["pacsnode"])
    peers = json.loads(env["PACSNODE_DICOM__PEERS"])
    assert peers[0]["ae_title"] == orthanc["DicomAet"]
    assert peers[0]["port"] == orthanc["DicomPort"]


def test_dockerfiles_are_multi_stage_non_root_and_checked() -> None:
    node = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert len(re.findall(r"^FROM ", node, re.M)) >= 2
    assert "FROM python:3.11-slim" in node
    assert "COPY --from=build /opt/pacsnode /opt/pacsnode" in node
    assert re.search(r"^USER (?!root)\w+", node, re.M)
    assert "HEALTHCHECK" in node and "/healthz" in node
    worker = (DOCKER / "Dockerfile.gpu-worker").read_text(encoding="utf-8")
    assert "nvidia/cuda" in worker and re.search(r"^USER (?!root)\w+", worker, re.M)
    assert '"pacsnode", "worker"' in worker
    for text in (node, worker):  # every COPY source exists in the repository
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"COPY source {source} missing"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI installed")
def test_docker_compose_config() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode:
        pytest.skip("the docker CLI has no compose plugin")
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert result.returncode == 0, result.stderr
