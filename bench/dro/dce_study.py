"""The DCE reference object as a DICOM study, and its results scored from the PACS.

:func:`write_study` writes the VFA series (one per flip angle), a SEG of the lesion patch
(as a radiologist would draw it) and the dynamic series. :func:`score_results` reads the
Parametric Maps and the SR that the node delivered to the PACS and scores them: every
patch with the OSIPI tolerances (Ktrans, ve, vp; R1 from the T1 map), the AIF that the SR
reports against the true plasma AIF (peak and area), and what the SR says about T10, the
AIF and the lesion's ratios.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.sr.codedict import codes

from bench.dro.dce_object import DceObject
from bench.dro.dicomwrite import Geometry, StudyIdentity, dro_uid, write_mr_series
from bench.dro.harness import ParametricMapVolume, read_parametric_maps, sr_texts
from bench.dro.scoring import PatchScore, score_patches

__all__ = ["AifScore", "DceResults", "StudyFiles", "read_sr_aif", "score_results", "write_study"]

_COUNTS_PER_UNIT = 150_000.0  # M0 = 1 → 150,000 counts: the brightest blood stays below 2^16


@dataclass(frozen=True)
class StudyFiles:
    """The files of one written study, in the order a scanner sends them."""

    vfa: list[Path]
    seg: list[Path]
    dynamic: list[Path]
    study_uid: str
    patient_id: str

    @property
    def all(self) -> list[Path]:
        """VFA series, then the SEG, then the dynamic (the dce job waits for its study)."""
        return [*self.vfa, *self.seg, *self.dynamic]


def _segmentation(obj: DceObject, dynamic_files: Sequence[Path], folder: Path, study_uid: str) -> Path:
    n_slices = obj.dynamic.shape[1]
    sources = [dcmread(p) for p in dynamic_files[:n_slices]]  # the first time point
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=dro_uid(study_uid, "lesion"), tracking_id="reference-object lesion")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=obj.lesion.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=dro_uid(study_uid, "seg"),
        series_number=90, sop_instance_uid=dro_uid(study_uid, "seg", 1), instance_number=1,
        manufacturer="pacsnode reference object", manufacturer_model_name="digital reference object",
        software_versions="1", device_serial_number="0", series_description="lesion drawn")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "seg.dcm"
    seg.save_as(path)
    return path


def write_study(obj: DceObject, folder: Path, *, name: str, with_vfa: bool = True,
                with_seg: bool = True) -> StudyFiles:
    """Write ``obj`` (with whatever noise it carries) as one DICOM study under ``folder``."""
    d = obj.design
    patient_id = f"DRO-{dro_uid(name)[-10:]}"
    study_uid = dro_uid(name, "study")
    identity = StudyIdentity(name=name, patient_id=patient_id, study_uid=study_uid,
                             frame_of_reference_uid=dro_uid(name, "frame"), field_strength_t=d.field_t,
                             extra={"ContrastBolusAgent": "gadobutrol"})
    geometry = Geometry(pixel_mm=d.pixel_mm, slice_mm=d.slice_mm, origin_mm=(-100.0, -80.0, 0.0))
    vfa: list[Path] = []
    if with_vfa:
        for number, angle in enumerate(sorted(obj.vfa), start=10):
            vfa += write_mr_series(folder / f"vfa_fa{angle:02.0f}", identity, geometry,
                                   series_number=number, description=f"DRO t1 vfa fa{angle:02.0f}",
                                   signal=obj.vfa[angle], counts_per_unit=_COUNTS_PER_UNIT,
                                   repetition_time_ms=d.tr_ms, flip_angle_deg=angle)
    dynamic = write_mr_series(folder / "dynamic", identity, geometry, series_number=20,
                              description="DRO DCE dynamic", signal=obj.dynamic,
                              counts_per_unit=_COUNTS_PER_UNIT, repetition_time_ms=d.tr_ms,
                              flip_angle_deg=d.flip_deg, times_s=list(d.times_s))
    seg = [_segmentation(obj, dynamic, folder / "seg", study_uid)] if with_seg else []
    return StudyFiles(vfa=vfa, seg=seg, dynamic=dynamic, study_uid=study_uid, patient_id=patient_id)


@dataclass(frozen=True)
class AifScore:
    """The SR's AIF against the true plasma AIF at the frame times."""

    source: str
    peak_error: float
    area_error: float
    text: str


def read_sr_aif(texts: Sequence[str]) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """(times, plasma mM) of the ``AIF plasma concentration (mM): 0s:0.00, ...`` SR text."""
    line = next((t for t in texts if t.startswith("AIF plasma concentration")), None)
    if line is None:
        return None
    pairs = re.findall(r"(-?[0-9.]+)s:(-?[0-9.]+)", line)
    return (np.array([float(a) for a, _ in pairs]), np.array([float(b) for _, b in pairs]))


@dataclass(frozen=True)
class DceResults:
    """Everything scored for one study."""

    scores: list[PatchScore]
    aif: AifScore | None
    texts: list[str]
    maps: dict[str, ParametricMapVolume]

    def sr_line(self, start: str) -> str:
        """The first SR text starting with ``start`` ("" when none)."""
        return next((t for t in self.texts if t.startswith(start)), "")


def score_results(obj: DceObject, outputs: Sequence[Path]) -> DceResults:
    """Score the node's outputs (files fetched from the PACS) against the object's truth."""
    maps = read_parametric_maps(outputs)
    values: dict[str, Any] = {}
    for label, key in (("Ktrans", "ktrans"), ("ve", "ve"), ("vp", "vp")):
        if label in maps:
            values[key] = maps[label].values
    if "T1" in maps:
        with np.errstate(divide="ignore", invalid="ignore"):
            values["r1"] = 1000.0 / maps["T1"].values
    scores = score_patches(values, obj.patches)
    sr = next((dcmread(p) for p in outputs if dcmread(p, stop_before_pixels=True).Modality == "SR"), None)
    texts = sr_texts(sr) if sr is not None else []
    aif = None
    curve = read_sr_aif(texts)
    if curve is not None:
        times, plasma = curve
        truth = np.interp(times, obj.design.times_s, obj.plasma_aif)
        source_line = next((t for t in texts if t.startswith("AIF:")), "")
        aif = AifScore(source=source_line, peak_error=float(plasma.max() / truth.max() - 1.0),
                       area_error=float(np.trapezoid(plasma, times) / np.trapezoid(truth, times) - 1.0),
                       text=source_line)
    return DceResults(scores=scores, aif=aif, texts=texts, maps=maps)
