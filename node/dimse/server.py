"""The node's application entity: presentation contexts, association policy, TLS.

Supports Verification, every Storage SOP class pynetdicom knows (with the common
transfer syntaxes, compressed data accepted and stored as received), and the
Patient Root and Study Root Query/Retrieve models (FIND, MOVE, GET).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    QueryRetrievePresentationContexts,
    VerificationPresentationContexts,
)
from pynetdicom.transport import ThreadedAssociationServer

from node.config import DicomSettings, TlsSettings
from node.dimse.handlers import DimseHandlers

__all__ = ["DimseServer", "storage_sop_classes", "tls_context"]

log = logging.getLogger(__name__)


def storage_sop_classes() -> list[str]:
    """Every Storage SOP Class UID the node accepts."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def tls_context(tls: TlsSettings, *, server: bool) -> ssl.SSLContext:
    """An SSL context from ``[dicom] tls`` / ``[http] tls``."""
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=str(tls.ca) if tls.ca else None)
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if server and tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _transfer_syntaxes() -> list[str]:
    # Explicit VR little endian first: what the node prefers when a requestor proposes several
    # syntaxes for one context and leaves the choice to the acceptor.
    first = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    return first + [str(ts) for ts in ALL_TRANSFER_SYNTAXES if str(ts) not in first]


class DimseServer:
    """The node's DIMSE service, started in the background.

    Parameters
    ----------
    settings:
        ``[dicom]``.
    handlers:
        The node's handlers (ingest, index).
    sop_classes:
        Storage SOP classes to accept (default: all).
    """

    def __init__(self, settings: DicomSettings, handlers: DimseHandlers,
                 sop_classes: Iterable[str] | None = None) -> None:
        self.settings = settings
        self.handlers = handlers
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        self.ae.acse_timeout = settings.acse_timeout
        self.ae.dimse_timeout = settings.dimse_timeout
        self.ae.network_timeout = settings.network_timeout
        self.ae.maximum_pdu_size = settings.maximum_pdu_size
        if not settings.allow_any:
            self.ae.require_calling_aet = [p.ae_title for p in settings.peers]
        syntaxes = _transfer_syntaxes()
        for cx in VerificationPresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, syntaxes)
        wanted = set(sop_classes) if sop_classes is not None else None
        for cx in AllStoragePresentationContexts:
            if wanted is None or str(cx.abstract_syntax) in wanted:
                # scp_role=True lets a C-GET requestor act as Storage SCP on this association.
                self.ae.add_supported_context(cx.abstract_syntax, syntaxes,
                                              scu_role=False, scp_role=True)
        for cx in QueryRetrievePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, syntaxes)
        self._server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        """Listen on ``[dicom] host:port`` in background threads."""
        ssl_context = tls_context(self.settings.tls, server=True) if self.settings.tls else None
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=self.handlers.bindings(),
            ssl_context=ssl_context,
        )
        log.info("DIMSE listening as %s on %s:%d%s", self.settings.ae_title, self.settings.host,
                 self.settings.port, " (TLS)" if ssl_context else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
