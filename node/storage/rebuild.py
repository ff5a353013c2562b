"""Rebuilding the index from the stored files: ``pacsnode index rebuild``, and at start when
the index is missing or unreadable while ``store/`` holds instances.

Every stored file carries everything its index row needs (it is the instance as received,
with the node's own file meta: transfer syntax, source AE). A rebuild sets the old index
file aside (``index.sqlite.unreadable-<time>`` or ``.replaced-<time>``, with its WAL),
creates a new one and indexes every file under ``store/``, oldest first (by file time, which
also stands in for when each instance was received, so retention keeps its clock). What the
old index held besides the instances is not in the files: the job ledger, delivery
records, duplicate records and the audit trail before the rebuild stay in the set-aside
file; the rebuilt instances are not analysed or delivered again (``pacsnode reprocess``
does that on request). The rebuild itself is audited (``index-rebuilt``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from node.errors import InvalidDataset
from node.ingest import Ingestor
from node.storage.index import IndexUnreadable, RebuildProgress
from node.storage.store import InstanceStore

__all__ = ["index_problem", "prepare_index", "rebuild_index", "set_aside", "store_has_instances"]

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm")


def index_problem(path: Path) -> str | None:
    """Why the index file at ``path`` cannot be used, or None (readable, or not there at all)."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "instances" not in tables:
                return "it has no instances table"
            if "instances" in tables:
                conn.execute("SELECT sop_uid, path FROM instances LIMIT 1").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None


def store_has_instances(store: InstanceStore) -> bool:
    """Whether ``store/`` holds at least one instance file."""
    return next(store.iter_instance_files(), None) is not None


def set_aside(path: Path, why: str) -> Path:
    """Rename the index file (and its WAL and shared-memory files) to ``<name>.<why>-<time>``.

    Raises
    ------
    OSError
        The file cannot be renamed (a read-only volume, permissions).
    """
    target = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target


def prepare_index(index_path: Path, store: InstanceStore) -> str | None:
    """Before a node opens its index: why it must be rebuilt, or None.

    An unreadable index is set aside here (so that a new one can be created); a missing one
    needs a rebuild only when ``store/`` holds instances.

    Raises
    ------
    IndexUnreadable
        The index is unreadable and cannot be set aside: the message says why and what to do.
    """
    problem = index_problem(index_path)
    if problem is not None:
        try:
            moved = set_aside(index_path, "unreadable")
        except OSError as exc:
            raise IndexUnreadable(
                f"the index {index_path} cannot be read ({problem}) and cannot be rebuilt: setting it "
                f"aside failed ({exc.strerror or exc}); make the storage volume writable, or move the "
                "file away and start again"
            ) from exc
        log.error("the index %s cannot be read (%s); set aside as %s, rebuilding it from the stored files",
                  index_path, problem, moved)
        return f"the index could not be read ({problem}); the old file is {moved.name}"
    if not index_path.exists() and store_has_instances(store):
        log.error("the index %s is missing while %s holds instances; rebuilding it from the stored files",
                  index_path, store.instances_dir)
        return "the index was missing"
    return None


def rebuild_index(ingestor: Ingestor, progress: RebuildProgress,
                  step: Callable[[RebuildProgress], None] | None = None) -> RebuildProgress:
    """Index every file under ``store/`` that the (new) index lacks; returns ``progress``.

    ``progress`` is updated as files are indexed (``ingestor.index.rebuild`` points at it
    meanwhile, which makes ``/readyz`` answer 503), ``step`` is called after each file
    (a progress bar). A file that cannot be read is logged and counted, not fatal.
    """
    store = ingestor.store
    index = ingestor.index
    index.rebuild = progress
    try:
        store.recover_partial_files(replace_existing=ingestor.duplicate_policy == "overwrite")
        known = index.indexed_paths()
        files = []
        for path in store.iter_instance_files():
            if store.relative(path) in known:
                continue
            try:
                files.append((path.stat().st_mtime, path))
            except OSError:
                continue  # removed meanwhile
        files.sort()
        progress.total = len(files)
        started = time.monotonic()
        for mtime, path in files:
            try:
                ingestor.index_stored_file(path, received_at=mtime)
            except (InvalidDataset, OSError) as exc:
                progress.unreadable += 1
                log.error("index rebuild: %s cannot be indexed: %s", path, getattr(exc, "detail", exc))
            progress.done += 1
            if step is not None:
                step(progress)
        log.warning("index rebuilt from %d stored file(s) in %.1f s (%d unreadable)", progress.done,
                    time.monotonic() - started, progress.unreadable)
    finally:
        progress.finished = True
        index.rebuild = None
    return progress
