"""The DICOMweb ASGI application: routes, bearer-token checks, CORS and error answers.

:func:`create_app` builds it on the node's store, index and ingestor (``pacsnode serve``)
or on its own, opened from the settings (a plugin mounted in another ASGI application).
Every :class:`~node.errors.NodeError` raised by a resource is answered here, in one
place, with its HTTP status and a JSON body ``{"error": "..."}`` that says what to fix.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from node.config import HttpSettings, Settings
from node.dicomweb import qido, stow, wado
from node.dicomweb.service import DicomwebService
from node.errors import NodeError, http_status
from node.ingest import Ingestor
from node.storage.index import Index
from node.storage.store import InstanceStore

__all__ = ["BearerTokenMiddleware", "create_app"]

log = logging.getLogger(__name__)

_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class BearerTokenMiddleware:
    """``[http] tokens``: without a configured token every request passes; with tokens, a
    request needs ``Authorization: Bearer <token>`` (401 otherwise) and a write needs a
    ``read-write`` token (403 with a ``read`` one). CORS preflights pass unchecked."""

    def __init__(self, app: ASGIApp, http: HttpSettings) -> None:
        self.app = app
        self.tokens = [(t.token.encode(), t.scope, t.name) for t in http.tokens]

    def _grant(self, header: bytes | None) -> tuple[str, str] | None:
        """``(scope, name)`` of the presented token, or None."""
        if not header or not header[:7].lower() == b"bearer ":
            return None
        presented = header[7:].strip()
        for token, scope, name in self.tokens:
            if hmac.compare_digest(token, presented):
                return scope, name
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.tokens or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        grant = self._grant(headers.get(b"authorization"))
        if grant is None:
            response: Response = JSONResponse(
                {"error": "a valid bearer token is required (Authorization: Bearer <token>)"},
                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pacsnode"'})
        elif scope["method"] in _WRITE_METHODS and grant[0] != "read-write":
            response = JSONResponse({"error": "this token may read but not store; use a "
                                              "read-write token"}, status_code=403)
        else:
            # who stored what: STOW-RS records the token's name as the instances' source
            scope.setdefault("state", {})["token_name"] = grant[1]
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


async def _node_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NodeError)
    status = http_status(exc)
    if status >= 500:
        log.error("DICOMweb %s %s: %s", request.method, request.url.path, exc.detail)
    return JSONResponse({"error": exc.message}, status_code=status)


def _routes(service: DicomwebService) -> list[BaseRoute]:
    def bind(handler: Callable[..., Awaitable[Response]], *extra: Any
             ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(service, request, *extra)
        return endpoint

    prefix = service.http.base_path.rstrip("/")
    study = prefix + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    return [
        Route(prefix + "/studies", bind(qido.search, "STUDY"), methods=["GET"]),
        Route(prefix + "/studies", bind(stow.store_instances), methods=["POST"]),
        Route(prefix + "/series", bind(qido.search, "SERIES"), methods=["GET"]),
        Route(prefix + "/instances", bind(qido.search, "IMAGE"), methods=["GET"]),
        Route(study, bind(wado.retrieve_instances), methods=["GET"]),
        Route(study, bind(stow.store_instances), methods=["POST"]),
        Route(study + "/metadata", bind(wado.retrieve_metadata), methods=["GET"]),
        Route(study + "/series", bind(qido.search, "SERIES"), methods=["GET"]),
        Route(study + "/instances", bind(qido.search, "IMAGE"), methods=["GET"]),
        Route(series, bind(wado.retrieve_instances), methods=["GET"]),
        Route(series + "/metadata", bind(wado.retrieve_metadata), methods=["GET"]),
        Route(series + "/instances", bind(qido.search, "IMAGE"), methods=["GET"]),
        Route(instance, bind(wado.retrieve_instances), methods=["GET"]),
        Route(instance + "/metadata", bind(wado.retrieve_metadata), methods=["GET"]),
        Route(instance + "/rendered", bind(wado.retrieve_rendered), methods=["GET"]),
        Route(instance + "/frames/{frames}", bind(wado.retrieve_frames), methods=["GET"]),
        Route(instance + "/frames/{frames}/rendered", bind(wado.retrieve_rendered),
              methods=["GET"]),
        Route(instance + "/bulkdata/{path:path}", bind(wado.retrieve_bulkdata), methods=["GET"]),
    ]


def create_app(settings: Settings, *, store: InstanceStore | None = None,
               index: Index | None = None, ingestor: Ingestor | None = None) -> Starlette:
    """The DICOMweb service (QIDO-RS, WADO-RS, STOW-RS) as an ASGI application.

    Parameters
    ----------
    settings:
        The node's settings; ``[http]`` gives the base path, tokens, CORS origins and the
        upload limit, ``[storage]`` the store and index when they are not passed.
    store, index, ingestor:
        The running node's storage. When left out, the application opens its own from
        ``[storage]`` (and closes the index on shutdown): the plugin case, where the
        service is mounted inside another ASGI application.

    Returns
    -------
    starlette.applications.Starlette
        Routes under ``[http] base_path``, e.g. ``/dicom-web/studies``.
    """
    owned = index is None
    if store is None:
        storage = settings.storage
        store = InstanceStore(storage.path, fsync=storage.fsync,
                              min_free_bytes=int(storage.min_free_gb * 1e9))
    if index is None:
        index = Index(settings.storage.index_path)
    if ingestor is None:
        from node.dimse.server import storage_sop_classes

        ingestor = Ingestor(store, index, allowed_sop_classes=storage_sop_classes(),
                            duplicate_policy=settings.storage.duplicate_policy,
                            max_sequence_depth=settings.storage.max_sequence_depth)
    http = settings.http
    service = DicomwebService(http=http, store=store, index=index, ingestor=ingestor)
    ingestor.listeners.append(service.metadata.on_ingest)
    service.metadata.start()
    routes = _routes(service)
    from node.ops import Operations  # /metrics, /healthz, /readyz (node/ops)
    operations = Operations(settings, index=index, ingestor=ingestor)
    routes += operations.routes()

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        operations.close()
        service.close()
        if owned:
            index.close()

    middleware = []
    if http.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(http.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Location", "Warning"]))
    middleware.append(Middleware(BearerTokenMiddleware, http=http))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={NodeError: _node_error})
    app.state.dicomweb = service
    app.state.operations = operations
    return app

