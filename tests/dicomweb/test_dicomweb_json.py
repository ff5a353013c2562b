"""Property tests of the PS3.18 JSON encoder against pydicom's own JSON model
(``Dataset.to_json_dict`` and ``Dataset.from_json``)."""

from __future__ import annotations

import io
import json
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset, dcmread
from pydicom.tag import Tag

from node.dicomweb.dicom_json import dataset_to_json, element_path, parse_element_path

_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 -.",
                min_size=1, max_size=16).map(str.strip).filter(bool)
_CODE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ", min_size=1,
                max_size=16).map(str.strip).filter(bool)
_NAME_PART = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1,
                     max_size=10)
_NAME = st.builds(lambda parts: "^".join(parts), st.lists(_NAME_PART, min_size=1, max_size=5))
_PERSON = st.one_of(_NAME, st.builds(lambda a, i: f"{a}={i}", _NAME, _NAME),
                    st.builds(lambda a, i, p: f"{a}={i}={p}", _NAME, _NAME, _NAME))
_UID = st.lists(st.integers(0, 99999), min_size=2, max_size=8).map(
    lambda parts: "1." + ".".join(str(p) for p in parts))
_DATE = st.dates(date(1900, 1, 1), date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))
_TIME = st.times().map(lambda t: t.strftime("%H%M%S"))
_DS = st.integers(-10**6, 10**6).map(lambda i: f"{i / 100:g}")
_F32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
_F64 = st.floats(allow_nan=False, allow_infinity=False)

# (keyword, VR, strategy of the value: one value or a list for multi-valued attributes)
_ELEMENTS = [
    ("PatientName", "PN", _PERSON),
    ("OtherPatientNames", "PN", st.lists(_PERSON, min_size=2, max_size=3)),
    ("PatientID", "LO", _TEXT),
    ("OtherPatientIDs", "LO", st.lists(_TEXT, min_size=2, max_size=4)),
    ("StudyDescription", "LO", st.one_of(_TEXT, st.just(""))),
    ("AccessionNumber", "SH", _TEXT),
    ("ImageType", "CS", st.lists(_CODE, min_size=1, max_size=4)),
    ("StudyDate", "DA", _DATE),
    ("StudyTime", "TM", _TIME),
    ("SOPInstanceUID", "UI", _UID),
    ("SeriesNumber", "IS", st.integers(-2**31, 2**31 - 1).map(str)),
    ("SliceThickness", "DS", _DS),
    ("PixelSpacing", "DS", st.lists(_DS, min_size=2, max_size=2)),
    ("Rows", "US", st.integers(0, 65535)),
    ("TagAngleSecondAxis", "SS", st.integers(-32768, 32767)),
    ("SimpleFrameList", "UL", st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5)),
    ("ReferencePixelX0", "SL", st.integers(-2**31, 2**31 - 1)),
    ("RecommendedDisplayFrameRateInFloat", "FL", _F32),
    ("DiffusionBValue", "FD", _F64),
    ("FrameIncrementPointer", "AT", st.lists(st.integers(0x00080000, 0x7FE00010).map(Tag),
                                             min_size=1, max_size=3)),
    ("EncapsulatedDocument", "OB", st.binary(min_size=2, max_size=2048).map(
        lambda b: b + b"\x00" * (len(b) % 2))),
    ("RedPaletteColorLookupTableData", "OW", st.binary(min_size=2, max_size=64).map(
        lambda b: b + b"\x00" * (len(b) % 2))),
    ("TextValue", "UT", _TEXT),
    ("AdditionalPatientHistory", "LT", _TEXT),
    ("InstitutionAddress", "ST", _TEXT),
]


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    ds = Dataset()
    chosen = draw(st.lists(st.sampled_from(_ELEMENTS), min_size=1, max_size=10,
                           unique_by=lambda e: e[0]))
    for keyword, vr, strategy in chosen:
        ds.add_new(keyword, vr, draw(strategy))
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(datasets(depth + 1), min_size=0, max_size=2))
        ds.ReferencedSeriesSequence = items
    return ds


_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(datasets())
def test_encoder_matches_pydicom(ds: Dataset) -> None:
    ours = dataset_to_json(ds)
    assert ours == ds.to_json_dict()
    assert json.loads(json.dumps(ours)) == ours  # plain JSON types only


@_SETTINGS
@given(datasets())
def test_round_trip_through_pydicom(ds: Dataset) -> None:
    assert Dataset.from_json(dataset_to_json(ds)) == ds


@_SETTINGS
@given(datasets())
def test_bulk_data_uris_resolve_to_the_values(ds: Dataset) -> None:
    def uri(path: tuple[int, ...]) -> str:
        return f"http://node/bulkdata/{element_path(path)}"

    encoded = dataset_to_json(ds, bulk=uri, bulk_threshold=64)

    def resolve(tag: str, vr: str, value: str) -> bytes:
        current = ds
        path = parse_element_path(value.rsplit("/bulkdata/", 1)[1])
        for position, step in enumerate(path[:-1]):
            current = current[step].value if position % 2 == 0 else current[step]
        return current[path[-1]].value

    assert Dataset.from_json(encoded, bulk_data_uri_handler=resolve) == ds
    for element in ds.iterall():
        if element.VR in ("OB", "OW") and len(element.value) > 48:
            assert "BulkDataURI" in json.dumps(encoded)


def _as_read_from_a_file(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return dcmread(io.BytesIO(buffer.getvalue()), force=True)


@_SETTINGS
@given(datasets())
def test_fast_path_on_file_bytes_matches_pydicom(ds: Dataset) -> None:
    """Values still in their file bytes are decoded without pydicom, as pydicom decodes them."""
    read = _as_read_from_a_file(ds)
    assert read.original_encoding == (False, True)
    assert dataset_to_json(read) == _as_read_from_a_file(ds).to_json_dict()
    assert Dataset.from_json(dataset_to_json(_as_read_from_a_file(ds))) == read


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 6\\ISO 2022 IR 87"])
def test_fast_path_text_in_other_character_sets(charset: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = "Müller^Jürgen" if "2022" not in charset else "Yamada^Tarou=山田^太郎"
    ds.StudyDescription = "Kopf – MRT" if charset == "ISO_IR 192" else "Kopf"
    ds.InstitutionName = "Klinik"
    read = _as_read_from_a_file(ds)
    assert dataset_to_json(read) == _as_read_from_a_file(ds).to_json_dict()


def test_empty_values_in_multi_valued_attributes_are_null() -> None:
    ds = Dataset()
    ds.add_new("ImageType", "CS", ["ORIGINAL", "", "M"])
    ds.add_new("OtherPatientNames", "PN", ["Doe^John", ""])
    ds.add_new("PatientAge", "AS", "")
    encoded = dataset_to_json(ds)
    assert encoded["00080008"]["Value"] == ["ORIGINAL", None, "M"]
    assert encoded["00101001"]["Value"] == [{"Alphabetic": "Doe^John"}, None]
    assert encoded["00101010"] == {"vr": "AS"}
    assert Dataset.from_json(encoded) == ds


def test_pixel_data_is_always_bulk() -> None:
    ds = Dataset()
    ds.add_new("PixelData", "OW", b"\x00\x01")
    encoded = dataset_to_json(ds, bulk=lambda p: element_path(p))
    assert encoded["7FE00010"] == {"vr": "OW", "BulkDataURI": "7FE00010"}


@pytest.mark.parametrize("text", ["", "7FE0", "00540016/0", "00540016/x/00181030", "zzzzzzzz"])
def test_malformed_element_paths_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_element_path(text)


def test_element_path_round_trip() -> None:
    path = (0x00540016, 3, 0x7FE00010)
    assert element_path(path) == "00540016/3/7FE00010"
    assert parse_element_path(element_path(path)) == path
