"""Hypothesis strategies for what a hostile or broken peer sends: DIMSE association requests,
PDU streams, datasets (C-STORE) and identifiers (C-FIND), STOW-RS bodies, QIDO-RS and
WADO-RS parameters.

Datasets start from well-formed seeds and are mutated (bytes flipped, inserted, deleted,
cut off; element lengths and VRs replaced; sequences nested up to 300 deep), or are made
from random elements; the mutations are described as data and applied here, so a failing
case shrinks to a short list of edits of a known seed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from tests.attacks import element, image_dataset, nested_sequences, part10, uid
from tests.dimse_wire import associate_rq, c_echo_command, c_find_command, c_store_command

__all__ = [
    "Mutated",
    "apply",
    "association_requests",
    "datasets",
    "find_identifiers",
    "pdu_streams",
    "qido_requests",
    "seed",
    "stow_bodies",
    "wado_paths",
]

_LONG = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
_VRS = (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
        b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US", *_LONG)
_ODD_VRS = (b"ZZ", b"\x00\x00", b"sq", b"  ", b"\xff\xff")
_LENGTHS = (0, 1, 2, 3, 4, 7, 255, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_TAGS = (0x00020000, 0x00020010, 0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080052,
         0x00080060, 0x00081115, 0x00100010, 0x00100020, 0x0020000D, 0x0020000E, 0x00200013,
         0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100, 0x0040A730,
         0x00291010, 0x7FE00010, 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0xFFFFFFFF)
_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _encode(ds: Dataset, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _rich(implicit: bool) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = uid(90, 3 if implicit else 2)
    ds.StudyDate = "20260101"
    ds.Modality = "MR"
    ds.SeriesDescription = "ep2d_perf fuzz"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.ReferencedSOPInstanceUID = uid(90, 9)
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "FUZZ"
    ds.StudyInstanceUID = uid(1)
    ds.SeriesInstanceUID = uid(2)
    ds.InstanceNumber = 1
    ds.add_new(0x00290010, "LO", "FUZZ PRIVATE")
    ds.add_new(0x00291010, "OB", b"\x01\x02\x03\x04")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(32)
    return _encode(ds, implicit)


@cache
def _seeds() -> dict[str, tuple[bytes, bool]]:
    """Well-formed datasets (bytes, implicit VR?) the mutations start from."""
    minimal = image_dataset(uid(90, 1), rows=None, columns=None)
    return {
        "image": (image_dataset(uid(90, 0)), False),
        "sequences": (minimal + nested_sequences(3), False),
        "rich": (_rich(False), False),
        "rich-implicit": (_rich(True), True),
    }


def seed(name: str) -> tuple[bytes, bool]:
    """A seed dataset by name: its bytes and whether it is implicit VR."""
    return _seeds()[name]


def _element_offsets(data: bytes, implicit: bool) -> list[int]:
    """Offsets of the top-level element headers (of a seed, or of its mutation so far: the walk
    stops where the structure no longer holds)."""
    offsets, offset = [], 0
    while offset + 12 <= len(data):
        offsets.append(offset)
        if implicit:
            (length,) = struct.unpack_from("<I", data, offset + 4)
            head = 8
        elif data[offset + 4:offset + 6] in _LONG:
            (length,) = struct.unpack_from("<I", data, offset + 8)
            head = 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            head = 8
        if length == 0xFFFFFFFF:
            break  # an undefined-length value: the offsets after it are not needed by the mutations
        offset += head + length
    return offsets


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 48)),
    st.tuples(st.just("length"), st.integers(0, 40), st.sampled_from(_LENGTHS)),
    st.tuples(st.just("vr"), st.integers(0, 40), st.sampled_from(_VRS + _ODD_VRS)),
    st.tuples(st.just("nest"), st.integers(1, 300), st.booleans()),
)


@dataclass(frozen=True)
class Mutated:
    """A seed dataset and the edits made to it."""

    seed: str
    edits: tuple[tuple[object, ...], ...]

    @property
    def implicit(self) -> bool:
        return seed(self.seed)[1]

    def encode(self) -> bytes:
        return apply(self.seed, self.edits)


def apply(seed_name: str, edits: tuple[tuple[object, ...], ...]) -> bytes:
    """The seed's bytes with ``edits`` applied in order."""
    original, implicit = seed(seed_name)
    data = bytearray(original)
    for edit in edits:
        kind = edit[0]
        if kind == "nest":
            data += nested_sequences(int(edit[1]), defined_length=bool(edit[2]))  # type: ignore[call-overload]
            continue
        if kind in ("length", "vr"):
            offsets = _element_offsets(bytes(data), implicit)
            if not offsets:
                continue
            at = offsets[int(edit[1]) % len(offsets)]  # type: ignore[call-overload]
            if kind == "vr" and not implicit:
                data[at + 4:at + 6] = edit[2]  # type: ignore[assignment]
            elif kind == "length":
                value = int(edit[2])  # type: ignore[call-overload]
                if implicit or data[at + 4:at + 6] in _LONG:
                    data[at + (4 if implicit else 8):at + (8 if implicit else 12)] = struct.pack("<I", value)
                else:
                    data[at + 6:at + 8] = struct.pack("<H", value & 0xFFFF)
            continue
        position = int(float(edit[1]) * len(data))  # type: ignore[arg-type]
        if kind == "flip" and data:
            data[min(position, len(data) - 1)] = int(edit[2])  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = edit[2]  # type: ignore[assignment]
        elif kind == "delete":
            del data[position:position + int(edit[2])]  # type: ignore[call-overload]
    return bytes(data)


_random_element = st.builds(
    lambda tag, vr, value, length: element(tag, vr, value, length=length),
    st.one_of(st.sampled_from(_TAGS), st.integers(0, 0xFFFFFFFF)),
    st.sampled_from(_VRS + _ODD_VRS),
    st.binary(max_size=48),
    st.one_of(st.none(), st.sampled_from(_LENGTHS)),
)


def datasets() -> st.SearchStrategy[tuple[bytes, bool]]:
    """Encoded datasets (bytes, implicit VR?): mutated seeds, or random elements appended to a
    valid header (explicit VR)."""
    mutated = st.builds(Mutated, st.sampled_from(sorted(_seeds())),
                        st.lists(_mutation, min_size=1, max_size=4).map(tuple)
                        ).map(lambda m: (m.encode(), m.implicit))
    header = image_dataset(uid(91, 0), rows=None, columns=None)
    random_tail = st.lists(_random_element, max_size=10).map(lambda els: (header + b"".join(els), False))
    return st.one_of(mutated, random_tail)


def find_identifiers() -> st.SearchStrategy[bytes]:
    """C-FIND identifiers (implicit VR little endian): random keys, mutated real ones."""
    base = Dataset()
    base.QueryRetrieveLevel = "STUDY"
    base.PatientID = "FUZZ*"
    base.StudyInstanceUID = ""
    base.StudyDate = "20200101-"
    valid = _encode(base, True)
    levels = st.sampled_from([b"STUDY ", b"SERIES", b"IMAGE ", b"PATIENT ", b"", b"\x00\x00", b"study "])
    keyed = st.builds(
        lambda level, keys: (struct.pack("<HHI", 0x0008, 0x0052, len(level)) + level
                             + b"".join(struct.pack("<HHI", t >> 16, t & 0xFFFF, len(v)) + v for t, v in keys)),
        levels,
        st.lists(st.tuples(st.sampled_from(_TAGS[8:]), st.binary(max_size=40)), max_size=6),
    )
    mutated = st.builds(
        lambda cut, flips: _flip(valid[:cut], flips),
        st.integers(0, len(valid)), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3))
    return st.one_of(keyed, mutated, st.binary(max_size=64))


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data)
    for where, value in flips:
        if out:
            out[min(int(where * len(out)), len(out) - 1)] = value
    return bytes(out)


def association_requests() -> st.SearchStrategy[bytes]:
    """A-ASSOCIATE-RQ PDUs: well-formed with odd titles, or mutated bytes."""
    titles = st.one_of(st.just(b"PACSNODE"), st.binary(min_size=0, max_size=16),
                       st.sampled_from([b" PACSNODE", b"\x00" * 16, b"PACS\\NODE", b"FUZZ\r\n"]))
    well_formed = st.builds(lambda called, calling: associate_rq(called, calling), titles, titles)
    valid = associate_rq("PACSNODE", "FUZZER", ((uid(0), (_EXPLICIT,)),))
    mutated = st.builds(
        lambda cut, flips, length: _with_length(_flip(valid[:cut], flips), length),
        st.integers(0, len(valid)), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
        st.one_of(st.none(), st.sampled_from(_LENGTHS)))
    return st.one_of(well_formed, mutated)


def _with_length(pdu: bytes, length: int | None) -> bytes:
    if length is None or len(pdu) < 6:
        return pdu
    return pdu[:2] + struct.pack(">I", length) + pdu[6:]


def _pdv(length_delta: int, context: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", max(0, len(value) + 2 + length_delta) & 0xFFFFFFFF, context, control) + value


_commands = st.sampled_from([c_echo_command(1), c_store_command("1.2.840.10008.5.1.4.1.1.4", uid(92, 1)),
                             c_find_command(1), b""])
_pdv_value = st.one_of(_commands, _commands.flatmap(lambda c: st.builds(_flip, st.just(c), st.lists(
    st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=3))), st.binary(max_size=64))
_p_data = st.lists(st.builds(_pdv, st.sampled_from([0, 0, 0, -1, 1, -2, 100, 1 << 20]),
                             st.sampled_from([1, 3, 5, 7, 0, 2, 99, 255]), st.integers(0, 255), _pdv_value),
                   min_size=0, max_size=4).map(b"".join)
_pdu = st.one_of(
    _p_data.map(lambda body: struct.pack(">BBI", 0x04, 0, len(body)) + body),
    st.builds(lambda kind, body, delta: struct.pack(">BBI", kind, 0, max(0, len(body) + delta)) + body,
              st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xFF]),
              st.binary(max_size=64), st.sampled_from([0, 0, -1, 1, 10, 1 << 30])),
)


def pdu_streams() -> st.SearchStrategy[bytes]:
    """What follows an accepted association: one to four PDUs, some malformed."""
    return st.lists(_pdu, min_size=1, max_size=4).map(b"".join)


def stow_bodies() -> st.SearchStrategy[tuple[bytes, str]]:
    """(body, Content-Type) of STOW-RS requests: parts that are mutated Part 10 files, and
    multipart framing that is cut, misnamed or garbled."""
    boundary = "fuzz-boundary"
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    part = st.one_of(
        datasets().map(lambda d: part10(d[0], uid(93, 1), transfer_syntax=_IMPLICIT if d[1] else _EXPLICIT)),
        st.binary(max_size=200),
        datasets().map(lambda d: b"\x00" * 128 + b"DICM" + d[0]),  # no file meta at all
    )
    headers = st.sampled_from([b"Content-Type: application/dicom\r\n", b"", b"Content-Type: text/plain\r\n",
                               b"Content-Type: application/dicom; transfer-syntax=*\r\n", b"X-Odd: \x01\x02\r\n",
                               b"no colon here\r\n"])
    framed = st.lists(st.tuples(headers, part), min_size=1, max_size=3).map(
        lambda parts: b"".join(f"--{boundary}\r\n".encode() + h + b"\r\n" + p + b"\r\n" for h, p in parts)
        + f"--{boundary}--\r\n".encode())
    body = st.one_of(framed, framed.flatmap(lambda b: st.integers(0, len(b)).map(lambda cut: b[:cut])),
                     st.binary(max_size=300))
    content_types = st.one_of(st.just(content_type), st.sampled_from([
        "multipart/related; boundary=fuzz-boundary", 'multipart/related; type="application/dicom"',
        "application/dicom", "multipart/related; type=application/dicom; boundary=", "",
        'multipart/related; type="application/dicom"; boundary="' + "b" * 300 + '"']))
    return st.tuples(body, content_types)


_text = st.one_of(st.text(max_size=30), st.sampled_from(["\u00b9", "\u0661", "9" * 5000, str(2**63), "-1", "*",
                                                          "1,1,1", "\\", "%00", "a" * 1000, "1.2.3,4.5",
                                                          "20200101-", "-", "''", "\x00"]))
_keys = st.sampled_from(["limit", "offset", "includefield", "fuzzymatching", "PatientID", "PatientName",
                         "StudyDate", "StudyInstanceUID", "SeriesNumber", "00100020", "0020000D",
                         "Modality", "ModalitiesInStudy", "00081030", "xyz", "00400A730.0"])


def qido_requests() -> st.SearchStrategy[tuple[str, list[tuple[str, str]]]]:
    """(resource, parameters) of QIDO-RS searches with hostile values."""
    return st.tuples(st.sampled_from(["studies", "series", "instances", f"studies/{uid(1)}/series",
                                      f"studies/{uid(1)}/series/{uid(2)}/instances"]),
                     st.lists(st.tuples(_keys, _text), max_size=5))


def wado_paths(study: str, series: str, instance: str) -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    """(path below the base URL, headers) of WADO-RS requests on one stored instance."""
    base = f"studies/{study}/series/{series}/instances/{instance}"
    frames = st.lists(st.one_of(st.integers(-2, 5000).map(str), _text), min_size=1, max_size=6).map(",".join)
    tails = st.one_of(st.just(""), st.just("/metadata"), frames.map(lambda f: f"/frames/{f}"),
                      frames.map(lambda f: f"/frames/{f}/rendered"), st.just("/rendered"),
                      st.lists(st.one_of(st.integers(0, 99).map(str), _text), max_size=4).map(
                          lambda parts: "/bulkdata/" + "/".join(parts)))
    query = st.lists(st.tuples(st.sampled_from(["quality", "viewport", "window", "charset"]), _text),
                     max_size=3).map(lambda items: "&".join(f"{k}={v}" for k, v in items))
    accept = st.sampled_from(["", "*/*", 'multipart/related; type="application/dicom"', "image/png",
                              'multipart/related; type="application/octet-stream"', "application/dicom+json",
                              'multipart/related; type="image/jpeg"; transfer-syntax=*', "text/html"])
    return st.builds(lambda tail, q, a: (base + tail + (f"?{q}" if q else ""), {"Accept": a} if a else {}),
                     tails, query, accept)
