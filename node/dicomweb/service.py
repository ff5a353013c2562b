"""What the DICOMweb resources share: the store, index and ingestor, a worker pool for
blocking file and database work, and the URL helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from node.config import HttpSettings
from node.dicomweb.buffers import BufferPool
from node.dicomweb.metadata import MetadataStore
from node.ingest import Ingestor
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["DICOM_JSON", "DicomwebService", "dicom_json_response"]

DICOM_JSON = "application/dicom+json"
T = TypeVar("T")


def dicom_json_response(payload: Any, status_code: int = 200,
                        headers: dict[str, str] | None = None) -> Response:
    """``payload`` as ``application/dicom+json`` (UTF-8, compact)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


@dataclass
class DicomwebService:
    """The node's storage as the DICOMweb resources see it.

    Parameters
    ----------
    http:
        ``[http]`` (base path, limits).
    store, index, ingestor:
        The node's storage; STOW-RS stores through ``ingestor`` only.
    """

    http: HttpSettings
    store: InstanceStore
    index: Index
    ingestor: Ingestor
    #: Stored WADO-RS metadata (made when instances arrive; see node/dicomweb/metadata.py).
    metadata: MetadataStore = field(default=None, repr=False)  # type: ignore[assignment]
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    #: WADO-RS batch buffers (8 MB plus room for one more instance), reused across requests.
    buffers: BufferPool = field(default_factory=lambda: BufferPool(12 * 1024 * 1024, keep=4),
                                init=False, repr=False)

    def __post_init__(self) -> None:
        if self.metadata is None:
            self.metadata = MetadataStore(self.store)

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Workers that ingest STOW-RS parts side by side (their fsyncs overlap)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.http.stow_workers, thread_name_prefix="stow")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.metadata.close()

    def base_url(self, request: Request) -> str:
        """The absolute URL of the DICOMweb root as this request reached it."""
        if self.http.public_url:
            return self.http.public_url
        scheme = request.url.scheme
        host = request.headers.get("host") or request.url.netloc
        server = request.scope.get("server")
        if server and ":" not in host.rsplit("]", 1)[-1]:
            # some clients (dicomweb-client) send Host without the port; the URLs handed out
            # must reach this server, so the port it answered on is added
            default = 443 if scheme == "https" else 80
            if server[1] and int(server[1]) != default:
                host = f"{host}:{server[1]}"
        # root_path: where an enclosing application mounted this one (the plugin case)
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return f"{scheme}://{host}{root}{self.http.base_path.rstrip('/')}"

    @staticmethod
    async def blocking(function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (SQLite, files, codecs) off the event loop."""
        return await anyio.to_thread.run_sync(function, *args)
