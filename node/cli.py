"""``pacsnode``: the command line.

Commands: ``serve``, ``status``, ``send``, ``echo``, ``demo``, ``phantom``, ``train``, ``evaluate``
and the routing/jobs commands of ``node.jobs.commands``.
Run ``pacsnode COMMAND --help`` for each one's options. Configuration errors exit
with code 2 and a message naming the file, key and expected form.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node import __version__
from node.config import ConfigError, Settings, load_settings
from node.errors import IndexUnreadable

__all__ = ["main"]

DEFAULT_CONFIG = Path("config/node.toml")
EXIT_CONFIG = 2


def _setup_logging(settings: Settings) -> None:
    from node.ops.logs import setup_logging

    setup_logging(settings.logging)


def _config_path(args: argparse.Namespace) -> Path | None:
    if getattr(args, "config", None):
        return Path(args.config)
    env = os.environ.get("PACSNODE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_config_path(args))


# -- commands ----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from node.runtime import Node

    settings = _settings(args)
    _setup_logging(settings)
    node = Node(settings)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger("pacsnode").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from node.dicomweb.server import HttpServerError

    try:
        node.start(dimse=not args.no_dimse)
    except HttpServerError as exc:
        print(f"pacsnode: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pacsnode: cannot listen on {settings.dicom.host}:{settings.dicom.port}: "
              f"{exc.strerror}; is another node running, or choose another [dicom] port",
              file=sys.stderr)
        return 1
    services = [] if args.no_dimse else [
        f"DIMSE {settings.dicom.ae_title}@{settings.dicom.host}:{settings.dicom.port}"]
    if node.http is not None:
        services.append(f"DICOMweb {node.http.url}")
    print(f"pacsnode {__version__} serving: {', '.join(services) or 'nothing'}, "
          f"storage {settings.storage.path}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    return 0


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TB"


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from node.storage.index import Index

    settings = _settings(args)
    if not settings.storage.index_path.exists():
        print(f"no index at {settings.storage.index_path}: nothing received yet "
              "(start the node with `pacsnode serve`)")
        return 0
    index = Index(settings.storage.index_path)
    counts = index.counts()
    # A pipe or log file has no width; print full UIDs and descriptions there instead of eliding.
    console = Console() if sys.stdout.isatty() else Console(width=220)
    if args.json:
        print(json.dumps({"patients": counts.patients, "studies": counts.studies,
                          "series": counts.series, "instances": counts.instances,
                          "bytes": counts.bytes, "recent_series": index.recent_series(args.last)},
                         default=str))
        return 0
    console.print(f"[bold]pacsnode[/bold] storage {settings.storage.path.resolve()}")
    console.print(f"patients {counts.patients}  studies {counts.studies}  series {counts.series}  "
                  f"instances {counts.instances}  disk {_human_bytes(counts.bytes)}")
    table = Table(title=f"last {args.last} series received")
    for column in ("received", "patient", "description", "modality", "instances", "from", "series UID"):
        table.add_column(column)
    for row in index.recent_series(args.last):
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_received"] or 0)),
            str(row["PatientID"]), str(row["SeriesDescription"] or ""), str(row["Modality"] or ""),
            str(row["instances"]), str(row["calling_ae"] or ""), str(row["SeriesInstanceUID"]),
        )
    console.print(table)
    from node.jobs.commands import print_pipeline_status

    print_pipeline_status(console, index, settings)
    index.close()
    return 0


def _parse_target(target: str) -> tuple[str, str, int]:
    try:
        ae_title, _, address = target.partition("@")
        host, _, port = address.rpartition(":")
        if not ae_title or not host or not port:
            raise ValueError
        return ae_title, host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--to {target!r}: expected AE@host:port, e.g. PACSNODE@127.0.0.1:11112"
        ) from None


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls", action="store_true", help="DIMSE over TLS, the peer verified by the system's CAs")
    parser.add_argument("--tls-ca", metavar="PEM", help="DIMSE over TLS, the peer verified by this CA file")
    parser.add_argument("--tls-cert", metavar="PEM", help="our certificate for a peer that asks for one (+ --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")


def _tls_args(args: argparse.Namespace, host: str) -> Any:
    """pynetdicom ``tls_args`` from ``--tls``/``--tls-ca``/``--tls-cert``/``--tls-key`` (None: plain TCP)."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    from pydantic import ValidationError

    from node.config import ClientTlsSettings
    from node.dimse.scu import client_tls

    try:
        settings = ClientTlsSettings(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except ValidationError as exc:
        raise ValueError("; ".join(str(e["msg"]) for e in exc.errors())) from None
    return client_tls(settings, host)


def cmd_send(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from node.dimse.scu import collect_files, send_files

    ae_title, host, port = _parse_target(args.to)
    try:
        tls_args = _tls_args(args, host)
    except (ValueError, OSError) as exc:  # a missing file, a key that does not match, cert without key
        print(f"pacsnode send: TLS options: {exc}", file=sys.stderr)
        return 2
    try:
        files = collect_files([Path(p) for p in args.paths])
    except FileNotFoundError as exc:
        print(f"pacsnode send: {exc}", file=sys.stderr)
        return 1
    if not files:
        print("pacsnode send: no files found", file=sys.stderr)
        return 1
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), disable=args.quiet or not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"C-STORE to {ae_title}@{host}:{port}", total=len(files))
        report = send_files(files, ae_title=ae_title, host=host, port=port,
                            calling_ae=args.calling_ae, tls_args=tls_args,
                            progress=lambda n: progress.advance(task, n))
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for path, reason in report.failed:
        print(f"failed {path}: {reason}", file=sys.stderr)
    print(f"sent {report.sent} of {len(files)} file(s) to {ae_title}@{host}:{port}"
          + (f", {len(report.failed)} failed" if report.failed else "")
          + (f", {len(report.skipped)} skipped" if report.skipped else ""))
    return 0 if not report.failed else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from node.dimse.scu import echo

    ae_title, host, port = _parse_target(args.to)
    try:
        tls_args = _tls_args(args, host)
    except (ValueError, OSError) as exc:
        print(f"pacsnode echo: TLS options: {exc}", file=sys.stderr)
        return 2
    status = echo(ae_title=ae_title, host=host, port=port, calling_ae=args.calling_ae, tls_args=tls_args)
    if status == 0:
        print(f"C-ECHO {ae_title}@{host}:{port}: success")
        return 0
    print(f"C-ECHO {ae_title}@{host}:{port}: failed (status {status})", file=sys.stderr)
    return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(Path(args.workdir), keep_running=args.keep_running)


def _delegate(command: str) -> Callable[[argparse.Namespace], int]:
    """``phantom``, ``train NAME`` and ``evaluate NAME`` live with the analyzers; find them by
    entry point so the node never imports analyzer internals."""

    def run(args: argparse.Namespace) -> int:
        from analyzers import registry

        rest = list(args.rest)
        try:
            if command == "phantom":
                return int(registry.load_command("phantom")(rest))
            names = registry.trainer_names() if command == "train" else registry.evaluator_names()
            if not rest or rest[0].startswith("-"):
                print(f"pacsnode {command}: name an analyzer ({', '.join(names) or 'none installed'})",
                      file=sys.stderr)
                return 2
            load = registry.load_trainer if command == "train" else registry.load_evaluator
            return int(load(rest[0])(rest[1:]))
        except registry.UnknownAnalyzer as exc:
            print(f"pacsnode {command}: {exc}", file=sys.stderr)
            return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsnode",
        description="A DICOM-native PACS node for neuro-oncology MRI. Not for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"pacsnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE",
                       help="node.toml (default: $PACSNODE_CONFIG, else ./config/node.toml, "
                            "else built-in defaults)")

    p = add("serve", cmd_serve, "Run the node: DIMSE (and DICOMweb) services until stopped.")
    config_option(p)
    p.add_argument("--no-dimse", action="store_true", help="do not start the DIMSE service")

    p = add("status", cmd_status, "Print what the node holds and the last series received.")
    config_option(p)
    p.add_argument("--last", type=int, default=10, help="how many recent series to list (10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("send", cmd_send, "Send DICOM files or folders to a DICOM node with C-STORE.")
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--to", required=True, help="AE@host:port, e.g. PACSNODE@127.0.0.1:11112")
    p.add_argument("--calling-ae", default="PACSNODE", help="our AE title (PACSNODE)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_tls_options(p)

    p = add("echo", cmd_echo, "Verify a DICOM peer with C-ECHO.")
    p.add_argument("--to", required=True, help="AE@host:port")
    p.add_argument("--calling-ae", default="PACSNODE", help="our AE title (PACSNODE)")
    _add_tls_options(p)

    p = add("demo", cmd_demo, "Start a node, send it a generated series, query it back.")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its files (.demo)")
    p.add_argument("--keep-running", action="store_true", help="leave the node running at the end")

    from node.jobs.commands import add_commands

    add_commands(sub, _settings, config_option)

    from node.ops.commands import add_commands as add_ops_commands

    add_ops_commands(sub, _settings, config_option)

    for name, help_text in (("phantom", "Write digital reference objects (see pacsnode phantom --help)."),
                            ("train", "Train an analyzer's model (pacsnode train NAME --help)."),
                            ("evaluate", "Evaluate models on labelled studies (pacsnode evaluate NAME --help).")):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(name))
    return parser


#: Commands whose options the analyzers parse (``pacsnode phantom --help`` included).
_DELEGATED = ("phantom", "train", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in _DELEGATED:
        # argparse's REMAINDER drops a leading option such as --help; hand everything over as is.
        return _delegate(arguments[0])(argparse.Namespace(rest=arguments[1:]))
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"pacsnode: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except argparse.ArgumentTypeError as exc:
        print(f"pacsnode: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except IndexUnreadable as exc:
        print(f"pacsnode: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
