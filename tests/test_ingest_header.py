"""The ingest header shortcuts give what pydicom's own conversion gives.

The required UIDs are read from the raw bytes (``_parse_header``) and the pixel length check
takes the image attributes from the ingestor's conversion cache; both must agree with
pydicom's conversion, and fall back to it where they cannot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dataset_checks import expected_pixel_bytes
from node.errors import DatasetMismatch, InvalidDataset
from node.ingest import Ingestor, _parse_header
from node.storage.index import Index
from node.storage.store import InstanceStore

MR = "1.2.840.10008.5.1.4.1.1.4"


def _dataset(rows: int = 4, columns: int = 4) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.PatientID = "P1"
    ds.Modality = "MR"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(rows * columns * 2)
    return ds


def _encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _with_raw_uid(ds: Dataset, keyword: str, raw: bytes) -> Dataset:
    """``ds`` whose UID element holds exactly ``raw`` (pydicom would pad or strip it)."""
    element = ds[keyword]
    ds[element.tag] = DataElement(element.tag, "UI", raw)
    return ds


@pytest.mark.parametrize("raw", [b"1.2.840.99.7\x00", b"1.2.840.99.7 ", b" 1.2.840.99.7",
                                 b"1.2.840.99.7\x00 ", b"1.2.840.99.7\\1.2.840.99.8", b""])
@pytest.mark.parametrize("implicit", [False, True])
def test_required_uids_read_raw_equal_pydicoms_conversion(raw: bytes, implicit: bool) -> None:
    data = _encode(_with_raw_uid(_dataset(), "SOPInstanceUID", raw), implicit=implicit)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = _parse_header(data, syntax)
    converted = _parse_header(data, syntax)["SOPInstanceUID"].value
    expected = "" if converted is None else str(converted)
    assert ds._pacsnode_uids["SOPInstanceUID"] == expected
    assert ds._pacsnode_uids["StudyInstanceUID"] == "1.2.3.4"


def test_a_uid_with_several_values_is_still_refused(tmp_path: Path) -> None:
    ingestor = Ingestor(InstanceStore(tmp_path / "store", fsync=False, min_free_bytes=0),
                        Index(tmp_path / "index.sqlite"), allowed_sop_classes=[MR])
    data = _encode(_with_raw_uid(_dataset(), "SOPInstanceUID", b"1.2.840.99.7\\1.2.840.99.8"))
    with pytest.raises(DatasetMismatch, match="not a valid UID"):
        ingestor.ingest_dataset(data, ExplicitVRLittleEndian)


def _ingestor(tmp_path: Path) -> Ingestor:
    return Ingestor(InstanceStore(tmp_path / "store", fsync=False, min_free_bytes=0),
                    Index(tmp_path / "index.sqlite"), allowed_sop_classes=[MR])


@pytest.mark.parametrize("change", ["none", "no samples", "frames", "ybr"])
def test_cached_image_values_give_the_same_expected_length(tmp_path: Path, change: str) -> None:
    ds = _dataset(rows=6, columns=5)
    if change == "no samples":
        del ds.SamplesPerPixel
    elif change == "frames":
        ds.NumberOfFrames = 3
        ds.PixelData = bytes(6 * 5 * 2 * 3)
    elif change == "ybr":
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 3, "YBR_FULL_422", 8
        ds.PixelData = bytes(6 * 5 * 2)
    parsed = _parse_header(_encode(ds), ExplicitVRLittleEndian)
    image = _ingestor(tmp_path)._image_values(parsed)
    assert image is not None
    assert expected_pixel_bytes(parsed, image) == expected_pixel_bytes(
        _parse_header(_encode(ds), ExplicitVRLittleEndian))


def test_short_pixels_are_refused_with_the_cached_values(tmp_path: Path) -> None:
    ds = _dataset(rows=6, columns=5)
    ds.PixelData = bytes(6 * 5 * 2 - 2)
    data = _encode(ds)
    with pytest.raises(InvalidDataset, match="Pixel Data truncated: needs 60 bytes, 58 arrived"):
        _ingestor(tmp_path).ingest_dataset(data, ExplicitVRLittleEndian)


def test_an_undecodable_image_attribute_is_still_reported(tmp_path: Path) -> None:
    rows = b"\x28\x00\x10\x00US\x02\x00\x04\x00"
    data = _encode(_dataset())
    assert rows in data
    data = data.replace(rows, b"\x28\x00\x10\x00US\x01\x00\x04")  # Rows: one byte of a 2-byte US
    ingestor = _ingestor(tmp_path)
    parsed = _parse_header(data, ExplicitVRLittleEndian)
    assert ingestor._image_values(parsed) is None  # present but not converted: pydicom decides
    with pytest.raises(InvalidDataset, match="image attribute cannot be decoded"):
        ingestor.ingest_dataset(data, ExplicitVRLittleEndian)


def test_multi_valued_image_attributes_are_read_by_pydicom(tmp_path: Path) -> None:
    """Samples per Pixel or Number of Frames with two values arrive from the cache as text: the
    check leaves them to pydicom, which names the attribute, instead of multiplying text."""
    ds = _dataset()
    ds.NumberOfFrames = [1, 2]
    data = _encode(ds)
    ingestor = _ingestor(tmp_path)
    image = ingestor._image_values(_parse_header(data, ExplicitVRLittleEndian))
    assert image is not None and isinstance(image["NumberOfFrames"], str)
    with pytest.raises(InvalidDataset, match="image attribute cannot be decoded"):
        ingestor.ingest_dataset(data, ExplicitVRLittleEndian)


def test_index_values_of_the_required_uids_are_pydicoms(tmp_path: Path) -> None:
    """The index row holds each UID as pydicom converts it, whether it was read raw or not."""
    ingestor = _ingestor(tmp_path)
    data = _encode(_with_raw_uid(_dataset(), "SeriesInstanceUID", b"1.2.3.4.1\x00"))
    ingestor.ingest_dataset(data, ExplicitVRLittleEndian)
    parsed = _parse_header(data, ExplicitVRLittleEndian)
    values = ingestor._record(parsed, tmp_path / "store" / "x.dcm", 1, "t", ExplicitVRLittleEndian, "").values
    assert values["SeriesInstanceUID"] == "1.2.3.4.1" and values["SOPInstanceUID"] == "1.2.3.4.5"
    assert ingestor.index.lookup_instance("1.2.3.4.5") is not None
