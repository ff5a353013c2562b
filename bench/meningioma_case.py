"""Seconds per case of the whole meningioma pipeline, and a synthetic T1C case maker.

Run ``python -m bench.meningioma_case`` (optionally ``--threads 2 --repeat 2 --analyzer``,
``--device cuda`` where a CUDA GPU is present): takes the ``t1c`` phantom at its
default grid (192 x 192 x 96 voxels of 1 mm; ``--source synthetic``: a T1C-like case
with 5 mm slices, 256 x 256 in-plane like the study's acquisition), then times the
analyzer's pipeline steps: N4, automatic segmentation, 1 mm resampling, radiomics on
original + wavelet + LoG images (all feature classes), the clinical image features
and the ResNet50 deep features (full-width ResNet50, the worst case), and apart from
the per-case total the ROI perturbations only training needs; with ``--analyzer``
also the whole analyzer on DICOM. Prints one JSON line with wall and CPU seconds.

:func:`synthetic_case` is also what the meningioma tests use when the project's
``t1c`` phantom is not installed. It is a test object, not a model of anatomy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["SyntheticCase", "main", "synthetic_case"]


@dataclass(frozen=True)
class SyntheticCase:
    """A synthetic post-contrast T1 case with its known truth."""

    image: sitk.Image
    mask: sitk.Image
    high_grade: bool
    sex: str
    edema: bool
    irregular: bool


def synthetic_case(
    seed: int,
    *,
    high_grade: bool | None = None,
    shape: tuple[int, int, int] = (28, 256, 256),
    spacing_mm: tuple[float, float, float] = (5.5, 0.98, 0.98),
    head_scale: float = 1.0,
) -> SyntheticCase:
    """A head with a dural-based enhancing mass on a T1C-like grid.

    Parameters
    ----------
    seed:
        Random seed (the case is a pure function of its arguments).
    high_grade:
        Grade of the mass; drawn at random when None. High-grade masses are
        lobulated, heterogeneous, with a blurred margin and more often edema.
    shape, spacing_mm:
        Grid ``(z, y, x)`` and voxel size ``(dz, dy, dx)``.
    head_scale:
        Size of head and mass relative to an adult head (small values make the
        small, fast cases the tests use).
    """
    rng = np.random.default_rng(seed)
    if high_grade is None:
        high_grade = bool(rng.random() < 0.5)
    nz, ny, nx = shape
    dz, dy, dx = spacing_mm
    z, y, x = np.meshgrid(
        (np.arange(nz) - nz / 2 + 0.5) * dz,
        (np.arange(ny) - ny / 2 + 0.5) * dy,
        (np.arange(nx) - nx / 2 + 0.5) * dx,
        indexing="ij",
    )
    radii = np.array([62.0, 78.0, 58.0]) * head_scale  # brain x, y, z semi-axes (mm)
    skin = 8.0 * head_scale
    head_r = np.sqrt((x / (radii[0] + skin)) ** 2 + (y / (radii[1] + skin)) ** 2 + (z / (radii[2] + skin)) ** 2)
    brain_r = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    image = np.zeros(shape, dtype=np.float64)
    image[head_r <= 1.0] = 350.0  # scalp
    image[(head_r <= 0.96) & (brain_r > 1.0)] = 60.0  # skull (dark)
    brain = brain_r <= 1.0
    texture = rng.normal(0.0, 1.0, shape)
    image[brain] = 600.0 + 40.0 * texture[brain]
    image[brain & (brain_r > 0.97)] = 250.0  # CSF rim

    # Mass centred just inside the inner table, on a random upper direction.
    theta = rng.uniform(0.0, 2 * np.pi)
    elevation = rng.uniform(-0.2, 0.5)
    direction = np.array([np.cos(theta) * np.cos(elevation), np.sin(theta) * np.cos(elevation), np.sin(elevation)])
    surface = direction * radii / np.linalg.norm(direction)
    radius = rng.uniform(12.0, 22.0) * (1.15 if high_grade else 1.0) * head_scale
    centre = surface * (1.0 - 0.5 * radius / np.linalg.norm(surface))
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    irregular = (high_grade and rng.random() < 0.8) or (not high_grade and rng.random() < 0.15)
    if irregular:
        # Lobulation: radius modulated by low-order angular harmonics.
        azimuth = np.arctan2(y - centre[1], x - centre[0])
        polar = np.arccos(np.clip((z - centre[2]) / np.maximum(distance, 1e-6), -1, 1))
        lobes = 0.22 * np.sin(3 * azimuth + rng.uniform(0, 6)) * np.sin(2 * polar + rng.uniform(0, 6))
        effective = radius * (1.0 + lobes)
    else:
        effective = np.full(shape, radius)
    tumour = (distance <= effective) & (brain_r <= 1.02)
    edema = bool(rng.random() < (0.7 if high_grade else 0.3))
    if edema:
        halo = (distance <= effective + 12.0 * head_scale) & brain & ~tumour
        image[halo] = 480.0 + 40.0 * texture[halo]
    heterogeneity = 120.0 if high_grade else 40.0
    image[tumour] = 1100.0 + heterogeneity * texture[tumour]
    if high_grade:
        necrosis = tumour & (distance <= 0.35 * radius)
        image[necrosis] = 500.0 + 40.0 * texture[necrosis]
    # Multiplicative smooth bias field (what N4 should remove) and noise.
    field = 1.0 + 0.15 * x / 90.0 - 0.1 * (y / 100.0) ** 2 + 0.08 * z / 60.0
    image = image * field + rng.normal(0.0, 15.0, shape)
    image = np.clip(image, 0.0, None)
    sitk_image = sitk.GetImageFromArray(image.astype(np.float32))
    sitk_image.SetSpacing((dx, dy, dz))
    sitk_mask = sitk.GetImageFromArray(tumour.astype(np.uint8))
    sitk_mask.CopyInformation(sitk_image)
    if high_grade:
        # Blurred (indistinct) margin: smooth the image after the ROI is fixed.
        sitk_image = sitk.SmoothingRecursiveGaussian(sitk_image, 1.5)
    sex = "M" if rng.random() < (0.45 if high_grade else 0.2) else "F"
    return SyntheticCase(sitk_image, sitk_mask, bool(high_grade), sex, edema, bool(irregular))


def _phantom_case(seed: int) -> tuple[sitk.Image, dict[str, Any]]:
    """The project's ``t1c`` phantom at its default (1 mm, 192 x 192 x 96) grid."""
    from analyzers.phantoms.t1c import simulate_t1c

    case = simulate_t1c(seed, 0)
    series = case.series[0]
    grid = series.grid
    image = sitk.GetImageFromArray(series.pixels[0].astype(np.float32))
    dz, dy, dx = grid.spacing
    image.SetSpacing((dx, dy, dz))
    image.SetOrigin(tuple(float(v) for v in grid.origin))
    axes = np.column_stack([grid.row_direction, grid.column_direction, grid.normal])
    image.SetDirection(tuple(float(v) for v in axes.ravel()))
    return image, {"PatientSex": case.patient.sex}


def _timed(timings: dict[str, float], key: str, step: Callable[[], Any]) -> Any:
    # Wall and CPU seconds: on a shared machine the wall time includes waiting for
    # other processes; CPU seconds (all threads) do not.
    start, cpu = time.perf_counter(), time.process_time()
    result = step()
    timings[key] = round(time.perf_counter() - start, 3)
    timings[f"{key}_cpu"] = round(time.process_time() - cpu, 3)
    return result


def run_case(image: sitk.Image, header: dict[str, Any], threads: int, device: str = "cpu") -> dict[str, Any]:
    """Time every pipeline step of one case; returns seconds per step and the total.

    ``device`` runs the ResNet50 on ``"cuda"``; N4, resampling, pyradiomics and the
    clinical signs run on the CPU whatever the device (SimpleITK and pyradiomics have
    no GPU path).
    """
    import torch

    from analyzers.meningioma.clinical import clinical_features
    from analyzers.meningioma.deep_features import DtlNetwork, deep_features, slice_tensor
    from analyzers.meningioma.preprocessing import n4_bias_correction, resample_to_spacing
    from analyzers.meningioma.radiomics_features import RadiomicsSettings, extract_radiomics
    from analyzers.meningioma.segmentation import segment_enhancing_mass
    from analyzers.meningioma.selection import perturbed_rois

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    torch.set_num_threads(threads)
    settings = RadiomicsSettings.from_file()
    spacing = settings.target_spacing_mm or (1.0, 1.0, 1.0)
    t: dict[str, float] = {}
    corrected, _ = _timed(t, "n4", lambda: n4_bias_correction(image))
    mask = _timed(t, "auto_segmentation", lambda: segment_enhancing_mass(corrected))
    resampled = _timed(t, "resample_image_bspline", lambda: resample_to_spacing(corrected, spacing))
    resampled_mask = _timed(
        t,
        "resample_mask_nearest",
        lambda: resample_to_spacing(mask, spacing, sitk.sitkNearestNeighbor, reference=resampled),
    )
    features = _timed(t, "radiomics_all_classes", lambda: extract_radiomics(resampled, resampled_mask, settings))
    _timed(
        t,
        "clinical_signs",
        lambda: clinical_features(resampled, resampled_mask, header, features["original_shape_Sphericity"]),
    )
    network = DtlNetwork().to(device)
    inputs = _timed(t, "max_roi_slice", lambda: slice_tensor(resampled, resampled_mask).to(device))
    _timed(t, "resnet50_features", lambda: deep_features(network, inputs))
    inference = sum(v for k, v in t.items() if not k.endswith("_cpu"))
    inference_cpu = sum(v for k, v in t.items() if k.endswith("_cpu"))

    def perturbed() -> None:
        for roi in perturbed_rois(resampled_mask):
            extract_radiomics(resampled, roi, settings)

    _timed(t, "training_only_perturbed_roi_radiomics", perturbed)
    return {
        "seconds_per_case": round(inference, 2),
        "cpu_seconds_per_case": round(inference_cpu, 2),
        "steps_s": t,
        "radiomics_features": len(features),
        "roi_voxels_1mm": int(np.count_nonzero(sitk.GetArrayViewFromImage(resampled_mask))),
        "grid_1mm": list(resampled.GetSize()),
    }


def run_analyzer(seed: int, threads: int, scratch: Path) -> dict[str, Any]:
    """Seconds of one ``MeningiomaAnalyzer.analyze`` call on a ``t1c`` phantom DICOM series.

    The whole analyzer as the node runs it: DICOM read, N4, automatic segmentation,
    radiomics (all classes), clinical signs, deep features of the reference model's
    network, nomogram, SEG and SR.
    """
    from analyzers.contract import AnalysisInput, SeriesInput
    from analyzers.meningioma.analyzer import MeningiomaAnalyzer, MeningiomaSettings
    from analyzers.phantoms.t1c import generate_t1c

    root = generate_t1c(scratch / f"seed{seed}", seed=seed, cases=1, progress=False)
    files = tuple(sorted((root / "case-0001" / "t1c").iterdir()))
    job = AnalysisInput(
        job_id=f"bench-{seed}",
        series=SeriesInput("bench", "bench", files, {"SeriesDescription": "t1c phantom"}),
        related={},
        priors=(),
        settings=MeningiomaSettings(threads=threads),
        scratch=scratch,
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = MeningiomaAnalyzer().analyze(job)
    return {
        "analyzer_seconds": round(time.perf_counter() - start, 2),
        "analyzer_cpu_seconds": round(time.process_time() - cpu, 2),
        "outputs": sorted(str(ds.Modality) for ds in result.datasets),
        "model": result.findings["model"],
        "slices": len(files),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: time the pipeline on ``--repeat`` cases and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--source", choices=("phantom", "synthetic"), default="phantom")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the ResNet50 runs (everything else runs on the CPU)")
    parser.add_argument("--analyzer", action="store_true",
                        help="also time the whole analyzer (DICOM in, SEG + SR out) on phantom DICOM series")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available on this machine")
    runs = []
    for seed in range(args.repeat):
        if args.source == "phantom":
            image, header = _phantom_case(seed)
        else:
            case = synthetic_case(seed)
            image, header = case.image, {"PatientSex": case.sex}
        runs.append(run_case(image, header, args.threads, args.device))
    analyzer_runs = []
    if args.analyzer:
        with tempfile.TemporaryDirectory(prefix="bench-meningioma-") as scratch:
            analyzer_runs = [run_analyzer(seed, args.threads, Path(scratch)) for seed in range(args.repeat)]

    report = {
        "source": args.source,
        "threads": args.threads,
        "device": args.device,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "mean_seconds_per_case": round(float(np.mean([r["seconds_per_case"] for r in runs])), 2),
        "mean_cpu_seconds_per_case": round(float(np.mean([r["cpu_seconds_per_case"] for r in runs])), 2),
        "runs": runs,
        "analyzer_runs": analyzer_runs,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
