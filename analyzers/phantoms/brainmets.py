"""Brain metastases phantom: 3D T1C SPACE (black-blood) and MPRAGE-like (bright vessels) of one patient.

Both series show the same metastases (0–15, diameters 2–30 mm, log-uniform so
small lesions dominate, preferring the grey/white junction; those over 10 mm
ring-enhance around a necrotic core with edema). Vessels (middle, anterior and
posterior cerebral arteries, dural sinuses, random cortical veins along the
brain surface) are dark on SPACE, as black-blood preparation makes them, and
bright tubes on the MPRAGE-like series, where their cross-sections mimic small
metastases: the false positives a detector must avoid. The MPRAGE is acquired
after a small head movement (≤ 2°, ≤ 2 mm) recorded as a rigid transform, so
label transfer by registration can be tested; it can also be acquired on an
oblique grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analyzers.phantoms.anatomy import (
    Anatomy,
    Grid,
    PatientPose,
    as_triple,
    axial_grid,
    random_pose,
    sample_anatomy,
)
from analyzers.phantoms.bolus import rician
from analyzers.phantoms.cohort import case_context, generate_cohort
from analyzers.phantoms.dicomio import random_patient, random_scanner, vendor_key
from analyzers.phantoms.lesions import Ellipsoid, random_rotation
from analyzers.phantoms.model import PhantomCase, PhantomError, SeriesData
from analyzers.phantoms.structural import T1C_STYLE, bias_field, smooth_texture, tissue_image
from analyzers.phantoms.vessels import HEAD_VESSELS, cortical_veins, vessel_fraction

__all__ = ["BRAINMETS_LABEL", "generate_brainmets", "simulate_brainmets"]

BRAINMETS_LABEL = "metastasis"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_FOV_MM = (144.0, 192.0, 160.0)  # superior-inferior, anterior-posterior, left-right
_STYLE: dict[str, dict[str, Any]] = {
    "siemens": {
        "SeriesDescription": "t1_space_tra_iso_KM_DB",
        "SequenceName": "*spc3d1_164ns",
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SP"],
        "RepetitionTime": 700.0,
        "EchoTime": 12.0,
        "FlipAngle": 120.0,
    },
    "ge": {
        "SeriesDescription": "Ax 3D T1 CUBE BB +C",
        "SequenceName": "cube",
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SS"],
        "RepetitionTime": 600.0,
        "EchoTime": 14.0,
        "FlipAngle": 90.0,
    },
    "philips": {
        "SeriesDescription": "3D_T1_VISTA_BB +C",
        "SequenceName": "VISTA",
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SP"],
        "RepetitionTime": 500.0,
        "EchoTime": 20.0,
        "FlipAngle": 90.0,
    },
}
_SPACE_LEVELS = {"wm": 1.0, "gm": 0.78, "csf": 0.12, "skull": 0.06, "scalp": 0.55}
_MPRAGE_LEVELS = {"wm": 1.0, "gm": 0.62, "csf": 0.18, "skull": 0.08, "scalp": 0.9}
_SCALE = 900.0


def _moved_pose(pose: PatientPose, rotation: np.ndarray, shift: np.ndarray) -> PatientPose:
    """``pose`` followed by a rigid head motion about the brain centre (in LPS)."""
    centre = pose.brain_centre
    return PatientPose(
        rotation=_RAS_TO_LPS @ rotation @ _RAS_TO_LPS @ pose.rotation,
        scale=pose.scale,
        translation=rotation @ (pose.translation - centre) + centre + shift,
    )


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _render(
    anatomy: Anatomy,
    levels: dict[str, float],
    lesions: list[dict[str, Any]],
    pose: PatientPose,
    vessels: np.ndarray,
    vessel_level: float,
    rng: np.random.Generator,
    snr: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid = anatomy.grid
    lesion_frac = np.zeros(grid.shape, dtype=np.float32)
    lesion_level = np.zeros(grid.shape, dtype=np.float32)
    instances = np.zeros(grid.shape, dtype=np.uint8)
    edema = np.zeros(grid.shape, dtype=bool)
    texture = smooth_texture(grid.shape, rng, tuple(1.0 / np.asarray(grid.spacing)))
    for lesion in lesions:
        centre = pose.mni_to_patient(lesion["centre_mni"])
        rot = _RAS_TO_LPS @ pose.rotation @ _RAS_TO_LPS @ lesion["rotation"]
        ell = Ellipsoid(centre=centre, radii=lesion["radii"] * pose.scale, rotation=rot)
        lo = np.floor(grid.to_index(centre) - (ell.radii.max() + 14) / np.asarray(grid.spacing)).astype(int)
        hi = np.ceil(grid.to_index(centre) + (ell.radii.max() + 14) / np.asarray(grid.spacing)).astype(int) + 1
        lo, hi = np.clip(lo, 0, grid.shape), np.clip(hi, 0, grid.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        d = ell.normalised_distance(grid.patient_coordinates(box))
        f = np.clip(0.5 + (1.0 - d) * float(np.mean(ell.radii)) / min(grid.spacing), 0, 1).astype(np.float32)
        level = lesion["enhancement"] * (1 + 0.06 * texture[box])
        if lesion["necrotic"]:
            level = np.where(d < lesion["core"], 0.35, level)
            ring = (d > 1.0) & (d < 1.0 + lesion["edema_mm"] / float(np.mean(ell.radii)))
            edema[box] |= ring & (anatomy.wm[box] + anatomy.gm[box] > 0.4)
        new = f > lesion_frac[box]
        lesion_level[box] = np.where(new, level, lesion_level[box])
        lesion_frac[box] = np.maximum(lesion_frac[box], f)
        instances[box][f >= 0.5] = lesion["id"]
    keep = 1.0 - np.maximum(lesion_frac, vessels)
    image = tissue_image(
        anatomy, {k: v for k, v in levels.items() if k != "wm"}, {"gm": anatomy.gm * keep, "csf": anatomy.csf * keep}
    )
    image += anatomy.wm * keep * np.where(edema, 0.82, 1.0)
    image += lesion_frac * lesion_level * (1.0 - vessels) + vessels * vessel_level
    signal = _SCALE * image * bias_field(grid, rng, amplitude=0.1)
    sigma = 0.0 if snr is None else _SCALE / snr
    pixels = rician(signal, sigma, rng) if sigma > 0 else signal.astype(np.float32)
    return pixels[None], instances, edema


def simulate_brainmets(
    seed: int = 0,
    case_index: int = 0,
    *,
    metastases: int | None = None,
    spacing_mm: float = 1.0,
    snr: float | None = 30.0,
    mprage_tilt_deg: float = 0.0,
    veins: int = 14,
    vendor: str | None = None,
) -> PhantomCase:
    """Simulate one brain-metastasis study with a SPACE and an MPRAGE-like series.

    Parameters
    ----------
    metastases:
        Number of metastases (0–15); random when None (10 % none).
    spacing_mm:
        Isotropic voxel size; the field of view stays 144 × 192 × 160 mm, so 2 mm
        gives an eight times smaller volume for fast training.
    mprage_tilt_deg:
        Tilt of the MPRAGE grid about the left-right axis (an oblique acquisition).
    veins:
        Number of random cortical veins (besides the fixed arteries and sinuses).

    Returns
    -------
    PhantomCase
        Series ``space`` and ``mprage``; truth maps ``space_lesion_labels`` and
        ``mprage_lesion_labels`` (instance ids, 0 background), ``*_vessels``
        (vessel fraction), ``*_edema``; the rigid transform MPRAGE ← SPACE in the truth.
    """
    if metastases is not None and not 0 <= metastases <= 15:
        raise PhantomError("metastases must be between 0 and 15")
    if not 0.5 <= spacing_mm <= 3.0:
        raise PhantomError("spacing_mm must be between 0.5 and 3 mm")
    if snr is not None and snr <= 0:
        raise PhantomError("snr must be positive (or None for noise-free)")
    ctx = case_context("brainmets", seed, case_index)
    rng = ctx.rng
    scanner = random_scanner(rng, vendor=vendor)
    study = ctx.study("brainmets", ctx.random_date(), "MRI BRAIN METS PROTOCOL")
    patient = random_patient(rng, ctx.patient_id, study.date, age_range=(35, 85))
    if metastases is None:
        metastases = 0 if rng.random() < 0.1 else int(min(15, 1 + rng.geometric(0.3) - 1))
    pose = random_pose(rng)
    nz, ny, nx = (max(8, round(f / spacing_mm)) for f in _FOV_MM)
    shape = (nz, ny, nx)
    space_grid = axial_grid(shape, (spacing_mm,) * 3, pose.brain_centre)
    anatomy = sample_anatomy(space_grid, pose)
    coords = space_grid.patient_coordinates()

    # Metastases, placed in SPACE patient space and stored in MNI space so both series agree.
    candidates = np.argwhere((anatomy.gm > 0.25) & (anatomy.wm > 0.25) & (anatomy.outside_mm <= 0))
    lesions: list[dict[str, Any]] = []
    for n in range(metastases):
        diameter = float(np.exp(rng.uniform(np.log(2.0), np.log(30.0))))
        for _ in range(100):
            centre = coords[tuple(candidates[int(rng.integers(len(candidates)))])]
            if all(
                np.linalg.norm(centre - les["centre_lps"]) > (diameter + les["diameter_mm"]) / 2 + 3 for les in lesions
            ):
                break
        else:
            raise PhantomError("could not place non-overlapping metastases; ask for fewer")
        radii = diameter / 2 * rng.uniform(0.85, 1.15, size=3) / pose.scale
        lesions.append(
            {
                "id": n + 1,
                "label": BRAINMETS_LABEL,
                "diameter_mm": round(diameter, 2),
                "centre_lps": centre,
                "centre_mni": pose.patient_to_mni(centre),
                "radii": radii,
                "rotation": random_rotation(rng),
                "enhancement": float(rng.uniform(1.35, 1.65)),
                "necrotic": diameter > 10 and rng.random() < 0.8,
                "core": float(rng.uniform(0.4, 0.7)),
                "edema_mm": float(rng.uniform(3, 15)),
            }
        )
    vessels = [(line, 1.4) for line in HEAD_VESSELS[:2]] + [(line, 2.5) for line in HEAD_VESSELS[3:6]]
    vessels += [(line, 1.0) for line in (HEAD_VESSELS[2], *HEAD_VESSELS[6:])]
    vessels += [(v, float(rng.uniform(0.6, 1.4))) for v in cortical_veins(rng, veins)]

    motion_rotation = _rotation(rng.uniform(-2.0, 2.0, size=3))
    motion_shift = rng.uniform(-2.0, 2.0, size=3)
    mprage_pose = _moved_pose(pose, motion_rotation, motion_shift)
    tilt = np.deg2rad(mprage_tilt_deg)
    col_dir = (0.0, float(np.cos(tilt)), float(-np.sin(tilt)))
    base = axial_grid(shape, (spacing_mm,) * 3, pose.brain_centre)
    centre = base.affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + base.affine[:3, 3]
    mprage_grid = Grid(shape=shape, spacing=(spacing_mm,) * 3, origin=(0.0, 0.0, 0.0), column_direction=col_dir)
    offset = centre - (mprage_grid.affine[:3, :3] @ ((np.asarray(shape) - 1) / 2))
    mprage_grid = Grid(shape=shape, spacing=(spacing_mm,) * 3, origin=as_triple(offset), column_direction=col_dir)

    vendor = vendor_key(scanner)
    series: list[SeriesData] = []
    truth_maps: dict[str, np.ndarray] = {}
    for number, (name, grid, this_pose, levels, vessel_level) in enumerate(
        (
            ("space", space_grid, pose, _SPACE_LEVELS, 0.08),
            ("mprage", mprage_grid, mprage_pose, _MPRAGE_LEVELS, 1.55),
        )
    ):
        this_anatomy = anatomy if name == "space" else sample_anatomy(grid, this_pose)
        vessel_frac = vessel_fraction(grid, this_pose, vessels)
        vessel_frac[this_anatomy.outside_mm > 12] = 0.0
        pixels, instances, edema = _render(
            this_anatomy, levels, lesions, this_pose, vessel_frac, vessel_level, rng, snr
        )
        style = _STYLE[vendor] if name == "space" else T1C_STYLE[vendor]
        attributes = {
            **style,
            "ProtocolName": style["SeriesDescription"],
            "MRAcquisitionType": "3D",
            "NumberOfAverages": 1,
            "PixelBandwidth": 450.0,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            "ContrastBolusAgent": "Gadobutrol (Gadovist 1.0 mmol/ml)",
            "ContrastBolusRoute": "IV",
        }
        series.append(
            SeriesData(
                folder=name,
                study=study,
                series_uid=ctx.uid("series", name),
                series_number=20 + number,
                grid=grid,
                pixels=pixels,
                times_s=np.zeros(1),
                start_time_s=study.time_s + 1200.0 + 420.0 * number,
                attributes=attributes,
            )
        )
        truth_maps.update(
            {
                f"{name}_lesion_labels": instances,
                f"{name}_vessels": vessel_frac,
                f"{name}_edema": edema,
                f"{name}_affine_lps": grid.affine,
                f"{name}_tissue_labels": this_anatomy.tissue_labels(),
            }
        )
    motion = np.eye(4)
    motion[:3, :3] = motion_rotation
    motion[:3, 3] = motion_rotation @ (-pose.brain_centre) + pose.brain_centre + motion_shift
    voxel_ml = spacing_mm**3 / 1000.0
    lesion_truth = []
    for les in lesions:
        region = truth_maps["space_lesion_labels"] == les["id"]
        lesion_truth.append(
            {
                "id": les["id"],
                "label": BRAINMETS_LABEL,
                "diameter_mm": les["diameter_mm"],
                "centre_lps": np.asarray(les["centre_lps"]).round(2),
                "centre_lps_mprage": (motion[:3, :3] @ les["centre_lps"] + motion[:3, 3]).round(2),
                "volume_ml": round(float(region.sum() * voxel_ml), 4),
                "necrotic": bool(les["necrotic"]),
            }
        )
    truth = {
        "label": BRAINMETS_LABEL if lesions else "none",
        "lesions": lesion_truth,
        "snr": snr,
        "mprage_from_space_lps": motion,
        "mprage_tilt_deg": mprage_tilt_deg,
        "note": "lesion ids are instance labels in *_lesion_labels; vessels are not lesions",
    }
    rows = [
        {
            "StudyInstanceUID": study.study_uid,
            "PatientID": patient.patient_id,
            "label": truth["label"],
            "case": f"case-{case_index + 1:04d}",
            "n_lesions": len(lesions),
            "space_series": series[0].series_uid,
            "mprage_series": series[1].series_uid,
        }
    ]
    return PhantomCase(
        phantom="brainmets",
        case_index=case_index,
        seed=seed,
        patient=patient,
        scanner=scanner,
        studies=[study],
        series=series,
        truth_maps=truth_maps,
        truth=truth,
        label_rows=rows,
    )


def generate_brainmets(
    out: Path, seed: int = 0, cases: int = 1, progress: bool | None = None, workers: int | None = 1, **options: Any
) -> Path:
    """Write a brain-metastasis cohort to ``out/brainmets/case-XXXX/{space,mprage}``."""
    return generate_cohort("brainmets", simulate_brainmets, Path(out), seed, cases, options, progress, workers)
