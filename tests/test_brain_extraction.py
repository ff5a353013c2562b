"""Brain extraction by affine registration of the MNI152 template (analyzers._shared.brain)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from analyzers._shared.brain import BrainExtraction, NoBrainFound, extract_brain
from analyzers._shared.volume import Volume, load_series
from analyzers.contract import UnsuitableInput
from analyzers.phantoms.cli import SMALL
from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.dsc import simulate_dsc
from analyzers.phantoms.t1c import simulate_t1c
from tests.scanner_data import requires_scanner_dicom, series_files


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)


@pytest.fixture(scope="module")
def small_t1c(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, np.ndarray]:
    """The ``--small`` post-contrast T1 phantom and its true brain (tissue labels > 0)."""
    case = simulate_t1c(seed=3, **SMALL["t1c"])
    folder = write_case(case, tmp_path_factory.mktemp("t1c") / "case")
    volume = load_series(sorted((folder / "t1c").iterdir()))
    return volume, case.truth_maps["tissue_labels"] > 0


def _rotated_in_plane(volume: Volume) -> Volume:
    """The same voxels as a scanner writes them for a head-first-prone patient: the pixel
    array turned by 180 degrees in its plane, ImageOrientationPatient negated."""
    _, ny, nx = volume.shape3d
    affine = volume.affine.copy()
    affine[:3, 3] = volume.index_to_patient([nx - 1, ny - 1, 0])
    affine[:3, 0] *= -1
    affine[:3, 1] *= -1
    return dataclasses.replace(volume, data=np.ascontiguousarray(volume.data[:, ::-1, ::-1]), affine=affine)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_phantom_brain_is_found_in_any_patient_position(small_t1c: tuple[Volume, np.ndarray]) -> None:
    volume, truth = small_t1c
    found = extract_brain(volume)
    assert found.mask.shape == volume.shape3d
    assert _dice(found.mask, truth) > 0.85
    assert found.similarity > 0.8
    # Centre of the brain, in patient coordinates, from the mask of a rotated pixel array.
    prone = _rotated_in_plane(volume)
    found_prone = extract_brain(prone)
    assert _dice(found_prone.mask[:, ::-1, ::-1], found.mask) > 0.95
    centre = volume.index_to_patient(np.argwhere(found.mask)[:, ::-1].mean(axis=0))
    centre_prone = prone.index_to_patient(np.argwhere(found_prone.mask)[:, ::-1].mean(axis=0))
    assert np.linalg.norm(centre - centre_prone) < 2.0
    # The template maps into patient coordinates: the MNI origin (anterior commissure area) is inside the brain.
    inside = np.rint(volume.patient_to_index(found.mni_to_patient(np.array([0.0, 0.0, 0.0])))).astype(int)
    assert truth[inside[2], inside[1], inside[0]]


def test_t2star_epi_is_not_taken_for_a_t1_brain(tmp_path: Path) -> None:
    """A T2*-weighted EPI (CSF bright) anti-correlates with the T1 template: refused, with the reason."""
    case = simulate_dsc(seed=1, **SMALL["dsc"])
    folder = write_case(case, tmp_path / "case")
    volume = load_series(sorted((folder / "dsc").iterdir()))
    with pytest.raises(NoBrainFound, match="T1-weighted image of a head") as caught:
        extract_brain(volume)
    assert isinstance(caught.value, UnsuitableInput)


def test_too_little_brain_in_the_field_of_view(small_t1c: tuple[Volume, np.ndarray]) -> None:
    volume, _ = small_t1c
    with pytest.raises(NoBrainFound, match="of the brain is in the field of view"):
        extract_brain(volume, min_coverage=0.99)


@pytest.fixture(scope="module")
def real_sagittal() -> tuple[Volume, BrainExtraction]:
    """The real Siemens 2D sagittal T1 of a volunteer and its brain (one fit, shared: ~20 s each)."""
    volume = load_series(series_files("siemens-decubitus-hfs/3_t1_fl2d_sag"))
    return volume, extract_brain(volume)


@requires_scanner_dicom
def test_real_sagittal_t1_brain(real_sagittal: tuple[Volume, BrainExtraction]) -> None:
    """A real Siemens 2D sagittal T1 of a volunteer (4.8 mm slices, neck and face in the field of view)."""
    volume, found = real_sagittal
    assert found.similarity > 0.4
    assert 1100 < found.volume_ml < 1800
    assert found.coverage > 0.9
    # The brain is above the foramen magnum: its lowest voxel is above the lowest of the image.
    z_of_mask = volume.index_to_patient(np.argwhere(found.mask)[:, ::-1])[:, 2]
    z_of_image = volume.index_to_patient(np.argwhere(np.ones(volume.shape3d, bool))[:, ::-1])[:, 2]
    assert z_of_mask.min() > z_of_image.min() + 20


@requires_scanner_dicom
def test_ge_series_without_a_spatial_brain_image_is_refused() -> None:
    """The GE 3D T1 of reference-data stores its pixels as a centred frequency-domain-like pattern
    (maximum at the grid centre, no head outline): no template fit, a clear refusal."""
    volume = load_series(series_files("ge-signa-pioneer-classic/05_3D_Ax_T1_MP_RAGE_R22"))
    with pytest.raises(NoBrainFound, match="fits the series poorly"):
        extract_brain(volume)


@requires_scanner_dicom
def test_the_fit_is_the_same_from_run_to_run(real_sagittal: tuple[Volume, BrainExtraction]) -> None:
    """ITK's sample points and its threaded metric sums moved the fit between runs; a healthy
    brain once gave a meningioma candidate in one patient position and none in a rerun."""
    volume, first = real_sagittal
    second = extract_brain(volume)
    assert first.similarity == second.similarity
    assert np.array_equal(first.mask, second.mask)
