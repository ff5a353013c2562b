"""The container images and docker/compose.yaml.

Without a container engine: the compose file as Compose reads it (images are the local ones
``make images`` builds, ``depends_on`` names exist, no host port is published twice, mounted
files exist, every ``PACSNODE_*`` variable is accepted by the node's own settings loader), the
Dockerfiles' hygiene (non-root, read-only root file system, health check on ``/readyz``) and
the locks (every dependency pinned by hash; the node image without torch).

With an engine (``docker info`` answers) and the images of this checkout built
(``make images``), ``test_compose_stack_end_to_end`` runs the stack: storescu sends a series
to the node's published port, the job runs on a Dask worker container, the SR arrives in the
Orthanc container, the node container is killed mid-burst and restarted with no acknowledged
instance lost, then ``down -v``. Otherwise it is skipped with the reason; ``make
compose-test`` sets PACSNODE_COMPOSE_TEST=1, which turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.spine import simulate_spine
from node.config import ENV_PREFIX, Settings, load_settings
from node.samples import SeriesSpec, write_mr_series
from tests.peers import free_port, have, storescu_acknowledged, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = ("Dockerfile", "Dockerfile.worker", "Dockerfile.orthanc")
# PACSNODE_* variables that are not settings: the config file path and the health probe's token
NOT_SETTINGS = {"PACSNODE_CONFIG", "PACSNODE_HEALTH_TOKEN"}
WORKER_ONLY = {"torch", "torchvision", "nnunetv2", "pyradiomics"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


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


def _requirement_name(line: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line).group(1)).lower()


def test_services_use_the_local_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"pacsnode", "scheduler", "worker-1", "worker-2", "orthanc"} <= set(services)
    for name, service in services.items():
        image = _interpolate(service["image"])
        # nothing is pulled from a registry: every image is one that `make images` builds
        assert image in {f"pacsnode:{VERSION}", f"pacsnode-worker:{VERSION}", f"pacsnode-orthanc:{VERSION}"}, image
        assert service.get("read_only") is True and "/tmp" in service.get("tmpfs", []), name
        for dependency in service.get("depends_on") or []:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: mounted {source} is missing"
            else:
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source} undeclared"
    workers = [s for s in services.values() if s["image"].startswith("pacsnode-worker:")]
    assert len(workers) == 2
    for worker in workers:
        assert "tcp://scheduler:8786" in worker["command"]
    node_volumes = {v.split(":")[1] for v in services["pacsnode"]["volumes"]}
    assert {"/var/lib/pacsnode/data", "/var/lib/pacsnode/models"} <= node_volumes
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text(encoding="utf-8"))
    assert set(gpu["services"]) == {"worker-1", "worker-2"}


def test_published_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            host = _interpolate(str(port)).rsplit(":", 1)[0]
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
            assert str(settings.storage.path) == "/var/lib/pacsnode/data"
            published = {_interpolate(str(p)).rsplit(":", 1)[-1] for p in service["ports"]}
            assert {str(settings.dicom.port), str(settings.http.port)} <= published
    assert checked >= 1
    for dockerfile in ("Dockerfile", "Dockerfile.worker"):
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


def test_dockerfiles_build_from_local_bases_as_non_root() -> None:
    texts = {name: (DOCKER / name).read_text(encoding="utf-8") for name in DOCKERFILES}
    for name, text in texts.items():
        for base in re.findall(r"^FROM (\S+)", text, re.M):  # no registry image: build args or a stage
            assert base.startswith("${"), f"{name}: FROM {base} would pull from a registry"
        assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), f"{name} runs as root"
        assert "HEALTHCHECK" in text or name == "Dockerfile.worker", name
        for line in text.splitlines():  # every COPY source exists in the repository
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{name}: COPY source {source} missing"
    node, worker = texts["Dockerfile"], texts["Dockerfile.worker"]
    assert "/readyz" in node and 'VOLUME ["/var/lib/pacsnode/data", "/var/lib/pacsnode/models"]' in node
    assert "requirements-node.lock" in node and "requirements-worker.lock" in worker
    assert '"pacsnode", "worker"' in worker


def _lock(name: str) -> dict[str, str]:
    lines = [line for line in (DOCKER / name).read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    for line in lines:
        assert re.search(r"==\S+ --hash=sha256:[0-9a-f]{64}\b", line), f"{name}: not pinned by hash: {line}"
    return {_requirement_name(line): line for line in lines}


def test_python_locks_pin_every_dependency_and_keep_torch_off_the_node() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_requirement_name(d) for d in project["dependencies"]}
    node, worker = _lock("requirements-node.lock"), _lock("requirements-worker.lock")
    assert wanted <= set(worker), f"missing in the worker lock (make images-lock): {wanted - set(worker)}"
    assert wanted - WORKER_ONLY <= set(node), f"missing in the node lock: {wanted - WORKER_ONLY - set(node)}"
    assert not (set(node) & (WORKER_ONLY | {"triton"})) and not any(n.startswith("nvidia-") for n in node)
    shared = set(node) & set(worker)
    assert {n for n in shared if node[n].split()[0] != worker[n].split()[0]} == set(), "node and worker differ"


def test_debian_locks_hold_every_listed_package() -> None:
    for flavor in ("runtime", "build", "orthanc"):
        folder = DOCKER / "debian"
        listed = {line.strip() for line in (folder / f"{flavor}.list").read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#")}
        lock = (folder / f"{flavor}.lock").read_text(encoding="utf-8")
        assert re.search(r"^# SOURCE_DATE_EPOCH=\d+$", lock, re.M), flavor
        locked = dict(line.split("=", 1) for line in lock.splitlines() if line and not line.startswith("#"))
        assert listed <= set(locked), f"{flavor}.lock lacks {listed - set(locked)}: run make images-lock"


def _compose_command() -> list[str] | None:
    if have("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                         timeout=30).returncode == 0:
        return ["docker", "compose"]
    if have("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="neither docker compose nor docker-compose is installed")
def test_compose_config_is_accepted_by_compose() -> None:
    command = [*_compose_command(), "-f", str(COMPOSE), "-f", str(DOCKER / "compose.gpu.yaml"), "config", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=DOCKER, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the stack, run by a container engine -------------------------------------------------------

IMAGES = (f"pacsnode:{VERSION}", f"pacsnode-worker:{VERSION}", f"pacsnode-orthanc:{VERSION}")
REQUIRED = os.environ.get("PACSNODE_COMPOSE_TEST") == "1"


def _engine_problem() -> str | None:
    """Why the stack cannot run here, or None when the engine answers and this checkout's images exist."""
    if not have("docker"):
        return "no docker CLI installed"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode:
        return "no container engine answers (`docker info`); scripts/start-dockerd.sh starts one"
    if _compose_command() is None:
        return "neither docker compose nor docker-compose is installed"
    digest = subprocess.run([str(DOCKER / "build.sh"), "digest"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT).stdout.strip()
    for image in IMAGES:
        found = subprocess.run(["docker", "image", "inspect", "--format",
                                '{{index .Config.Labels "org.pacsnode.source-digest"}}', image],
                               capture_output=True, text=True, timeout=60)
        if found.returncode:
            return f"image {image} is not built (make images)"
        if found.stdout.strip() != digest:
            return f"image {image} was built from other sources than this checkout (make images)"
    return None


class Stack:
    """``docker compose`` of docker/compose.yaml as its own project, on free loopback ports."""

    def __init__(self, folder: Path) -> None:
        self.project = f"pacsnode-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.token = secrets.token_urlsafe(24)
        self.ports = {name: free_port() for name in
                      ("PACSNODE_DICOM_PORT", "PACSNODE_HTTP_PORT", "DASK_DASHBOARD_PORT",
                       "ORTHANC_DICOM_PORT", "ORTHANC_HTTP_PORT")}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "PACSNODE_VERSION": VERSION, "PACSNODE_TOKEN": self.token,
                    "PACSNODE_PUBLISH_ADDRESS": "127.0.0.1", "PACSNODE_STABLE_AFTER": "2"}
        self.log = folder / "compose.log"

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*_compose_command(), "-p", self.project, "-f", str(COMPOSE), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=DOCKER, timeout=timeout)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service).stdout.strip()

    def node_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['PACSNODE_HTTP_PORT']}{path}"

    def orthanc_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['ORTHANC_HTTP_PORT']}{path}"

    def node_ready(self) -> bool:
        try:
            return httpx.get(self.node_url("/readyz"), headers={"Authorization": f"Bearer {self.token}"},
                             timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self, service: str) -> str:
        return subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", self.container(service)],
                              capture_output=True, text=True, timeout=60).stdout.strip()

    def orthanc_outputs(self, study_uid: str) -> list[tuple[str, str]]:
        """(SeriesDescription, Modality) of each SR and SEG instance of the study in the Orthanc container."""
        try:
            found = httpx.post(self.orthanc_url("/tools/find"), timeout=10, json={
                "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
            series = {item["ParentSeries"] for item in found.json()} if found.status_code == 200 else set()
            described = [httpx.get(self.orthanc_url(f"/series/{s}"), timeout=10).json() for s in series]
        except httpx.HTTPError:
            return []
        return [(s["MainDicomTags"].get("SeriesDescription", ""), s["MainDicomTags"]["Modality"])
                for s in described if s["MainDicomTags"].get("Modality") in ("SR", "SEG")
                for _ in s["Instances"]]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    problem = _engine_problem()
    if problem:
        if REQUIRED:
            pytest.fail(f"PACSNODE_COMPOSE_TEST=1 but {problem}")
        pytest.skip(problem)
    running = Stack(tmp_path)
    try:
        running.run("up", "-d", timeout=600)
        yield running
    finally:
        running.run("logs", "--no-color", timeout=120, check=False)
        running.run("down", "-v", "--remove-orphans", timeout=300, check=False)
        left = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project="
                               f"{running.project}"], capture_output=True, text=True, timeout=60).stdout.split()
        assert not left, f"down -v left volumes {left}"
        print(f"compose log: {running.log}")



def _sop_uids_found(port: int, series_uid: str) -> set[str]:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established, "the restarted node refused the C-FIND association"
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = series_uid
    identifier.SOPInstanceUID = ""
    found = {str(ds.SOPInstanceUID) for status, ds in
             assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
             if status.Status == 0xFF00 and ds is not None}
    assoc.release()
    return found


# Runs inside the scheduler container: which worker (by name) executed which pacsnode job.
_JOBS_BY_WORKER = """
import json
from distributed import Client
def keys(dask_worker):
    return sorted({e[0] for e in dask_worker.state.log if isinstance(e[0], str)
                   and e[0].startswith("pacsnode-job-") and "executing" in e})
with Client("tcp://127.0.0.1:8786", timeout=30) as client:
    names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    print(json.dumps({names[a]: k for a, k in client.run(keys).items()}))
"""


@pytest.mark.peers
@pytest.mark.timeout(1500)
def test_compose_stack_end_to_end(stack: Stack, tmp_path: Path) -> None:
    assert have("storescu"), "dcmtk's storescu is needed (scripts/install-system.sh)"
    dicom_port = stack.ports["PACSNODE_DICOM_PORT"]
    wait_until(stack.node_ready, 240, "the node container's /readyz", log=stack.log, poll=1)
    wait_until(lambda: stack.health("pacsnode") == "healthy", 120, "the node's HEALTHCHECK (/readyz)", poll=1)
    wait_until(lambda: stack.health("orthanc") == "healthy", 120, "the Orthanc container's HEALTHCHECK", poll=1)
    users = {service: subprocess.run(["docker", "exec", stack.container(service), "id", "-u"], capture_output=True,
                                     text=True, timeout=60).stdout.strip() for service in ("pacsnode", "worker-1")}
    assert users == {"pacsnode": "10001", "worker-1": "10001"}, users
    touched = subprocess.run(["docker", "exec", stack.container("pacsnode"), "touch", "/opt/pacsnode/x"],
                             capture_output=True, text=True, timeout=60)
    assert touched.returncode != 0 and "Read-only file system" in touched.stderr, touched.stderr

    # a spine phantom study to the published DIMSE port: its spine jobs (torch models) and qc jobs run on the
    # worker containers, and the spine SR and SEG and the qc SRs land in the Orthanc container
    write_case(simulate_spine(seed=5, case_index=1, label="metastasis"), tmp_path / "spine")
    files = [p for s in ("t1", "t2", "stir") for p in sorted((tmp_path / "spine" / s).iterdir()) if p.is_file()]
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    started = time.monotonic()
    sent = subprocess.run(["storescu", "-aec", "PACSNODE", "127.0.0.1", str(dicom_port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(stack.orthanc_outputs(study_uid)) >= 5, 600,
               "3 qc SRs, the spine SR and the spine SEG in the Orthanc container", log=stack.log, poll=1)
    outputs = stack.orthanc_outputs(study_uid)
    print(f"outputs in Orthanc {time.monotonic() - started:.1f} s after the send: {sorted(outputs)}")
    assert sorted(modality for _, modality in outputs) == ["SEG", "SR", "SR", "SR", "SR"], outputs
    assert any("spine" in description.lower() for description, modality in outputs if modality == "SR"), outputs
    ran = json.loads(subprocess.run(["docker", "exec", stack.container("scheduler"), "python", "-c",
                                     _JOBS_BY_WORKER], capture_output=True, text=True, timeout=120).stdout)
    assert set(ran) == {"worker-1", "worker-2"}, ran
    assert sum(len(keys) for keys in ran.values()) >= 6, f"not every job ran on a worker container: {ran}"
    print(f"jobs by worker container: {ran}")

    # SIGKILL of the node container in the middle of a burst, restart: every acknowledged instance is there
    burst = write_mr_series(tmp_path / "burst", SeriesSpec(series_description="compose burst", patient_id="C2",
                                                           slices=300, rows=64, columns=64, seed=11))
    series_uid = str(dcmread(burst[0]).SeriesInstanceUID)
    sender_log = tmp_path / "storescu.log"
    with open(sender_log, "w") as handle:
        sender = subprocess.Popen(["storescu", "-v", "-aec", "PACSNODE", "127.0.0.1", str(dicom_port),
                                   *map(str, burst)], stdout=handle, stderr=subprocess.STDOUT)
    wait_until(lambda: len(storescu_acknowledged(sender_log.read_text())) >= 80, 120, "80 acknowledged instances",
               poll=0.01)
    killed = subprocess.run(["docker", "kill", stack.container("pacsnode")], capture_output=True, text=True,
                            timeout=60)
    assert killed.returncode == 0, killed.stderr
    sender.wait(120)
    acknowledged = storescu_acknowledged(sender_log.read_text())
    assert 80 <= len(acknowledged) < len(burst), f"the kill did not land mid-burst ({len(acknowledged)} acked)"
    stack.run("up", "-d", "pacsnode", timeout=300)
    wait_until(stack.node_ready, 240, "the restarted node's /readyz", log=stack.log, poll=1)
    found = _sop_uids_found(dicom_port, series_uid)
    expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in acknowledged}
    assert expected <= found, f"{len(expected - found)} acknowledged instance(s) missing after the restart"
    print(f"burst: {len(acknowledged)} of {len(burst)} acknowledged before docker kill, all {len(found)} "
          "found after the restart")
