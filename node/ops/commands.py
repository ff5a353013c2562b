"""``pacsnode audit``: print the audit trail; ``pacsnode retention``: remove expired series now."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from node.config import Settings
from node.ops.audit import EVENT_KINDS, InvalidSince, parse_since, read_events
from node.storage.index import Index

__all__ = ["add_commands", "cmd_audit", "cmd_retention"]


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


def add_commands(sub: Any, settings_of: Callable[[argparse.Namespace], Settings],
                 config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``audit`` to the ``pacsnode`` sub-command parser."""
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
