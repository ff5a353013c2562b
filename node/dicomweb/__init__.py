"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS on the node's store and index.

See ``docs/dicomweb.md`` for the resources, the settings and how to mount the service
inside another ASGI application.
"""

from node.dicomweb.app import create_app
from node.dicomweb.server import HttpServer

__all__ = ["HttpServer", "create_app"]
