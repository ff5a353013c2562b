"""Settings: ``config/node.toml`` (and environment overrides) → validated pydantic models.

Every setting can be overridden by an environment variable named
``PACSNODE_<SECTION>__<KEY>`` (sub-tables and list items add more ``__``-separated
parts, list items by index)::

    PACSNODE_DICOM__PORT=11113
    PACSNODE_DICOM__TLS__CERT=/etc/pacsnode/node.pem
    PACSNODE_DESTINATIONS__0__HOST=pacs.example.org
    PACSNODE_DESTINATIONS='[{"name": "pacs", "kind": "dimse", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}]'

A value that parses as JSON is taken as JSON (numbers, booleans, lists, tables),
anything else as a string. A wrong file, key or value raises :class:`ConfigError`,
whose message names the file (or variable), the key and the expected form; the
command line turns it into exit code 2.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ENV_PREFIX",
    "AuditSettings",
    "ClientTlsSettings",
    "ConfigError",
    "DestinationSettings",
    "DicomSettings",
    "HttpSettings",
    "HttpToken",
    "JobsSettings",
    "LoggingSettings",
    "PeerSettings",
    "RoutingSettings",
    "Settings",
    "StorageSettings",
    "TlsSettings",
    "ViewerSettings",
    "load_settings",
]

ENV_PREFIX = "PACSNODE_"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: no backslash, no control chars


class ConfigError(ValueError):
    """A configuration file, key or value is wrong; the message says which and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            "an AE title is 1 to 16 printable ASCII characters without backslash, e.g. \"PACSNODE\""
        )
    return stripped


AeTitle = Annotated[str, Field(min_length=1, max_length=16)]
_MIN_PDU = 4096
_MAX_PDU = 256 * 1024 * 1024
Port = Annotated[int, Field(ge=1, le=65535)]


class TlsSettings(_Section):
    """TLS for DIMSE or HTTP: the node's certificate and key, and the CA that signs its peers."""

    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


class PeerSettings(_Section):
    """A remote application entity: allowed to associate (when ``allow_any`` is false) and a
    C-MOVE destination."""

    ae_title: AeTitle
    host: str
    port: Port

    _ae = field_validator("ae_title")(_check_ae_title)


class DicomSettings(_Section):
    """``[dicom]``: the node's DIMSE service."""

    ae_title: AeTitle = "PACSNODE"
    host: str = "127.0.0.1"
    port: Port = 11112
    max_associations: Annotated[int, Field(ge=1, le=1024)] = 16
    allow_any: bool = True
    peers: list[PeerSettings] = Field(default_factory=list)
    tls: TlsSettings | None = None
    acse_timeout: Annotated[float, Field(gt=0)] = 30.0
    dimse_timeout: Annotated[float, Field(gt=0)] = 60.0
    # Seconds of silence after which an association is aborted: between PDUs and also in the
    # middle of one (a peer that sends part of a PDU and stops).
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    # Seconds one PDU may take to arrive once its header came (a peer that trickles bytes).
    pdu_read_timeout: Annotated[float, Field(gt=0)] = 120.0
    # Seconds a TLS client has to finish its handshake; it runs beside the listener.
    tls_handshake_timeout: Annotated[float, Field(gt=0)] = 10.0
    # The largest P-DATA PDU the node accepts (and announces in the association); a longer
    # one aborts the association before anything is allocated for it.
    maximum_pdu_size: Annotated[int, Field(ge=_MIN_PDU, le=_MAX_PDU)] = 4 * 1024 * 1024
    # Refuse associations that call another AE title than ae_title (0x07, called AE not recognised).
    require_called_ae_title: bool = True
    storage_sop_classes: list[str] = Field(default_factory=list)
    # Receiver processes that serve the associations (each its own C-STORE path; all share
    # the store, the index and max_associations). Unset: one per CPU core; 0: associations
    # are served by threads of the node's main process.
    workers: Annotated[int, Field(ge=0, le=64)] | None = None

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("maximum_pdu_size", mode="before")
    @classmethod
    def _bounded_pdu(cls, value: Any) -> Any:
        if value == 0:
            raise ValueError(
                "0 (no limit) would let any peer make the node reserve up to 4 GiB with one PDU "
                f"header; give a size in bytes from {_MIN_PDU} to {_MAX_PDU}, e.g. 4194304"
            )
        return value

    @model_validator(mode="after")
    def _closed_needs_peers(self) -> DicomSettings:
        if not self.allow_any and not self.peers:
            raise ValueError(
                "allow_any = false admits only [[dicom.peers]], and none is configured; add a "
                '[[dicom.peers]] table (ae_title, host, port) or set allow_any = true'
            )
        return self

    @property
    def receiver_processes(self) -> int:
        """How many receiver processes serve associations (``workers``; unset: CPU cores)."""
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def peer(self, ae_title: str) -> PeerSettings | None:
        """The configured peer with that AE title (trailing spaces ignored)."""
        wanted = ae_title.strip()
        return next((p for p in self.peers if p.ae_title == wanted), None)


class StorageSettings(_Section):
    """``[storage]``: where instances and the index live."""

    path: Path = Path("./var")
    duplicate_policy: Literal["keep_first", "overwrite"] = "keep_first"
    min_free_gb: Annotated[float, Field(ge=0)] = 1.0
    fsync: bool = True
    # An instance whose sequences nest deeper than this is refused (C-STORE 0xC000, STOW 400);
    # real objects stay far below it, and a parser recursing through such nesting runs out of stack.
    max_sequence_depth: Annotated[int, Field(ge=1, le=128)] = 32
    # Series older than this many days (by their last received instance), analyzed, delivered and
    # not needed as a prior comparison are removed (node.ops.retention); None keeps everything.
    # A route's own retention_days (routes.toml) overrides it for the series it takes.
    retention_days: Annotated[int, Field(ge=0)] | None = None
    # How often the retention job runs in a serving node, in hours.
    retention_interval_hours: Annotated[float, Field(gt=0)] = 6.0

    @property
    def index_path(self) -> Path:
        return self.path / "index.sqlite"


class HttpToken(_Section):
    """A bearer token and what it may do."""

    token: Annotated[str, Field(min_length=16)]
    scope: Literal["read", "read-write"] = "read"
    name: str = ""


class HttpSettings(_Section):
    """``[http]``: DICOMweb, the status pages and metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8042
    base_path: str = "/dicom-web"
    tokens: list[HttpToken] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_mb: Annotated[float, Field(gt=0)] = 2048.0
    tls: TlsSettings | None = None
    # The URL clients reach DICOMweb at (behind a reverse proxy), used in RetrieveURL and
    # BulkDataURI; by default derived from each request.
    public_url: str | None = None
    # STOW-RS parts are ingested by this many threads side by side: each instance waits for
    # its fsyncs, and overlapping them (the file system commits them together) is what
    # makes a large upload fast.
    stow_workers: Annotated[int, Field(ge=1, le=256)] = 32
    # The most frames one WADO-RS /frames/{list} request may name (each at most once).
    max_frames_per_request: Annotated[int, Field(ge=1, le=100_000)] = 2048

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('the base path starts with "/", e.g. "/dicom-web"')
        return value.rstrip("/") or "/"

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError('public_url is an http(s) URL, e.g. "https://pacs.example.org/dicom-web"')
        return value.rstrip("/") if value else None


class RoutingSettings(_Section):
    """``[routing]``: which analyzers see which series, and when a series counts as complete."""

    routes: Path = Path("config/routes.toml")
    stable_after: Annotated[float, Field(gt=0)] = 20.0


class JobsSettings(_Section):
    """``[jobs]``: the executor that runs analyzers."""

    executor: Literal["local", "dask"] = "local"
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    scheduler: str | None = None
    max_attempts: Annotated[int, Field(ge=1)] = 3
    backoff_seconds: Annotated[float, Field(ge=0)] = 10.0
    models: Path = Path("./models")
    # executor = "dask": the DICOMweb URL workers use to fetch inputs and store outputs
    # (default: derived from [http]) and the read-write bearer token they send (default: the
    # first read-write token of [http] tokens).
    node_url: str | None = None
    worker_token: str | None = None

    @model_validator(mode="after")
    def _dask_needs_scheduler(self) -> JobsSettings:
        if self.executor == "dask" and not self.scheduler:
            raise ValueError('executor = "dask" needs scheduler = "tcp://host:8786"')
        return self


class ClientTlsSettings(_Section):
    """``[destinations.tls]``: TLS when the node calls a DIMSE peer (DICOM PS3.15 B.1).

    ``ca`` verifies the peer's certificate (unset: the system's trusted CAs); ``cert`` and
    ``key`` are the node's own certificate for a peer that requires one; ``server_name``
    is the name the peer's certificate must carry (unset: the destination's host).
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls cert and key go together: set both (or neither)")
        return self


class DestinationSettings(_Section):
    """``[[destinations]]``: where results are delivered."""

    name: Annotated[str, Field(min_length=1)]
    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: AeTitle | None = None
    host: str | None = None
    port: Port | None = None
    url: str | None = None
    token: str | None = None
    max_attempts: Annotated[int, Field(ge=1)] = 8
    backoff_seconds: Annotated[float, Field(ge=0)] = 5.0
    # DIMSE over TLS to this peer (kind = "dimse"; a dicomweb url uses https:// instead)
    tls: ClientTlsSettings | None = None

    @model_validator(mode="after")
    def _complete(self) -> DestinationSettings:
        if self.kind == "dimse" and not (self.ae_title and self.host and self.port):
            raise ValueError('a kind = "dimse" destination needs ae_title, host and port')
        if self.kind == "dicomweb" and self.tls is not None:
            raise ValueError('tls is for kind = "dimse"; a dicomweb destination uses an https:// url')
        if self.kind == "dicomweb" and not self.url:
            raise ValueError('a kind = "dicomweb" destination needs url = "http://host:port/dicom-web"')
        return self


class PriorsSettings(_Section):
    """``[priors]``: where a job of an analyzer that wants priors finds the patient's earlier study."""

    source: Literal["store", "pacs", "none"] = "store"
    # the destination (from [[destinations]]) queried with source = "pacs": C-FIND + C-MOVE to
    # our own AE title for kind = "dimse", QIDO-RS + WADO-RS for kind = "dicomweb"
    destination: str = "pacs"
    lookback_days: Annotated[int, Field(ge=1)] = 1825
    wait_s: Annotated[float, Field(gt=0)] = 900.0


class LoggingSettings(_Section):
    """``[logging]``: level, line format and where the lines go (node.ops.logs)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line, with job_id / series_uid / study_uid / calling_ae
    # when the line concerns them (for log shippers).
    format: Literal["text", "json"] = "text"
    # Also (or, with stderr = false, only) append the lines to this file.
    file: Path | None = None
    stderr: bool = True
    # Older spelling of format = "json".
    json_lines: bool = False

    @property
    def is_json(self) -> bool:
        return self.format == "json" or self.json_lines


class AuditSettings(_Section):
    """``[audit]``: where DICOM audit messages go besides the index (node.ops.audit).

    With ``syslog_host`` set, every audit event is also sent as a DICOM PS3.15 A.5 audit
    message in an RFC 5424 syslog frame over UDP (RFC 5426), as IHE ATNA audit record
    repositories receive them.
    """

    syslog_host: str | None = None
    syslog_port: Port = 514
    app_name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[!-~]+$")] = "pacsnode"


class ViewerSettings(_Section):
    """``[viewer]``: the OHIF viewer served at ``/viewer`` (node.ui.viewer).

    ``ohif_path`` names the folder of an OHIF 3 build (the ``dist/`` of ``@ohif/app``);
    empty means the cache folder ``make demo`` and ``make test`` install it into. The viewer
    is off when that folder holds no ``index.html`` or ``enabled`` is false.
    """

    enabled: bool = True
    ohif_path: str = ""


class Settings(_Section):
    """All of the node's settings."""

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    destinations: list[DestinationSettings] = Field(default_factory=list)
    priors: PriorsSettings = Field(default_factory=PriorsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    viewer: ViewerSettings = Field(default_factory=ViewerSettings)

    @model_validator(mode="after")
    def _unique_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return self

    def destination(self, name: str) -> DestinationSettings | None:
        return next((d for d in self.destinations if d.name == name), None)


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _apply_override(tree: dict[str, Any], parts: list[str], value: Any, variable: str) -> None:
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{variable}: {part!r} must be a list index (0, 1, ...)")
            index = int(part)
            while len(node) <= index:
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{variable}: cannot set a key inside a plain value")
        if last:
            node[part] = value
        else:
            nxt = node.get(part)
            if nxt is None:
                nxt = [] if parts[depth + 1].isdigit() else {}
                node[part] = nxt
            node = nxt


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``PACSNODE_*`` variables that name a settings section (others, e.g. PACSNODE_CONFIG,
    are not settings)."""
    sections = set(Settings.model_fields)
    found = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX):
            section = key[len(ENV_PREFIX) :].split("__", 1)[0].lower()
            if section in sections:
                found[key] = value
    return found


def _location(loc: tuple[Any, ...]) -> str:
    section = ""
    rest: list[str] = []
    for index, part in enumerate(loc):
        if index == 0:
            section = str(part)
        elif isinstance(part, int):
            rest.append(f"[{part}]")
        else:
            rest.append(("." if rest else "") + str(part))
    key = "".join(rest)
    return f"[{section}] {key}" if key else f"[{section}]"


def _format_validation_error(error: ValidationError, source: str, env_keys: Mapping[str, str]) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        loc = tuple(item["loc"])
        where = _location(loc) if loc else "(top level)"
        variable = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
        origin = f" (from environment {variable})" if variable in env_keys else ""
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check the spelling against config/node.toml"
        elif "input" in item and item["type"] not in ("missing",):
            got = item["input"]
            if not isinstance(got, dict | list):
                message += f" (got {got!r})"
        lines.append(f"  {where}{origin}: {message}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read a node.toml, apply ``PACSNODE_*`` environment overrides and validate.

    Parameters
    ----------
    path:
        The TOML file; ``None`` means built-in defaults only.
    environ:
        The environment to read overrides from (``os.environ`` by default).

    Raises
    ------
    ConfigError
        The file is missing or not TOML, or a key or value is wrong.
    """
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "built-in defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            tree = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{file}: no such configuration file; copy config/node.toml from the pacsnode "
                "sources or pass --config with the right path"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{file}: cannot be read: {exc.strerror}") from exc
    overrides = _env_overrides(environ)
    for variable in sorted(overrides):
        parts = [p.lower() for p in variable[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"{variable}: empty part in the name; use PACSNODE_<SECTION>__<KEY>")
        _apply_override(tree, parts, _parse_env_value(overrides[variable]), variable)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, overrides)) from exc
