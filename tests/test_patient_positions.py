"""The same patient in another position (prone, decubitus, feet first) gives the same result.

Variants are written by :func:`analyzers.phantoms.positions.reposition` (the scanner's axes rotated
in the patient frame, every voxel kept), the analyzers run as a job would, and the lesions they
report are compared in patient coordinates: same count, centroids within one voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from analyzers._shared.brain import extract_brain
from analyzers._shared.orientation import AXIAL, SAGITTAL, reorient
from analyzers._shared.volume import load_segmentation, load_series
from analyzers.contract import AnalysisInput, AnalyzerSettings, SeriesInput, UnsuitableInput
from analyzers.phantoms.brainmets import simulate_brainmets
from analyzers.phantoms.cli import SMALL
from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.model import PhantomCase, PhantomError
from analyzers.phantoms.positions import PATIENT_POSITIONS, reposition
from analyzers.phantoms.spine import simulate_spine
from analyzers.phantoms.t1c import simulate_t1c
from analyzers.registry import load_analyzer
from tests.scanner_data import requires_scanner_dicom, series_files, write_repositioned

POSITIONS = ("HFS", "HFP", "HFDL")


def _voxels(case: PhantomCase) -> dict[str, dict[tuple[float, ...], float]]:
    """Every voxel of every series of the first time point: patient position -> value."""
    found = {}
    for series in case.series:
        coordinates = np.round(series.grid.patient_coordinates().reshape(-1, 3), 3)
        found[series.folder] = dict(zip(map(tuple, coordinates), series.pixels[0].ravel().tolist(), strict=True))
    return found


@pytest.mark.parametrize("position", PATIENT_POSITIONS)
def test_variants_keep_every_voxel_where_it_is(position: str) -> None:
    case = simulate_t1c(seed=2, **SMALL["t1c"])
    variant = reposition(case, position)
    assert _voxels(variant) == _voxels(case)
    assert variant.series[0].attributes.get("PatientPosition", "HFS") == position


def test_axial_variants_turn_the_pixel_array_and_the_orientation() -> None:
    case = simulate_t1c(seed=2, **SMALL["t1c"])
    prone = reposition(case, "HFP").series[0]
    decubitus = reposition(case, "HFDL").series[0]
    assert (prone.grid.row_direction, prone.grid.column_direction) == ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0))
    assert (decubitus.grid.row_direction, decubitus.grid.column_direction) == ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0))
    np.testing.assert_array_equal(prone.pixels, case.series[0].pixels[:, :, ::-1, ::-1])


def test_decubitus_sagittal_would_change_plane_and_is_refused() -> None:
    case = simulate_spine(seed=0, **SMALL["spine"])
    with pytest.raises(PhantomError, match="another plane"):
        reposition(case, "HFDL")
    assert reposition(case, "FFS").series[0].grid.column_direction == (0.0, 0.0, 1.0)


def test_reorient_puts_every_position_back_on_the_training_array(tmp_path: Path) -> None:
    case = simulate_t1c(seed=2, **SMALL["t1c"])
    arrays = []
    for position in PATIENT_POSITIONS:
        folder = write_case(reposition(case, position), tmp_path / position)
        volume = load_series(sorted((folder / "t1c").iterdir()))
        canonical = reorient(volume, AXIAL)
        np.testing.assert_array_equal(canonical.back(canonical.data), volume.data)
        arrays.append((canonical.data, canonical.affine))
        sagittal = reorient(volume, SAGITTAL)
        np.testing.assert_array_equal(sagittal.back(sagittal.forward(volume.data)), volume.data)
    for data, affine in arrays[1:]:
        np.testing.assert_array_equal(data, arrays[0][0])
        np.testing.assert_allclose(affine, arrays[0][1], atol=1e-3)  # IPP is written to 0.1 um


def _lesions(analyzer: str, case: PhantomCase, folder_name: str, tmp_path: Path,
             settings: dict[str, Any], positions: tuple[str, ...] = POSITIONS
             ) -> dict[str, tuple[int, np.ndarray, float]]:
    """Per position: lesion count, lesion centroids (LPS mm, sorted) and the voxel size."""
    found = {}
    instance = load_analyzer(analyzer)
    for position in positions:
        folder = write_case(reposition(case, position), tmp_path / position)
        files = tuple(sorted((folder / folder_name).iterdir()))
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        chosen: AnalyzerSettings = instance.settings_model(**settings)
        job = AnalysisInput(f"{analyzer}-{position}", SeriesInput(
            str(header.SeriesInstanceUID), str(header.StudyInstanceUID), files,
            {"SeriesDescription": str(header.SeriesDescription)}), {}, (), chosen, tmp_path / f"work-{position}")
        (tmp_path / f"work-{position}").mkdir()
        result = instance.analyze(job)
        volume = load_series(files)
        (seg,) = [d for d in result.datasets if d.Modality == "SEG"]
        centroids = []
        for mask in load_segmentation(seg, onto=volume).values():
            labels, count = ndimage.label(mask)
            for label in range(1, count + 1):
                centroids.append(volume.index_to_patient(np.argwhere(labels == label)[:, ::-1].mean(axis=0)))
        ordered = np.array(sorted(centroids, key=lambda p: tuple(np.round(p))))
        found[position] = (len(centroids), ordered, float(max(volume.spacing)))
    return found


def _same_everywhere(found: dict[str, tuple[int, np.ndarray, float]]) -> None:
    count, centroids, voxel = found["HFS"]
    assert count > 0
    for position, (other_count, other, _) in found.items():
        assert other_count == count, position
        assert np.linalg.norm(other - centroids, axis=1).max() <= voxel, position


@pytest.mark.slow
def test_brainmets_finds_the_same_metastases_decubitus(tmp_path: Path) -> None:
    # Decubitus turns the array by 90 degrees (the prone flips are a subset of what mirroring covers):
    # the network must see its training orientation again. Two runs keep the test short.
    case = simulate_brainmets(seed=0, metastases=3, **SMALL["brainmets"])
    _same_everywhere(_lesions("brainmets", case, "space", tmp_path, {"mirroring": False}, ("HFS", "HFDL")))


@pytest.mark.slow
def test_meningioma_finds_the_same_tumour_prone_and_decubitus(tmp_path: Path) -> None:
    case = simulate_t1c(seed=0, matrix=96, slices=40, pixel_mm=2.0, slice_mm=2.0)
    _same_everywhere(_lesions("meningioma", case, "t1c", tmp_path, {}))


@requires_scanner_dicom
@pytest.mark.slow
def test_real_sagittal_t1_brain_same_result_supine_prone_feet_first(tmp_path: Path) -> None:
    """The real Siemens sagittal T1 re-indexed as the scanner writes it for a prone and a feet-first
    patient: the same brain, and the same meningioma outcome (a healthy volunteer: the reading may
    find nothing), never a geometry rejection."""
    files = series_files("siemens-decubitus-hfs/3_t1_fl2d_sag")
    variants = {"HFS": files, **{p: write_repositioned(files, tmp_path / p, p) for p in ("HFP", "FFS")}}
    brains = {}
    outcomes = {}
    instance = load_analyzer("meningioma")
    for position, series in variants.items():
        volume = load_series(series)
        brain = extract_brain(volume)
        brains[position] = (brain.volume_ml,
                            volume.index_to_patient(np.argwhere(brain.mask)[:, ::-1].mean(axis=0)))
        header = pydicom.dcmread(series[0], stop_before_pixels=True)
        (tmp_path / f"work-{position}").mkdir()
        job = AnalysisInput(f"m-{position}", SeriesInput(str(header.SeriesInstanceUID), str(header.StudyInstanceUID),
                                                         tuple(series), {}), {}, (), instance.settings_model(),
                            tmp_path / f"work-{position}")
        try:
            result = instance.analyze(job)
            segs = [d for d in result.datasets if d.Modality == "SEG"]
            if not segs:  # the healthy volunteer's expected reading: "no meningioma found"
                assert result.findings["meningioma_found"] is False
                outcomes[position] = ("nothing found", None)
                continue
            mask = next(iter(load_segmentation(segs[0], onto=volume).values()))
            outcomes[position] = ("done", volume.index_to_patient(np.argwhere(mask)[:, ::-1].mean(axis=0)))
        except UnsuitableInput as exc:
            assert "regular volume" not in exc.reason and "no brain" not in exc.reason, exc.reason
            outcomes[position] = ("rejected", exc.reason)
    for position in ("HFP", "FFS"):
        assert abs(brains[position][0] - brains["HFS"][0]) < 0.02 * brains["HFS"][0]
        assert np.linalg.norm(brains[position][1] - brains["HFS"][1]) < 2.0
        assert outcomes[position][0] == outcomes["HFS"][0]
        if outcomes["HFS"][0] == "done":
            assert np.linalg.norm(outcomes[position][1] - outcomes["HFS"][1]) <= 4.8  # one (thickest) voxel
        elif outcomes["HFS"][0] == "nothing found":
            pass
        else:
            assert outcomes[position][1] == outcomes["HFS"][1]
