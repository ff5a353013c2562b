"""C-FIND identifiers read and matches written without building pydicom datasets.

pydicom turns every element of an identifier into a ``DataElement`` (dictionary look-ups,
value conversion, validation) and writes a match through ``write_dataset``; for a query
with a handful of keys and one match that is most of the node's time per C-FIND. The
identifiers that C-FIND clients send are almost always a few plain text keys in little
endian, so those are read and written here directly, with exactly pydicom's results:

* :func:`read_identifier` gives ``(tag, keyword, VR, value)`` for each element, the value
  as pydicom converts it (``str``, or ``None`` for an empty binary value), or ``None``
  when the identifier is outside that subset (a sequence, a multi-valued key, a private or
  unknown tag, a Specific Character Set, any byte that is not ASCII, big endian or deflated
  syntax ...): the caller then decodes it with pydicom as before.
* :func:`encode_match` writes the match dataset the node's C-FIND handler builds (the
  requested keys from the index row, the query level, the unique key, Retrieve AE Title,
  ``ISO_IR 192`` when a value is not ASCII), byte for byte as pydicom's ``encode`` writes
  it, or returns ``None`` for a value it does not write (the caller then builds the
  dataset and encodes it with pydicom). ``tests/test_find_codec.py`` compares both ways.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag

__all__ = ["IdentifierKey", "dataset_keys", "encode_match", "read_identifier"]

IdentifierKey = tuple[int, str, str, Any]
"""An identifier element: ``(tag, keyword, VR, value)``, the value as pydicom converts it."""

# Text VRs grouped by how pydicom converts their values (pydicom.values.converters).
_STRIP_BOTH = frozenset(("AE",))  # leading and trailing spaces are not significant
_RSTRIP = frozenset(("AS", "CS", "DA", "DT", "TM", "UI", "LO", "SH", "UC", "PN"))
_SINGLE = frozenset(("LT", "ST", "UT", "UR"))  # never multi-valued
_BINARY = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i"}
_READ_VRS = _STRIP_BOTH | _RSTRIP | _SINGLE | frozenset(_BINARY) | {"IS"}
_TEXT_VRS = _STRIP_BOTH | _RSTRIP | _SINGLE
# The VRs pydicom writes in the dataset's character set (the others in its default one).
_CHARSET_VRS = frozenset(("LO", "LT", "PN", "SH", "ST", "UC", "UT"))
# Explicit VR little endian: these VRs have a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
_INTEGER = re.compile(r"[+-]?[0-9]+")
_UNDEFINED_LENGTH = 0xFFFFFFFF
_QUERY_RETRIEVE_LEVEL = 0x00080052
_RETRIEVE_AE_TITLE = 0x00080054
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNIQUE_KEYS = {"PATIENT": ("PatientID", 0x00100020), "STUDY": ("StudyInstanceUID", 0x0020000D),
                "SERIES": ("SeriesInstanceUID", 0x0020000E), "IMAGE": ("SOPInstanceUID", 0x00080018)}


@lru_cache(maxsize=4096)  # bounded: a client chooses the tags
def _entry(tag: int) -> tuple[str, str] | None:
    """``(keyword, VR)`` of a public dictionary tag with one VR; None otherwise."""
    keyword = keyword_for_tag(tag)
    if not keyword:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return keyword, vr


@lru_cache(maxsize=4096)  # bounded: a client chooses the tags
def _response_vr(tag: int) -> str | None:
    """The VR the handler gives a requested key in a match (the first of "US or SS" ...)."""
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return None


def dataset_keys(identifier: Dataset) -> list[IdentifierKey]:
    """The elements of an identifier pydicom decoded, as :func:`read_identifier` gives them."""
    return [(int(element.tag), element.keyword, element.VR, element.value) for element in identifier]


def _value(vr: str, raw: bytes) -> Any:
    """The value pydicom gives a single-valued element; raises ValueError outside the subset."""
    if not raw and (vr in _BINARY or vr == "IS"):
        return None  # pydicom's empty value for numbers
    if vr in _BINARY:
        size = struct.calcsize(_BINARY[vr])
        if len(raw) != size:
            raise ValueError("multi-valued or malformed binary value")
        return struct.unpack(_BINARY[vr], raw)[0]
    if not raw.isascii():
        raise ValueError("not ASCII")
    text = raw.decode("ascii")
    if vr in _SINGLE:
        return text.rstrip("\0 ") if vr != "UR" else text.rstrip()
    if "\\" in text:
        raise ValueError("multi-valued")
    if vr in _STRIP_BOTH:
        return text.strip()
    if vr == "IS":  # pydicom's IS keeps the digits as written, without spaces
        stripped = text.rstrip(" \0").strip(" ")
        if not _INTEGER.fullmatch(stripped):
            raise ValueError("not an integer string")
        return stripped
    return text.rstrip("\0 ")


def read_identifier(data: bytes, implicit_vr: bool, little_endian: bool,
                    deflated: bool) -> list[IdentifierKey] | None:
    """The elements of an identifier in the plain subset, in tag order; None outside it."""
    if deflated or not little_endian:
        return None
    keys: list[IdentifierKey] = []
    offset, end, previous = 0, len(data), -1
    view = memoryview(data)
    try:
        while offset < end:
            group, element = struct.unpack_from("<HH", view, offset)
            tag = group << 16 | element
            if tag <= previous or group & 1 or element == 0 or group == 0x0002:
                return None  # out of order or repeated, private, group length, file meta
            previous = tag
            entry = _entry(tag)
            if entry is None:
                return None
            keyword, vr = entry
            if implicit_vr:
                (length,) = struct.unpack_from("<I", view, offset + 4)
                offset += 8
            else:
                explicit = bytes(view[offset + 4:offset + 6])
                if explicit != vr.encode("ascii"):
                    return None  # a VR other than the dictionary's: pydicom judges it
                if vr in _LONG_VRS:
                    (length,) = struct.unpack_from("<I", view, offset + 8)
                    offset += 12
                else:
                    (length,) = struct.unpack_from("<H", view, offset + 6)
                    offset += 8
            if vr not in _READ_VRS or length == _UNDEFINED_LENGTH or offset + length > end:
                return None
            if tag == _SPECIFIC_CHARACTER_SET and length:
                return None  # values in another character set: pydicom decodes them
            keys.append((tag, keyword, vr, _value(vr, bytes(view[offset:offset + length]))))
            offset += length
    except (struct.error, ValueError):
        return None
    return keys


def _element(tag: int, vr: str, value: bytes, implicit_vr: bool) -> bytes:
    group_element = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit_vr:
        return group_element + struct.pack("<I", len(value)) + value
    if vr in _LONG_VRS:
        return group_element + vr.encode("ascii") + b"\0\0" + struct.pack("<I", len(value)) + value
    return group_element + vr.encode("ascii") + struct.pack("<H", len(value)) + value


def _text_bytes(vr: str, text: str, encoding: str) -> bytes:
    data = text.encode(encoding)
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def encode_match(requested: Sequence[int], row: Mapping[str, Any], level: str, retrieve_ae_title: str,
                 implicit_vr: bool, little_endian: bool, deflated: bool) -> bytes | None:
    """The match dataset of the node's C-FIND handler for ``row``, encoded; None when a value
    is one this function does not write (then pydicom builds and encodes it)."""
    if deflated or not little_endian:
        return None
    values: dict[int, tuple[str, Any]] = {_QUERY_RETRIEVE_LEVEL: ("CS", level)}
    texts: list[str] = []  # the values whose characters decide the character set
    for tag in requested:
        entry = _entry(tag)
        vr = _response_vr(tag)
        if entry is None or vr is None:
            continue  # no keyword: the handler leaves it out
        value = row.get(entry[0])
        if value is None or value == "":
            if vr == "SQ":
                return None
            values[tag] = (vr, None)
        elif vr in _BINARY or vr == "IS":
            if isinstance(value, bool) or not isinstance(value, int | str):
                return None
            if isinstance(value, str) and not (value.isascii() and value.isdigit()):
                return None
            number = int(value)
            if vr == "IS" and not -(2**31) <= number < 2**31:
                return None
            values[tag] = (vr, number)
        elif vr in _TEXT_VRS and isinstance(value, str | int) and not isinstance(value, bool):
            text = str(value)
            if not text.isascii() and vr not in _CHARSET_VRS:
                return None  # pydicom writes these VRs in its default encoding
            values[tag] = (vr, text)
            texts.append(text)
        else:
            return None
    keyword, unique = _UNIQUE_KEYS[level]
    if unique not in values:
        uid = row.get(keyword)
        if uid is not None and not (isinstance(uid, str) and uid.isascii()):
            return None
        values[unique] = (str(_response_vr(unique)), uid or None)
    values[_RETRIEVE_AE_TITLE] = ("AE", retrieve_ae_title)
    encoding = "ascii"
    if any(not t.isascii() for t in texts):
        values[_SPECIFIC_CHARACTER_SET] = ("CS", "ISO_IR 192")
        encoding = "utf-8"
    out = []
    for tag in sorted(values):
        vr, value = values[tag]
        if value is None:
            data = b""
        elif vr in _BINARY:
            try:
                data = struct.pack(_BINARY[vr], value)
            except struct.error:
                return None
        elif isinstance(value, int):  # IS
            data = _text_bytes(vr, str(value), "ascii")
        else:
            data = _text_bytes(vr, value, encoding if vr in _CHARSET_VRS else "ascii")
        if not implicit_vr and vr not in _LONG_VRS and len(data) > 0xFFFF:
            return None
        out.append(_element(tag, vr, data, implicit_vr))
    return b"".join(out)
