"""Phantoms: determinism, DICOM validity, and ground truth consistent with the signal models."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from analyzers.phantoms import DSC_CONSTANTS, PhantomError, generate_dsc, simulate_dsc
from analyzers.phantoms.anatomy import Grid
from analyzers.phantoms.bolus import exponential_convolution

SMALL_DSC = {"matrix": 64, "slices": 10, "time_points": 40, "pixel_mm": 3.6, "slice_mm": 8.0}


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _check_geometry(folder: Path) -> list[pydicom.Dataset]:
    files = sorted(folder.glob("IM*.dcm"))
    assert files, f"no files in {folder}"
    first = pydicom.dcmread(files[0])
    assert first.SOPClassUID == pydicom.uid.MRImageStorage
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "FrameOfReferenceUID", "RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength",
                    "Manufacturer", "ManufacturerModelName", "SeriesDescription", "PatientSex", "PatientAge"):
        assert keyword in first, keyword
    assert first.pixel_array.shape == (first.Rows, first.Columns)
    return [first]


def test_exponential_convolution_matches_numerical_integral() -> None:
    t = np.linspace(0, 10, 2001)
    c = np.sin(t) ** 2
    rates = np.array([0.0, 0.3, 2.0])
    exact = exponential_convolution(t, c, rates)
    for i, k in enumerate(rates):
        ref = [np.trapezoid(c[: j + 1] * np.exp(-k * (t[j] - t[: j + 1])), t[: j + 1]) for j in (500, 2000)]
        np.testing.assert_allclose(exact[i, [500, 2000]], ref, rtol=1e-4)


def test_grid_affine_matches_slice_positions() -> None:
    grid = Grid(shape=(3, 4, 5), spacing=(5.0, 2.0, 1.5), origin=(10.0, -20.0, 30.0),
                row_direction=(0.0, 1.0, 0.0), column_direction=(0.0, 0.0, -1.0))
    coords = grid.patient_coordinates()
    np.testing.assert_allclose(coords[2, 0, 0], grid.slice_position(2))
    np.testing.assert_allclose(coords[0, 1, 0] - coords[0, 0, 0], [0, 0, -2.0])
    np.testing.assert_allclose(coords[0, 0, 1] - coords[0, 0, 0], [0, 1.5, 0])
    np.testing.assert_allclose(grid.to_index(coords[1, 2, 3]), [1, 2, 3], atol=1e-9)


class TestDsc:
    def test_deterministic_by_seed_and_distinct_per_case(self) -> None:
        a = simulate_dsc(5, 0, **SMALL_DSC)
        b = simulate_dsc(5, 0, **SMALL_DSC)
        c = simulate_dsc(5, 1, **SMALL_DSC)
        np.testing.assert_array_equal(a.series[0].pixels, b.series[0].pixels)
        np.testing.assert_array_equal(a.truth_maps["cbv"], b.truth_maps["cbv"])
        assert a.series[0].series_uid == b.series[0].series_uid
        assert a.patient.patient_id != c.patient.patient_id
        assert a.studies[0].study_uid != c.studies[0].study_uid
        assert not np.array_equal(a.truth_maps["tissue_labels"], c.truth_maps["tissue_labels"])

    def test_noise_free_signal_follows_the_recorded_model(self) -> None:
        case = simulate_dsc(1, 0, snr=None, **SMALL_DSC)
        m, k = case.truth_maps, DSC_CONSTANTS["k_per_mM_per_s"]
        te = case.truth["constants"]["te_s"]
        pixels = case.series[0].pixels
        plain = (m["lesion_fraction"] == 0) & (m["artery_fraction"] == 0) & ~m["edema"] & (m["gm_fraction"] > 0.3)
        assert plain.sum() > 100
        conc = m["gm_fraction"][plain][:, None] * m["c_gm_mM"] + m["wm_fraction"][plain][:, None] * m["c_wm_mM"]
        expected = m["s0"][plain][:, None] * np.exp(-te * k * conc)
        np.testing.assert_allclose(pixels[:, plain].T, expected, rtol=1e-4, atol=1e-2)
        artery = m["artery_fraction"] >= 1.0
        assert artery.sum() >= 4, "arterial voxels for AIF detection"
        np.testing.assert_allclose(
            pixels[:, artery].mean(axis=1), m["s0"][artery].mean() * np.exp(-te * k * m["aif_mM"]), rtol=1e-4
        )
        # The arterial signal drops well below baseline but stays above zero (AIF measurable).
        drop = pixels[:, artery].mean(axis=1).min() / pixels[:3, artery].mean()
        assert 0.02 < drop < 0.3

    def test_truth_cbv_matches_area_ratio_and_units(self) -> None:
        case = simulate_dsc(2, 0, snr=None, time_points=120, **{k: v for k, v in SMALL_DSC.items() if k != "time_points"})
        m, c = case.truth_maps, DSC_CONSTANTS
        t = m["time_fine_s"]
        wm_conc = np.interp(t, m["time_s"], m["c_wm_mM"])
        cbv = 100 * c["k_h"] / c["density_g_per_ml"] * np.trapezoid(wm_conc, t) / np.trapezoid(m["aif_fine_mM"], t)
        assert cbv == pytest.approx(case.truth["tissue"]["wm"]["cbv"], rel=0.03)
        for lesion in case.truth["lesions"]:
            assert lesion["label"] in {"meningioma", "dural_metastasis"}
            assert 1.0 < lesion["rcbv"] < 30 and 1.0 < lesion["rcbf"] < 30

    def test_lesions_are_dural_and_intracranial(self) -> None:
        for index in range(3):
            case = simulate_dsc(3, index, **SMALL_DSC)
            grid = case.series[0].grid
            labels = case.truth_maps["lesion_labels"]
            assert labels.max() == len(case.truth["lesions"]) >= 1
            for lesion in case.truth["lesions"]:
                k, i, j = np.rint(grid.to_index(np.asarray(lesion["centre_lps"]))).astype(int)
                assert 0 <= k < grid.shape[0] and 0 <= i < grid.shape[1] and 0 <= j < grid.shape[2]
                # Dural-based: the lesion touches the brain and its centre lies within the head.
                region = labels == lesion["id"]
                brain = case.truth_maps["tissue_labels"] > 0
                assert (ndimage.binary_dilation(region) & brain).any()
                assert ndimage.binary_dilation(brain, iterations=2)[k, i, j]

    def test_cohort_written_as_valid_dicom_with_labels(self, tmp_path: Path) -> None:
        root = generate_dsc(tmp_path, seed=4, cases=2, progress=False, vendor="siemens", **SMALL_DSC)
        rows = list(csv.DictReader((root / "labels.csv").open()))
        assert {r["label"] for r in rows} <= {"meningioma", "dural_metastasis"}
        assert len({r["PatientID"] for r in rows}) == 2
        folder = root / "case-0001" / "dsc"
        files = sorted(folder.glob("IM*.dcm"))
        assert len(files) == SMALL_DSC["slices"] * SMALL_DSC["time_points"]
        _check_geometry(folder)
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[: SMALL_DSC["slices"] + 1]]
        positions = np.array([d.ImagePositionPatient for d in datasets[: SMALL_DSC["slices"]]], dtype=float)
        steps = np.diff(positions, axis=0)
        np.testing.assert_allclose(np.linalg.norm(steps, axis=1), SMALL_DSC["slice_mm"], atol=1e-3)
        assert int(datasets[-1].TemporalPositionIdentifier) == 2
        assert int(datasets[0].NumberOfTemporalPositions) == SMALL_DSC["time_points"]
        assert datasets[-1].AcquisitionTime > datasets[0].AcquisitionTime
        assert "Gadobutrol" in datasets[0].ContrastBolusAgent
        truth = json.loads((root / "case-0001" / "truth" / "truth.json").read_text())
        assert truth["series"][0]["SeriesInstanceUID"] == datasets[0].SeriesInstanceUID
        maps = np.load(root / "case-0001" / "truth" / "maps.npz")
        assert maps["cbv"].shape == (SMALL_DSC["slices"], SMALL_DSC["matrix"], SMALL_DSC["matrix"])
        assert _dciodvfy_errors(files[0]) == []

    def test_rejects_bad_options(self) -> None:
        with pytest.raises(PhantomError):
            simulate_dsc(0, 0, label="glioma")
        with pytest.raises(PhantomError):
            simulate_dsc(0, 0, snr=-1)
