"""Real DICOM peers for tests and benchmarks: the node itself, Orthanc and dcmtk, on loopback.

Each launcher picks free ports, writes its own configuration into a temporary
folder and stops what it started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "NodeProcess",
    "OrthancProcess",
    "dimse_destination",
    "free_port",
    "have",
    "node_process",
    "orthanc_process",
    "process_tree",
    "storescu_acknowledged",
    "tree_stats",
    "wait_for_port",
]

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def have(program: str) -> bool:
    return shutil.which(program) is not None


def query_index(index: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """Rows of ``sql`` from a running node's index, read-only; ``[]`` while the file or its tables do not exist."""
    if not index.exists():
        return []
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet
    finally:
        conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None,
               poll: float = 0.2) -> None:
    """Poll ``predicate`` until it is true; after ``timeout`` seconds fail naming ``what``, with the
    end of ``log`` (a node's log file) when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    tail = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a node's DIMSE receiver processes, say), from /proc."""
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except OSError:
                continue
            tree += children
            frontier += children
    return tree


def tree_stats(pid: int) -> tuple[float, int, int]:
    """RSS (MB), threads and open file descriptors of ``pid`` and its descendants together."""
    rss, threads, fds = 0.0, 0, 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue  # ended meanwhile
    return rss, threads, fds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 120.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass
class NodeProcess:
    """A ``pacsnode serve`` subprocess."""

    config: Path
    storage: Path
    ae_title: str
    port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def dimse_destination(name: str, ae_title: str, port: int, *, host: str = "127.0.0.1",
                      **options: float) -> str:
    """A ``[[destinations]]`` block of kind ``dimse`` for a node config; ``options`` such as
    ``max_attempts=1`` or ``backoff_seconds=0.3`` are added as keys."""
    lines = ["[[destinations]]", f'name = "{name}"', 'kind = "dimse"', f'ae_title = "{ae_title}"',
             f'host = "{host}"', f"port = {port}", *(f"{key} = {value}" for key, value in options.items())]
    return "\n".join(lines) + "\n"


def write_node_config(folder: Path, *, port: int, http_port: int, extra: str = "",
                      storage: Path | None = None) -> Path:
    storage = storage or folder / "var"
    config = folder / "node.toml"
    config.write_text(
        f"""
[dicom]
ae_title = "PACSNODE"
host = "127.0.0.1"
port = {port}

[storage]
path = "{storage}"
min_free_gb = 0

[http]
host = "127.0.0.1"
port = {http_port}

[routing]
routes = "{folder / 'routes.toml'}"
{extra}
""",
        encoding="utf-8",
    )
    routes = folder / "routes.toml"
    if not routes.exists():
        routes.write_text("# no routes\n", encoding="utf-8")
    return config


def start_node(config: Path, *, storage: Path, port: int, http_port: int, log: Path,
               env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()) -> NodeProcess:
    environment = {**os.environ, **(env or {})}
    environment.pop("PACSNODE_CONFIG", None)
    handle = open(log, "ab")
    process = subprocess.Popen(
        [str(VENV_BIN / "pacsnode"), "serve", "--config", str(config), *args],
        stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=str(config.parent),
    )
    node = NodeProcess(config, storage, "PACSNODE", port, http_port, process, log)
    try:
        wait_for_port(port, process=process)
    except (RuntimeError, TimeoutError):
        node.stop()
        raise RuntimeError(f"pacsnode did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
    return node


@contextmanager
def node_process(folder: Path, *, extra: str = "", env: Mapping[str, str] | None = None
                 ) -> Iterator[NodeProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = write_node_config(folder, port=port, http_port=http_port, extra=extra)
    node = start_node(config, storage=folder / "var", port=port, http_port=http_port,
                      log=folder / "node.log", env=env)
    try:
        yield node
    finally:
        node.stop()


@dataclass
class OrthancProcess:
    """A Debian Orthanc started with its own configuration."""

    ae_title: str
    dicom_port: int
    http_port: int
    storage: Path
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> object:
        return httpx.get(self.url + path, timeout=30).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def start_again(self) -> None:
        self.process = _launch_orthanc(self.config, self.storage.parent / "orthanc.log")
        _wait_orthanc(self)


def _launch_orthanc(config: Path, log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")
    return subprocess.Popen(["Orthanc", str(config)], stdout=handle, stderr=subprocess.STDOUT,
                            env={**os.environ, "TCP_NODELAY": "1"})


def _wait_orthanc(orthanc: OrthancProcess) -> None:
    wait_for_port(orthanc.dicom_port, timeout=30, process=orthanc.process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(orthanc.url + "/system", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("Orthanc REST API did not come up")


def orthanc_config(folder: Path, *, ae_title: str, dicom_port: int, http_port: int,
                   modalities: Mapping[str, tuple[str, str, int]] | None = None,
                   dicomweb_servers: Mapping[str, str] | None = None) -> Path:
    storage = folder / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    plugins = [p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if Path(p).exists()]
    config = {
        "Name": "pacsnode-test-orthanc",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                     "Servers": dict(dicomweb_servers or {})},
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@contextmanager
def orthanc_process(folder: Path, *, ae_title: str = "ORTHANC",
                    modalities: Mapping[str, tuple[str, str, int]] | None = None,
                    dicomweb_servers: Mapping[str, str] | None = None) -> Iterator[OrthancProcess]:
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config = orthanc_config(folder, ae_title=ae_title, dicom_port=dicom_port, http_port=http_port,
                            modalities=modalities, dicomweb_servers=dicomweb_servers)
    orthanc = OrthancProcess(ae_title, dicom_port, http_port, folder / "orthanc-db",
                             _launch_orthanc(config, folder / "orthanc.log"), config)
    try:
        _wait_orthanc(orthanc)
        yield orthanc
    finally:
        orthanc.stop()


def storescu_acknowledged(log: str) -> list[str]:
    """Files dcmtk storescu saw a success response for (its ``-v`` output pairs each file with
    its response)."""
    acked, current = [], None
    for line in log.splitlines():
        sent = re.match(r"I: Sending file: (.+)$", line)
        if sent:
            current = sent.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked
