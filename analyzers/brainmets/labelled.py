"""Labelled studies for ``pacsnode train brainmets --labels`` and ``pacsnode evaluate brainmets --labels``.

A labelled case is a 3D T1C image series and a DICOM SEG of its metastases (every
segment of the SEG counts as metastasis). Two ways to name them:

* a folder of DICOM files, such as the node's ``[storage] path`` (of which only
  ``store/`` is read, not the duplicates set aside) or a PACS export: it is scanned
  recursively (headers only); every SEG whose Referenced Series
  Sequence names an image series present in the folder makes a case. The image
  series' technique is read from its header as the analyzer reads it
  (:func:`analyzers.brainmets.inference.detect_technique`), and only cases of the
  requested technique are kept. SEGs made by pacsnode itself (Manufacturer
  ``pacsnode``: the analyzers' own predictions, which a node's storage holds too) are
  not labels and are skipped, as are SEGs without a Referenced Series Sequence (name
  those in a labels.csv). For ``--technique mprage --labels-from space``
  (the study's setting B) a SEG drawn on a SPACE series labels the MPRAGE series
  of the same study: the labels are carried by rigid registration.
* a ``labels.csv`` with one row per case: ``series_dir`` (folder of the image
  series' files) and ``seg`` (a SEG file, or a folder of SEG files), both relative
  to the CSV, and optionally ``seg_on`` (folder of the series the SEG was drawn on,
  when that is another series of the study: setting B) and ``case``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["LabelledCase", "LabelsError", "describe", "find_labelled_cases", "labelled_case_arrays"]

_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class LabelsError(ValueError):
    """The labelled studies cannot be read as asked (nothing found, a broken row, a bad SEG)."""


@dataclass(frozen=True)
class LabelledCase:
    """One image series with the SEG of its metastases.

    ``seg_on`` holds the files of the series the SEG was drawn on when that is not
    the image series itself (labels carried by registration).
    """

    case_id: str
    image_files: tuple[Path, ...]
    seg_files: tuple[Path, ...]
    seg_on: tuple[Path, ...] = ()


@dataclass
class _Series:
    study_uid: str
    modality: str
    sop_class: str
    manufacturer: str
    attributes: dict[str, Any]
    files: list[Path]
    referenced_series: set[str]


def _scan(folder: Path) -> dict[str, _Series]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if (folder / "index.sqlite").is_file() and (folder / "store").is_dir():
        # A node's storage: its instances are under store/; duplicates/ holds the differing
        # copies the keep_first policy set aside, which are not the stored instances.
        folder = folder / "store"
    series: dict[str, _Series] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "Modality",
                                                "SOPClassUID", "Manufacturer", "SequenceName", "SeriesDescription",
                                                "ProtocolName", "ScanningSequence", "ReferencedSeriesSequence"])
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue  # not DICOM (an index, a log): the folder may be a node's storage
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            continue
        entry = series.get(uid)
        if entry is None:
            entry = series[uid] = _Series(
                study_uid=str(ds.get("StudyInstanceUID", "")), modality=str(ds.get("Modality", "")),
                sop_class=str(ds.get("SOPClassUID", "")), manufacturer=str(ds.get("Manufacturer", "")),
                attributes={k: ds.get(k) for k in ("SequenceName", "SeriesDescription", "ProtocolName",
                                                  "ScanningSequence")},
                files=[], referenced_series=set())
        entry.files.append(path)
        for item in ds.get("ReferencedSeriesSequence", []) or []:
            if "SeriesInstanceUID" in item:
                entry.referenced_series.add(str(item.SeriesInstanceUID))
    return series


def _technique_of(entry: _Series) -> str | None:
    from analyzers.brainmets.inference import TechniqueError, detect_technique

    try:
        return str(detect_technique(entry.attributes))
    except TechniqueError:
        return None


def _from_folder(folder: Path, technique: str, labels_from: str) -> tuple[list[LabelledCase], list[str]]:
    """The cases of a scanned folder, and what was skipped (for the message when none is found)."""
    from analyzers._shared.outputs import MANUFACTURER

    series = _scan(folder)
    segs = [(uid, s) for uid, s in series.items() if s.modality == "SEG" or s.sop_class == _SEG_SOP_CLASS]
    own = [uid for uid, s in segs if s.manufacturer == MANUFACTURER]
    unreferenced = [uid for uid, s in segs if not s.referenced_series]
    techniques = {uid: _technique_of(s) for uid, s in series.items()}
    cases: list[LabelledCase] = []
    for _, seg in segs:
        if seg.manufacturer == MANUFACTURER:
            continue
        for drawn_on in sorted(seg.referenced_series & series.keys()):
            source = series[drawn_on]
            if techniques[drawn_on] == technique:
                cases.append(LabelledCase(f"{source.study_uid}/{drawn_on}", tuple(source.files), tuple(seg.files)))
            elif technique == "mprage" and labels_from == "space" and techniques[drawn_on] == "space":
                for uid, other in series.items():
                    if other.study_uid == source.study_uid and techniques[uid] == "mprage":
                        cases.append(LabelledCase(f"{other.study_uid}/{uid}", tuple(other.files),
                                                  tuple(seg.files), tuple(source.files)))
    skipped = []
    if own:
        skipped.append(f"{len(own)} SEG series made by pacsnode itself (its predictions are not labels)")
    if unreferenced:
        skipped.append(f"{len(unreferenced)} SEG series without a Referenced Series Sequence "
                       "(name their image series in a labels.csv)")
    unique = {c.case_id: c for c in cases}
    return [unique[k] for k in sorted(unique)], skipped


def _files(path: Path) -> tuple[Path, ...]:
    if path.is_dir():
        return tuple(sorted(p for p in path.rglob("*") if p.is_file()))
    if path.is_file():
        return (path,)
    raise LabelsError(f"{path} does not exist")


def _from_csv(labels_csv: Path) -> list[LabelledCase]:
    root = labels_csv.parent
    cases = []
    with open(labels_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"series_dir", "seg"} - set(reader.fieldnames or [])
        if missing:
            raise LabelsError(f"{labels_csv}: columns {sorted(missing)} are missing "
                              "(needed: series_dir, seg; optional: seg_on, case)")
        for number, row in enumerate(reader, start=2):
            if not row["series_dir"] or not row["seg"]:
                raise LabelsError(f"{labels_csv}, line {number}: series_dir and seg must not be empty")
            seg_on = _files(root / row["seg_on"]) if row.get("seg_on") else ()
            cases.append(LabelledCase(row.get("case") or row["series_dir"], _files(root / row["series_dir"]),
                                      _files(root / row["seg"]), seg_on))
    return cases


def find_labelled_cases(source: Path, technique: Literal["space", "mprage"],
                        labels_from: Literal["truth", "space"] = "truth") -> list[LabelledCase]:
    """The labelled cases of a folder of DICOM files or of a ``labels.csv`` (see the module doc).

    Raises
    ------
    LabelsError
        Nothing labelled of the technique was found, or the CSV is broken.
    """
    source = Path(source)
    skipped: list[str] = []
    if source.is_file():
        cases = _from_csv(source)
    elif source.is_dir():
        cases, skipped = _from_folder(source, technique, labels_from)
    else:
        raise LabelsError(f"{source} is neither a folder of DICOM files nor a labels.csv")
    if not cases:
        wanted = "a SEG on a SPACE series and an MPRAGE series in the same study" if (
            technique == "mprage" and labels_from == "space") else f"a SEG that references a {technique} series"
        raise LabelsError(f"no labelled {technique} study in {source}: each case needs {wanted}"
                          + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
    return cases


def labelled_case_arrays(case: LabelledCase) -> tuple[Any, Any]:
    """SimpleITK image and binary label image (the image's grid) of one labelled case."""
    from analyzers._shared.volume import SegmentationError, SeriesGeometryError, load_segmentation, load_series
    from analyzers.brainmets.registration import register_rigid, transfer_labels

    try:
        volume = load_series(list(case.image_files))
        drawn_on = load_series(list(case.seg_on)) if case.seg_on else volume
        masks = load_segmentation(list(case.seg_files), drawn_on)
    except (SeriesGeometryError, SegmentationError) as exc:
        raise LabelsError(f"case {case.case_id}: {exc}") from exc
    if not masks:
        raise LabelsError(f"case {case.case_id}: the SEG has no segment")
    union = np.any(np.stack(list(masks.values())), axis=0).astype(np.uint8)
    image = volume.to_sitk()
    labels = drawn_on.to_sitk(array=union)
    if case.seg_on:
        transform = register_rigid(image, drawn_on.to_sitk())
        return image, transfer_labels(labels, image, transform)
    return image, labels


def describe(cases: Sequence[LabelledCase]) -> str:
    """One line naming how many cases and how many carry labels by registration."""
    carried = sum(bool(c.seg_on) for c in cases)
    return f"{len(cases)} labelled case(s)" + (f", {carried} with labels carried by registration" if carried else "")
