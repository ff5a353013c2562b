"""The DICOMweb HTTP server: uvicorn in a background thread, started and stopped by the node."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from node.config import HttpSettings

__all__ = ["HttpServer", "HttpServerError"]

log = logging.getLogger(__name__)


class HttpServerError(OSError):
    """The HTTP server could not start (port in use, bad certificate, ...)."""


# Bytes a connection's transport may hold unsent before the response stream waits. The
# asyncio default (64 KiB) wakes the WADO-RS stream for every 64 KiB the client reads; with
# a few MB the transport keeps writing the slices it holds (without copying them, on uvloop)
# while the stream waits.
_WRITE_BUFFER_HIGH = 4 * 1024 * 1024


class _StreamingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a write buffer sized for streamed series."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=_WRITE_BUFFER_HIGH)


class HttpServer:
    """Serves ``app`` on ``[http] host:port`` (HTTPS when ``[http] tls`` is set).

    Parameters
    ----------
    app:
        The ASGI application, usually :func:`node.dicomweb.create_app`.
    http:
        ``[http]``; ``port = 0`` picks a free port (see :attr:`port`).
    """

    def __init__(self, app: ASGIApp, http: HttpSettings) -> None:
        self.app = app
        self.http = http
        options: dict[str, object] = {}
        if http.tls is not None:
            options.update(ssl_certfile=str(http.tls.cert), ssl_keyfile=str(http.tls.key))
            if http.tls.ca is not None:
                options["ssl_ca_certs"] = str(http.tls.ca)
            if http.tls.require_client_cert:
                options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        self._config = uvicorn.Config(app, host=http.host, port=http.port, log_level="warning",
                                      http=_StreamingHttpProtocol,
                                      access_log=False, lifespan="on", server_header=False,
                                      timeout_keep_alive=30, **options)  # type: ignore[arg-type]
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.http.tls is not None else "http"

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when configured as 0)."""
        servers = getattr(self._server, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.http.port

    @property
    def url(self) -> str:
        """The service root, e.g. ``http://127.0.0.1:8042/dicom-web``."""
        base = "" if self.http.base_path == "/" else self.http.base_path
        return f"{self.scheme}://{self.http.host}:{self.port}{base}"

    def _run(self) -> None:
        try:
            # uvicorn's own loop choice ("auto": uvloop when installed, its transports copy
            # less per write than asyncio's; WADO-RS streaming is mostly writes).
            with asyncio.Runner(loop_factory=self._config.get_loop_factory()) as runner:
                runner.run(self._server.serve())
        except (SystemExit, OSError) as exc:  # uvicorn exits on a bind failure
            log.error("DICOMweb server stopped: %s", exc)

    def start(self, timeout: float = 15.0) -> None:
        """Start serving; returns once the socket listens.

        Raises
        ------
        HttpServerError
            The server did not start (the log says why: port in use, certificate).
        """
        self._thread = threading.Thread(target=self._run, name="dicomweb-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HttpServerError(
                    f"the DICOMweb server could not listen on {self.http.host}:{self.http.port}; "
                    "is the port in use ([http] port) or the certificate unreadable ([http] tls)?")
            time.sleep(0.02)
        log.info("DICOMweb serving on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish the requests in flight (up to ``timeout`` s) and return."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(2.0)
            self._thread = None
