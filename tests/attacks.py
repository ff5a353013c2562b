"""Malformed DICOM objects, encoded by hand the way a broken or hostile sender would make them.

pydicom refuses (or repairs) most of what these build, so the bytes are written directly:
explicit VR little endian elements, a Part 10 wrapper with a chosen file meta group, and the
specific faults an attack review found (see docs/security.md).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from node.ingest import encode_file_meta

__all__ = [
    "EXPLICIT_LE",
    "MR_STORAGE",
    "element",
    "image_dataset",
    "nested_sequences",
    "part10",
    "short_group_length_part10",
    "uid",
]

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_ROOT = "1.2.826.0.1.3680043.9.9999"
_LONG = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def uid(*parts: int) -> str:
    """A UID under the tests' own root."""
    return ".".join([_ROOT, *(str(p) for p in parts)])


def _pad(value: bytes, vr: bytes) -> bytes:
    if len(value) % 2 == 0:
        return value
    return value + (b"\x00" if vr in (b"UI", b"OB", b"UN") else b" ")


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the encoded length field."""
    value = _pad(value, vr) if length is None else value
    size = len(value) if length is None else length
    group, number = tag >> 16, tag & 0xFFFF
    if vr in _LONG:
        return struct.pack("<HH2sHI", group, number, vr, 0, size) + value
    return struct.pack("<HH2sH", group, number, vr, size & 0xFFFF) + value  # a short VR's 2-byte length


def image_dataset(sop_instance: str, *, rows: int | None = 8, columns: int | None = 8,
                  samples: int = 1, photometric: str = "MONOCHROME2", bits: int = 16,
                  pixels: bytes | None = None, pixel_length: int | None = None,
                  sop_class: bytes | None = None, study_uid: bytes | None = None,
                  study_vr: bytes = b"UI", extra: Iterable[bytes] = ()) -> bytes:
    """An MR image dataset (explicit VR little endian, no file meta) with the given faults.

    ``pixels`` are the Pixel Data bytes present, ``pixel_length`` the length its element
    declares (default: their count); ``sop_class``/``study_uid``/``study_vr`` replace those
    elements' raw values or VR; ``extra`` are whole elements placed after Modality (0008,0060)
    and before (0010,0010), e.g. a deep sequence is better added with ``nested`` below.
    """
    if pixels is None and rows and columns:
        pixels = bytes(rows * columns * samples * bits // 8)
    out = [
        element(0x00080016, b"UI", sop_class if sop_class is not None else MR_STORAGE.encode()),
        element(0x00080018, b"UI", sop_instance.encode()),
        element(0x00080060, b"CS", b"MR"),
        *extra,
        element(0x00100020, b"LO", b"ATTACK"),
        element(0x0020000D, study_vr, study_uid if study_uid is not None else uid(1).encode()),
        element(0x0020000E, b"UI", uid(2).encode()),
    ]
    if rows is not None and columns is not None:
        out += [
            element(0x00280002, b"US", struct.pack("<H", samples)),
            element(0x00280004, b"CS", photometric.encode()),
            element(0x00280010, b"US", struct.pack("<H", rows)),
            element(0x00280011, b"US", struct.pack("<H", columns)),
            element(0x00280100, b"US", struct.pack("<H", bits)),
            element(0x00280101, b"US", struct.pack("<H", bits)),
            element(0x00280102, b"US", struct.pack("<H", bits - 1)),
            element(0x00280103, b"US", struct.pack("<H", 0)),
        ]
        if samples > 1:
            out.insert(-6, element(0x00280006, b"US", struct.pack("<H", 0)))  # planar configuration
    if pixels is not None:
        out.append(element(0x7FE00010, b"OW" if bits > 8 else b"OB", pixels, length=pixel_length))
    return b"".join(out)


def nested_sequences(depth: int, *, defined_length: bool = False) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` levels deep, built without recursion
    (pydicom's writer recurses and cannot encode a deep nest)."""
    inner = b""
    for _ in range(depth):
        if defined_length:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
        else:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            inner = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + item
                     + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return inner


def part10(dataset: bytes, sop_instance: str, *, sop_class: str = MR_STORAGE,
           transfer_syntax: str = EXPLICIT_LE) -> bytes:
    """A Part 10 file: preamble, DICM, a well-formed file meta group, then ``dataset``."""
    return encode_file_meta(sop_class, sop_instance, transfer_syntax) + dataset


def short_group_length_part10(dataset: bytes) -> bytes:
    """A Part 10 file whose File Meta Information Group Length (0002,0000) has a 3-byte value."""
    meta = element(0x00020000, b"UL", b"\x10\x00\x00", length=3)
    meta += element(0x00020010, b"UI", EXPLICIT_LE.encode())
    return b"\x00" * 128 + b"DICM" + meta + dataset
