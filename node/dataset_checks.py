"""Checks on an arriving dataset's encoding that must run before, or instead of, a full parse.

:func:`check_element_lengths` and :func:`check_pixel_length` refuse a dataset that was cut
off: an element, the Pixel Data element or an encapsulated fragment declaring more bytes
than arrived, or native pixels fewer than the image attributes call for.

:func:`sequence_depth` measures how deeply sequences nest without recursing: pydicom
parses a sequence of undefined length by recursion, so a dataset nesting a few hundred
levels deep raises ``RecursionError`` in the middle of a request. The node refuses such a
dataset with a status naming the limit (``[storage] max_sequence_depth``) instead.

Only the structure is walked (element headers, items and delimiters; values are skipped by
their length), and only when the dataset holds more items than the limit: nesting ``d``
sequences deep takes at least ``d - 1`` items, so counting the item tag is a sound first test.
Ingest runs it on the header pydicom has parsed (a nest deep enough to exhaust pydicom's
recursion is refused from the ``RecursionError``), so the pixel data is not searched.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.errors import InvalidDataset

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_KEYWORDS",
    "check_element_lengths",
    "check_pixel_length",
    "expected_pixel_bytes",
    "nests_deeper_than",
    "sequence_depth",
]

#: What pydicom raises on bytes it cannot decode: a malformed element, an unknown VR, a value
#: of the wrong size, a stream that ends early, nesting beyond the stack.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError, BytesLengthException, EOFError, ValueError, TypeError, KeyError, IndexError,
    OverflowError, NotImplementedError, struct.error, RecursionError, AttributeError, UnicodeError,
    OSError,  # "No tag to read at file position ..." of a sequence cut off (in-memory streams only here)
)

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


def nests_deeper_than(data: bytes, *, implicit: bool, little: bool, limit: int, start: int = 0,
                      end: int | None = None) -> bool:
    """Whether the sequences of an encoded dataset (or of the elements in ``data[start:end]``)
    nest more than ``limit`` levels deep.

    Parameters
    ----------
    data:
        The dataset as encoded (no preamble or file meta; a deflated one inflated).
    implicit, little:
        Its transfer syntax's VR encoding and byte order.
    limit:
        The deepest nesting allowed (1: sequences whose items hold no sequence).
    start, end:
        Where whole top-level elements begin and end (the header before Pixel Data, say).
    """
    end = len(data) if end is None else end
    item_tag = b"\xfe\xff\x00\xe0" if little else b"\xff\xfe\xe0\x00"
    if data.count(item_tag, start, end) + 1 <= limit:
        return False
    return sequence_depth(memoryview(data)[start:end], implicit=implicit, little=little, limit=limit) > limit


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


# Uncompressed chroma-subsampled colour: two samples per pixel on average (Y Y Cb Cr per pair,
# PS3.3 C.7.6.3.1.2), whatever Samples per Pixel says.
_SUBSAMPLED = frozenset(("YBR_FULL_422", "YBR_PARTIAL_422"))
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}


IMAGE_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
                  "PhotometricInterpretation")


def expected_pixel_bytes(ds: Dataset, image: Mapping[str, Any] | None = None) -> int | None:
    """Bytes of native Pixel Data the image attributes call for, or None when they are missing.

    ``image``: the attributes of :data:`IMAGE_KEYWORDS` already converted by the caller (ints,
    the photometric interpretation as text, None only where the dataset lacks the attribute).
    They are used when Rows, Columns and Bits Allocated are ints; otherwise the attributes are
    read from ``ds``.

    Raises
    ------
    InvalidDataset
        An image attribute is present but cannot be decoded (a wrong VR or length).
    """
    keywords = IMAGE_KEYWORDS
    if image is not None and _converted(image):
        rows, cols, bits, samples, frames, photometric = (image[k] for k in keywords)
        per_pixel = 2 if str(photometric or "").strip().upper() in _SUBSAMPLED and samples == 3 else samples or 1
        return (rows * cols * (frames or 1) * per_pixel * bits + 7) // 8
    try:
        rows, cols, bits, samples, frames, photometric = (ds.get(k) for k in keywords)
        if rows is None or cols is None or bits is None:
            return None
        rows, cols, bits = int(rows), int(cols), int(bits)
        samples, frames = int(samples or 1), int(frames or 1)
        photometric = str(photometric or "").strip().upper()
    except DECODE_ERRORS as exc:
        raise InvalidDataset(
            f"an image attribute cannot be decoded ({type(exc).__name__}: {str(exc)[:120]}); the "
            "dataset is corrupt"
        ) from exc
    per_pixel = 2 if photometric in _SUBSAMPLED and samples == 3 else samples
    return (rows * cols * frames * per_pixel * bits + 7) // 8


def _converted(image: Mapping[str, Any]) -> bool:
    """Whether the caller's converted image attributes can stand for the dataset's: the three
    sizes are ints, samples and frames ints or absent (the caller passes None only for an
    attribute the dataset lacks; a multi-valued one arrives as text and is read from ``ds``)."""
    return (all(isinstance(image.get(k), int) for k in ("Rows", "Columns", "BitsAllocated"))
            and all(image.get(k) is None or isinstance(image.get(k), int)
                    for k in ("SamplesPerPixel", "NumberOfFrames")))


def check_pixel_length(ds: Dataset, data: bytes, transfer_syntax: UID,
                       image: Mapping[str, Any] | None = None) -> None:
    """Pixel Data that is cut off is a truncated dataset, whatever the header says.

    * The element's declared length must have arrived (with or without Rows and Columns).
    * Encapsulated (compressed) Pixel Data must end with its sequence delimiter, every
      fragment complete.
    * Native Pixel Data must hold what Rows x Columns x frames x samples (two per pixel for
      YBR_FULL_422) x Bits Allocated call for.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return  # checked on the inflated bytes would mean inflating twice; pydicom reads it whole
    located = _pixel_element(ds, data, transfer_syntax)
    if located is None:
        return
    tag, declared, start = located
    present = len(data) - start
    if declared == _UNDEFINED:
        _check_fragments(data, start, little=UID(transfer_syntax).is_little_endian)
        return
    if declared > present:
        raise InvalidDataset(
            f"Pixel Data truncated: {declared} bytes declared, {max(present, 0)} arrived (the "
            "dataset is cut off or corrupt)"
        )
    if tag != (0x7FE0, 0x0010) or UID(transfer_syntax).is_compressed:
        return
    expected = expected_pixel_bytes(ds, image)
    if expected is not None and declared < expected:
        raise InvalidDataset(
            f"Pixel Data truncated: needs {expected} bytes, {declared} arrived "
            f"({ds.Rows}x{ds.Columns}x{ds.get('NumberOfFrames', 1) or 1} "
            f"{ds.get('PhotometricInterpretation', '')} at {ds.BitsAllocated} bits)"
        )


def _pixel_element(ds: Dataset, data: bytes, transfer_syntax: UID) -> tuple[tuple[int, int], int, int] | None:
    """(tag, declared length, offset of the value) of the pixel data element where the header
    parse stopped, or None when it did not stop at one."""
    at = int(getattr(ds, "_pacsnode_header_end", 0) or 0)
    if at <= 0 or at + 8 > len(data):
        return None
    little = UID(transfer_syntax).is_little_endian
    order = "<" if little else ">"
    group, number = struct.unpack_from(order + "HH", data, at)
    if (group, number) not in _PIXEL_TAGS:
        return None
    if transfer_syntax == ImplicitVRLittleEndian:
        (declared,) = struct.unpack_from(order + "I", data, at + 4)
        return (group, number), declared, at + 8
    if at + 12 > len(data):
        raise InvalidDataset("Pixel Data truncated: the element is cut off in its header")
    (declared,) = struct.unpack_from(order + "I", data, at + 8)
    return (group, number), declared, at + 12


def _check_fragments(data: bytes, offset: int, *, little: bool) -> None:
    """Walk the items of encapsulated Pixel Data up to its sequence delimiter."""
    order = "<" if little else ">"
    end = len(data)
    while offset + 8 <= end:
        group, number, length = struct.unpack_from(order + "HHI", data, offset)
        offset += 8
        if (group, number) == (0xFFFE, 0xE0DD):
            return
        if (group, number) != (0xFFFE, 0xE000) or length == _UNDEFINED:
            raise InvalidDataset(
                f"encapsulated Pixel Data holds ({group:04X},{number:04X}) where an item or the "
                "sequence delimiter belongs: the dataset is corrupt"
            )
        if offset + length > end:
            raise InvalidDataset(
                f"Pixel Data truncated: a fragment declares {length} bytes, {end - offset} "
                "arrived (the dataset is cut off)"
            )
        offset += length
    raise InvalidDataset("Pixel Data truncated: its fragments end without the sequence delimiter "
                         "(the dataset is cut off)")
