"""Checks on an arriving dataset's encoding that must run before, or instead of, a full parse.

:func:`sequence_depth` measures how deeply sequences nest without recursing: pydicom
parses a sequence of undefined length by recursion, so a dataset nesting a few hundred
levels deep raises ``RecursionError`` in the middle of a request. The node refuses such a
dataset with a status naming the limit (``[storage] max_sequence_depth``) instead.

Only the structure is walked (element headers, items and delimiters; values are skipped by
their length), and only when the dataset holds more items than the limit: nesting ``d``
sequences deep takes at least ``d - 1`` items, so counting the item tag is a sound first test.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import InvalidDataset

__all__ = ["check_element_lengths", "check_pixel_length", "nests_deeper_than", "sequence_depth"]

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"))


@dataclass
class _Frame:
    kind: str  # "sequence" (holds items of elements), "item" or "fragments" (items of raw bytes)
    end: int | None  # offset where a defined-length frame ends; None: ends at its delimiter
    implicit: bool


def _is_sequence(tag: int, vr: bytes | None, length: int) -> bool:
    if vr == b"SQ":
        return True
    if vr is None or vr == b"UN":  # implicit VR, or UN: the data dictionary decides
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            # An unknown (private) element of undefined length can only be a sequence.
            return length == _UNDEFINED
    return False


def nests_deeper_than(data: bytes, *, implicit: bool, little: bool, limit: int) -> bool:
    """Whether the sequences of an encoded dataset nest more than ``limit`` levels deep.

    Parameters
    ----------
    data:
        The dataset as encoded (no preamble or file meta; a deflated one inflated).
    implicit, little:
        Its transfer syntax's VR encoding and byte order.
    limit:
        The deepest nesting allowed (1: sequences whose items hold no sequence).
    """
    item_tag = b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00"
    if data.count(item_tag) + 1 <= limit:
        return False
    return sequence_depth(data, implicit=implicit, little=little, limit=limit) > limit


def sequence_depth(data: bytes | bytearray | memoryview, *, implicit: bool, little: bool,
                   limit: int) -> int:
    """How deeply the sequences of an encoded dataset nest, counted up to ``limit + 1``.

    Parameters
    ----------
    data:
        The dataset as encoded (no preamble or file meta; a deflated one inflated).
    implicit, little:
        Its transfer syntax's VR encoding and byte order.
    limit:
        Stop walking once the depth exceeds this; the result is then ``limit + 1``.

    Returns
    -------
    int
        0 for a dataset without sequences, 1 for sequences whose items hold none, and so on.
        A malformed structure ends the walk with the depth seen so far: reading the dataset
        reports that fault.
    """
    view = memoryview(data)
    order = "<" if little else ">"
    tag_and_length = struct.Struct(order + "HHI")
    tag_vr = struct.Struct(order + "HH2s")
    short_length = struct.Struct(order + "H")
    long_length = struct.Struct(order + "I")
    end = len(view)
    stack: list[_Frame] = []
    depth = deepest = 0
    offset = 0
    while offset + 8 <= end:
        while stack and stack[-1].end is not None and offset >= stack[-1].end:
            if stack.pop().kind == "sequence":
                depth -= 1
        frame = stack[-1] if stack else None
        group, element, length = tag_and_length.unpack_from(view, offset)
        tag = group << 16 | element
        if group == 0xFFFE:  # items and delimiters: tag and 4-byte length in every syntax
            offset += 8
            if tag == _ITEM and frame is not None and frame.kind in ("sequence", "fragments"):
                if frame.kind == "fragments":
                    if length == _UNDEFINED:
                        break
                    offset += length
                    continue
                stack.append(_Frame("item", None if length == _UNDEFINED else offset + length,
                                    frame.implicit))
            elif tag == _ITEM_END and frame is not None and frame.kind == "item":
                stack.pop()
            elif tag == _SEQUENCE_END and frame is not None and frame.kind in ("sequence", "fragments"):
                if stack.pop().kind == "sequence":
                    depth -= 1
            else:
                break  # a delimiter out of place
            continue
        in_implicit = frame.implicit if frame is not None else implicit
        vr: bytes | None
        if in_implicit:
            vr = None
            offset += 8
        else:
            _, _, vr = tag_vr.unpack_from(view, offset)
            if vr in _LONG_VRS:
                if offset + 12 > end:
                    break
                (length,) = long_length.unpack_from(view, offset + 8)
                offset += 12
            else:
                (length,) = short_length.unpack_from(view, offset + 6)
                offset += 8
        if _is_sequence(tag, vr, length):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return limit + 1
            # A UN sequence of undefined length is encoded in implicit VR (PS3.5 6.2.2).
            inner_implicit = in_implicit or vr == b"UN"
            stack.append(_Frame("sequence", None if length == _UNDEFINED else offset + length,
                                inner_implicit))
            continue
        if length == _UNDEFINED:  # encapsulated pixel data: items of raw fragments
            stack.append(_Frame("fragments", None, in_implicit))
            continue
        offset += length
    return deepest


def check_element_lengths(ds: Dataset) -> None:
    """pydicom reads a value shorter than its declared length without complaint; such an element
    means the dataset was cut off or is corrupt."""
    for tag, element in ds._dict.items():
        if isinstance(element, RawDataElement) and element.length != 0xFFFFFFFF:
            present = len(element.value) if element.value is not None else 0
            if present < element.length:
                raise InvalidDataset(
                    f"element ({tag.group:04X},{tag.element:04X}) declares {element.length} bytes "
                    f"but only {present} arrived: the dataset is truncated or corrupt"
                )


def check_pixel_length(ds: Dataset, data: bytes, transfer_syntax: UID) -> None:
    """A native (uncompressed) Pixel Data shorter than its header promises is a truncated dataset."""
    if UID(transfer_syntax).is_compressed or transfer_syntax == DeflatedExplicitVRLittleEndian:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return
    expected = rows * cols * samples * frames * bits // 8
    # The remaining bytes after the header hold the Pixel Data element (tag, VR, length, value).
    consumed = _header_length(ds, data, transfer_syntax)
    remaining = len(data) - consumed
    if consumed and remaining < expected:
        raise InvalidDataset(
            f"Pixel Data is truncated: {rows}x{cols}x{frames} at {bits} bits needs {expected} "
            f"bytes, {max(remaining, 0)} arrived"
        )


def _header_length(ds: Dataset, data: bytes, transfer_syntax: UID) -> int:
    """Offset of the Pixel Data value, or 0 when the parse did not stop at Pixel Data."""
    at = int(getattr(ds, "_pacsnode_header_end", 0) or 0)
    if at <= 0 or at + 8 > len(data):
        return 0
    if int.from_bytes(data[at:at + 2], "little") != 0x7FE0 or int.from_bytes(data[at + 2:at + 4], "little") != 0x0010:
        return 0
    implicit = transfer_syntax == ImplicitVRLittleEndian
    return at + (8 if implicit else 12)
