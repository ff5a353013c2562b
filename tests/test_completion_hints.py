"""Completion hints read from headers the node could not fully decode (found by bench.fuzz)."""

from __future__ import annotations

import io
import struct

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from node.routing.hints import completion_hints


def _with_raw_element(tag: int, vr: bytes, value: bytes) -> Dataset:
    """A dataset read back from bytes holding one element of the wrong VR or length."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.9999.7.1"
    ds.Modality = "MR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    group, element = tag >> 16, tag & 0xFFFF
    raw = struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value
    return dcmread(io.BytesIO(buffer.getvalue() + raw))


def test_number_of_frames_that_cannot_be_decoded_gives_no_hint() -> None:
    # Number of Frames as US with one byte: pydicom raises BytesLengthException on access,
    # which escaped to the C-STORE handler (0xC211) after the instance was written.
    ds = _with_raw_element(0x00280008, b"US", b"\x98")
    assert completion_hints(ds) == {}

