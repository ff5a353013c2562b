"""A small STOW-RS client: sends Part 10 files to a DICOMweb server in batches.

Used by the outbox for ``kind = "dicomweb"`` destinations and by the tests and the
benchmark. Each request streams its parts from disk with a known Content-Length (some
servers refuse chunked uploads), so a large study is never held in memory.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from node.dicomweb.multipart import new_boundary
from node.errors import NodeError

__all__ = ["StowClient", "StowError", "StowReport"]

_CHUNK = 1024 * 1024


class StowError(NodeError):
    """The server refused the request as a whole (no JSON response or an HTTP error)."""

    http = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StowReport:
    """What the server said about the instances sent."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and all(s == 200 for s in self.statuses)


def _sequence_uids(payload: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(payload.get(tag, {}).get("Value", []) or [])


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class StowClient:
    """STOW-RS to one server.

    Parameters
    ----------
    url:
        The DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
    token:
        Sent as ``Authorization: Bearer <token>`` when given.
    timeout:
        Seconds for connecting and for each read or write.
    verify:
        TLS verification: ``True``, ``False`` or an :class:`ssl.SSLContext`.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0,
                 verify: bool | ssl.SSLContext = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a DICOMweb URL starts with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        headers = {"Accept": "application/dicom+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(headers=headers, timeout=timeout, verify=verify)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> StowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _body(boundary: str, files: Sequence[Path]) -> tuple[int, Iterator[bytes]]:
        heads = [(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
                 for _ in files]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, files, strict=True))
        length += len(tail)

        def chunks() -> Iterator[bytes]:
            for head, path in zip(heads, files, strict=True):
                yield head
                with open(path, "rb") as handle:
                    while block := handle.read(_CHUNK):
                        yield block
                yield b"\r\n"
            yield tail

        return length, chunks()

    def store_files(self, files: Iterable[Path], *, study_uid: str | None = None,
                    batch_size: int = 50) -> StowReport:
        """Send ``files`` (Part 10) in requests of ``batch_size`` instances.

        Raises
        ------
        StowError
            A request failed as a whole (connection, 4xx/5xx without a STOW response body).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        report = StowReport()
        paths = [Path(f) for f in files]
        target = f"{self.url}/studies" + (f"/{study_uid}" if study_uid else "")
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            boundary = new_boundary()
            length, body = self._body(boundary, batch)
            headers = {"Content-Type": f'multipart/related; type="application/dicom"; '
                                       f"boundary={boundary}",
                       "Content-Length": str(length)}
            try:
                response = self._client.post(target, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise StowError(f"STOW-RS to {target} failed: {exc}") from exc
            self._read(response, report)
        return report

    @staticmethod
    def _read(response: httpx.Response, report: StowReport) -> None:
        report.statuses.append(response.status_code)
        report.warnings += response.headers.get_list("warning")
        try:
            payload = response.json() if response.content else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict) or (response.status_code >= 400 and not payload.get(
                "00081198")):
            raise StowError(f"STOW-RS answered {response.status_code}: {response.text[:500]}",
                            status=response.status_code)
        for item in _sequence_uids(payload, "00081199"):
            report.stored.append(str(_first(item, "00081155")))
        for item in _sequence_uids(payload, "00081198"):
            report.failed.append((str(_first(item, "00081155") or ""),
                                  int(_first(item, "00081197") or 0)))
