"""Sagittal thoracolumbar spine phantom: T1, T2 and STIR of the same patient with vertebral lesions.

The column (T10–S1) is modelled geometrically: rounded-box vertebral bodies
with a cortical shell along a lordotic curve, intervertebral discs (nucleus and
annulus), spinal canal with cord down to the conus at L1, posterior elements,
paraspinal muscle, subcutaneous fat and an aortic flow void. Signal levels per
tissue and sequence follow the usual appearance at 1.5–3 T.

Lesions sit in vertebral bodies. ``hemangioma``: T1 and T2 hyperintense (fat and
vascular stroma), STIR moderately bright, with coarse vertical trabeculae
("corduroy"); 15 % are atypical lipid-poor hemangiomas, T1 iso- to hypointense.
``metastasis``: T1 hypointense (marrow replaced), STIR hyperintense, T2
intermediate to bright; 10 % are sclerotic, dark on every sequence. The three
series share the grid and the FrameOfReferenceUID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analyzers.phantoms.anatomy import Grid, as_triple
from analyzers.phantoms.bolus import rician
from analyzers.phantoms.cohort import case_context, generate_cohort
from analyzers.phantoms.dicomio import random_patient, random_scanner, vendor_key
from analyzers.phantoms.model import PhantomCase, PhantomError, SeriesData
from analyzers.phantoms.structural import bias_field, smooth_texture

__all__ = ["SPINE_LABELS", "SPINE_LEVELS", "generate_spine", "simulate_spine"]

SPINE_LABELS = ("hemangioma", "metastasis")
SPINE_LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
_HEIGHT_MM = (21.0, 22.0, 23.5, 25.0, 26.5, 27.5, 27.5, 27.0, 30.0)
_DISC_MM = (6.0, 6.5, 7.0, 8.5, 9.5, 10.0, 10.5, 10.0)
_TISSUES = (
    "air",
    "marrow",
    "cortex",
    "nucleus",
    "annulus",
    "csf",
    "cord",
    "posterior",
    "muscle",
    "fat",
    "viscera",
    "vessel",
)
# Relative signal per tissue and sequence.
_LEVELS = {
    "t1": {
        "air": 0.0,
        "marrow": 0.72,
        "cortex": 0.04,
        "nucleus": 0.38,
        "annulus": 0.28,
        "csf": 0.12,
        "cord": 0.5,
        "posterior": 0.62,
        "muscle": 0.36,
        "fat": 1.0,
        "viscera": 0.42,
        "vessel": 0.05,
    },
    "t2": {
        "air": 0.0,
        "marrow": 0.5,
        "cortex": 0.04,
        "nucleus": 0.85,
        "annulus": 0.22,
        "csf": 1.0,
        "cord": 0.42,
        "posterior": 0.42,
        "muscle": 0.24,
        "fat": 0.82,
        "viscera": 0.5,
        "vessel": 0.05,
    },
    # Post-contrast T1 (gadolinium): marrow and muscle enhance a little, the aorta stays a flow void.
    "t1c": {
        "air": 0.0,
        "marrow": 0.78,
        "cortex": 0.04,
        "nucleus": 0.4,
        "annulus": 0.32,
        "csf": 0.12,
        "cord": 0.52,
        "posterior": 0.66,
        "muscle": 0.42,
        "fat": 1.0,
        "viscera": 0.6,
        "vessel": 0.06,
    },
    "stir": {
        "air": 0.0,
        "marrow": 0.14,
        "cortex": 0.03,
        "nucleus": 0.65,
        "annulus": 0.2,
        "csf": 1.0,
        "cord": 0.45,
        "posterior": 0.12,
        "muscle": 0.2,
        "fat": 0.05,
        "viscera": 0.45,
        "vessel": 0.04,
    },
}
_LESION_LEVELS = {
    # T1C: hemangiomas stay bright (fat) or enhance (atypical); metastases enhance towards the
    # marrow's signal, which is why post-contrast T1 separates them less well (as the study found).
    ("hemangioma", "typical"): {"t1": 0.95, "t1c": 0.98, "t2": 0.95, "stir": 0.6},
    ("hemangioma", "atypical"): {"t1": 0.45, "t1c": 0.85, "t2": 0.9, "stir": 0.8},
    ("metastasis", "typical"): {"t1": 0.24, "t1c": 0.7, "t2": 0.62, "stir": 0.82},
    ("metastasis", "sclerotic"): {"t1": 0.12, "t1c": 0.16, "t2": 0.18, "stir": 0.2},
}
_STYLE = {
    "siemens": {
        "t1": ("t1_tse_sag", "*tse2d1_3", 550.0, 9.8, None),
        "t2": ("t2_tse_sag", "*tse2d1_17", 3500.0, 98.0, None),
        "stir": ("t2_tirm_sag", "*tir2d1_13", 4000.0, 58.0, 160.0),
        "t1c": ("t1_tse_sag_KM", "*tse2d1_3", 550.0, 9.8, None),
    },
    "ge": {
        "t1": ("Sag T1 FSE", "fse", 600.0, 10.0, None),
        "t2": ("Sag T2 FSE", "fse", 3200.0, 102.0, None),
        "stir": ("Sag STIR", "fse-ir", 4200.0, 42.0, 150.0),
        "t1c": ("Sag T1 FSE +C", "fse", 600.0, 10.0, None),
    },
    "philips": {
        "t1": ("T1W_TSE_SAG", "TSE", 520.0, 8.0, None),
        "t2": ("T2W_TSE_SAG", "TSE", 3000.0, 110.0, None),
        "stir": ("STIR_SAG", "IRTSE", 4500.0, 60.0, 165.0),
        "t1c": ("T1W_TSE_SAG_GD", "TSE", 520.0, 8.0, None),
    },
}
_SCALE = 1200.0


def _superellipse(u: np.ndarray, v: np.ndarray, w: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    uu, vv = (u / a) ** 2, (v / b) ** 2
    return (uu * uu + vv * vv + (w / c) ** 2) <= 1.0


def sagittal_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre: np.ndarray) -> Grid:
    """Sagittal grid: columns anterior→posterior, rows head→feet, slices right→left of the patient."""
    row_dir, col_dir = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row_dir, col_dir)
    half = (np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    origin = centre - half[2] * row_dir - half[1] * col_dir - half[0] * normal
    return Grid(
        shape=shape,
        spacing=spacing,
        origin=as_triple(origin),
        row_direction=as_triple(row_dir),
        column_direction=as_triple(col_dir),
    )


def simulate_spine(
    seed: int = 0,
    case_index: int = 0,
    *,
    label: str | None = None,
    lesions: int | None = None,
    slices: int = 13,
    rows: int = 320,
    columns: int = 224,
    pixel_mm: float = 1.0,
    slice_mm: float = 3.5,
    snr: float | None = 25.0,
    vendor: str | None = None,
    post_contrast: bool = False,
) -> PhantomCase:
    """Simulate one sagittal T1/T2/STIR spine study with vertebral lesions.

    Parameters
    ----------
    label:
        ``"hemangioma"`` or ``"metastasis"`` for every lesion of the case; random when None.
    lesions:
        Number of lesions (each in a different vertebral body); 1–2 for hemangioma, 1–3 for metastasis.
    snr:
        Vertebral marrow signal on T1 over the noise standard deviation; None is noise-free.
    post_contrast:
        Also a post-contrast T1 series ``t1c`` (simulated after the three others, so the T1,
        T2 and STIR images of a case do not change).

    Returns
    -------
    PhantomCase
        Series ``t1``, ``t2``, ``stir`` on one grid; truth maps ``lesion_labels``
        (lesion id), ``vertebra_labels`` (index into :data:`SPINE_LEVELS` + 1) and
        ``tissue_labels``; lesions with their vertebral level in the truth JSON.
    """
    if label is not None and label not in SPINE_LABELS:
        raise PhantomError(f"label must be one of {SPINE_LABELS}, got {label!r}")
    if snr is not None and snr <= 0:
        raise PhantomError("snr must be positive (or None for noise-free)")
    ctx = case_context("spine", seed, case_index)
    rng = ctx.rng
    label = label or SPINE_LABELS[int(rng.integers(2))]
    scanner = random_scanner(rng, vendor=vendor)
    study = ctx.study("spine", ctx.random_date(), "MRI THORACOLUMBAR SPINE")
    patient = random_patient(rng, ctx.patient_id, study.date, age_range=(30, 85))
    if lesions is None:
        lesions = int(rng.integers(1, 3)) if label == "hemangioma" else int(rng.integers(1, 4))
    if not 1 <= lesions <= 6:
        raise PhantomError("lesions must be between 1 and 6")

    size = float(rng.uniform(0.92, 1.08))
    grid = sagittal_grid(
        (slices, rows, columns),
        (slice_mm, pixel_mm, pixel_mm),
        np.array([rng.uniform(-3, 3), rng.uniform(10, 25), rng.uniform(-10, 10)]),
    )
    xyz = grid.patient_coordinates()
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    tissue = np.zeros(grid.shape, dtype=np.uint8)  # index into _TISSUES

    # Curved column: body centres along z, AP offset following the thoracolumbar curve.
    heights = np.asarray(_HEIGHT_MM) * size
    discs = np.asarray(_DISC_MM) * size
    top = 0.5 * (heights.sum() + discs.sum()) + rng.uniform(-10, 10)
    lordosis = rng.uniform(8.0, 18.0)
    body_tops = top - np.concatenate([[0.0], np.cumsum(heights[:-1] + discs)])
    centres_z = body_tops - heights / 2
    span = centres_z[0] - centres_z[-1]

    def ap_curve(zz: np.ndarray) -> np.ndarray:
        s = np.clip((centres_z[0] - zz) / span, -0.2, 1.2)
        # Thoracic kyphosis above, lumbar lordosis below (anterior is −y in LPS).
        return -20.0 + 0.4 * lordosis * np.cos(np.pi * s) - lordosis * np.sin(np.pi * s) ** 2

    def ap_slope(zz: float) -> float:
        return float(ap_curve(np.array(zz + 0.5)) - ap_curve(np.array(zz - 0.5)))

    body_ap = ap_curve(z)
    depth = 34.0 * size
    # Soft tissue envelope first, then inner structures overwrite.
    rel = y - body_ap
    envelope = (x / (150.0 * size)) ** 2 + ((rel + 20.0) / (130.0 * size)) ** 2
    inside_body = envelope <= 1.0
    tissue[inside_body] = _TISSUES.index("viscera")
    tissue[inside_body & (rel > depth / 2 + 25) & (np.abs(x) < 55)] = _TISSUES.index("muscle")
    skin = envelope > 0.82
    tissue[inside_body & (skin | ((rel > depth / 2 + 75) & (np.abs(x) < 90)))] = _TISSUES.index("fat")
    aorta = ((x - 12.0) ** 2 + (rel + depth / 2 + 14.0) ** 2) < (10.0 * size) ** 2
    tissue[aorta] = _TISSUES.index("vessel")
    # Posterior elements, canal, cord.
    tissue[(rel > depth / 2 + 18) & (rel < depth / 2 + 42) & (np.abs(x) < 22)] = _TISSUES.index("posterior")
    canal = (rel > depth / 2 + 2) & (rel < depth / 2 + 17) & (np.abs(x) < 10)
    tissue[canal] = _TISSUES.index("csf")
    conus = centres_z[SPINE_LEVELS.index("L1")]
    cord = canal & (np.abs(rel - depth / 2 - 9.5) < 4.0) & (np.abs(x) < 5.0) & (z > conus)
    tissue[cord] = _TISSUES.index("cord")
    vertebra = np.zeros(grid.shape, dtype=np.uint8)
    bodies = []
    row_z = z[0, :, 0]  # rows run head to feet: work on the rows near each body only

    def rows_near(centre_z: float, half: float) -> tuple[slice, slice, slice]:
        near = np.nonzero(np.abs(row_z - centre_z) < half)[0]
        stop = int(near[-1]) + 1 if near.size else 0
        return (slice(None), slice(int(near[0]) if near.size else 0, stop), slice(None))

    def local(box: tuple[slice, slice, slice], cy: float, cz: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
        du, dv = y[box] - cy, z[box] - cz
        return du * np.cos(theta) - dv * np.sin(theta), du * np.sin(theta) + dv * np.cos(theta)

    for i, (cz, h) in enumerate(zip(centres_z, heights, strict=True)):
        theta = float(np.arctan(ap_slope(cz)))
        cy = float(ap_curve(np.array(cz)))
        box = rows_near(cz, h + 20.0)
        u, v = local(box, cy, cz, theta)
        outer = _superellipse(u, v, x[box], depth / 2, h / 2, 24.0 * size)
        inner = _superellipse(u, v, x[box], depth / 2 - 1.6, h / 2 - 1.6, 24.0 * size - 1.6)
        tissue[box][outer] = _TISSUES.index("cortex")
        tissue[box][inner] = _TISSUES.index("marrow")
        vertebra[box][outer] = i + 1
        bodies.append({"level": SPINE_LEVELS[i], "centre": np.array([0.0, cy, cz]), "theta": theta, "height": h})
        if i < len(discs):
            dz = cz - h / 2 - discs[i] / 2
            dy = float(ap_curve(np.array(dz)))
            box = rows_near(dz, discs[i] + 20.0)
            u, v = local(box, dy, dz, theta)
            disc = _superellipse(u, v, x[box], depth / 2, discs[i] / 2, 24.0 * size)
            nucleus = _superellipse(u, v, x[box], depth / 4, discs[i] / 3, 12.0 * size)
            tissue[box][disc] = _TISSUES.index("annulus")
            tissue[box][nucleus] = _TISSUES.index("nucleus")

    # Lesions in distinct bodies (S1 excluded).
    chosen = rng.choice(len(SPINE_LEVELS) - 1, size=lesions, replace=False)
    lesion_id = np.zeros(grid.shape, dtype=np.uint8)
    lesion_info = []
    for n, b in enumerate(sorted(int(c) for c in chosen)):
        body = bodies[b]
        subtype = "typical"
        if label == "hemangioma" and rng.random() < 0.15:
            subtype = "atypical"
        if label == "metastasis" and rng.random() < 0.10:
            subtype = "sclerotic"
        radius = float(rng.uniform(4.0, min(12.0, body["height"] / 2 - 2)))
        centre = body["centre"] + np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(-4, 4)])
        centre[0] = float(np.clip(centre[0], -(slices // 2 - 1) * slice_mm, (slices // 2 - 1) * slice_mm))
        radii = radius * rng.uniform(0.8, 1.2, size=3)
        d = np.sqrt(np.sum(((xyz - centre) / radii) ** 2, axis=-1))
        mask = (d <= 1.0) & (vertebra == b + 1) & (tissue == _TISSUES.index("marrow"))
        if label == "metastasis" and rng.random() < 0.3:  # spread towards the posterior cortex
            mask |= (d <= 1.3) & (vertebra == b + 1)
        lesion_id[mask] = n + 1
        found = xyz[mask]
        lesion_info.append(
            {
                "id": n + 1,
                "label": label,
                "subtype": subtype,
                "level": body["level"],
                "centre_lps": (found.mean(0) if len(found) else centre).round(2),
                "radius_mm": round(radius, 2),
                "volume_ml": round(float(mask.sum() * np.prod(grid.spacing) / 1000.0), 3),
            }
        )

    # Images.
    texture = smooth_texture(grid.shape, rng, (0.6, 1.5, 1.5))
    stripes = 0.5 * (1 + np.cos(2 * np.pi * (y + rng.uniform(0, 3)) / rng.uniform(2.5, 3.5)))
    bias = bias_field(grid, rng, amplitude=0.15)
    vendor = vendor_key(scanner)
    series = []
    sigma = 0.0 if snr is None else _SCALE * _LEVELS["t1"]["marrow"] / snr
    for s_index, seq in enumerate(("t1", "t2", "stir", "t1c") if post_contrast else ("t1", "t2", "stir")):
        lut = np.array([_LEVELS[seq][name] for name in _TISSUES], dtype=np.float32)
        image = lut[tissue] * (1.0 + 0.04 * texture)
        for info in lesion_info:
            level = _LESION_LEVELS[(info["label"], info["subtype"])][seq]
            mask = lesion_id == info["id"]
            lesion_image = level * (1.0 + 0.08 * texture[mask])
            if info["label"] == "hemangioma":  # coarse vertical trabeculae: thin dark stripes
                lesion_image = lesion_image * (1.0 - 0.45 * (stripes[mask] > 0.8))
            image[mask] = lesion_image
        signal = _SCALE * image * bias
        pixels = (rician(signal, sigma, rng) if sigma > 0 else signal.astype(np.float32))[None]
        description, sequence_name, tr, te, ti = _STYLE[vendor][seq]
        attributes: dict[str, Any] = {
            "SeriesDescription": description,
            "ProtocolName": description,
            "SequenceName": sequence_name,
            "ScanningSequence": ["SE", "IR"] if ti else "SE",
            "SequenceVariant": ["SK", "SP"],
            "ScanOptions": "",
            "MRAcquisitionType": "2D",
            "RepetitionTime": tr,
            "EchoTime": te,
            "EchoTrainLength": 3 if seq == "t1" else 17,
            "FlipAngle": 150.0 if vendor == "siemens" else 90.0,
            "NumberOfAverages": 2,
            "PixelBandwidth": 250.0,
            "BodyPartExamined": "SPINE",
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        }
        if ti:
            attributes["InversionTime"] = ti
        if seq == "t1c":
            attributes["ContrastBolusAgent"] = "Gadoterate"
        series.append(
            SeriesData(
                folder=seq,
                study=study,
                series_uid=ctx.uid("series", seq),
                series_number=3 + s_index,
                grid=grid,
                pixels=pixels,
                times_s=np.zeros(1),
                start_time_s=study.time_s + 300.0 * (s_index + 1),
                attributes=attributes,
            )
        )
    truth = {
        "label": label,
        "lesions": lesion_info,
        "snr": snr,
        "vertebrae": [{"level": b["level"], "centre_lps": b["centre"].round(2)} for b in bodies],
        "levels": list(SPINE_LEVELS),
        "tissues": list(_TISSUES),
    }
    truth_maps = {
        "lesion_labels": lesion_id,
        "vertebra_labels": vertebra,
        "tissue_labels": tissue,
        "affine_lps": grid.affine,
    }
    label_rows = [
        {
            "StudyInstanceUID": study.study_uid,
            "PatientID": patient.patient_id,
            "label": info["label"],
            "case": f"case-{case_index + 1:04d}",
            "lesion_id": info["id"],
            "level": info["level"],
            "subtype": info["subtype"],
            "centre_x": info["centre_lps"][0],
            "centre_y": info["centre_lps"][1],
            "centre_z": info["centre_lps"][2],
        }
        for info in lesion_info
    ]
    return PhantomCase(
        phantom="spine",
        case_index=case_index,
        seed=seed,
        patient=patient,
        scanner=scanner,
        studies=[study],
        series=series,
        truth_maps=truth_maps,
        truth=truth,
        label_rows=label_rows,
    )


def generate_spine(
    out: Path, seed: int = 0, cases: int = 1, progress: bool | None = None, workers: int | None = 1, **options: Any
) -> Path:
    """Write a spine cohort to ``out/spine/case-XXXX/{t1,t2,stir}``; options go to :func:`simulate_spine`."""
    return generate_cohort("spine", simulate_spine, Path(out), seed, cases, options, progress, workers)
