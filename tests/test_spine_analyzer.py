"""The ``spine`` analyzer on a spine phantom study (T1/T2/STIR), the shipped models and detection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput, Analyzer, SeriesInput, UnsuitableInput
from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.spine import simulate_spine
from analyzers.spine.analyzer import REFERENCE_MODEL_DIR, SpineAnalyzer, SpineSettings, sequence_of
from analyzers.spine.detect import detect_lesions
from analyzers.spine.model import SpineModelSet

SEED, CASE = 5, 1  # a metastasis patient with three lesions (T11, L1, L2)


def _series(folder: Path) -> SeriesInput:
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    description = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesDescription)
    return SeriesInput(folder.name, "study", files, {"SeriesDescription": description})


def _dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _texts(item: pydicom.Dataset) -> list[str]:
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += _texts(child)
    return found


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    case = simulate_spine(seed=SEED, case_index=CASE)
    folder = tmp_path_factory.mktemp("spine-case")
    write_case(case, folder)
    series = {name: _series(folder / name) for name in ("t1", "t2", "stir")}
    scratch = tmp_path_factory.mktemp("scratch")

    def run(own: str, related: dict[str, list[SeriesInput]], **settings: Any) -> Any:
        job = AnalysisInput(f"job-{own}", series[own], related, (), SpineSettings(**settings), scratch)
        return SpineAnalyzer().analyze(job)

    # Siblings arrive under either spine route; the analyzer reads their sequence itself.
    lead = run("t1", {"spine_bodypart": [series["t2"], series["stir"]]})
    stir = run("stir", {"spine": [series["t1"]], "spine_bodypart": [series["t2"]]}, sequence_reports=True)
    return {"case": case, "series": series, "lead": lead, "stir": stir, "run": run, "folder": folder}


def test_contract_and_routes() -> None:
    analyzer = SpineAnalyzer()
    assert isinstance(analyzer, Analyzer)
    assert analyzer.name == "spine"
    assert analyzer.needs == {"spine": "spine?", "spine_bodypart": "spine_bodypart?", "roi": "seg?"}
    assert sequence_of({"SeriesDescription": "t2_tirm_sag"}) == "stir"
    assert sequence_of({"SeriesDescription": "Sag T1 FSE"}) == "t1"
    assert sequence_of({"SeriesDescription": "T1W_TSE_SAG"}) == "t1"
    assert sequence_of({"SeriesDescription": "t1_tse_sag post KM"}) == "t1c"
    assert sequence_of({"SeriesDescription": "sag", "RepetitionTime": 3500, "EchoTime": 98}) == "t2"
    assert sequence_of({"SeriesDescription": "sag"}) is None


def test_analyzer_module_does_not_import_torch() -> None:
    # The node loads analyzer classes at start-up to validate route settings: no torch then.
    code = "import analyzers.spine.analyzer, sys; assert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr


def test_shipped_models_are_small_and_load() -> None:
    models = SpineModelSet.load(REFERENCE_MODEL_DIR)
    assert {"t1", "t2", "stir"} <= set(models.models)
    total = sum(p.stat().st_size for p in REFERENCE_MODEL_DIR.iterdir())
    assert total < 20 * 2**20
    for sequence in ("t1", "t2", "stir"):
        assert (REFERENCE_MODEL_DIR / f"model_card_{sequence}.md").is_file()


def test_shipped_models_were_trained_as_the_study_and_report_held_out_auc() -> None:
    models = SpineModelSet.load(REFERENCE_MODEL_DIR)
    for sequence, model in models.models.items():
        assert (model.hyper.epochs, model.hyper.batch_size, model.hyper.dropout) == (40, 16, 0.5)
        card = json.loads((REFERENCE_MODEL_DIR / f"model_card_{sequence}.json").read_text())
        auc = next(m for m in card["metrics"] if m["name"] == f"hemangioma vs metastasis ({sequence}): ROC-AUC")
        assert auc["confidence"] == 0.95 and auc["ci_lower"] <= auc["value"] <= auc["ci_upper"]
        assert auc["value"] == pytest.approx(model.validation_auc)  # the combination's weight
        assert card["extra"]["command"].startswith(f"pacsnode train spine --sequence {sequence} --phantom")
        assert card["extra"]["reliable_in_combination"] == (sequence in ("t1", "t2"))
    # The study's claim the reference models must reproduce on held-out phantom patients.
    assert models.models["t1"].validation_auc >= 0.9 and models.models["t2"].validation_auc >= 0.9


def test_detection_finds_the_phantom_lesions_and_levels(study: dict[str, Any]) -> None:
    case = study["case"]
    grid = case.series[0].grid
    # The phantom grid's affine is (slice, row, column); the detector takes (column, row, slice).
    affine = grid.affine[:, [2, 1, 0, 3]]
    result = detect_lesions(case.series[0].pixels[0], affine, grid.spacing, case.series[1].pixels[0])
    truth = case.truth_maps["lesion_labels"]
    found = {int(i) for lesion in result.lesions for i in np.unique(truth[lesion.mask]) if i}
    assert found == {info["id"] for info in case.truth["lesions"]}
    assert all(np.any(truth[lesion.mask]) for lesion in result.lesions)  # no false positive
    by_id = {info["id"]: info["level"] for info in case.truth["lesions"]}
    for lesion in result.lesions:
        ids = np.unique(truth[lesion.mask])
        assert lesion.level == by_id[int(ids[ids > 0][0])]


def test_lead_series_gets_the_combined_report(study: dict[str, Any]) -> None:
    result, case = study["lead"], study["case"]
    findings = result.findings
    assert findings["combined_report"] and findings["lesion_source"] == "automatic"
    assert findings["sequences_available"] == ["t1", "t2", "stir"]
    assert findings["clinical_use"] == NOT_FOR_CLINICAL_USE
    truth_levels = sorted(info["level"] for info in case.truth["lesions"])
    assert sorted(row["level"] for row in findings["lesions"]) == truth_levels
    for row in findings["lesions"]:
        assert set(row["p_hemangioma"]) == {"t1", "t2", "stir"}
        assert row["combined_from"] == ["t1", "t2"] and row["combination_reliable"]
    # The shipped models call this metastasis patient's lesions metastases.
    classes = [row["class"] for row in findings["lesions"]]
    assert classes.count("metastasis") >= len(classes) - 1
    modalities = sorted(ds.Modality for ds in result.datasets)
    assert modalities == ["SEG", "SR"]


def test_sr_is_valid_and_reads_back(study: dict[str, Any], tmp_path: Path) -> None:
    result = study["lead"]
    sr = next(ds for ds in result.datasets if ds.Modality == "SR")
    seg = next(ds for ds in result.datasets if ds.Modality == "SEG")
    for ds, name in ((sr, "sr.dcm"), (seg, "seg.dcm")):
        ds.save_as(tmp_path / name)
        assert _dciodvfy_errors(tmp_path / name) == []
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "sr.dcm"))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(result.findings["lesions"])
    methods = set()
    for group in groups:
        for measurement in group.get_measurements():
            methods.add(measurement.method.meaning if measurement.method else None)
            assert 0.0 <= measurement.value <= 100.0
        assert group.roi is not None or group.referenced_segment is not None
    assert {"Classifier on T1-weighted series", "Classifier on T2-weighted series",
            "Classifier on STIR series", "Combined classifier over sequences"} <= methods
    text = " ".join(_texts(pydicom.dcmread(tmp_path / "sr.dcm")))
    assert "NOT FOR CLINICAL USE" in text and "P(hemangioma)" in text
    assert "pacsnode-spine-reference" in text


def test_other_sequence_has_findings_and_no_second_report(study: dict[str, Any]) -> None:
    series = study["series"]
    result = study["run"]("t2", {"spine": [series["stir"], series["t1"]]})
    assert result.datasets == []  # the T1 (lead) job writes the study's one SR
    findings = result.findings
    assert not findings["combined_report"] and findings["lead_series"] == study["case"].series[0].series_uid
    assert findings["lesions"] and all(set(row["p_hemangioma"]) == {"t2"} for row in findings["lesions"])
    assert any("combined SR of the T1 series" in note for note in findings["notes"])


def test_other_sequence_reports_itself_only_when_asked(study: dict[str, Any]) -> None:
    findings = study["stir"].findings
    assert not findings["combined_report"] and findings["sequence"] == "stir"
    assert all(set(row["p_hemangioma"]) == {"stir"} for row in findings["lesions"])
    assert all(not row["combination_reliable"] for row in findings["lesions"])
    assert [ds.Modality for ds in study["stir"].datasets] == ["SR"]
    sr = study["stir"].datasets[0]
    evidence = [*sr.get("CurrentRequestedProcedureEvidenceSequence", []),
                *sr.get("PertinentOtherEvidenceSequence", [])]
    evidence_series = {s.SeriesInstanceUID for item in evidence for s in item.ReferencedSeriesSequence}
    assert study["case"].series[2].series_uid in evidence_series


def test_t2_without_t1_needs_a_seg(study: dict[str, Any]) -> None:
    with pytest.raises(UnsuitableInput, match="T1"):
        study["run"]("t2", {"spine_bodypart": [study["series"]["stir"]]})


def test_lesions_from_a_seg_get_levels_and_no_new_seg(study: dict[str, Any], tmp_path: Path) -> None:
    from analyzers._shared import outputs as out
    from analyzers._shared.volume import load_series
    from sr_templates import SegmentClass
    from sr_templates import codes as c

    case, series = study["case"], study["series"]
    t1 = load_series(series["t1"].files)
    truth = case.truth_maps["lesion_labels"]
    lesion_class = SegmentClass("lesion", "Vertebral lesion", c.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, c.LESION)
    seg = out.build_segmentation(t1, [out.Segment(lesion_class, truth == 1, "truth 1")],
                                 out.Algorithm("phantom truth", "1"), body_part="SPINE")
    folder = tmp_path / "seg"
    folder.mkdir()
    seg.save_as(folder / "seg.dcm")
    roi = SeriesInput("seg", "study", (folder / "seg.dcm",), {"SeriesDescription": "lesion SEG"})
    result = study["run"]("t1", {"spine_bodypart": [series["t2"]], "roi": [roi]})
    findings = result.findings
    assert findings["lesion_source"] == "seg" and len(findings["lesions"]) == 1
    assert findings["lesions"][0]["level"] == case.truth["lesions"][0]["level"]
    assert [ds.Modality for ds in result.datasets] == ["SR"]
