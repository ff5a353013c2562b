"""Post-contrast T1 phantom with dural-based meningiomas whose appearance depends on WHO grade.

The grade-dependent imaging features follow the clinical features of the
meningioma grading nomogram study (sex, shape, margin, peritumoral edema) and
what radiomics picks up (size, heterogeneity): WHO grade 2/3 tumours are more
often irregular (lobulated), with indistinct margins, heterogeneous enhancement
(sometimes necrosis), peritumoral edema, larger, and more often in men. Each
feature is drawn with grade-dependent odds so that the classes overlap, as in
real cohorts. The image is an MPRAGE-like 3D T1 after gadolinium with a dural
tail, a smooth coil bias field and Rician noise.

Cases without a meningioma (labels :data:`~analyzers.phantoms.mimics.NEGATIVE_LABELS`:
healthy, metastases, a glioma-like mass) come from the same generator
(``label=`` or ``meningioma_fraction=``), and every case shows what enhances on
a real post-contrast T1 (dural venous sinuses, cortical veins, arteries, choroid
plexus, scalp fat and diploic marrow; :mod:`analyzers.phantoms.mimics`) unless
``vessels=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from analyzers.phantoms.anatomy import Anatomy, axial_grid, random_pose, sample_anatomy
from analyzers.phantoms.bolus import rician
from analyzers.phantoms.cohort import case_context, generate_cohort
from analyzers.phantoms.dicomio import random_patient, random_scanner, vendor_key
from analyzers.phantoms.lesions import Ellipsoid, dural_ellipsoid
from analyzers.phantoms.mimics import (
    NEGATIVE_LABELS,
    EnhancingStructures,
    choroid_plexus,
    fat_and_marrow,
    glioma,
    metastases,
    venous_and_arterial,
)
from analyzers.phantoms.model import PhantomCase, PhantomError, SeriesData
from analyzers.phantoms.structural import T1C_STYLE, bias_field, smooth_texture, tissue_image

__all__ = ["T1C_LABELS", "T1C_NEGATIVE_LABELS", "generate_t1c", "simulate_t1c"]

T1C_LABELS = ("grade1", "grade2_3")
#: Labels of cases without a meningioma.
T1C_NEGATIVE_LABELS = NEGATIVE_LABELS
# Probability of each feature given the grade, and size range (mm radius).
_GRADE: dict[str, dict[str, Any]] = {
    "grade1": {
        "irregular": 0.2,
        "indistinct": 0.2,
        "edema": 0.3,
        "necrosis": 0.03,
        "female": 0.75,
        "radius": (8.0, 17.0),
        "heterogeneity": (0.03, 0.10),
    },
    "grade2_3": {
        "irregular": 0.75,
        "indistinct": 0.65,
        "edema": 0.7,
        "necrosis": 0.35,
        "female": 0.5,
        "radius": (11.0, 23.0),
        "heterogeneity": (0.08, 0.22),
    },
}
_LEVELS = {"wm": 1.0, "gm": 0.62, "csf": 0.18, "skull": 0.08, "scalp": 0.9}
_SCALE = 900.0


@dataclass
class _Meningioma:
    features: dict[str, Any]
    radius: float
    fraction: np.ndarray
    level: np.ndarray
    necrosis: np.ndarray
    tail: np.ndarray
    edema: np.ndarray


def _meningioma(anatomy: Anatomy, rng: np.random.Generator, label: str, slice_mm: float) -> _Meningioma:
    """The dural-based mass of ``label`` (grade-dependent shape, margin, necrosis, edema, tail)."""
    odds = _GRADE[label]
    grid = anatomy.grid
    features: dict[str, Any] = {
        "shape": "irregular" if rng.random() < odds["irregular"] else "regular",
        "margin": "indistinct" if rng.random() < odds["indistinct"] else "distinct",
        "edema": bool(rng.random() < odds["edema"]),
        "necrosis": bool(rng.random() < odds["necrosis"]),
        "heterogeneity": float(rng.uniform(*odds["heterogeneity"])),
    }
    radius = float(rng.uniform(*odds["radius"]))
    coords = grid.patient_coordinates()
    margin = max(2, int(np.ceil(radius * 0.8 / slice_mm)))
    main = dural_ellipsoid(anatomy, rng, radius, [], coords, margin_slices=margin)
    frac = main.fraction(grid, coords, edge_mm=0.7)
    if features["shape"] == "irregular":
        inward = main.rotation[:, 0]
        for _ in range(int(rng.integers(2, 5))):
            direction = rng.normal(size=3)
            direction -= min(0.0, float(direction @ inward)) * inward  # lobes bulge towards the brain or sideways
            direction /= np.linalg.norm(direction)
            lobe_r = radius * float(rng.uniform(0.35, 0.6))
            lobe = Ellipsoid(
                centre=main.centre + direction * radius * float(rng.uniform(0.7, 0.95)),
                radii=np.full(3, lobe_r),
                rotation=np.eye(3),
            )
            frac = np.maximum(frac, lobe.fraction(grid, coords, edge_mm=0.7))
    if features["margin"] == "indistinct":
        sigma_mm = float(rng.uniform(1.5, 2.5))
        frac = ndimage.gaussian_filter(frac, sigma_mm / np.asarray(grid.spacing))
    frac[anatomy.outside_mm > 3.0] = 0.0
    tumour = frac >= 0.5

    # Enhancement with texture, necrosis, dural tail and edema.
    texture = smooth_texture(grid.shape, rng, tuple(1.5 / np.asarray(grid.spacing)))
    level = 1.38 * (1.0 + features["heterogeneity"] * texture)
    necrosis = np.zeros(grid.shape, dtype=bool)
    if features["necrosis"]:
        d = main.normalised_distance(coords)
        necrosis = tumour & (d < rng.uniform(0.35, 0.6)) & (texture > -0.5)
        level = np.where(necrosis, 0.42 + 0.05 * texture, level)
    centre_dist = np.linalg.norm(coords - main.centre, axis=-1)
    tail = anatomy.dura & (centre_dist < radius + rng.uniform(8.0, 18.0)) & ~tumour
    edema = np.zeros(grid.shape, dtype=bool)
    if features["edema"]:
        extent = float(rng.uniform(5.0, 15.0))
        d = main.normalised_distance(coords)
        edema = (d > 1.0) & (d < 1.0 + (extent / radius) * (1 + 0.4 * texture)) & (anatomy.wm + anatomy.gm > 0.4)
        edema &= ~tumour
    return _Meningioma(features, radius, frac, np.asarray(level, dtype=np.float32), necrosis, tail, edema)


def _draw_label(rng: np.random.Generator, label: str | None, meningioma_fraction: float) -> str:
    if label is not None:
        if label not in T1C_LABELS + T1C_NEGATIVE_LABELS:
            raise PhantomError(f"label must be one of {T1C_LABELS + T1C_NEGATIVE_LABELS}, got {label!r}")
        return label
    if not 0.0 <= meningioma_fraction <= 1.0:
        raise PhantomError("meningioma_fraction must be between 0 and 1")
    # The extra draw happens only for mixed cohorts, so cohorts of meningiomas keep their labels.
    if meningioma_fraction < 1.0 and rng.random() >= meningioma_fraction:
        return T1C_NEGATIVE_LABELS[int(rng.integers(len(T1C_NEGATIVE_LABELS)))]
    return T1C_LABELS[int(rng.integers(2))]


def simulate_t1c(
    seed: int = 0,
    case_index: int = 0,
    *,
    label: str | None = None,
    matrix: int = 192,
    slices: int = 96,
    pixel_mm: float = 1.0,
    slice_mm: float = 1.0,
    snr: float | None = 35.0,
    vendor: str | None = None,
    meningioma_fraction: float = 1.0,
    vessels: bool = True,
) -> PhantomCase:
    """Simulate one post-contrast T1 case, with one dural-based meningioma or without one.

    Parameters
    ----------
    label:
        ``"grade1"`` or ``"grade2_3"`` (a meningioma), or one of
        :data:`T1C_NEGATIVE_LABELS` (``"healthy"``, ``"metastases"``,
        ``"glioma"``: no meningioma); drawn when None.
    snr:
        White-matter signal over the noise standard deviation; None is noise-free.
    meningioma_fraction:
        With ``label`` None: the probability that the case has a meningioma
        (grades at even odds); otherwise one of the negative labels at even odds.
    vessels:
        Paint enhancing sinuses, cortical veins, arteries, choroid plexus, scalp
        fat and diploic marrow (:mod:`analyzers.phantoms.mimics`).

    Returns
    -------
    PhantomCase
        Series folder ``t1c``; truth maps ``tumour_mask`` (empty without a
        meningioma), ``tumour_fraction``, ``edema``, ``necrosis``,
        ``mimic_labels`` (vessel 1, choroid plexus 2, metastasis 3, glioma 4, fat 5),
        ``bias_field``, ``tissue_labels``; truth JSON with the label, whether
        there is a meningioma, each clinical feature and the lesion centre in
        patient coordinates.
    """
    if snr is not None and snr <= 0:
        raise PhantomError("snr must be positive (or None for noise-free)")
    ctx = case_context("t1c", seed, case_index)
    rng = ctx.rng
    label = _draw_label(rng, label, meningioma_fraction)
    has_meningioma = label in T1C_LABELS
    odds = _GRADE[label] if has_meningioma else {"female": 0.5}
    scanner = random_scanner(rng, vendor=vendor)
    study = ctx.study("t1c", ctx.random_date(), "MRI BRAIN W/WO CONTRAST")
    patient = random_patient(rng, ctx.patient_id, study.date, female_fraction=odds["female"], age_range=(35, 85))

    pose = random_pose(rng)
    grid = axial_grid((slices, matrix, matrix), (slice_mm, pixel_mm, pixel_mm), pose.brain_centre)
    anatomy = sample_anatomy(grid, pose)
    coords = grid.patient_coordinates()
    zeros = np.zeros(grid.shape, dtype=np.float32)
    mass = (
        _meningioma(anatomy, rng, label, slice_mm)
        if has_meningioma
        else _Meningioma({}, 0.0, zeros, zeros, zeros > 0, zeros > 0, zeros > 0)
    )
    frac, tumour = mass.fraction, mass.fraction >= 0.5
    others = EnhancingStructures(grid.shape)
    if label == "metastases":
        metastases(anatomy, rng, others)
    elif label == "glioma":
        glioma(anatomy, rng, others)
    if vessels:
        venous_and_arterial(anatomy, rng, others)
        choroid_plexus(anatomy, rng, others)
        fat_and_marrow(anatomy, rng, others)
    # The meningioma displaces what it overlaps; vessels are painted over the tissue around it.
    lesion_frac = others.lesion_fraction * (1.0 - frac)
    vessel_frac = others.vessel_fraction * (1.0 - np.maximum(frac, lesion_frac))
    edema = mass.edema | (others.edema & ~tumour)

    keep = 1.0 - np.maximum(frac, lesion_frac)
    wm = anatomy.wm * keep
    wm_level = np.where(edema, 0.8, 1.0)
    image = tissue_image(
        anatomy, {k: v for k, v in _LEVELS.items() if k != "wm"}, {"gm": anatomy.gm * keep, "csf": anatomy.csf * keep}
    )
    image += wm * wm_level + frac * mass.level + lesion_frac * others.lesion_level
    image = image * (1.0 - vessel_frac) + vessel_frac * others.vessel_level
    image = np.where(mass.tail, np.maximum(image, 1.2), image)
    bias = bias_field(grid, rng, amplitude=0.12)
    signal = _SCALE * image * bias
    sigma = 0.0 if snr is None else _SCALE / snr
    pixels = (rician(signal, sigma, rng) if sigma > 0 else signal.astype(np.float32))[None]

    vendor = vendor_key(scanner)
    attributes = {
        **T1C_STYLE[vendor],
        "MRAcquisitionType": "3D",
        "EchoTrainLength": 1,
        "NumberOfAverages": 1,
        "PixelBandwidth": 200.0,
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "ContrastBolusAgent": "Gadoterate (Dotarem 0.5 mmol/ml)",
        "ContrastBolusRoute": "IV",
        "ContrastBolusVolume": round(0.2 * patient.weight_kg, 1),
    }
    series = SeriesData(
        folder="t1c",
        study=study,
        series_uid=ctx.uid("series", "t1c"),
        series_number=12,
        grid=grid,
        pixels=pixels,
        times_s=np.zeros(1),
        start_time_s=study.time_s + 1500.0,
        attributes=attributes,
    )
    lesions: list[dict[str, Any]] = []
    volume_ml = float(frac.sum() * np.prod(grid.spacing) / 1000.0)
    centre = np.full(3, np.nan)
    if has_meningioma:
        centre = (coords[tumour] * frac[tumour, None]).sum(0) / max(float(frac[tumour].sum()), 1e-6)
        lesions.append({
            "id": 1,
            "label": label,
            "centre_lps": centre.round(2),
            "radius_mm": round(mass.radius, 2),
            "volume_ml": round(volume_ml, 3),
            **mass.features,
        })
    truth = {
        "label": label,
        "meningioma": has_meningioma,
        "features": {**mass.features, "sex": patient.sex},
        "lesions": lesions,
        "other_lesions": others.lesions,
        "vessels": vessels,
        "intensity_levels": {**_LEVELS, "tumour": 1.38, "scale": _SCALE},
        "snr": snr,
    }
    truth_maps: dict[str, np.ndarray] = {
        "tumour_mask": tumour.astype(np.uint8),
        "tumour_fraction": frac.astype(np.float32),
        "edema": edema,
        "necrosis": mass.necrosis,
        "dural_tail": mass.tail,
        "mimic_labels": others.labels,
        "bias_field": bias,
        "tissue_labels": anatomy.tissue_labels(),
        "affine_lps": grid.affine,
    }
    rows = [
        {
            "StudyInstanceUID": study.study_uid,
            "PatientID": patient.patient_id,
            "label": label,
            "meningioma": int(has_meningioma),
            "case": f"case-{case_index + 1:04d}",
            "PatientSex": patient.sex,
            "shape": mass.features.get("shape", ""),
            "margin": mass.features.get("margin", ""),
            "edema": mass.features.get("edema", ""),
            "volume_ml": round(volume_ml, 3),
            "centre_x": round(float(centre[0]), 2) if has_meningioma else "",
            "centre_y": round(float(centre[1]), 2) if has_meningioma else "",
            "centre_z": round(float(centre[2]), 2) if has_meningioma else "",
        }
    ]
    return PhantomCase(
        phantom="t1c",
        case_index=case_index,
        seed=seed,
        patient=patient,
        scanner=scanner,
        studies=[study],
        series=[series],
        truth_maps=truth_maps,
        truth=truth,
        label_rows=rows,
    )


def generate_t1c(
    out: Path, seed: int = 0, cases: int = 1, progress: bool | None = None, workers: int | None = 1, **options: Any
) -> Path:
    """Write a T1C meningioma cohort to ``out/t1c/case-XXXX/``; options go to :func:`simulate_t1c`."""
    return generate_cohort("t1c", simulate_t1c, Path(out), seed, cases, options, progress, workers)
