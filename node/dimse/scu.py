"""The node as a DIMSE client: send files (C-STORE SCU) and verify peers (C-ECHO)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, build_context

__all__ = ["SendReport", "collect_files", "echo", "send_files"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"


@dataclass
class SendReport:
    """What a send did: counts by outcome and the failures with their reasons."""

    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, and every file below named folders (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def _nodelay(assoc: object) -> None:
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _headers(files: list[Path], report: SendReport) -> Iterator[tuple[Path, str, str]]:
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            yield path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.skipped.append((path, f"not a DICOM Part 10 file: {exc}"))


def send_files(
    files: list[Path],
    *,
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str = "PACSNODE",
    progress: Callable[[int], None] | None = None,
) -> SendReport:
    """Send files with C-STORE over as few associations as the 128-context limit allows.

    The files are streamed as stored (no re-encoding) in their own transfer syntax.
    """
    report = SendReport()
    headers = list(_headers(files, report))
    by_context: dict[str, set[str]] = {}
    for _, sop_class, syntax in headers:
        by_context.setdefault(sop_class, set()).add(syntax)
    classes = sorted(by_context)
    for start in range(0, len(classes), 128):
        group = set(classes[start : start + 128])
        ae = AE(ae_title=calling_ae)
        contexts = [
            build_context(c, list(dict.fromkeys([*sorted(by_context[c]), _EXPLICIT_LE, _IMPLICIT_LE])))
            for c in sorted(group)
        ]
        assoc = ae.associate(host, port, contexts=contexts, ae_title=ae_title)
        if not assoc.is_established:
            reason = "association rejected or aborted by the peer"
            for path, sop_class, _ in headers:
                if sop_class in group:
                    report.failed.append((path, reason))
            continue
        _nodelay(assoc)
        try:
            for path, sop_class, _ in headers:
                if sop_class not in group:
                    continue
                status = assoc.send_c_store(path)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in (0x0000, 0xB000, 0xB006, 0xB007):
                    report.sent += 1
                else:
                    comment = str(getattr(status, "ErrorComment", "")) if status else ""
                    report.failed.append((path, f"status 0x{code & 0xFFFF:04X} {comment}".strip()))
                if progress:
                    progress(1)
        finally:
            assoc.release()
    return report


def echo(*, ae_title: str, host: str, port: int, calling_ae: str = "PACSNODE") -> int:
    """C-ECHO a peer; returns the status (0 for success, -1 when no association)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else -1
    finally:
        assoc.release()
