"""``pacsnode audit``: print the audit trail; ``pacsnode retention``: remove expired series now;
``pacsnode index rebuild``: rebuild the index from the stored files."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from node.config import Settings
from node.ops.audit import EVENT_KINDS, InvalidSince, parse_since, read_events
from node.storage.index import Index

__all__ = ["add_commands", "cmd_audit", "cmd_index_rebuild", "cmd_retention"]


def cmd_audit(settings_of: Callable[[argparse.Namespace], Settings]) -> Callable[[argparse.Namespace], int]:
    """The ``audit`` command bound to the CLI's settings loader."""

    def run(args: argparse.Namespace) -> int:
        try:
            since = time.time() - parse_since(args.since)
        except InvalidSince as exc:
            print(f"pacsnode audit: {exc}", file=sys.stderr)
            return 2
        settings = settings_of(args)
        if not settings.storage.index_path.exists():
            print(f"pacsnode audit: no index at {settings.storage.index_path}", file=sys.stderr)
            return 1
        index = Index(settings.storage.index_path)
        try:
            events = list(read_events(index, since=since, event=args.event))
        finally:
            index.close()
        for event in events:
            if args.json:
                print(json.dumps({"id": event.id, "at": event.at, "event": event.event,
                                  "outcome": event.outcome, "actor": event.actor, "peer": event.peer,
                                  "called": event.called, "detail": event.detail}))
                continue
            stamp = datetime.fromtimestamp(event.at).astimezone().isoformat(timespec="seconds")
            detail = " ".join(f"{k}={v}" for k, v in event.detail.items() if v not in (None, "", [], {}))
            print(f"{stamp}  {event.event:<16} {event.outcome:<15} {event.actor or '-':<16} "
                  f"{event.peer or '-':<21} {event.called or '-':<16} {detail}")
        return 0

    return run


def cmd_retention(settings_of: Callable[[argparse.Namespace], Settings]) -> Callable[[argparse.Namespace], int]:
    """The ``retention`` command bound to the CLI's settings loader."""

    def run(args: argparse.Namespace) -> int:
        from node.ops.retention import Retention
        from node.storage.store import InstanceStore

        settings = settings_of(args)
        if not settings.storage.index_path.exists():
            print(f"pacsnode retention: no index at {settings.storage.index_path}", file=sys.stderr)
            return 1
        index = Index(settings.storage.index_path)
        try:
            retention = Retention.for_settings(settings, index, InstanceStore(settings.storage.path,
                                                                                fsync=settings.storage.fsync))
            if not retention.configured:
                print("no retention configured: set [storage] retention_days or retention_days on a route")
                return 0
            report = retention.run(dry_run=args.dry_run)
            retention.audit.close()
        finally:
            index.close()
        for verdict in report.verdicts:
            if args.json:
                print(json.dumps({"series_uid": verdict.series_uid, "study_uid": verdict.study_uid,
                                  "last_received": verdict.last_received, "retention_days": verdict.retention_days,
                                  "instances": verdict.instances, "bytes": verdict.bytes,
                                  "action": ("would remove" if report.dry_run else "removed") if verdict.remove
                                  else "kept", "reason": verdict.reason}))
                continue
            action = ("would remove" if report.dry_run else "removed") if verdict.remove else "kept"
            stamp = datetime.fromtimestamp(verdict.last_received).astimezone().isoformat(timespec="seconds")
            print(f"{action:<12} {verdict.series_uid}  last received {stamp}  {verdict.instances} instance(s)  "
                  f"{verdict.reason}")
        removed = report.removed
        if not args.json:
            verb = "would remove" if report.dry_run else "removed"
            print(f"{verb} {len(removed)} series ({sum(v.instances for v in removed)} instances, "
                  f"{sum(v.bytes for v in removed) / 1e6:.1f} MB); kept {len(report.kept)} past their time")
        return 0

    return run


def _running_node(storage: Path) -> int | None:
    """The process id of a node serving from ``storage``, or None."""
    try:
        pid = int((storage / ".running").read_text(encoding="utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"pacsnode" in cmdline and pid != os.getpid() else None


def cmd_index_rebuild(settings_of: Callable[[argparse.Namespace], Settings]) -> Callable[[argparse.Namespace], int]:
    """The ``index rebuild`` command bound to the CLI's settings loader."""

    def run(args: argparse.Namespace) -> int:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from node.dimse.server import storage_sop_classes
        from node.ingest import Ingestor
        from node.ops.audit import AuditTrail
        from node.storage.index import RebuildProgress
        from node.storage.rebuild import index_problem, rebuild_index, set_aside
        from node.storage.store import InstanceStore

        settings = settings_of(args)
        storage = settings.storage
        pid = _running_node(storage.path)
        if pid is not None:
            print(f"pacsnode index rebuild: a node (pid {pid}) is serving from {storage.path}; stop it "
                  "first (a node rebuilds a missing or unreadable index itself when it starts)", file=sys.stderr)
            return 2
        problem = index_problem(storage.index_path)
        try:
            moved = (set_aside(storage.index_path, "unreadable" if problem else "replaced")
                     if storage.index_path.exists() else None)
            index = Index(storage.index_path)
        except (OSError, sqlite3.Error) as exc:
            print(f"pacsnode index rebuild: the index {storage.index_path} cannot be rebuilt: {exc}",
                  file=sys.stderr)
            return 2
        store = InstanceStore(storage.path, fsync=storage.fsync)
        ingestor = Ingestor(store, index, allowed_sop_classes=settings.dicom.storage_sop_classes
                            or storage_sop_classes(), duplicate_policy=storage.duplicate_policy,
                            max_sequence_depth=storage.max_sequence_depth)
        started = time.time()
        columns = (TextColumn("indexing stored files"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        try:
            with Progress(*columns, disable=args.quiet) as bar:
                task = bar.add_task("rebuild", total=None)
                progress = rebuild_index(ingestor, RebuildProgress(),
                                         lambda p: bar.update(task, total=p.total, completed=p.done))
            reason = (f"the index could not be read ({problem})" if problem
                      else "pacsnode index rebuild" if moved else "no index")
            AuditTrail.for_settings(settings, index).index_rebuilt(
                f"command line: {os.environ.get('USER', '')}".strip(),
                {"reason": reason, "files": progress.done, "unreadable": progress.unreadable,
                 "seconds": round(time.time() - started, 1), "set_aside": moved.name if moved else None})
        finally:
            index.close()
        print(f"rebuilt {storage.index_path} from {progress.done} stored file(s) in {time.time() - started:.1f} s"
              + (f"; {progress.unreadable} could not be read (see the log)" if progress.unreadable else "")
              + (f"; the previous index is {moved}" if moved else ""))
        return 0

    return run


def add_commands(sub: Any, settings_of: Callable[[argparse.Namespace], Settings],
                 config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``audit``, ``retention`` and ``index`` to the ``pacsnode`` sub-command parser."""
    p = sub.add_parser("audit", help="Print the audit trail (associations, queries, retrieves, "
                                     "deliveries, configuration loads).")
    p.set_defaults(func=cmd_audit(settings_of))
    config_option(p)
    p.add_argument("--since", default="1d", help="how far back: 30m, 12h, 1d, 2w (1d)")
    p.add_argument("--event", choices=EVENT_KINDS, help="only this kind of event")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("retention", help="Remove series past their retention time now (analyzed, delivered, "
                                         "not needed as a prior); every removal is audited.")
    p.set_defaults(func=cmd_retention(settings_of))
    config_option(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="one JSON object per series")

    p = sub.add_parser("index", help="Work on the node's index (pacsnode index rebuild).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("rebuild", help="Rebuild the index from the stored files (the node stopped); the old "
                                           "index is set aside, the rebuild is audited.",
                           description="Rebuild the index from the stored files (the node stopped); the old "
                                       "index is set aside, the rebuild is audited.")
    p.set_defaults(func=cmd_index_rebuild(settings_of))
    config_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
