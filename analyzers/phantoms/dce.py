"""DCE phantom: variable-flip-angle T1 series and a dynamic 3D SPGR with extended Tofts lesions.

Arterial input: the Parker population AIF (Parker et al., MRM 2006) in whole
blood, injected ``injection_s`` after the dynamic starts; plasma
Cp = Cb/(1 − Hct), Hct = 0.45. Tissue: extended Tofts model (Tofts et al., JMRI
1999), Ct = vp·Cp + Ktrans·Cp ⊗ exp(−kep·t), computed on a 0.25 s grid and
sampled at the frame times. Signal: steady-state SPGR with
R1(t) = R10 + r1·Ct(t) (fast exchange within each voxel; partial-volume voxels
mix M0, R10 and concentration by tissue fraction), r1 for gadobutrol in plasma
at 37 °C (Rohrer et al., Invest Radiol 2005). Ranges follow the QIBA DCE DRO
(Ktrans 0–0.35 /min, ve 0.1–0.5, vp 0.001–0.1).

Labels follow the pre-treatment perfusion study: ``recurrence`` lesions have
rKtrans/rVP around the reported medians 7.4/3.1 and ``radiation_necrosis``
around 1.6/0.9 (ratios to normal white matter); a lesion whose tumour was not
hyperperfused before treatment (both ratios < 1.5) recurs without
hyperperfusion, which is the case the prior-informed rule exists for. With
``pretreatment=True`` each case also holds the pre-treatment study of the same
patient (earlier StudyDate, same head position so the lesion has the same
patient coordinates).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from analyzers.phantoms.anatomy import Anatomy, Grid, axial_grid, random_pose, sample_anatomy
from analyzers.phantoms.bolus import PARKER, exponential_convolution, extended_tofts, rician, spgr_signal
from analyzers.phantoms.cohort import CaseContext, case_context, generate_cohort
from analyzers.phantoms.dicomio import dicom_time, random_patient, random_scanner, vendor_key
from analyzers.phantoms.lesions import Ellipsoid, intra_axial_ellipsoid
from analyzers.phantoms.model import PhantomCase, PhantomError, Scanner, SeriesData, Study
from analyzers.phantoms.vessels import MCA_POLYLINES, rasterise_polylines

__all__ = ["DCE_CONSTANTS", "DCE_LABELS", "HYPERPERFUSION_RATIO", "generate_dce", "simulate_dce"]

DCE_LABELS = ("recurrence", "radiation_necrosis")
HYPERPERFUSION_RATIO = 1.5
_HEMATOCRIT = 0.45
_R1_PER_MM_S = MappingProxyType({"1.5": 5.2, "3.0": 5.0})  # gadobutrol, plasma, 37 °C (Rohrer 2005)
DCE_CONSTANTS = MappingProxyType({"hematocrit": _HEMATOCRIT, "r1_per_mM_per_s": _R1_PER_MM_S, "agent": "gadobutrol"})
# Normal tissue kinetics (intact blood-brain barrier: tiny Ktrans).
_TISSUE_PK = {"gm": (0.008, 0.15, 0.030), "wm": (0.005, 0.10, 0.015)}  # Ktrans /min, ve, vp
_T10 = {  # seconds, by field strength
    "1.5": {"gm": 1.20, "wm": 0.78, "csf": 4.0, "lesion": 1.30, "blood": 1.44, "scalp": 0.30},
    "3.0": {"gm": 1.60, "wm": 1.08, "csf": 4.2, "lesion": 1.60, "blood": 1.93, "scalp": 0.38},
}
_M0 = {"gm": 0.85, "wm": 0.72, "csf": 1.0, "lesion": 0.85, "blood": 0.9, "scalp": 0.7, "skull": 0.05}
_M0_SCALE = 40000.0
_VFA_ANGLES = (2.0, 5.0, 10.0, 15.0)
# Superior sagittal sinus along the inner table, MNI RAS mm (venous output for partial-volume scaling).
_SINUS = (
    np.array(
        [
            [0.0, 58.0, 20.0],
            [0.0, 40.0, 52.0],
            [0.0, 5.0, 72.0],
            [0.0, -40.0, 70.0],
            [0.0, -75.0, 48.0],
            [0.0, -95.0, 20.0],
        ]
    ),
)
_NAMES = {
    "siemens": ("t1_vibe_fa{fa:02d}", "t1_vibe_dce_dyn", "*fl3d1"),
    "ge": ("Ax 3D SPGR T1MAP FA{fa}", "Ax DCE 3D SPGR", "efgre3d"),
    "philips": ("T1_FFE_VFA_FA{fa}", "DCE_T1FFE_dyn", "T1FFE"),
}


def _ratios(rng: np.random.Generator, ktrans_median: float, vp_median: float, sigma: float) -> tuple[float, float]:
    z = rng.normal()
    return (
        float(ktrans_median * np.exp(sigma * z)),
        float(vp_median * np.exp(0.8 * sigma * (0.6 * z + 0.8 * rng.normal()))),
    )


def _capped(ratios: tuple[float, float], limit: float = 1.45) -> tuple[float, float]:
    """Ratios kept below the hyperperfusion threshold (a tumour that is not hyperperfused)."""
    return (min(ratios[0], limit), min(ratios[1], limit))


def _draw_course(rng: np.random.Generator, label: str) -> dict[str, Any]:
    """Pre-treatment and follow-up lesion ratios (rKtrans, rVP) for one patient."""
    pre_hyper = bool(rng.random() < 0.75)
    if pre_hyper:
        pre = _ratios(rng, 6.0, 3.0, 0.45)
        if max(pre) < HYPERPERFUSION_RATIO:
            pre = (HYPERPERFUSION_RATIO * 1.2, pre[1])
    else:
        pre = _capped(_ratios(rng, 0.9, 0.9, 0.25))
    if label == "recurrence":
        if pre_hyper:
            post = _ratios(rng, 7.4, 3.1, 0.55)
        else:  # an innately non-hyperperfused tumour recurs without hyperperfusion
            post = _capped(_ratios(rng, 0.95, 0.95, 0.25))
    else:
        post = _ratios(rng, 1.6, 0.9, 0.5)
    return {"pre": pre, "post": post, "pre_hyperperfusion": pre_hyper}


def _clip_pk(ktrans: np.ndarray, ve: np.ndarray, vp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.clip(ktrans, 0.0, 0.35), np.clip(ve, 0.1, 0.5), np.clip(vp, 0.001, 0.1)


def _study_series(
    ctx: CaseContext,
    tag: str,
    study: Study,
    scanner: Scanner,
    anatomy: Anatomy,
    artery: np.ndarray,
    sinus: np.ndarray,
    lesion_frac: np.ndarray,
    lesion_pk: tuple[np.ndarray, np.ndarray, np.ndarray],
    edema: np.ndarray,
    opts: dict[str, Any],
    series_offset: int,
) -> tuple[list[SeriesData], dict[str, np.ndarray], dict[str, Any]]:
    """VFA and dynamic series of one study plus its truth maps and constants."""
    rng = ctx.rng
    grid: Grid = anatomy.grid
    field = f"{scanner.field_strength_t:.1f}"
    r1 = float(_R1_PER_MM_S[field])
    hct = _HEMATOCRIT
    t10 = _T10[field]
    keep = 1.0 - lesion_frac
    gm, wm, csf = anatomy.gm * keep, anatomy.wm * keep, anatomy.csf * keep
    tissue = (1.0 - artery - sinus).clip(0.0, 1.0)
    gm, wm, csf, les = gm * tissue, wm * tissue, csf * tissue, lesion_frac * tissue
    vessel = artery + sinus
    scalp = anatomy.scalp.astype(np.float32)
    m0 = gm * _M0["gm"] + wm * _M0["wm"] + csf * _M0["csf"] + les * _M0["lesion"] + vessel * _M0["blood"]
    m0 = m0 + scalp * _M0["scalp"] + anatomy.skull * _M0["skull"]
    t1_edema = np.where(edema, 1.3, 1.0)
    r10_num = (
        gm / t10["gm"]
        + wm / (t10["wm"] * t1_edema)
        + csf / t10["csf"]
        + les / t10["lesion"]
        + vessel / t10["blood"]
        + scalp / t10["scalp"]
        + anatomy.skull / 1.0
    )
    frac_total = gm + wm + csf + les + vessel + scalp + anatomy.skull
    r10 = np.where(frac_total > 0, r10_num / np.where(frac_total > 0, frac_total, 1.0), 1.0 / 4.0)

    # Kinetic truth maps (fraction-weighted in partial-volume voxels).
    lk, lve, lvp = lesion_pk
    (gk, gve, gvp), (wk, wve, wvp) = _TISSUE_PK["gm"], _TISSUE_PK["wm"]
    ktrans = gm * gk + wm * wk + les * lk
    ve = gm * gve + wm * wve + les * lve
    vp = gm * gvp + wm * wvp + les * lvp + vessel * (1.0 - hct)

    # Curves.
    dt_s, frames = opts["frame_s"], opts["time_points"]
    times = np.arange(frames) * dt_s
    t_inj = opts["baseline_frames"] * dt_s + float(rng.uniform(-1.0, 1.0))
    t_fine = np.arange(0.0, times[-1] + 0.125, 0.25)
    cb_fine = PARKER.blood((t_fine - t_inj) / 60.0)
    cp_fine = cb_fine / (1.0 - hct)
    tissue_fine = extended_tofts(t_fine / 60.0, cp_fine, np.array([gk, wk]), np.array([gve, wve]), np.array([gvp, wvp]))
    # Venous output: the arterial blood curve 6 s later, dispersed (mean transit 4 s), same area.
    dispersed = exponential_convolution(t_fine, cb_fine, np.array([1 / 4.0]))[0] / 4.0
    cv_fine = np.interp(t_fine - 6.0, t_fine, dispersed, left=0.0)
    sample = np.rint(times / 0.25).astype(int)
    cb, cp = cb_fine[sample], cp_fine[sample]
    c_gm, c_wm, cv = tissue_fine[0, sample], tissue_fine[1, sample], cv_fine[sample]
    idx = np.nonzero(les > 0)
    c_les = extended_tofts(t_fine / 60.0, cp_fine, lk[idx], lve[idx], lvp[idx])[:, sample] if idx[0].size else None

    # Noise: sigma from the dynamic's baseline brain signal.
    flip = opts["flip_deg"]
    tr = opts["tr_ms"] / 1000.0
    brain = anatomy.brain
    baseline = spgr_signal(_M0_SCALE * m0, r10, tr, flip)
    sigma = 0.0 if opts["snr"] is None else float(np.mean(baseline[brain]) / opts["snr"])

    vendor = vendor_key(scanner)
    vfa_name, dyn_name, seq_name = _NAMES[vendor]
    common = {
        "ScanningSequence": "GR",
        "SequenceVariant": ["SP", "SS"] if vendor == "ge" else "SP",
        "ScanOptions": "",
        "MRAcquisitionType": "3D",
        "SequenceName": seq_name,
        "RepetitionTime": opts["tr_ms"],
        "EchoTime": 1.6,
        "EchoTrainLength": 1,
        "NumberOfAverages": 1,
        "PixelBandwidth": 390.0,
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"] if vendor == "siemens" else ["ORIGINAL", "PRIMARY", "OTHER"],
    }
    series: list[SeriesData] = []
    start = study.time_s + 900.0
    for n, fa in enumerate(opts["vfa_angles"]):
        s = spgr_signal(_M0_SCALE * m0, r10, tr, fa)
        pixels = (rician(s, sigma, rng) if sigma > 0 else s)[None].astype(np.float32)
        name = vfa_name.format(fa=round(fa))
        series.append(
            SeriesData(
                folder=f"{tag}vfa_fa{round(fa):02d}",
                study=study,
                series_uid=ctx.uid("series", tag, "vfa", fa),
                series_number=series_offset + n,
                grid=grid,
                pixels=pixels,
                times_s=np.zeros(1),
                start_time_s=start + 40.0 * n,
                attributes={**common, "SeriesDescription": name, "ProtocolName": name, "FlipAngle": float(fa)},
            )
        )
    pixels = np.empty((frames, *grid.shape), dtype=np.float32)
    m0s = (_M0_SCALE * m0).astype(np.float32)
    for t in range(frames):
        conc = gm * c_gm[t] + wm * c_wm[t] + artery * cb[t] + sinus * cv[t]
        if c_les is not None:
            conc[idx] += les[idx] * c_les[:, t]
        s = spgr_signal(m0s, r10 + r1 * conc, tr, flip).astype(np.float32)
        pixels[t] = rician(s, sigma, rng) if sigma > 0 else s
    dyn_start = start + 40.0 * len(opts["vfa_angles"]) + 30.0
    weight = opts["weight_kg"]
    series.append(
        SeriesData(
            folder=f"{tag}dce",
            study=study,
            series_uid=ctx.uid("series", tag, "dce"),
            series_number=series_offset + len(opts["vfa_angles"]),
            grid=grid,
            pixels=pixels,
            times_s=times,
            start_time_s=dyn_start,
            trigger_time=vendor == "ge",
            attributes={
                **common,
                "SeriesDescription": dyn_name,
                "ProtocolName": dyn_name,
                "FlipAngle": float(flip),
                "ContrastBolusAgent": "Gadobutrol (Gadovist 1.0 mmol/ml)",
                "ContrastBolusRoute": "IV",
                "ContrastBolusVolume": round(0.1 * weight, 1),
                "ContrastBolusTotalDose": round(0.1 * weight, 1),
                "ContrastFlowRate": [2.0],
                "ContrastBolusStartTime": dicom_time(dyn_start + t_inj),
            },
        )
    )
    kep = np.where(ve > 0, ktrans / np.where(ve > 0, ve, 1.0), 0.0)
    maps = {
        "ktrans_per_min": ktrans.astype(np.float32),
        "ve": ve.astype(np.float32),
        "vp": vp.astype(np.float32),
        "kep_per_min": kep.astype(np.float32),
        "t10_s": (1.0 / r10).astype(np.float32),
        "m0": m0s,
        "time_s": times,
        "cb_mM": cb,
        "cp_mM": cp,
        "c_gm_mM": c_gm,
        "c_wm_mM": c_wm,
        "c_sinus_mM": cv,
        "time_fine_s": t_fine,
        "cp_fine_mM": cp_fine,
        "artery_fraction": artery,
        "sinus_fraction": sinus,
        "gm_fraction": gm,
        "wm_fraction": wm,
        "lesion_fraction": les,
    }
    constants = {
        "r1_per_mM_per_s": r1,
        "hematocrit": hct,
        "field_strength_t": scanner.field_strength_t,
        "tr_s": tr,
        "flip_deg": flip,
        "vfa_flip_deg": list(opts["vfa_angles"]),
        "frame_s": dt_s,
        "injection_s": t_inj,
        "parker_delay_s": t_inj,
        "parker": PARKER.as_dict(),
        "snr": opts["snr"],
        "noise_sigma": sigma,
        "m0_scale": _M0_SCALE,
        "units": {"ktrans": "1/min", "kep": "1/min", "ve": "ml/ml", "vp": "ml/ml", "t10": "s"},
    }
    return series, maps, constants


def simulate_dce(
    seed: int = 0,
    case_index: int = 0,
    *,
    label: str | None = None,
    pretreatment: bool = True,
    matrix: int = 128,
    slices: int = 16,
    pixel_mm: float = 1.8,
    slice_mm: float = 5.0,
    time_points: int = 80,
    frame_s: float = 4.0,
    baseline_frames: int = 6,
    tr_ms: float = 5.0,
    flip_deg: float | None = None,
    vfa_angles: tuple[float, ...] = _VFA_ANGLES,
    snr: float | None = 50.0,
    vendor: str | None = None,
) -> PhantomCase:
    """Simulate one DCE case (follow-up study, and the pre-treatment study when asked) in memory.

    Parameters
    ----------
    label:
        ``"recurrence"`` or ``"radiation_necrosis"``; random (60 % recurrence) when None.
    pretreatment:
        Also simulate the pre-treatment study of the same patient.
    flip_deg:
        Flip angle of the dynamic; 15, 20 or 25° at random when None.
    snr:
        Mean baseline brain signal of the dynamic over the noise standard
        deviation (the same noise level in the VFA series); None is noise-free.

    Returns
    -------
    PhantomCase
        Series folders ``vfa_faNN`` and ``dce`` (``pre_vfa_faNN``, ``pre_dce`` for
        the pre-treatment study); truth maps per study (``ktrans_per_min``, ``ve``,
        ``vp``, ``kep_per_min``, ``t10_s``, ..., prefixed ``pre_`` for the
        pre-treatment study) and the lesion's true ratios and hyperperfusion flags.
    """
    if label is not None and label not in DCE_LABELS:
        raise PhantomError(f"label must be one of {DCE_LABELS}, got {label!r}")
    if frame_s <= 0 or frame_s > 5.0 or time_points * frame_s < 300.0:
        raise PhantomError("the dynamic needs frames of at most 5 s and at least 5 minutes in all")
    if snr is not None and snr <= 0:
        raise PhantomError("snr must be positive (or None for noise-free)")
    ctx = case_context("dce", seed, case_index)
    rng = ctx.rng
    label = label or (DCE_LABELS[0] if rng.random() < 0.6 else DCE_LABELS[1])
    scanner = random_scanner(rng, vendor=vendor)
    post_date = ctx.random_date() + dt.timedelta(days=400)
    pre_date = post_date - dt.timedelta(days=int(rng.integers(150, 420)))
    post = ctx.study("post", post_date, "MRI BRAIN PERFUSION FOLLOW-UP")
    pre = ctx.study("pre", pre_date, "MRI BRAIN PERFUSION PRE-SRS")
    patient = random_patient(rng, ctx.patient_id, post.date, age_range=(40, 80))
    flip = float(flip_deg if flip_deg is not None else rng.choice([15.0, 20.0, 25.0]))
    opts = {
        "time_points": time_points,
        "frame_s": frame_s,
        "baseline_frames": baseline_frames,
        "tr_ms": tr_ms,
        "flip_deg": flip,
        "vfa_angles": tuple(vfa_angles),
        "snr": snr,
        "weight_kg": patient.weight_kg,
    }

    pose = random_pose(rng)
    grid = axial_grid((slices, matrix, matrix), (slice_mm, pixel_mm, pixel_mm), pose.brain_centre)
    anatomy = sample_anatomy(grid, pose)
    coords = grid.patient_coordinates()
    artery = rasterise_polylines(
        grid, pose, MCA_POLYLINES, radius_mm=1.2, core_fraction=float(rng.uniform(0.5, 0.8)), rim_fraction=0.2
    )
    sinus = rasterise_polylines(grid, pose, _SINUS, radius_mm=3.0, core_fraction=1.0, rim_fraction=0.4)
    sinus = np.where(artery > 0, 0.0, sinus).astype(np.float32)
    course = _draw_course(rng, label)
    radius_pre = float(rng.uniform(5.0, 10.0))
    radius_post = radius_pre * float(rng.uniform(1.15, 1.5))
    ell_post = intra_axial_ellipsoid(anatomy, rng, radius_post, [], coords, margin_slices=3)
    wk, wve, wvp = _TISSUE_PK["wm"]
    truth: dict[str, Any] = {"label": label, "studies_truth": {}}
    truth_maps: dict[str, np.ndarray] = {"affine_lps": grid.affine, "tissue_labels": anatomy.tissue_labels()}
    all_series: list[SeriesData] = []
    rows = []
    plan = [("post", post, "", course["post"], radius_post, 10)]
    if pretreatment:
        plan.insert(0, ("pre", pre, "pre_", course["pre"], radius_pre, 30))
    for role, study, tag, (rk, rv), radius, offset in plan:
        scale = radius / radius_post
        ell = Ellipsoid(centre=ell_post.centre, radii=ell_post.radii * scale, rotation=ell_post.rotation)
        frac = ell.fraction(grid, coords)
        frac[~((anatomy.gm + anatomy.wm + anatomy.csf) > 0.2)] = 0.0
        d = ell.normalised_distance(coords)
        edema = (d > 1.0) & (d < 1.0 + 12.0 / radius) & (anatomy.wm > 0.3)
        hetero = np.exp(rng.normal(0.0, 0.15, size=grid.shape))
        lk, lve, lvp = _clip_pk(rk * wk * hetero, np.full(grid.shape, rng.uniform(0.2, 0.5)), rv * wvp * hetero)
        series, maps, constants = _study_series(
            ctx, tag, study, scanner, anatomy, artery, sinus, frac, (lk, lve, lvp), edema, opts, offset
        )
        all_series.extend(series)
        core = frac >= 0.5
        labels_map = core.astype(np.uint8)
        maps = {**maps, "lesion_labels": labels_map, "edema": edema}
        truth_maps.update({f"{tag}{k}": v for k, v in maps.items()})
        rktrans = float(lk[core].mean() / wk)
        rvp = float(lvp[core].mean() / wvp)
        centre = (coords[core] * frac[core, None]).sum(0) / frac[core].sum()
        hyper = bool(max(rktrans, rvp) >= HYPERPERFUSION_RATIO)
        lesion = {
            "id": 1,
            "label": label if role == "post" else "pretreatment_metastasis",
            "centre_lps": centre.round(2),
            "radius_mm": round(radius, 2),
            "volume_ml": round(float(frac.sum() * np.prod(grid.spacing) / 1000.0), 3),
            "ktrans_mean": float(lk[core].mean()),
            "vp_mean": float(lvp[core].mean()),
            "ve_mean": float(lve[core].mean()),
            "rktrans": rktrans,
            "rvp": rvp,
            "hyperperfusion": hyper,
        }
        truth["studies_truth"][role] = {
            "StudyInstanceUID": study.study_uid,
            "StudyDate": study.date,
            "constants": constants,
            "lesions": [lesion],
            "maps_prefix": tag,
        }
        rows.append(
            {
                "StudyInstanceUID": study.study_uid,
                "PatientID": patient.patient_id,
                "label": lesion["label"],
                "case": f"case-{case_index + 1:04d}",
                "role": role,
                "StudyDate": study.date,
                "centre_x": lesion["centre_lps"][0],
                "centre_y": lesion["centre_lps"][1],
                "centre_z": lesion["centre_lps"][2],
                "rktrans_true": round(rktrans, 4),
                "rvp_true": round(rvp, 4),
                "hyperperfusion": hyper,
                "pretreatment_hyperperfusion": course["pre_hyperperfusion"],
            }
        )
    truth["reference"] = {"tissue": "white matter class", "ktrans_per_min": wk, "ve": wve, "vp": wvp}
    truth["tissue_pk"] = {k: dict(zip(("ktrans_per_min", "ve", "vp"), v, strict=True)) for k, v in _TISSUE_PK.items()}
    truth["pretreatment_hyperperfusion"] = course["pre_hyperperfusion"]
    truth["lesions"] = truth["studies_truth"]["post"]["lesions"]
    truth["constants"] = truth["studies_truth"]["post"]["constants"]
    studies = [s for _, s, *_ in plan]
    return PhantomCase(
        phantom="dce",
        case_index=case_index,
        seed=seed,
        patient=patient,
        scanner=scanner,
        studies=studies,
        series=all_series,
        truth_maps=truth_maps,
        truth=truth,
        label_rows=rows,
    )


def generate_dce(
    out: Path, seed: int = 0, cases: int = 1, progress: bool | None = None, workers: int | None = 1, **options: Any
) -> Path:
    """Write a DCE cohort to ``out/dce/case-XXXX/`` with ``labels.csv``; options go to :func:`simulate_dce`."""
    return generate_cohort("dce", simulate_dce, Path(out), seed, cases, options, progress, workers)
