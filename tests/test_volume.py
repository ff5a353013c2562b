"""Series → Volume: geometry, slice order, time axis, errors, SEG resampling."""

from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from analyzers._shared.volume import (
    SeriesGeometryError,
    Volume,
    load_segmentation,
    load_series,
    resample_nearest,
)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def _tm(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}{int(minutes):02d}{secs:09.6f}"


def write_series(
    folder: Path,
    stored: np.ndarray,
    *,
    row_cosine: np.ndarray,
    column_cosine: np.ndarray,
    origin: np.ndarray,
    pixel_spacing: tuple[float, float] = (0.9, 0.8),
    slice_gap: float = 3.0,
    times_s: np.ndarray | None = None,
    temporal_ids: bool = True,
    trigger: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
    frame_of_reference: str | None = None,
    study_uid: str | None = None,
    seed: int = 0,
    per_time_point: list[dict[str, object]] | None = None,
) -> list[Path]:
    """Write classic MR files (uint16 stored values) in shuffled order; return the paths."""
    if stored.ndim == 3:
        stored = stored[np.newaxis]
    n_t, n_z, n_y, n_x = stored.shape
    normal = np.cross(row_cosine, column_cosine)
    series_uid, study_uid = generate_uid(), study_uid or generate_uid()
    frame_of_reference = frame_of_reference or generate_uid()
    paths = []
    start = 10 * 3600.0
    for t in range(n_t):
        for z in range(n_z):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientName, ds.PatientID = "Phantom^Volume", "VOL001"
            ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.StudyID, ds.AccessionNumber = "1", "A1"
            ds.StudyDate, ds.StudyTime = "20260101", "100000"
            ds.ReferringPhysicianName = ""
            ds.Modality, ds.SeriesNumber, ds.Manufacturer = "MR", 5, "Test"
            ds.InstanceNumber = t * n_z + z + 1
            ds.FrameOfReferenceUID = frame_of_reference
            ds.PositionReferenceIndicator = ""
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cosine, *column_cosine)]
            ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + z * slice_gap * normal]
            ds.PixelSpacing = list(pixel_spacing)
            ds.SliceThickness = slice_gap
            ds.Rows, ds.Columns = n_y, n_x
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            if times_s is not None:
                # Slices of one time point are acquired 0.05 s apart (interleaved EPI).
                moment = float(times_s[t]) + 0.05 * z
                if trigger:
                    ds.TriggerTime = f"{moment * 1000:.3f}"
                ds.AcquisitionTime = _tm(start + moment)
                if temporal_ids:
                    ds.TemporalPositionIdentifier = t + 1
                    ds.NumberOfTemporalPositions = n_t
            for keyword, value in (per_time_point[t] if per_time_point else {}).items():
                setattr(ds, keyword, value)
            ds.PixelData = stored[t, z].astype(np.uint16).tobytes()
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    random.Random(seed).shuffle(paths)
    return paths


AXIAL = {"row_cosine": np.array([1.0, 0, 0]), "column_cosine": np.array([0, 1.0, 0])}


def stored_values(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(np.uint16)


def test_axial_static_shuffled(tmp_path: Path) -> None:
    stored = stored_values((6, 5, 7))
    origin = np.array([-10.0, -20.0, 30.0])
    files = write_series(tmp_path, stored, origin=origin, **AXIAL)
    volume = load_series(files)
    assert not volume.is_dynamic
    assert volume.shape3d == (6, 5, 7)
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))
    expected = np.array([
        [0.8, 0, 0, -10.0], [0, 0.9, 0, -20.0], [0, 0, 3.0, 30.0], [0, 0, 0, 1]
    ])
    np.testing.assert_allclose(volume.affine, expected, atol=1e-6)
    assert volume.spacing == pytest.approx((3.0, 0.9, 0.8))
    assert volume.times is None
    assert volume.sop_instance_uids.shape == (6,)
    zs = [float(h.ImagePositionPatient[2]) for h in volume.headers]
    assert zs == pytest.approx([30.0 + 3.0 * k for k in range(6)])
    assert "PixelData" not in volume.headers[0]
    assert volume.series_instance_uid == str(volume.headers[0].SeriesInstanceUID)


def test_oblique_geometry_and_sitk(tmp_path: Path) -> None:
    rotation = _rotation(np.array([1.0, 2.0, 0.5]), 27.0)
    row_cosine, column_cosine = rotation[:, 0], rotation[:, 1]
    origin = np.array([12.5, -40.0, 7.25])
    stored = stored_values((4, 6, 5), seed=3)
    files = write_series(
        tmp_path, stored, row_cosine=row_cosine, column_cosine=column_cosine, origin=origin,
        pixel_spacing=(1.1, 0.7), slice_gap=2.5,
    )
    volume = load_series(files)
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))
    normal = np.cross(row_cosine, column_cosine)
    for i, j, k in [(0, 0, 0), (4, 5, 3), (2, 1, 2)]:
        expected = origin + k * 2.5 * normal + i * 0.7 * row_cosine + j * 1.1 * column_cosine
        np.testing.assert_allclose(volume.index_to_patient([i, j, k]), expected, atol=1e-5)
        np.testing.assert_allclose(volume.patient_to_index(expected), [i, j, k], atol=1e-6)
    image = volume.to_sitk()
    assert image.GetSize() == (5, 6, 4)
    point = image.TransformIndexToPhysicalPoint((4, 5, 3))
    np.testing.assert_allclose(point, volume.index_to_patient([4, 5, 3]), atol=1e-4)
    np.testing.assert_array_equal(volume.array_from_sitk(image), volume.data)


def test_slices_sorted_along_normal_not_by_instance_number(tmp_path: Path) -> None:
    # Slices written head-first with decreasing z: the normal of this orientation
    # (row = +x, column = -y) is -z, so ascending distance along it is descending z.
    stored = stored_values((5, 4, 4), seed=4)
    files = write_series(
        tmp_path, stored, row_cosine=np.array([1.0, 0, 0]), column_cosine=np.array([0, -1.0, 0]),
        origin=np.array([0.0, 0.0, 0.0]), slice_gap=2.0,
    )
    volume = load_series(files)
    # Along n = (0, 0, -1) the stored slice z index k sits at z = -2k, distance +2k.
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, -2.0], atol=1e-6)


def test_dynamic_with_temporal_ids_and_trigger_time(tmp_path: Path) -> None:
    times = np.array([0.0, 1.5, 3.0, 4.5, 6.0])
    stored = stored_values((5, 3, 4, 4), seed=5)
    files = write_series(tmp_path, stored, origin=np.zeros(3), times_s=times, **AXIAL)
    volume = load_series(files)
    assert volume.is_dynamic
    assert volume.data.shape == (5, 3, 4, 4)
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))
    assert volume.times is not None
    np.testing.assert_allclose(volume.times, times, atol=1e-6)
    assert volume.sop_instance_uids.shape == (5, 3)
    assert len(set(volume.sop_instance_uids.ravel())) == 15


def test_dynamic_by_acquisition_time_only(tmp_path: Path) -> None:
    times = np.array([0.0, 4.8, 9.6, 14.4])
    stored = stored_values((4, 3, 3, 3), seed=6)
    files = write_series(
        tmp_path, stored, origin=np.zeros(3), times_s=times, temporal_ids=False, trigger=False,
        **AXIAL,
    )
    volume = load_series(files)
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))
    np.testing.assert_allclose(volume.times, times, atol=1e-5)


def test_variable_flip_angles_become_the_fourth_axis(tmp_path: Path) -> None:
    angles = [15.0, 2.0, 10.0, 5.0]  # acquired in this order
    stored = stored_values((4, 3, 4, 4), seed=9)
    files = write_series(
        tmp_path, stored, origin=np.zeros(3), times_s=np.arange(4) * 30.0, temporal_ids=False,
        trigger=False, per_time_point=[{"FlipAngle": a, "EchoTime": 2.1} for a in angles],
        **AXIAL,
    )
    volume = load_series(files)
    order = np.argsort(angles)
    np.testing.assert_array_equal(volume.data, stored[order].astype(np.float32))
    assert [float(h.FlipAngle) for h in volume.time_point_headers] == sorted(angles)
    np.testing.assert_allclose(volume.times, (np.arange(4) * 30.0)[order] - 30.0, atol=1e-5)


def test_flip_angle_series_combined_on_request(tmp_path: Path) -> None:
    frame_of_reference, study = generate_uid(), generate_uid()
    stored = stored_values((2, 3, 4, 4), seed=13)
    files = []
    for n, angle in enumerate((10.0, 3.0)):
        folder = tmp_path / str(n)
        folder.mkdir()
        files += write_series(
            folder, stored[n], origin=np.zeros(3), frame_of_reference=frame_of_reference,
            study_uid=study, per_time_point=[{"FlipAngle": angle}], **AXIAL,
        )
    with pytest.raises(SeriesGeometryError, match="2 series"):
        load_series(files)
    volume = load_series(files, single_series=False)
    np.testing.assert_array_equal(volume.data, stored[::-1].astype(np.float32))
    assert [float(h.FlipAngle) for h in volume.time_point_headers] == [3.0, 10.0]


def test_duplicate_instances_are_read_once(tmp_path: Path) -> None:
    stored = stored_values((4, 3, 3), seed=10)
    files = write_series(tmp_path, stored, origin=np.zeros(3), **AXIAL)
    volume = load_series([*files, files[0], files[2]])
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32))


def test_rescale_applied(tmp_path: Path) -> None:
    stored = stored_values((3, 3, 3), seed=7)
    files = write_series(
        tmp_path, stored, origin=np.zeros(3), slope=0.5, intercept=-100.0, **AXIAL
    )
    volume = load_series(files)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.data, stored * 0.5 - 100.0)


def test_missing_slice_is_reported(tmp_path: Path) -> None:
    files = write_series(tmp_path, stored_values((6, 3, 3)), origin=np.zeros(3), seed=0, **AXIAL)
    # Remove the slice at z = 6 mm (index 2) from the middle of the stack.
    import pydicom

    middle = next(p for p in files if float(pydicom.dcmread(p).ImagePositionPatient[2]) == 6.0)
    with pytest.raises(SeriesGeometryError, match="missing slice"):
        load_series([p for p in files if p != middle])


def test_missing_time_point_is_reported(tmp_path: Path) -> None:
    files = write_series(
        tmp_path, stored_values((3, 3, 3, 3)), origin=np.zeros(3), times_s=np.array([0.0, 2.0, 4.0]),
        **AXIAL,
    )
    with pytest.raises(SeriesGeometryError, match="missing time points"):
        load_series(files[1:])


def test_inconsistent_orientation_and_size(tmp_path: Path) -> None:
    import pydicom

    files = write_series(tmp_path, stored_values((3, 4, 4)), origin=np.zeros(3), **AXIAL)
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(files[0])
    with pytest.raises(SeriesGeometryError, match="ImageOrientationPatient"):
        load_series(files)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows = 2
    ds.PixelData = np.zeros((2, 4), np.uint16).tobytes()
    ds.save_as(files[0])
    with pytest.raises(SeriesGeometryError, match="mixed image sizes"):
        load_series(files)


def enhanced_mr(stored: np.ndarray, origin: np.ndarray, gap: float) -> Dataset:
    """A minimal Enhanced MR multi-frame instance with per-frame plane positions."""
    n_z, n_y, n_x = stored.shape
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = n_y, n_x, n_z
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures, orientation, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.0, 1.0], gap
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, 0, "US"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    order = [2, 0, 3, 1][:n_z] if n_z == 4 else list(range(n_z))
    for z in order:
        item, position = Dataset(), Dataset()
        position.ImagePositionPatient = [*origin[:2], origin[2] + z * gap]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = stored[order].astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_enhanced_multiframe() -> None:
    stored = stored_values((4, 3, 5), seed=8)
    volume = load_series([enhanced_mr(stored, np.array([5.0, 6.0, 7.0]), 1.5)])
    np.testing.assert_array_equal(volume.data, stored * 2.0)
    np.testing.assert_allclose(volume.affine[:3, 3], [5.0, 6.0, 7.0])
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, 1.5])


def test_resample_nearest_between_grids() -> None:
    # A 2 mm grid and a 1 mm grid sharing the origin corner voxel centre.
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1, 2, 3] = True  # coarse voxel (i=3, j=2, k=1) → patient (6, 4, 2)
    resampled = resample_nearest(mask, coarse, fine, (8, 8, 8), False)
    assert resampled[2, 4, 6]
    # Nearest-neighbour around (6, 4, 2): fine voxels within ±1 mm (half open) map to it.
    assert resampled.sum() == 8
    back = resample_nearest(resampled, fine, coarse, (4, 4, 4), False)
    np.testing.assert_array_equal(back, mask)


def _segmentation(volume: Volume, files: list[Path], mask: np.ndarray) -> Dataset:
    import pydicom

    by_uid = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in files}
    sources = [pydicom.dcmread(by_uid[str(u)]) for u in volume.sop_instance_uids]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically Altered Structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )


def test_load_segmentation_same_and_other_grid(tmp_path: Path) -> None:
    study, frame_of_reference = generate_uid(), generate_uid()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = write_series(
        tmp_path / "a", stored_values((4, 6, 6)), origin=np.zeros(3), pixel_spacing=(2.0, 2.0),
        slice_gap=2.0, frame_of_reference=frame_of_reference, study_uid=study, **AXIAL,
    )
    volume = load_series(files)
    mask = np.zeros(volume.shape3d, dtype=bool)
    mask[1:3, 2:4, 1:5] = True
    seg = _segmentation(volume, files, mask)
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path)
    masks = load_segmentation([seg_path], onto=volume)
    assert list(masks) == ["lesion"]
    np.testing.assert_array_equal(masks["lesion"], mask)

    # A finer series of the same frame of reference: the mask maps through patient space.
    fine_files = write_series(
        tmp_path / "b", stored_values((8, 12, 12)), origin=np.array([-0.5, -0.5, -0.5]),
        pixel_spacing=(1.0, 1.0), slice_gap=1.0, frame_of_reference=frame_of_reference,
        study_uid=study, **AXIAL,
    )
    fine = load_series(fine_files)
    on_fine = load_segmentation(seg_path, onto=fine)["lesion"]
    np.testing.assert_array_equal(on_fine, fine.resample_from(mask, volume))
    assert on_fine.sum() == mask.sum() * 8
