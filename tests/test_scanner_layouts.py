"""One reader for every vendor layout: real scanner files (reference-data/scanner-dicom) and the
tolerance rules of the consensus geometry (synthetic series)."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from analyzers._shared.dicom_layouts import (
    ENHANCED_PER_VOLUME,
    ENHANCED_WHOLE_SERIES,
    MOSAIC,
    ORIENTATION_TOLERANCE,
)
from analyzers._shared.volume import CLASSIC, SeriesGeometryError, load_series
from analyzers.contract import UnsuitableInput
from tests.scanner_data import SCANNER_DICOM, requires_scanner_dicom, series_files
from tests.test_volume import AXIAL, stored_values, write_series

MOSAIC_SERIES = sorted(
    str(p.relative_to(SCANNER_DICOM)) for p in (SCANNER_DICOM / "siemens-vd13-mosaic").glob("*/*") if p.is_dir()
) if SCANNER_DICOM.is_dir() else []


# ----------------------------------------------------------------------- Siemens MOSAIC
@requires_scanner_dicom
def test_mosaic_matches_dcm2niix_voxel_for_voxel() -> None:
    """dcm2niix's NIfTI of the same series (shipped beside it) holds the same value at the same
    patient position for every voxel: tiles cut, ordered and placed as an independent reader does."""
    folder = SCANNER_DICOM / "siemens-vd13-mosaic" / "ax" / "axasc35"
    volume = load_series(series_files("siemens-vd13-mosaic/ax/axasc35"))
    assert volume.layout == MOSAIC and volume.data.shape == (2, 35, 64, 64)
    reference = nib.load(str(folder / "6_ax_asc_35sl.nii"))
    expected = np.asarray(reference.dataobj, dtype=np.float64)
    nz, ny, nx = volume.shape3d
    ijk = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1).reshape(-1, 3)
    ras = volume.index_to_patient(ijk) * np.array([-1.0, -1.0, 1.0])
    inverse = np.linalg.inv(reference.affine)
    index = ras @ inverse[:3, :3].T + inverse[:3, 3]
    assert np.abs(index - np.round(index)).max() < 1e-3  # same voxel centres (within 1e-3 voxel)
    index = np.round(index).astype(int)
    for t in range(2):
        ours = volume.data[t][ijk[:, 2], ijk[:, 1], ijk[:, 0]]
        np.testing.assert_array_equal(ours, expected[index[:, 0], index[:, 1], index[:, 2], t])


@requires_scanner_dicom
@pytest.mark.parametrize("series", MOSAIC_SERIES)
def test_every_mosaic_series_is_cut_into_its_slices(series: str) -> None:
    files = series_files(series)
    volume = load_series(files)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    count = int(header[0x0019, 0x100A].value)  # NumberOfImagesInMosaic
    assert volume.layout == MOSAIC
    assert volume.data.shape[:2] == (2, count)
    assert volume.shape3d[1] * int(np.ceil(np.sqrt(count))) == int(header.Rows)
    np.testing.assert_allclose(volume.spacing[0], float(header.SpacingBetweenSlices), rtol=1e-6)
    # The mosaic's ImagePositionPatient is the corner of the tile grid, not slice 1's.
    assert np.linalg.norm(volume.affine[:3, 3] - np.array([float(v) for v in header.ImagePositionPatient])) > 50
    # No empty padding tile of the grid became a slice (35 slices fill 35 of a 6x6 grid).
    assert (volume.data[0].max(axis=(1, 2)) > 0).all()


@requires_scanner_dicom
@pytest.mark.parametrize("plane", ["ax", "cor", "sag"])
def test_ascending_descending_interleaved_mosaics_agree(plane: str) -> None:
    """The same prescription acquired in three slice orders: the same slice positions, and images of
    the same head that correlate voxel by voxel (a wrong tile order would decorrelate them)."""
    volumes = [load_series(series_files(f"siemens-vd13-mosaic/{plane}/{plane}{order}36"))
               for order in ("asc", "desc", "int")]
    for other in volumes[1:]:
        np.testing.assert_allclose(other.affine, volumes[0].affine, atol=0.1)
        r = np.corrcoef(volumes[0].data[0].ravel(), other.data[0].ravel())[0, 1]
        assert r > 0.9


@requires_scanner_dicom
def test_compressed_mosaics_jpeg_lossless_and_jpeg2000() -> None:
    lossless = load_series(series_files("siemens-vd13-mosaic/axmb/AxAsc36mb2a"))
    j2k = load_series(series_files("siemens-vd13-mosaic/axmb/AxInt36mb"))
    for volume in (lossless, j2k):
        assert volume.layout == MOSAIC and volume.data.shape == (2, 36, 86, 86)
        assert np.isfinite(volume.data).all() and volume.data.max() > 100
        assert volume.times is not None and volume.times[1] > 0
    # Both are the same prescription (the same slab): same geometry.
    np.testing.assert_allclose(lossless.affine, j2k.affine, atol=0.1)


@requires_scanner_dicom
def test_mosaic_without_its_csa_header_is_refused(tmp_path: Path) -> None:
    """An anonymiser that drops private tags leaves a mosaic whose slice positions nobody knows."""
    for index, source in enumerate(series_files("siemens-vd13-mosaic/ax/axasc35")):
        ds = pydicom.dcmread(source)
        ds.remove_private_tags()
        ds.save_as(tmp_path / f"{index}.dcm")
    with pytest.raises(SeriesGeometryError, match="without the Siemens CSA image header") as caught:
        load_series(sorted(tmp_path.iterdir()))
    assert isinstance(caught.value, UnsuitableInput)
    assert "MOSAIC" in caught.value.reason


# ----------------------------------------------------------------------- Enhanced MR
@requires_scanner_dicom
def test_siemens_xa_enhanced_one_instance_per_volume() -> None:
    files = series_files("siemens-xa30-enhanced/10_DWI_dir80_PA")
    shuffled = list(files)
    random.Random(4).shuffle(shuffled)
    volume = load_series(shuffled)
    assert volume.layout == ENHANCED_PER_VOLUME
    assert volume.data.shape == (21, 39, 72, 72)
    assert volume.times is not None and np.all(np.diff(volume.times) > 0)
    # Time point t is instance t+1 (TemporalPositionIndex), all 39 of its frames.
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert set(volume.sop_instance_uids[0]) == {str(first.SOPInstanceUID)}
    assert volume.frame_numbers is not None and sorted(volume.frame_numbers[0]) == list(range(1, 40))
    np.testing.assert_allclose(volume.spacing, (3.0, 3.0, 3.0), atol=1e-6)


@requires_scanner_dicom
def test_philips_whole_series_objects_that_are_not_one_time_series_are_refused() -> None:
    with pytest.raises(SeriesGeometryError, match=r"Philips style.*further dimension index"):
        load_series(series_files("philips-enhanced/1903_WIP_SOURCE_-_3DpCASL.dcm"))
    with pytest.raises(SeriesGeometryError, match=r"Philips style.*image types in one series \(M, P"):
        load_series(series_files("philips-enhanced/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm"))


@requires_scanner_dicom
def test_philips_magnitude_frames_alone_form_the_series(tmp_path: Path) -> None:
    """The field map's magnitude frames (both echoes) are one regular 4D series along echo time."""
    ds = pydicom.dcmread(series_files("philips-enhanced/2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm")[0])
    keep = [i for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)
            if item.MRImageFrameTypeSequence[0].FrameType[3] == "M"]
    stored = ds.pixel_array
    frames = stored[keep]
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in keep])
    ds.NumberOfFrames = len(keep)
    ds.PixelData = frames.astype(stored.dtype).tobytes()
    volume = load_series([ds])
    assert volume.layout == ENHANCED_WHOLE_SERIES
    assert volume.data.shape == (2, 53, 80, 80)
    # Ordered by echo time: the later echo has decayed (T2*), so less signal in the brain.
    brain = volume.data[0] > np.percentile(volume.data[0], 75)
    assert volume.data[1][brain].mean() < volume.data[0][brain].mean()


# ----------------------------------------------------------------------- classic, GE oblique
@requires_scanner_dicom
def test_ge_oblique_noise_is_normalised_to_one_geometry() -> None:
    files = series_files("ge-signa-pioneer-classic/05_3D_Ax_T1_MP_RAGE_R22")
    raw = {tuple(pydicom.dcmread(f, stop_before_pixels=True).ImageOrientationPatient) for f in files}
    assert len(raw) > 1  # GE writes the orientation per slice with float noise
    volume = load_series(files)
    assert volume.layout == CLASSIC and volume.shape3d == (130, 256, 256)
    assert len({tuple(h.ImageOrientationPatient) for h in volume.headers}) == 1
    direction = volume.direction
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in volume.headers])
    np.testing.assert_allclose(np.diff(positions, axis=0), np.tile(volume.affine[:3, 2], (129, 1)), atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (1.2, 0.9375, 0.9375), atol=1e-4)
    # The normalised geometry stays within the scanner's noise of what each file says.
    for path in files[::13]:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        k = [str(h.SOPInstanceUID) for h in volume.headers].index(str(header.SOPInstanceUID))
        stated = np.array([float(v) for v in header.ImagePositionPatient])
        assert np.linalg.norm(volume.index_to_patient([0, 0, k]) - stated) < 1e-3


# ----------------------------------------------------------------------- tolerance rules
def _perturbed(tmp_path: Path, **change: float) -> list[Path]:
    files = write_series(tmp_path, stored_values((6, 4, 4)), origin=np.zeros(3), seed=1, **AXIAL)
    for index, path in enumerate(sorted(files)):
        ds = pydicom.dcmread(path)
        if index == 2:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            iop[1] += change.get("orientation", 0.0)
            ds.ImageOrientationPatient = [f"{v:.10f}" for v in iop]
            spacing = [float(v) for v in ds.PixelSpacing]
            ds.PixelSpacing = [f"{spacing[0] * (1 + change.get('spacing', 0.0)):.6f}", f"{spacing[1]:.6f}"]
            position = [float(v) for v in ds.ImagePositionPatient]
            position[0] += change.get("shift", 0.0)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.save_as(path)
    return files


def test_float_noise_is_forgiven(tmp_path: Path) -> None:
    volume = load_series(_perturbed(tmp_path, orientation=0.5 * ORIENTATION_TOLERANCE, spacing=0.005))
    assert len({tuple(h.ImageOrientationPatient) for h in volume.headers}) == 1
    assert len({tuple(h.PixelSpacing) for h in volume.headers}) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"orientation": 10 * ORIENTATION_TOLERANCE}, "different orientations"),
    ({"spacing": 0.05}, "different pixel spacing"),
    ({"shift": 1.0}, "not stacked along their normal"),
])
def test_real_geometry_errors_are_refused(tmp_path: Path, change: dict[str, float], message: str) -> None:
    with pytest.raises(SeriesGeometryError, match=message) as caught:
        load_series(_perturbed(tmp_path, **change))
    assert caught.value.reason.startswith(CLASSIC)


def test_irregular_gap_is_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path, stored_values((6, 3, 3)), origin=np.zeros(3), seed=0, **AXIAL)
    moved = next(p for p in files if float(pydicom.dcmread(p).ImagePositionPatient[2]) == 9.0)
    ds = pydicom.dcmread(moved)
    ds.ImagePositionPatient = [0.0, 0.0, 9.5]
    ds.save_as(moved)
    with pytest.raises(SeriesGeometryError, match="irregular slice spacing"):
        load_series(files)


@requires_scanner_dicom
def test_qc_sees_the_slices_of_a_mosaic() -> None:
    from analyzers.qc.geometry import assess_geometry, frames_of

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series_files("siemens-vd13-mosaic/sag/sagint35")]
    findings = assess_geometry(frames_of(headers)).as_dict()
    assert (findings["slices"], findings["time_points"], findings["missing_slices"]) == (35, 2, 0)
    assert abs(findings["slice_spacing_mm"] - 3.6) < 1e-3


@requires_scanner_dicom
def test_spine_on_a_sagittal_head_is_rejected_not_crashed(tmp_path: Path) -> None:
    """A sagittal brain T1 routed to spine: sagittal, but no spine to find (it crashed on an empty
    marrow sample before)."""
    from analyzers.contract import AnalysisInput, SeriesInput
    from analyzers.spine.analyzer import SpineAnalyzer, SpineSettings

    files = series_files("siemens-decubitus-hfs/3_t1_fl2d_sag")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    job = AnalysisInput("spine", SeriesInput(str(header.SeriesInstanceUID), str(header.StudyInstanceUID),
                                             tuple(files), {"SeriesDescription": "t1_fl2d_sag"}),
                        {}, (), SpineSettings(), tmp_path)
    with pytest.raises(UnsuitableInput, match="does not show a spine"):
        SpineAnalyzer().analyze(job)
