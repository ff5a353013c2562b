"""Every output kind of every analyzer, and the phantoms themselves, open in every reader.

On the phantom studies analyzed by one node (tests/viewer_study.py, the shipped routes): each
stored instance passes ``dciodvfy`` without errors and pydicom's strict read
(``reading_validation_mode = RAISE``); each SEG, Parametric Map and SR reads back with highdicom;
each SR opens in dcmtk's ``dsrdump`` and ``dsr2html``; every Decimal String of an output fits 16
characters and SR measurements carry at most 4 significant digits; Device Observer Name names
pacsnode once and no Volume carries a derivation.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from tests.viewer_study import AnalyzedNode

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ANALYZERS = {"dsc", "dce", "meningioma", "brainmets", "spine", "qc"}
PM = "1.2.840.10008.5.1.4.1.1.30"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is missing: run `make test`, which installs dcmtk and dicom3tools")


def _elements(dataset: Dataset) -> Iterator[pydicom.DataElement]:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                yield from _elements(item)
        else:
            yield element


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _strict_read(path: Path) -> Dataset:
    previous = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        dataset = pydicom.dcmread(path)
        for _ in _elements(dataset):  # values are validated as they are decoded
            pass
        return dataset
    finally:
        pydicom_config.settings.reading_validation_mode = previous


def test_every_output_and_phantom_conforms(analyzed_node: AnalyzedNode, tmp_path: Path) -> None:
    _need("dciodvfy")
    _need("dsrdump")
    outputs = [f for f in analyzed_node.files() if f[0].startswith(("pacsnode", "QC "))]
    made_by = {d.split()[1] for d, m, _ in outputs if d.startswith("pacsnode")} | {"qc"}
    jobs = analyzed_node.rows("SELECT route, state, error FROM jobs WHERE state != 'done'")
    assert made_by == ANALYZERS, f"outputs of {sorted(made_by)}; jobs not done: {jobs}"
    kinds = {(d.split()[1] if d.startswith("pacsnode") else "qc", m) for d, m, _ in outputs}
    for expected in (("dsc", "SEG"), ("dsc", "SR"), ("dsc", "MR"), ("dce", "MR"), ("dce", "SR"),
                     ("brainmets", "SEG"), ("brainmets", "SR"), ("meningioma", "SR"), ("spine", "SR")):
        assert expected in kinds, f"no {expected[1]} from {expected[0]}: {sorted(kinds)}"
    inputs: dict[Path, tuple[str, Path]] = {}
    for description, _modality, path in analyzed_node.files("MR"):
        if not description.startswith("pacsnode"):
            inputs.setdefault(path.parent, (description, path))  # one file per phantom series
    failures: list[str] = []
    for description, path in sorted(inputs.values()):
        failures += [f"phantom {description}: {e}" for e in _dciodvfy_errors(path)]
        _strict_read(path)
    counted = {"SEG": 0, "PM": 0, "SR": 0}
    for description, modality, path in outputs:
        failures += [f"{description}: {e}" for e in _dciodvfy_errors(path)]
        dataset = _strict_read(path)
        for element in _elements(dataset):
            if element.VR == "DS" and element.value is not None:
                raw = element.value if isinstance(element.value, pydicom.multival.MultiValue) else [element.value]
                for value in raw:
                    text = getattr(value, "original_string", None) or str(value)
                    if len(text) > 16:
                        failures.append(f"{description}: {element.keyword} {text!r} is longer than 16")
        if dataset.SOPClassUID == PM:
            hd.pm.ParametricMap.from_dataset(dataset)
            assert dataset.Modality == "MR", description
            counted["PM"] += 1
        elif modality == "SEG":
            hd.seg.Segmentation.from_dataset(dataset)
            counted["SEG"] += 1
        elif modality == "SR":
            counted["SR"] += 1
            hd.sr.srread(path)
            dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=120)
            if dump.returncode != 0:
                failures.append(f"{description}: dsrdump {dump.returncode}: {dump.stderr.strip()[:300]}")
            html = subprocess.run(["dsr2html", str(path), str(tmp_path / "report.html")], capture_output=True,
                                  text=True, timeout=120)
            if html.returncode != 0 or (tmp_path / "report.html").stat().st_size == 0:
                failures.append(f"{description}: dsr2html {html.returncode}: {html.stderr.strip()[:300]}")
            failures += _sr_content_problems(description, dataset)
    assert not failures, "\n".join(failures[:40])
    assert counted["SEG"] >= 3 and counted["PM"] >= 10 and counted["SR"] >= len(inputs), counted
    print(f"\nconformance: {len(inputs)} phantom series, {len(outputs)} outputs ({counted}) checked")


def _sr_content_problems(description: str, sr: Dataset) -> list[str]:
    """Observer name once, no derivation on a volume, measurements with at most 4 significant digits."""
    problems = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if name is not None and name.CodeValue == "121013" and item.TextValue.count("pacsnode") > 1:
                problems.append(f"{description}: Device Observer Name {item.TextValue!r}")
            if item.get("ValueType") == "NUM":
                value = item.MeasuredValueSequence[0].NumericValue
                digits = str(value.original_string if hasattr(value, "original_string") else value)
                mantissa = digits.lower().split("e")[0].replace("-", "").replace(".", "").lstrip("0").rstrip("0")
                if len(mantissa) > 4:
                    problems.append(f"{description}: {name.CodeMeaning} = {digits} has more than 4 digits")
                modifiers = [m.ConceptNameCodeSequence[0].CodeValue for m in item.get("ContentSequence", [])]
                if name.CodeValue == "118565006" and "121401" in modifiers:
                    problems.append(f"{description}: Volume with a Derivation")
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.get("ContentSequence", [])))
    return problems
