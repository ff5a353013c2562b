"""``multipart/related`` (RFC 2387) for DICOMweb: media types, Accept, an incremental
reader for STOW-RS request bodies and the framing of WADO-RS responses.

The reader takes the body chunk by chunk and hands out each part as soon as its
closing delimiter arrives, so a large STOW-RS request is ingested part by part
instead of being held whole. Framing follows RFC 2046 5.1.1: a part starts with
``--boundary CRLF``, its headers end with an empty line, and its body is followed
by ``CRLF --boundary``; the last delimiter is ``--boundary--``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from node.errors import NodeError

__all__ = [
    "MalformedMultipart",
    "MediaType",
    "MultipartReader",
    "NotAcceptable",
    "Part",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "new_boundary",
    "parse_accept",
    "parse_media_type",
    "part_header",
]


class MalformedMultipart(NodeError):
    """The request body is not a well-formed multipart/related body; the message says where."""

    http = 400


class PayloadTooLarge(NodeError):
    """The request body exceeds ``[http] max_upload_mb``."""

    dimse = 0xA700  # the STOW-RS FailureReason of the part left unread: out of resources
    http = 413


class UnsupportedMediaType(NodeError):
    """The request's Content-Type is not one the resource accepts."""

    http = 415


class NotAcceptable(NodeError):
    """None of the media types in the Accept header can be produced."""

    http = 406


@dataclass(frozen=True)
class MediaType:
    """A media type with its parameters (names lower-case, quotes removed)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def quality(self) -> float:
        try:
            return float(self.params.get("q", "1"))
        except ValueError:
            return 0.0


def _split_unquoted(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaType:
    """``type/subtype; name=value; ...`` → :class:`MediaType` (type lower-cased)."""
    pieces = _split_unquoted(text, ";")
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return MediaType(pieces[0].strip().lower(), params)


def parse_accept(header: str | None) -> list[MediaType]:
    """The Accept header's media types, best quality first (``*/*`` when absent or empty)."""
    if not header or not header.strip():
        return [MediaType("*/*")]
    types = [parse_media_type(item) for item in _split_unquoted(header, ",") if item.strip()]
    return sorted((t for t in types if t.quality > 0), key=lambda t: -t.quality)


def new_boundary() -> str:
    """A boundary that cannot occur in binary data by chance (128 random bits)."""
    return f"pacsnode-{secrets.token_hex(16)}"


def part_header(boundary: str, content_type: str, *, first: bool = False,
                location: str | None = None) -> bytes:
    """The delimiter and headers that open a part (the CRLF ending the previous body first)."""
    lead = b"" if first else b"\r\n"
    extra = f"\r\nContent-Location: {location}" if location else ""
    return lead + f"--{boundary}\r\nContent-Type: {content_type}{extra}\r\n\r\n".encode("ascii")


def closing_delimiter(boundary: str) -> bytes:
    """What ends the last part's body and the multipart body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


@dataclass
class Part:
    """One body part: its headers (names lower-case) and its bytes."""

    headers: dict[str, str]
    body: bytes
    number: int

    @property
    def content_type(self) -> MediaType | None:
        value = self.headers.get("content-type")
        return parse_media_type(value) if value else None


class MultipartReader:
    """Incremental parser of a multipart body with the given boundary.

    Feed chunks with :meth:`feed` (returns the parts completed so far) and call
    :meth:`close` at the end of the body (raises when the closing delimiter is missing).

    Raises
    ------
    MalformedMultipart
        No opening delimiter, a part without a header block, a delimiter followed by
        garbage, or a body that ends before the closing delimiter.
    """

    _MAX_HEADER_BYTES = 16384

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > 200:
            raise MalformedMultipart("the multipart boundary must be 1 to 200 characters")
        self.boundary = boundary
        self._first = f"--{boundary}".encode("latin-1")
        self._delimiter = b"\r\n" + self._first
        self._buffer = bytearray()
        self._state = "preamble"
        self._search_from = 0
        self._headers: dict[str, str] = {}
        self._count = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Part]:
        if self._state == "done":
            return []  # the epilogue after the closing delimiter is ignored (RFC 2046)
        self._buffer += chunk
        parts: list[Part] = []
        while self._step(parts):
            pass
        return parts

    def close(self) -> None:
        if self._state == "preamble":
            raise MalformedMultipart(
                f"the body has no part: the delimiter --{self.boundary} never occurs; check the "
                "boundary parameter of the Content-Type header"
            )
        if self._state != "done":
            raise MalformedMultipart(
                f"the body ends inside part {self._count + 1}: the closing delimiter "
                f"--{self.boundary}-- is missing (truncated upload or wrong boundary)"
            )

    def _after_delimiter(self, at: int) -> bool | None:
        """Handle what follows a delimiter found at ``at``; None when more bytes are needed."""
        rest = self._buffer[at:]
        if len(rest) < 2:
            return None
        if rest[:2] == b"--":
            self._state = "done"
            self._buffer.clear()
            return False
        stripped = bytes(rest).lstrip(b" \t")
        if len(stripped) < 2:
            return None
        if stripped[:2] != b"\r\n":
            raise MalformedMultipart(
                f"the delimiter before part {self._count + 1} is followed by "
                f"{bytes(stripped[:20])!r} instead of a line break"
            )
        del self._buffer[: len(self._buffer) - len(stripped) + 2]
        self._state = "headers"
        return True

    def _step(self, parts: list[Part]) -> bool:
        if self._state == "preamble":
            if self._buffer.startswith(self._first):
                at = len(self._first)
            else:
                found = self._buffer.find(self._delimiter)
                if found < 0:
                    if len(self._buffer) > 65536:
                        raise MalformedMultipart(
                            f"no delimiter --{self.boundary} in the first 64 KiB of the body; "
                            "the boundary parameter does not match the body"
                        )
                    return False
                at = found + len(self._delimiter)
            result = self._after_delimiter(at)
            return bool(result)
        if self._state == "headers":
            end = self._buffer.find(b"\r\n\r\n")
            if self._buffer.startswith(b"\r\n"):
                end, skip = 0, 2  # a part without headers
            elif end < 0:
                if len(self._buffer) > self._MAX_HEADER_BYTES:
                    raise MalformedMultipart(
                        f"part {self._count + 1} has no end of headers (an empty line) in its "
                        f"first {self._MAX_HEADER_BYTES} bytes"
                    )
                return False
            else:
                skip = 4
            self._headers = {}
            for line in bytes(self._buffer[:end]).decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(":")
                if not sep:
                    raise MalformedMultipart(
                        f"part {self._count + 1} has a header line without a colon: {line[:60]!r}"
                    )
                self._headers[name.strip().lower()] = value.strip()
            del self._buffer[: end + skip]
            self._state = "body"
            self._search_from = 0
            return True
        if self._state == "body":
            found = self._buffer.find(self._delimiter, self._search_from)
            if found < 0:
                self._search_from = max(0, len(self._buffer) - len(self._delimiter))
                return False
            self._count += 1
            parts.append(Part(self._headers, bytes(self._buffer[:found]), self._count))
            del self._buffer[:found]
            result = self._after_delimiter(len(self._delimiter))
            if result is None:
                self._state = "delimiter"
                return False
            return result
        if self._state == "delimiter":
            result = self._after_delimiter(len(self._delimiter))
            return bool(result)
        return False
