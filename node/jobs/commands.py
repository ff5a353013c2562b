"""Command-line commands of the pipeline: ``routes test|check``, ``jobs``, ``reprocess``,
``outbox retry`` and ``worker``.

:func:`add_commands` adds them to the ``pacsnode`` parser; each command reads the
node's settings like ``pacsnode status`` does and works on the index directly, so it
works whether or not the node is running (a running node picks up re-queued jobs and
deliveries within seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from node.config import Settings

__all__ = ["add_commands", "pipeline_report", "print_pipeline_status"]

Command = Callable[[argparse.Namespace], int]


def _table(settings: Settings, *, validate: bool = True) -> tuple[Any, list[str]]:
    from analyzers.registry import UnknownAnalyzer, load_analyzer
    from node.routing.rules import load_routes

    table = load_routes(settings.routing.routes)
    warnings = table.validate(load_analyzer, [d.name for d in settings.destinations],
                              missing=UnknownAnalyzer) if validate else []
    return table, warnings


def cmd_routes(settings_of: Callable[[argparse.Namespace], Settings]) -> Command:
    def run(args: argparse.Namespace) -> int:
        from node.routing.rules import RouteError

        settings = settings_of(args)
        try:
            table, warnings = _table(settings)
        except RouteError as exc:
            print(f"pacsnode routes: {exc}", file=sys.stderr)
            return 2
        if args.action == "check":
            print(f"{table.source}: {len(table.routes)} route(s)")
            for route in table.routes:
                state = ("disabled" if not route.enabled else
                         f"UN-ROUTED: {table.unavailable[route.name]}" if route.name in table.unavailable else
                         "labels series only" if route.analyzer is None else
                         f"ok ({route.analyzer} {table.versions.get(route.name, '')})")
                print(f"  {route.name:<12} → {', '.join(route.send_to) or '-':<10} {state}")
            for warning in warnings:
                print(f"warning: {warning}")
            return 0
        attributes: dict[str, Any] = {"Modality": args.modality}
        for keyword, value in (("SeriesDescription", args.description), ("ProtocolName", args.protocol)):
            if value is not None:
                attributes[keyword] = value
        for pair in args.attr or []:
            keyword, _, value = pair.partition("=")
            attributes[keyword] = value
        print("series: " + ", ".join(f"{k}={v!r}" for k, v in attributes.items()))
        chosen = []
        for decision in table.decide(attributes):
            route = decision.route
            if decision.selected:
                verdict = "MATCH" + ("" if route.name not in table.unavailable else " (analyzer not installed)")
                chosen.append(route.name)
            else:
                verdict = "matches, not taken" if decision.matched else "no match"
            print(f"{route.name:<12} {verdict}")
            for reason in decision.reasons:
                print(f"    {reason}")
        print(f"→ routes: {', '.join(chosen) or 'none'}")
        return 0

    return run


def cmd_jobs(settings_of: Callable[[argparse.Namespace], Settings]) -> Command:
    def run(args: argparse.Namespace) -> int:
        from node.jobs.ledger import JobLedger
        from node.storage.index import Index

        settings = settings_of(args)
        if not settings.storage.index_path.exists():
            print("no index yet: nothing received")
            return 0
        index = Index(settings.storage.index_path)
        try:
            jobs = JobLedger(index).jobs(state=args.state, limit=args.last)
        finally:
            index.close()
        if args.json:
            print(json.dumps([job.__dict__ for job in jobs], default=str))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"jobs{f' ({args.state})' if args.state else ''}")
        for column in ("created", "job", "route", "state", "attempts", "outputs", "series", "error"):
            table.add_column(column)
        for job in jobs:
            table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at)), job.id[:12],
                          job.route, job.state, f"{job.attempts}/{job.max_attempts}", str(len(job.outputs or [])),
                          job.series_uid, (job.error or "")[:80])
        Console().print(table)
        return 0

    return run


def _audit(settings: Settings, index: Any, action: str, detail: dict[str, Any]) -> None:
    """Record a command-line operator action in the audit trail (and syslog, per ``[audit]``)."""
    import getpass

    from node.ops.audit import AuditTrail

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = f"uid {os.getuid()}"
    AuditTrail.for_settings(settings, index).operator_action(f"command line: {user}", action, detail)


def cmd_reprocess(settings_of: Callable[[argparse.Namespace], Settings]) -> Command:
    def run(args: argparse.Namespace) -> int:
        from node.jobs.ledger import JobLedger
        from node.jobs.run import reprocess
        from node.routing.completion import create_tables
        from node.storage.index import Index

        settings = settings_of(args)
        table, _ = _table(settings)
        index = Index(settings.storage.index_path)
        try:
            ledger = JobLedger(index, max_attempts=settings.jobs.max_attempts,
                               backoff_seconds=settings.jobs.backoff_seconds)
            create_tables(index)
            ids = reprocess(index, table, ledger, args.series_uid, args.analyzer)
            _audit(settings, index, "reprocess",
                   {"series_uid": args.series_uid, "analyzer": args.analyzer, "jobs": ids})
        except KeyError as exc:
            print(f"pacsnode reprocess: {exc.args[0]}", file=sys.stderr)
            return 1
        finally:
            index.close()
        print(f"queued {len(ids)} job(s): {', '.join(ids) or '-'}")
        return 0

    return run


def cmd_outbox(settings_of: Callable[[argparse.Namespace], Settings]) -> Command:
    def run(args: argparse.Namespace) -> int:
        from node.outbox import Outbox
        from node.storage.index import Index
        from node.storage.store import InstanceStore

        settings = settings_of(args)
        index = Index(settings.storage.index_path)
        try:
            outbox = Outbox(index, InstanceStore(settings.storage.path, fsync=False), settings.destinations)
            if args.action == "retry":
                count = outbox.retry(destination=args.destination, include_pending=args.now)
                _audit(settings, index, "retry-deliveries",
                       {"destination": args.destination, "include_pending": args.now, "deliveries": count})
                print(f"queued {count} delivery(ies) again")
            else:
                for delivery in outbox.deliveries(state=args.state):
                    print(f"{delivery.destination:<10} {delivery.state:<8} {delivery.attempts:>3}  "
                          f"{delivery.sop_uid}  {delivery.error or ''}")
        finally:
            index.close()
        return 0

    return run


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from distributed import Worker

    async def serve() -> None:
        async with Worker(args.scheduler, nthreads=args.nthreads, name=args.name, resources=None) as worker:
            print(f"pacsnode worker {worker.address} connected to {args.scheduler}", flush=True)
            await worker.finished()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


def print_pipeline_status(console: Any, index: Any, settings: Settings) -> None:
    """Job and delivery counts and the dead letters (for ``pacsnode status``)."""
    from node.jobs.ledger import JobLedger
    from node.outbox import Outbox
    from node.storage.store import InstanceStore

    ledger = JobLedger(index)
    console.print("jobs: " + "  ".join(f"{state} {n}" for state, n in ledger.counts().items()))
    for job in ledger.jobs(limit=5):
        scalars = [f"{k}={v}" for k, v in (job.findings or {}).items()
                   if isinstance(v, bool | int | float | str) and k != "notice"][:5]
        console.print(f"  {job.route:<10} {job.state:<8} {job.series_uid}  "
                      + (", ".join(scalars) if scalars else (job.error or "")[:100]))
    outbox = Outbox(index, InstanceStore(settings.storage.path, fsync=False), settings.destinations)
    for destination, states in outbox.counts().items():
        console.print(f"deliveries to {destination}: " + "  ".join(f"{s} {n}" for s, n in sorted(states.items())))
    dead = outbox.deliveries(state="dead")
    for delivery in dead[:20]:
        console.print(f"[red]dead letter[/red] {delivery.sop_uid} → {delivery.destination} after "
                      f"{delivery.attempts} attempt(s): {delivery.error}")
    if dead:
        console.print(f"{len(dead)} dead letter(s); `pacsnode outbox retry` sends them again")


def pipeline_report(index: Any) -> list[dict[str, Any]]:
    """One row per received series (results excluded): what arrived, its completion, and per
    route the job's state, outputs and their deliveries — the table ``make demo`` prints.

    Each row: ``series_uid``, ``description``, ``instances``, ``completion`` (state and
    reason), ``jobs``: a list of ``{route, state, outputs, delivered}`` where ``delivered``
    maps a destination to ``(sent, total)`` output counts.
    """
    from node.jobs.ledger import OUTPUT_UID_ROOT, JobLedger
    from node.outbox import create_tables as create_delivery_tables
    from node.outbox import list_deliveries
    from node.routing.completion import create_tables

    create_tables(index)
    create_delivery_tables(index)
    ledger = JobLedger(index)
    conn = index.reader()
    rows = []
    for series_uid, description, count, state, reason in conn.execute(
            "SELECT s.series_uid, s.series_description, "
            "(SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid), c.state, c.reason "
            "FROM series s LEFT JOIN series_state c ON c.series_uid = s.series_uid "
            "WHERE s.series_uid NOT LIKE ? ORDER BY s.first_received", (OUTPUT_UID_ROOT + "%",)):
        jobs = []
        for job in reversed(ledger.jobs(series_uid=series_uid)):
            delivered: dict[str, tuple[int, int]] = {}
            for delivery in list_deliveries(index, job_id=job.id):
                sent, total = delivered.get(delivery.destination, (0, 0))
                delivered[delivery.destination] = (sent + (delivery.state == "sent"), total + 1)
            jobs.append({"route": job.route, "state": job.state, "outputs": job.outputs or [],
                         "delivered": delivered, "error": job.error})
        rows.append({"series_uid": series_uid, "description": description, "instances": count,
                     "completion": f"{state or 'untracked'}" + (f" ({reason})" if reason else ""), "jobs": jobs})
    return rows


def add_commands(sub: Any, settings_of: Callable[[argparse.Namespace], Settings],
                 config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the pipeline commands to the ``pacsnode`` sub-command parser."""
    p = sub.add_parser("routes", help="Test a series description against the routes, or check routes.toml.")
    p.set_defaults(func=cmd_routes(settings_of))
    config_option(p)
    p.add_argument("action", choices=("test", "check"))
    p.add_argument("--description", help="SeriesDescription to test")
    p.add_argument("--protocol", help="ProtocolName to test")
    p.add_argument("--modality", default="MR", help="Modality (MR)")
    p.add_argument("--attr", action="append", metavar="KEYWORD=VALUE", help="another attribute, repeatable")

    p = sub.add_parser("jobs", help="List analysis jobs.")
    p.set_defaults(func=cmd_jobs(settings_of))
    config_option(p)
    p.add_argument("--state", choices=("queued", "running", "done", "failed", "rejected"))
    p.add_argument("--last", type=int, default=50, help="how many (50)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("reprocess", help="Analyze a stored series again.")
    p.set_defaults(func=cmd_reprocess(settings_of))
    config_option(p)
    p.add_argument("series_uid")
    p.add_argument("--analyzer", help="only this analyzer")

    p = sub.add_parser("outbox", help="List deliveries, or send dead letters again (retry).")
    p.set_defaults(func=cmd_outbox(settings_of))
    config_option(p)
    p.add_argument("action", choices=("list", "retry"))
    p.add_argument("--destination", help="only this destination")
    p.add_argument("--state", choices=("pending", "sent", "dead"), help="list: only this state")
    p.add_argument("--now", action="store_true", help="retry: also send waiting deliveries now")

    p = sub.add_parser("worker", help="Run a Dask worker for executor = \"dask\".")
    p.set_defaults(func=cmd_worker)
    p.add_argument("--scheduler", required=True, help="tcp://host:8786")
    p.add_argument("--nthreads", type=int, default=1, help="jobs at once (1)")
    p.add_argument("--name", default=None)
