"""Phantoms: determinism, DICOM validity, and ground truth consistent with the signal models."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from analyzers.phantoms import (
    DSC_CONSTANTS,
    HYPERPERFUSION_RATIO,
    PhantomError,
    generate_brainmets,
    generate_dce,
    generate_dsc,
    generate_spine,
    generate_t1c,
    simulate_brainmets,
    simulate_dce,
    simulate_dsc,
    simulate_spine,
    simulate_t1c,
)
from analyzers.phantoms.anatomy import Grid
from analyzers.phantoms.bolus import exponential_convolution
from analyzers.phantoms.cli import main as phantom_main

SMALL_DCE: dict[str, Any] = {
    "matrix": 64,
    "slices": 8,
    "time_points": 60,
    "frame_s": 5.0,
    "pixel_mm": 3.6,
    "slice_mm": 8.0,
}
SMALL_T1C: dict[str, Any] = {"matrix": 96, "slices": 40, "pixel_mm": 2.0, "slice_mm": 2.0}
SMALL_SPINE: dict[str, Any] = {"slices": 7, "rows": 160, "columns": 112, "pixel_mm": 2.0, "slice_mm": 4.0}
SMALL_DSC: dict[str, Any] = {"matrix": 64, "slices": 10, "time_points": 40, "pixel_mm": 3.6, "slice_mm": 8.0}


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
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "FrameOfReferenceUID",
        "RepetitionTime",
        "EchoTime",
        "FlipAngle",
        "MagneticFieldStrength",
        "Manufacturer",
        "ManufacturerModelName",
        "SeriesDescription",
        "PatientSex",
        "PatientAge",
    ):
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


def test_ellipsoid_fraction_in_its_box_equals_the_full_grid() -> None:
    from analyzers.phantoms.lesions import Ellipsoid, random_rotation

    rng = np.random.default_rng(4)
    tilt = np.deg2rad(17.0)
    grid = Grid(shape=(20, 40, 36), spacing=(3.0, 1.5, 1.2), origin=(-20.0, -30.0, -25.0),
                column_direction=(0.0, float(np.cos(tilt)), float(-np.sin(tilt))))
    coords = grid.patient_coordinates()
    for _ in range(5):
        ell = Ellipsoid(centre=coords[10, 20, 18] + rng.normal(0, 8, 3), radii=rng.uniform(3, 12, 3),
                        rotation=random_rotation(rng))
        d = ell.normalised_distance(coords)
        full = np.clip(0.5 + (1.0 - d) * float(np.mean(ell.radii)) / 0.7, 0.0, 1.0).astype(np.float32)
        np.testing.assert_array_equal(ell.fraction(grid, coords, edge_mm=0.7), full)
        np.testing.assert_array_equal(ell.fraction(grid, edge_mm=0.7), full)
        assert full.any()


def test_template_distance_map_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy import ndimage

    from analyzers.phantoms import anatomy

    monkeypatch.setenv("PACSNODE_CACHE_DIR", str(tmp_path))
    brain = anatomy.load_template().t1 > 0.02
    folder = anatomy._template_dir()
    first = anatomy._outside_distance(folder, brain)
    (cached,) = tmp_path.glob("mni152_2009a_outside_mm_*.npy")
    np.testing.assert_array_equal(first, ndimage.distance_transform_edt(~brain).astype(np.float32))
    np.save(cached, first + 1.0)  # a second call reads the file, not the transform
    np.testing.assert_array_equal(anatomy._outside_distance(folder, brain), first + 1.0)
    cached.write_bytes(b"not an array")  # a broken cache is recomputed and rewritten
    np.testing.assert_array_equal(anatomy._outside_distance(folder, brain), first)
    np.testing.assert_array_equal(np.load(cached), first)


def test_grid_affine_matches_slice_positions() -> None:
    grid = Grid(
        shape=(3, 4, 5),
        spacing=(5.0, 2.0, 1.5),
        origin=(10.0, -20.0, 30.0),
        row_direction=(0.0, 1.0, 0.0),
        column_direction=(0.0, 0.0, -1.0),
    )
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
        m, k = case.truth_maps, case.truth["constants"]["k_tissue_per_mM_per_s"]
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
            pixels[:, artery].mean(axis=1),
            m["s0"][artery].mean() * np.exp(-te * DSC_CONSTANTS["k_per_mM_per_s"] * m["aif_mM"]),
            rtol=1e-4,
        )
        # The arterial signal drops well below baseline but stays above zero (AIF measurable).
        drop = pixels[:, artery].mean(axis=1).min() / pixels[:3, artery].mean()
        assert 0.02 < drop < 0.3

    @pytest.mark.parametrize("relaxivity", [1.0, 2.5])
    def test_truth_cbv_is_recovered_from_the_images(self, relaxivity: float) -> None:
        """CBV from the noise-free images with the recorded constants and BSW correction equals the truth.

        With tissue relaxivity ``relaxivity`` times the blood's, the textbook analysis reports
        CBV times that factor.
        """
        options = {**SMALL_DSC, "time_points": 120}
        case = simulate_dsc(2, 0, snr=None, tissue_to_blood_relaxivity=relaxivity, **options)
        m, c = case.truth_maps, DSC_CONSTANTS
        te = case.truth["constants"]["te_s"]
        pixels = case.series[0].pixels.astype(np.float64)
        baseline = pixels[:5].mean(axis=0)
        dr2s = -np.log(np.maximum(pixels, 1e-6) / np.maximum(baseline, 1e-6)) / te
        t = m["time_s"]
        artery = m["artery_fraction"] >= 1.0
        aif_area = np.trapezoid(dr2s[:, artery].mean(axis=1), t)
        factor = 100 * c["k_h"] / c["density_g_per_ml"] / aif_area
        tissue = (m["lesion_fraction"] == 0) & (m["artery_fraction"] == 0) & (m["cbv"] > 1.0)
        cbv = factor * np.trapezoid(dr2s[:, tissue], t, axis=0) / relaxivity
        assert np.median(np.abs(cbv / m["cbv"][tissue] - 1)) < 0.03
        # Lesions: Boxerman-Schmainda-Weisskoff correction with the recorded K2 and reference integral.
        for lesion in case.truth["lesions"]:
            core = (m["lesion_labels"] == lesion["id"]) & (m["lesion_fraction"] >= 1.0)
            corrected = dr2s[:, core] + lesion["k2_per_s"] * m["int_dr2s_reference"][:, None]
            ratio = factor * np.trapezoid(corrected, t, axis=0) / relaxivity / m["cbv"][core]
            assert np.median(np.abs(ratio - 1)) < 0.03
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


def _spgr_to_concentration(
    signal: np.ndarray, m0: np.ndarray, t10: np.ndarray, r1: float, tr: float, flip_deg: float
) -> np.ndarray:
    a = np.deg2rad(flip_deg)
    x = signal / (m0 * np.sin(a))
    e1 = (1 - x) / (1 - x * np.cos(a))
    return (-np.log(e1) / tr - 1.0 / t10) / r1


class TestDce:
    def test_deterministic_and_same_patient_in_both_studies(self) -> None:
        a = simulate_dce(3, 0, **SMALL_DCE)
        b = simulate_dce(3, 0, **SMALL_DCE)
        np.testing.assert_array_equal(a.series[-1].pixels, b.series[-1].pixels)
        pre, post = a.studies
        assert pre.date < post.date and pre.study_uid != post.study_uid
        folders = [s.folder for s in a.series]
        assert folders[:5] == ["pre_vfa_fa02", "pre_vfa_fa05", "pre_vfa_fa10", "pre_vfa_fa15", "pre_dce"]
        truth = a.truth["studies_truth"]
        np.testing.assert_allclose(
            truth["pre"]["lesions"][0]["centre_lps"], truth["post"]["lesions"][0]["centre_lps"], atol=1.5
        )

    def test_noise_free_tissue_curve_is_extended_tofts(self) -> None:
        case = simulate_dce(1, 0, snr=None, label="recurrence", **SMALL_DCE)
        m, c = case.truth_maps, case.truth["constants"]
        dyn = next(s for s in case.series if s.folder == "dce")
        core = m["lesion_fraction"] >= 1.0
        assert core.sum() >= 3
        conc = _spgr_to_concentration(
            dyn.pixels[:, core].T,
            m["m0"][core][:, None],
            m["t10_s"][core][:, None],
            c["r1_per_mM_per_s"],
            c["tr_s"],
            c["flip_deg"],
        )
        # Independent extended Tofts: discrete convolution of the recorded plasma curve on the fine grid.
        t_fine, cp = m["time_fine_s"] / 60.0, m["cp_fine_mM"]
        step = t_fine[1] - t_fine[0]
        frames = np.rint(m["time_s"] / 60.0 / step).astype(int)
        for n, (kt, ve, vp) in enumerate(zip(m["ktrans_per_min"][core], m["ve"][core], m["vp"][core], strict=True)):
            kernel = np.exp(-kt / ve * t_fine)
            tofts = vp * cp + kt * np.convolve(cp, kernel)[: t_fine.size] * step
            np.testing.assert_allclose(conc[n], tofts[frames], atol=2e-3, rtol=0.02)

    def test_vfa_signal_follows_spgr_with_true_t1(self) -> None:
        case = simulate_dce(2, 0, snr=None, **SMALL_DCE)
        m = case.truth_maps
        brain = case.truth_maps["tissue_labels"] > 0
        for series in case.series:
            if "vfa" not in series.folder or series.folder.startswith("pre_"):
                continue
            a = np.deg2rad(series.attributes["FlipAngle"])
            e1 = np.exp(-case.truth["constants"]["tr_s"] / m["t10_s"][brain])
            expected = m["m0"][brain] * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
            np.testing.assert_allclose(series.pixels[0][brain], expected, rtol=1e-4)

    def test_cohort_labels_follow_the_prior_rule(self) -> None:
        rows = []
        tiny = {**SMALL_DCE, "matrix": 48, "slices": 6, "pixel_mm": 4.8, "slice_mm": 10.0}
        for index in range(5):
            case = simulate_dce(7, index, **tiny, snr=None)
            truth = case.truth
            post = truth["studies_truth"]["post"]["lesions"][0]
            pre = truth["studies_truth"]["pre"]["lesions"][0]
            assert pre["hyperperfusion"] == truth["pretreatment_hyperperfusion"]
            if not truth["pretreatment_hyperperfusion"] and truth["label"] == "recurrence":
                # The case the prior-informed rule exists for: recurrence without hyperperfusion.
                assert max(post["rktrans"], post["rvp"]) < HYPERPERFUSION_RATIO * 1.2
            assert 0 <= post["ktrans_mean"] <= 0.35 and 0.001 <= post["vp_mean"] <= 0.1
            rows.append(truth["label"])
        assert set(rows) <= {"recurrence", "radiation_necrosis"}

    def test_cohort_written_with_both_studies(self, tmp_path: Path) -> None:
        root = generate_dce(tmp_path, seed=2, cases=1, progress=False, vendor="philips", **SMALL_DCE)
        rows = list(csv.DictReader((root / "labels.csv").open()))
        assert [r["role"] for r in rows] == ["pre", "post"]
        assert rows[0]["PatientID"] == rows[1]["PatientID"]
        case = root / "case-0001"
        _check_geometry(case / "dce")
        vfa = pydicom.dcmread(next((case / "vfa_fa02").glob("IM*.dcm")))
        dyn = sorted((case / "dce").glob("IM*.dcm"))
        first, later = pydicom.dcmread(dyn[0]), pydicom.dcmread(dyn[SMALL_DCE["slices"]])
        assert float(vfa.FlipAngle) == 2.0 and "ContrastBolusAgent" not in vfa
        assert float(first.RepetitionTime) == 5.0 and first.MRAcquisitionType == "3D"
        assert vfa.FrameOfReferenceUID == first.FrameOfReferenceUID
        assert int(later.TemporalPositionIdentifier) == 2
        assert len(dyn) == SMALL_DCE["slices"] * SMALL_DCE["time_points"]
        assert _dciodvfy_errors(dyn[0]) == []


class TestT1c:
    def test_deterministic_and_features_match_label(self) -> None:
        a = simulate_t1c(4, 0, label="grade2_3", **SMALL_T1C)
        b = simulate_t1c(4, 0, label="grade2_3", **SMALL_T1C)
        np.testing.assert_array_equal(a.series[0].pixels, b.series[0].pixels)
        features = a.truth["features"]
        assert features["shape"] in {"regular", "irregular"} and features["margin"] in {"distinct", "indistinct"}
        assert features["sex"] == a.patient.sex
        mask = a.truth_maps["tumour_mask"] > 0
        assert mask.sum() > 10
        brain = a.truth_maps["tissue_labels"] > 0
        assert (ndimage.binary_dilation(mask, iterations=2) & brain).any(), "dural-based: touches the brain"
        assert not (a.truth_maps["edema"] & mask).any()

    def test_tumour_enhances_and_grades_differ_in_size(self) -> None:
        volumes: dict[str, list[float]] = {"grade1": [], "grade2_3": []}
        for index in range(3):
            for label in volumes:
                case = simulate_t1c(9, index, label=label, snr=None, **SMALL_T1C)
                m = case.truth_maps
                image = case.series[0].pixels[0] / m["bias_field"]
                tumour = (m["tumour_fraction"] > 0.95) & (m["necrosis"] == 0)
                white = (m["tissue_labels"] == 3) & ~m["edema"]
                assert image[tumour].mean() > 1.2 * image[white].mean()
                volumes[label].append(case.truth["lesions"][0]["volume_ml"])
        assert np.median(volumes["grade2_3"]) > np.median(volumes["grade1"])

    def test_written_series_carries_sex_and_contrast(self, tmp_path: Path) -> None:
        root = generate_t1c(tmp_path, seed=1, cases=1, progress=False, vendor="ge", **SMALL_T1C)
        ds = _check_geometry(root / "case-0001" / "t1c")[0]
        row = next(csv.DictReader((root / "labels.csv").open()))
        assert ds.PatientSex == row["PatientSex"] and row["label"] in {"grade1", "grade2_3"}
        assert "ContrastBolusAgent" in ds and ds.MRAcquisitionType == "3D"
        assert _dciodvfy_errors(sorted((root / "case-0001" / "t1c").glob("IM*.dcm"))[0]) == []


class TestSpine:
    def test_lesions_in_labelled_vertebrae_with_expected_contrast(self) -> None:
        for label in ("hemangioma", "metastasis"):
            case = simulate_spine(2, 0 if label == "hemangioma" else 1, label=label, snr=None, **SMALL_SPINE)
            m = case.truth_maps
            assert {s.folder for s in case.series} == {"t1", "t2", "stir"}
            images = {s.folder: s.pixels[0] for s in case.series}
            marrow = m["tissue_labels"] == 1
            for lesion in case.truth["lesions"]:
                region = m["lesion_labels"] == lesion["id"]
                assert region.any()
                level = np.bincount(m["vertebra_labels"][region]).argmax()
                assert case.truth["levels"][level - 1] == lesion["level"]
                ratio = {
                    k: images[k][region].mean() / images[k][marrow & ~(m["lesion_labels"] > 0)].mean() for k in images
                }
                if (label, lesion["subtype"]) == ("hemangioma", "typical"):
                    assert ratio["t1"] > 1.1 and ratio["t2"] > 1.1
                if (label, lesion["subtype"]) == ("metastasis", "typical"):
                    assert ratio["t1"] < 0.6 and ratio["stir"] > 2.0

    def test_written_series_share_frame_of_reference(self, tmp_path: Path) -> None:
        root = generate_spine(tmp_path, seed=3, cases=1, progress=False, vendor="siemens", **SMALL_SPINE)
        heads = {seq: _check_geometry(root / "case-0001" / seq)[0] for seq in ("t1", "t2", "stir")}
        assert len({h.FrameOfReferenceUID for h in heads.values()}) == 1
        assert len({h.SeriesInstanceUID for h in heads.values()}) == 3
        assert [float(v) for v in heads["t1"].ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
        assert heads["stir"].InversionTime > 0 and heads["t1"].BodyPartExamined == "SPINE"
        rows = list(csv.DictReader((root / "labels.csv").open()))
        assert all(r["level"] in {"T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"} for r in rows)
        assert _dciodvfy_errors(sorted((root / "case-0001" / "stir").glob("IM*.dcm"))[0]) == []


class TestBrainmets:
    def test_lesions_vessels_and_motion_are_consistent(self) -> None:
        case = simulate_brainmets(6, 0, metastases=5, spacing_mm=2.5, snr=None, veins=6)
        m = case.truth_maps
        space, mprage = case.series
        assert m["space_lesion_labels"].max() == 5 and len(case.truth["lesions"]) == 5
        brain = ndimage.binary_dilation(m["space_tissue_labels"] > 0, iterations=2)
        assert not (m["space_lesion_labels"].astype(bool) & ~brain).any()
        vessel_space = (m["space_vessels"] > 0.9) & (m["space_lesion_labels"] == 0)
        vessel_mprage = (m["mprage_vessels"] > 0.9) & (m["mprage_lesion_labels"] == 0)
        white = m["space_tissue_labels"] == 3
        assert space.pixels[0][vessel_space].mean() < 0.3 * space.pixels[0][white].mean(), "black blood"
        assert mprage.pixels[0][vessel_mprage].mean() > 1.3 * mprage.pixels[0][white].mean(), "bright vessels"
        motion = np.asarray(case.truth["mprage_from_space_lps"])
        grid = mprage.grid
        for lesion in case.truth["lesions"]:
            region = m["mprage_lesion_labels"] == lesion["id"]
            if region.sum() < 8:
                continue
            centroid = grid.patient_coordinates()[region].mean(0)
            moved = motion[:3, :3] @ np.asarray(lesion["centre_lps"]) + motion[:3, 3]
            assert np.linalg.norm(centroid - moved) < 2.5

    def test_no_metastases_case_and_written_series(self, tmp_path: Path) -> None:
        root = generate_brainmets(
            tmp_path,
            seed=1,
            cases=1,
            progress=False,
            metastases=0,
            spacing_mm=3.0,
            veins=2,
            vendor="siemens",
            mprage_tilt_deg=12.0,
        )
        row = next(csv.DictReader((root / "labels.csv").open()))
        assert row["label"] == "none" and row["n_lesions"] == "0"
        space = _check_geometry(root / "case-0001" / "space")[0]
        mprage = _check_geometry(root / "case-0001" / "mprage")[0]
        assert space.FrameOfReferenceUID == mprage.FrameOfReferenceUID
        assert abs(float(mprage.ImageOrientationPatient[5]) + np.sin(np.deg2rad(12.0))) < 1e-6
        maps = np.load(root / "case-0001" / "truth" / "maps.npz")
        assert maps["space_lesion_labels"].max() == 0


class TestCli:
    def _spine_options(self) -> list[str]:
        return [arg for key, value in SMALL_SPINE.items() for arg in ("--set", f"{key}={value}")]

    def test_writes_cohort_and_same_seed_gives_same_bytes(self, tmp_path: Path) -> None:
        # One process, then one per core (the default): parallel cohorts are the same bytes.
        for folder, workers in (("a", ["--workers", "1"]), ("b", [])):
            status = phantom_main(
                [
                    "phantom",
                    "spine",
                    "--out",
                    str(tmp_path / folder),
                    "--seed",
                    "8",
                    "--cases",
                    "2",
                    "--no-progress",
                    *workers,
                    *self._spine_options(),
                ]
            )
            assert status == 0
        rows = list(csv.DictReader((tmp_path / "a" / "spine" / "labels.csv").open()))
        assert {r["case"] for r in rows} == {"case-0001", "case-0002"}
        files_a = sorted((tmp_path / "a" / "spine").rglob("*.dcm"))
        files_b = sorted((tmp_path / "b" / "spine").rglob("*.dcm"))
        assert len(files_a) == len(files_b) == 2 * 3 * SMALL_SPINE["slices"]
        assert all(fa.read_bytes() == fb.read_bytes() for fa, fb in zip(files_a, files_b, strict=True))

    def test_preview_png_and_bad_option(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        png = tmp_path / "spine.png"
        assert phantom_main(["preview", "spine", "--png", str(png), *self._spine_options()]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert phantom_main(["dsc", "--out", str(tmp_path), "--set", "bogus=1"]) == 2
        assert "no option 'bogus'" in capsys.readouterr().err


def test_pacsnode_phantom_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``pacsnode phantom --help`` prints the phantom command's usage (argparse's REMAINDER alone
    would drop a leading ``--help``)."""
    from node.cli import main as pacsnode_main

    with pytest.raises(SystemExit) as done:
        pacsnode_main(["phantom", "--help"])
    assert done.value.code == 0
    assert "usage: pacsnode phantom" in capsys.readouterr().out
