"""DSC perfusion phantom: T2*-weighted GRE-EPI dynamic with dural lesions of known perfusion.

Signal model (per voxel): S(t) = S0·exp(−TE·ΔR2*(t)) with ΔR2*(t) = k·C(t)
(linear relaxivity, as in the indicator-dilution DSC literature: Rosen et al.,
MRM 1990; Østergaard et al., MRM 1996). Tissue concentration follows
Ct = (ρ/k_H)·CBF·(Ca ⊗ R), R(t) = exp(−t/MTT), so an analyzer computing
CBV = 100·(k_H/ρ)·∫ΔR2*_t/∫ΔR2*_a (ml/100 g) and CBF from the residue peak
(ml/100 g/min) recovers the truth maps in the same units. The arterial input is
a gamma variate with recirculation (:func:`analyzers.phantoms.bolus.dsc_aif`),
visible unmixed in voxels of both middle cerebral arteries.

Enhancing lesions leak contrast: their observed ΔR2* follows the
Boxerman–Schmainda–Weisskoff model (AJNR 2006),
ΔR2*_obs(t) = k·C_iv(t) − K2·∫₀ᵗ ΔR2*_ref(τ)dτ, with ΔR2*_ref the mean ΔR2*
per unit of non-enhancing brain tissue (recorded in the truth). K2 > 0 is T1
dominant leakage (signal overshoot, PSR > 100 %), K2 < 0 T2* dominant (low PSR).

Lesions are dural-based: ``meningioma`` (higher rCBV/rCBF, as in the dural
lesion DSC study) or ``dural_metastasis``, one to three per patient.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from analyzers.phantoms.anatomy import axial_grid, random_pose, sample_anatomy
from analyzers.phantoms.bolus import dsc_aif, indicator_dilution, rician
from analyzers.phantoms.cohort import case_context, generate_cohort
from analyzers.phantoms.dicomio import dicom_time, random_patient, random_scanner, vendor_key
from analyzers.phantoms.lesions import dural_ellipsoid
from analyzers.phantoms.model import PhantomCase, PhantomError, SeriesData
from analyzers.phantoms.vessels import MCA_POLYLINES, rasterise_polylines

__all__ = ["DSC_CONSTANTS", "DSC_LABELS", "generate_dsc", "simulate_dsc"]

DSC_LABELS = ("meningioma", "dural_metastasis")
#: Constants of the signal model; an analyzer's accuracy test uses the same ones.
DSC_CONSTANTS = MappingProxyType(
    {
        "k_per_mM_per_s": 10.0,  # ΔR2* = k·C in arterial blood (and in tissue unless told otherwise)
        "hematocrit_large_vessel": 0.45,
        "hematocrit_small_vessel": 0.25,
        "k_h": 0.55 / 0.75,
        "density_g_per_ml": 1.04,
    }
)
_TISSUE = {"gm": {"cbv": 4.0, "cbf": 60.0}, "wm": {"cbv": 2.0, "cbf": 25.0}}
# Lesion perfusion relative to white matter: log-normal (median, sigma of log).
_LESION_PERFUSION: dict[str, dict[str, tuple[float, float]]] = {
    "meningioma": {"rcbv": (6.0, 0.35), "rcbf": (5.5, 0.40), "k2": (-0.020, 0.015), "radius": (8.0, 18.0)},
    "dural_metastasis": {"rcbv": (3.2, 0.40), "rcbf": (2.8, 0.45), "k2": (-0.010, 0.020), "radius": (5.0, 13.0)},
}
_S0 = {"gm": 1.0, "wm": 0.85, "csf": 1.35, "lesion": 1.05, "artery": 0.9, "skull": 0.04, "scalp": 0.25}
_SIGNAL_SCALE = 1000.0
_IMAGE_TYPE = {
    "siemens": ["ORIGINAL", "PRIMARY", "M", "ND"],
    "ge": ["ORIGINAL", "PRIMARY", "OTHER"],
    "philips": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
}
_SERIES_NAMES = {
    "siemens": {"SeriesDescription": "ep2d_perf_p2", "ProtocolName": "ep2d_perf_p2", "SequenceName": "*epfid2d1_128"},
    "ge": {"SeriesDescription": "DSC PERFUSION", "ProtocolName": "BRAIN TUMOR/PERF", "SequenceName": "epi"},
    "philips": {"SeriesDescription": "PERFUSION DSC", "ProtocolName": "WIP DSC_PERFUSION", "SequenceName": "FEEPI"},
}


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * np.exp(rng.normal(0.0, sigma)))


def simulate_dsc(
    seed: int = 0,
    case_index: int = 0,
    *,
    label: str | None = None,
    lesions: int | None = None,
    matrix: int = 128,
    slices: int = 20,
    time_points: int = 60,
    tr_s: float = 1.5,
    te_ms: float = 30.0,
    pixel_mm: float = 1.8,
    slice_mm: float = 5.0,
    snr: float | None = 60.0,
    vendor: str | None = None,
    tissue_to_blood_relaxivity: float = 1.0,
) -> PhantomCase:
    """Simulate one DSC case in memory.

    Parameters
    ----------
    label:
        ``"meningioma"`` or ``"dural_metastasis"``; random (even odds) when None.
    lesions:
        Number of lesions; default 1 for meningioma (2 in 10 %) and 1–3 for metastasis.
    snr:
        Baseline brain signal over the noise standard deviation; None writes
        noise-free (but still integer-rounded) images.
    vendor:
        ``"siemens"``, ``"ge"`` or ``"philips"`` naming and header style; random when None.
    tissue_to_blood_relaxivity:
        k_tissue / k_blood. 1 (default) is the textbook assumption every DSC
        package makes, so the truth maps are what a correct analysis returns; in
        vivo the tissue ΔR2* per mM is several times the blood's (Kjølby et al.,
        MRM 2006), which gives realistic 25–40 % grey-matter signal drops with a
        measurable AIF; standard analysis then reports CBV and CBF multiplied
        by this factor (relative values are unaffected).

    Returns
    -------
    PhantomCase
        One series (the dynamic) and the truth: CBV (ml/100 g), CBF
        (ml/100 g/min), MTT (s), K2 (1/s) maps, lesion and tissue labels, AIF
        and reference curves, constants.
    """
    if label is not None and label not in DSC_LABELS:
        raise PhantomError(f"label must be one of {DSC_LABELS}, got {label!r}")
    if time_points < 20 or slices < 4 or matrix < 32:
        raise PhantomError("need at least 20 time points, 4 slices and a 32×32 matrix")
    if snr is not None and snr <= 0:
        raise PhantomError("snr must be positive (or None for noise-free)")
    if not 0.2 <= tissue_to_blood_relaxivity <= 10.0:
        raise PhantomError("tissue_to_blood_relaxivity must be between 0.2 and 10")
    ctx = case_context("dsc", seed, case_index)
    rng = ctx.rng
    label = label or DSC_LABELS[int(rng.integers(2))]
    scanner = random_scanner(rng, vendor=vendor)
    study = ctx.study("dsc", ctx.random_date(), "MRI BRAIN TUMOR W/WO CONTRAST")
    patient = random_patient(
        rng, ctx.patient_id, study.date, female_fraction=0.7 if label == "meningioma" else 0.5, age_range=(38, 82)
    )
    pose = random_pose(rng)
    grid = axial_grid((slices, matrix, matrix), (slice_mm, pixel_mm, pixel_mm), pose.brain_centre)
    anatomy = sample_anatomy(grid, pose)
    coords = grid.patient_coordinates()
    k = DSC_CONSTANTS["k_per_mM_per_s"]
    k_t = k * tissue_to_blood_relaxivity
    te = te_ms / 1000.0

    # Patient-level perfusion: global flow and volume vary between people, GM/WM ratios do not.
    f_scale, v_scale = rng.normal(1.0, 0.08), rng.normal(1.0, 0.06)
    tissue = {name: {"cbv": p["cbv"] * v_scale, "cbf": p["cbf"] * f_scale} for name, p in _TISSUE.items()}
    wm_cbv, wm_cbf = tissue["wm"]["cbv"], tissue["wm"]["cbf"]

    # Lesions.
    if lesions is None:
        if label == "meningioma":
            lesions = int(rng.choice([1, 2], p=[0.9, 0.1]))
        else:
            lesions = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    spec = _LESION_PERFUSION[label]
    placed: list[tuple[np.ndarray, float]] = []
    lesion_frac = np.zeros(grid.shape, dtype=np.float32)
    lesion_id = np.zeros(grid.shape, dtype=np.uint8)
    edema = np.zeros(grid.shape, dtype=bool)
    lesion_params = []
    for n in range(lesions):
        radius = float(rng.uniform(*spec["radius"]))
        ell = dural_ellipsoid(anatomy, rng, radius, placed, coords)
        placed.append((ell.centre, radius))
        frac = ell.fraction(grid, coords)
        frac[anatomy.outside_mm > 3.0] = 0.0  # the dura bounds it: no skull invasion
        frac = np.minimum(frac, 1.0 - lesion_frac)
        lesion_frac += frac
        lesion_id[frac >= 0.5] = n + 1
        if rng.random() < (0.4 if label == "meningioma" else 0.7):
            d = ell.normalised_distance(coords)
            edema |= (d > 1.0) & (d < 1.0 + rng.uniform(6, 14) / radius) & (anatomy.wm > 0.3)
        corr = rng.normal(0.0, 1.0)
        rcbv = float(spec["rcbv"][0] * np.exp(spec["rcbv"][1] * corr))
        rcbf = float(spec["rcbf"][0] * np.exp(spec["rcbf"][1] * (0.7 * corr + 0.71 * rng.normal())))
        lesion_params.append(
            {"fraction": frac, "radius": radius, "rcbv": rcbv, "rcbf": rcbf, "k2": float(rng.normal(*spec["k2"]))}
        )
    edema &= lesion_frac < 0.05
    keep = 1.0 - lesion_frac
    gm, wm, csf = anatomy.gm * keep, anatomy.wm * keep, anatomy.csf * keep
    artery = rasterise_polylines(grid, pose, MCA_POLYLINES, radius_mm=1.4)
    artery[lesion_frac > 0] = 0.0

    # Time axes and curves: computed on a 0.1 s grid, sampled at the frame times.
    times = np.arange(time_points) * tr_s
    t_fine = np.arange(0.0, times[-1] + 0.05, 0.1)
    arrival = float(rng.uniform(10.0, 18.0))
    peak = float(rng.uniform(6.5, 9.0))
    ca_fine = dsc_aif(t_fine, arrival, peak_mM=peak)
    dens, k_h = DSC_CONSTANTS["density_g_per_ml"], DSC_CONSTANTS["k_h"]
    class_fine = indicator_dilution(
        t_fine,
        ca_fine,
        np.array([tissue["gm"]["cbv"], tissue["wm"]["cbv"]]),
        np.array([tissue["gm"]["cbf"], tissue["wm"]["cbf"]]),
        dens,
        k_h,
    )
    sample = np.rint(times / 0.1).astype(int)
    c_gm, c_wm = class_fine[0, sample], class_fine[1, sample]
    ca = ca_fine[sample]
    edema_factor = np.where(edema, 0.75, 1.0).astype(np.float32)
    normal = anatomy.brain & (lesion_frac == 0) & (artery == 0)
    ref_fine = (
        k_t
        * (np.sum(gm[normal]) * class_fine[0] + np.sum(wm[normal]) * class_fine[1])
        / np.sum(gm[normal] + wm[normal])
    )
    ref_int_fine = np.concatenate([[0.0], np.cumsum((ref_fine[1:] + ref_fine[:-1]) / 2 * 0.1)])

    # Voxel truth maps.
    cbv_map = (gm * tissue["gm"]["cbv"] + wm * tissue["wm"]["cbv"]) * edema_factor
    cbf_map = (gm * tissue["gm"]["cbf"] + wm * tissue["wm"]["cbf"]) * edema_factor
    k2_map = np.zeros(grid.shape, dtype=np.float32)
    dr2s_lesion = np.zeros((time_points, *grid.shape), dtype=np.float32)
    lesion_truth = []
    for n, p in enumerate(lesion_params):
        idx = np.nonzero(p["fraction"] > 0)
        hetero = np.exp(rng.normal(0.0, 0.12, size=idx[0].size))
        cbv_v = p["rcbv"] * wm_cbv * hetero
        cbf_v = p["rcbf"] * wm_cbf * hetero
        conc = indicator_dilution(t_fine, ca_fine, cbv_v, cbf_v, dens, k_h)[:, sample]
        f = p["fraction"][idx]
        dr2s_lesion[:, idx[0], idx[1], idx[2]] = (f[:, None] * (k_t * conc - p["k2"] * ref_int_fine[sample][None, :])).T
        cbv_map[idx] += f * cbv_v
        cbf_map[idx] += f * cbf_v
        k2_map[idx] = p["k2"]
        core = lesion_id == n + 1
        centre = (coords[core] * lesion_frac[core, None]).sum(0) / lesion_frac[core].sum()
        lesion_truth.append(
            {
                "id": n + 1,
                "label": label,
                "centre_lps": centre.round(2),
                "radius_mm": round(p["radius"], 2),
                "volume_ml": round(float(f.sum() * np.prod(grid.spacing) / 1000.0), 3),
                "cbv_mean": round(float(cbv_map[core].mean()), 4),
                "cbf_mean": round(float(cbf_map[core].mean()), 4),
                "rcbv": round(float(np.mean(cbv_v[lesion_id[idx] == n + 1]) / wm_cbv), 4),
                "rcbf": round(float(np.mean(cbf_v[lesion_id[idx] == n + 1]) / wm_cbf), 4),
                "k2_per_s": round(p["k2"], 5),
            }
        )
    mtt_map = np.where(cbf_map > 0, cbv_map / np.where(cbf_map > 0, cbf_map, 1.0) * 60.0, 0.0)

    # Signal.
    s0_tissue = (
        _SIGNAL_SCALE
        * (gm * _S0["gm"] + wm * _S0["wm"] + csf * _S0["csf"] + lesion_frac * _S0["lesion"])
        * np.where(edema, 1.2, 1.0)
    )
    s0_tissue += _SIGNAL_SCALE * (anatomy.skull * _S0["skull"] + anatomy.scalp * _S0["scalp"])
    s0_art = _SIGNAL_SCALE * _S0["artery"]
    pixels = np.empty((time_points, *grid.shape), dtype=np.float32)
    brain_s0 = float(np.mean(s0_tissue[anatomy.brain]))
    sigma = 0.0 if snr is None else brain_s0 / snr
    gm_e, wm_e = (k_t * gm * edema_factor).astype(np.float32), (k_t * wm * edema_factor).astype(np.float32)
    s0_t = ((1.0 - artery) * s0_tissue).astype(np.float32)
    cores = [lesion_id == les["id"] for les in lesion_truth]
    lesion_curves = np.zeros((len(cores), time_points))
    for t in range(time_points):
        dr2s = gm_e * np.float32(c_gm[t]) + wm_e * np.float32(c_wm[t]) + dr2s_lesion[t]
        s = s0_t * np.exp(np.float32(-te) * dr2s) + artery * np.float32(s0_art * np.exp(-te * k * ca[t]))
        lesion_curves[:, t] = [float(s[core].mean()) for core in cores]
        pixels[t] = rician(s, sigma, rng) if sigma > 0 else s
    # Percentage signal recovery of the noise-free mean lesion curve (S1 at 90 s after arrival,
    # or the last frame when the series is shorter).
    s1_time = min(arrival + 90.0, float(times[-1]))
    s1_frame = int(np.argmin(np.abs(times - s1_time)))
    for les, curve in zip(lesion_truth, lesion_curves, strict=True):
        base, low = float(curve[times < arrival].mean()), float(curve.min())
        les["psr_percent_noise_free"] = round(float(100.0 * (curve[s1_frame] - low) / (base - low)), 2)
        les["psr_s1_time_s"] = round(float(times[s1_frame]), 2)

    s0_map = (1.0 - artery) * s0_tissue + artery * s0_art
    vendor = vendor_key(scanner)
    contrast_start = study.time_s + 600.0 + arrival - 7.0
    weight = patient.weight_kg
    attributes: dict[str, Any] = {
        **_SERIES_NAMES[vendor],
        "ImageType": _IMAGE_TYPE[vendor],
        "ScanningSequence": "EP\\GR" if vendor == "ge" else "EP",
        "SequenceVariant": "SK",
        "ScanOptions": "FS",
        "MRAcquisitionType": "2D",
        "RepetitionTime": tr_s * 1000.0,
        "EchoTime": te_ms,
        "EchoTrainLength": 1,
        "FlipAngle": 90.0 if vendor == "siemens" else 60.0,
        "PixelBandwidth": 1502.0,
        "NumberOfAverages": 1,
        "ContrastBolusAgent": "Gadobutrol (Gadovist 1.0 mmol/ml)",
        "ContrastBolusRoute": "IV",
        "ContrastBolusVolume": round(0.1 * weight, 1),
        "ContrastBolusTotalDose": round(0.1 * weight, 1),
        "ContrastFlowRate": [4.0],
        "ContrastBolusStartTime": dicom_time(contrast_start),
    }
    series = SeriesData(
        folder="dsc",
        study=study,
        series_uid=ctx.uid("series", "dsc"),
        series_number=7,
        grid=grid,
        pixels=pixels,
        times_s=times,
        start_time_s=study.time_s + 600.0,
        attributes=attributes,
        trigger_time=vendor == "ge",
    )
    truth_maps = {
        "cbv": cbv_map.astype(np.float32),
        "cbf": cbf_map.astype(np.float32),
        "mtt_s": mtt_map.astype(np.float32),
        "k2_per_s": k2_map,
        "lesion_labels": lesion_id,
        "lesion_fraction": lesion_frac,
        "tissue_labels": anatomy.tissue_labels(),
        "gm_fraction": gm,
        "wm_fraction": wm,
        "artery_fraction": artery,
        "edema": edema,
        "s0": s0_map.astype(np.float32),
        "affine_lps": grid.affine,
        "time_s": times,
        "aif_mM": ca,
        "c_gm_mM": c_gm,
        "c_wm_mM": c_wm,
        "dr2s_reference_per_s": ref_fine[sample],
        "int_dr2s_reference": ref_int_fine[sample],
        "time_fine_s": t_fine,
        "aif_fine_mM": ca_fine,
    }
    arterial_voxels = np.argwhere(artery >= 1.0)
    truth = {
        "label": label,
        "constants": {
            **DSC_CONSTANTS,
            "k_tissue_per_mM_per_s": k_t,
            "tissue_to_blood_relaxivity": tissue_to_blood_relaxivity,
            "te_s": te,
            "tr_s": tr_s,
            "snr": snr,
            "noise_sigma": sigma,
            "signal_scale": _SIGNAL_SCALE,
            "bolus_arrival_s": arrival,
            "aif_peak_mM": peak,
            "residue": "exponential",
            "units": {"cbv": "ml/100 g", "cbf": "ml/100 g/min", "mtt": "s", "k2": "1/s"},
        },
        "tissue": {n: {**v, "mtt_s": v["cbv"] / v["cbf"] * 60.0} for n, v in tissue.items()},
        "reference": "relative values divide by this patient's white-matter class CBV/CBF",
        "k2_reference": "mean dR2* per unit of non-enhancing GM+WM (dr2s_reference_per_s in maps.npz)",
        "lesions": lesion_truth,
        "arterial_voxels_lps": [coords[tuple(v)].round(2) for v in arterial_voxels],
    }
    rows = [
        {
            "StudyInstanceUID": study.study_uid,
            "PatientID": patient.patient_id,
            "label": label,
            "case": f"case-{case_index + 1:04d}",
            "lesion_id": les["id"],
            "centre_x": les["centre_lps"][0],
            "centre_y": les["centre_lps"][1],
            "centre_z": les["centre_lps"][2],
            "rcbv_true": les["rcbv"],
            "rcbf_true": les["rcbf"],
            "PatientSex": patient.sex,
        }
        for les in lesion_truth
    ]
    return PhantomCase(
        phantom="dsc",
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


def generate_dsc(
    out: Path, seed: int = 0, cases: int = 1, progress: bool | None = None, workers: int | None = 1, **options: Any
) -> Path:
    """Write a DSC cohort to ``out/dsc/case-XXXX/`` with ``labels.csv``; options go to :func:`simulate_dsc`."""
    return generate_cohort("dsc", simulate_dsc, Path(out), seed, cases, options, progress, workers)
