"""DICOM Part 10 files: the node's file meta group, encoded directly, and reading a sender's.

Every stored instance starts with the preamble, ``DICM`` and a File Meta Information group
the node writes itself (:func:`encode_file_meta`); a STOW-RS part or a file sent by
``pacsnode send`` is split into its file meta and dataset (:func:`split_part10`).
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID

from node import __version__
from node.dataset_checks import DECODE_ERRORS
from node.errors import InvalidDataset

__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "encode_file_meta", "split_part10"]

IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.10.1379.1")
IMPLEMENTATION_VERSION_NAME = f"PACSNODE_{__version__}"[:16]


def _uid_bytes(uid: str) -> bytes:
    data = uid.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text_bytes(text: str) -> bytes:
    data = text.encode("ascii", errors="replace")
    return data + b" " if len(data) % 2 else data


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the file meta group (PS3.10 7.1)."""
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"UN", b"SQ", b"UT", b"OW"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group, encoded directly.

    Gives the same bytes as pydicom's ``write_file_meta_info`` for the elements the node
    writes, about ten times faster (it is on the path of every instance).
    """
    body = b"".join((
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", _uid_bytes(sop_class_uid)),
        _meta_element(0x00020003, b"UI", _uid_bytes(sop_instance_uid)),
        _meta_element(0x00020010, b"UI", _uid_bytes(transfer_syntax_uid)),
        _meta_element(0x00020012, b"UI", _uid_bytes(IMPLEMENTATION_CLASS_UID)),
        _meta_element(0x00020013, b"SH", _text_bytes(IMPLEMENTATION_VERSION_NAME)),
        _meta_element(0x00020016, b"AE", _text_bytes(source_ae)) if source_ae else b"",
    ))
    length = _meta_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + length + body


def split_part10(data: bytes) -> tuple[FileMetaDataset, int]:
    """The file meta of a Part 10 file and the offset where its dataset starts.

    Raises
    ------
    InvalidDataset
        No preamble/``DICM`` prefix, unreadable file meta, or no transfer syntax.
    """
    stream = BytesIO(data)
    try:
        read_preamble(stream, force=False)
        meta = _read_file_meta_info(stream)
    except DECODE_ERRORS as exc:
        raise InvalidDataset(
            f"not a readable DICOM Part 10 file ({type(exc).__name__}: {str(exc)[:200]}); send "
            "application/dicom with the 128-byte preamble, DICM prefix and file meta information"
        ) from exc
    try:
        syntax = UID(str(meta.get("TransferSyntaxUID", "") or ""))
    except DECODE_ERRORS as exc:
        raise InvalidDataset(f"the Transfer Syntax UID (0002,0010) cannot be read: {exc}") from exc
    if not syntax:
        raise InvalidDataset("the file meta information has no Transfer Syntax UID (0002,0010)")
    if not syntax.is_transfer_syntax:
        raise InvalidDataset(
            f"transfer syntax {syntax!r} is not one this node knows; send the instance in a "
            "standard transfer syntax such as Explicit VR Little Endian (1.2.840.10008.1.2.1)"
        )
    return meta, stream.tell()
