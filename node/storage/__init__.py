"""Durable storage: the instance files (``store``) and the SQLite index (``index``)."""

from node.storage.index import Index, InstanceRecord
from node.storage.store import InstanceStore

__all__ = ["Index", "InstanceRecord", "InstanceStore"]
