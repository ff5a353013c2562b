"""``dsc`` end to end with real peers: a DSC phantom study sent by dcmtk ``storescu`` to a running
node (the shipped ``seg`` and ``dsc`` routes, ``send_to`` an Orthanc) → Parametric Maps, SEG and SR
in Orthanc, fetched back and re-read with highdicom.

The phantom is small (56×56×8 voxels of 4 × 4 × 7 mm, 40 frames of 1.5 s, one meningioma), as
in ``tests/test_dsc_analyzer.py`` but 40 frames; the study carries a lesion SEG drawn from the
phantom's truth (the radiologist's SEG). The node runs the shipped reference model. Measured with
the machine's two cores heavily shared (load average 12-15): storescu 22 s for 321 files, outputs
in Orthanc 42 s after the send started (8 s of it the quiet timer), the whole test 91 s.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

pytest.importorskip("analyzers.phantoms.dsc", reason="the dsc phantom generator is not installed")

from analyzers._shared import outputs as out
from analyzers._shared.probability import ProbabilityCalibration, significant
from analyzers._shared.volume import load_series
from analyzers.contract import NOT_FOR_CLINICAL_USE
from analyzers.dsc.analyzer import REFERENCE_MODEL_DIR
from analyzers.dsc.model import DscClassifier
from analyzers.phantoms.dicomio import write_case
from analyzers.phantoms.dsc import simulate_dsc
from sr_templates import codes as c
from sr_templates.dsc import TEMPLATE
from tests.peers import OrthancProcess, have
from tests.test_dce_e2e import DceNode, node_config, shipped_routes, sr_texts, start, storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow,
              pytest.mark.skipif(not have("storescu"), reason="dcmtk storescu is missing")]

GEOMETRY = {"matrix": 56, "slices": 8, "pixel_mm": 4.0, "slice_mm": 7.0, "snr": 80.0, "time_points": 40}
#: Seconds without a new image after which the node takes the series as complete.
QUIET_S = 8.0
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
#: Map quantity → (concept code value, UCUM unit) the PMs must carry.
EXPECTED_MAPS = {
    "CBV": (c.ABSOLUTE_CBV.value, c.ML_PER_100G.value),
    "CBF": (c.ABSOLUTE_CBF.value, c.ML_PER_100G_PER_MIN.value),
    "MTT": (c.MEAN_TRANSIT_TIME.value, c.SECOND.value),
    "PSR": (c.PERCENTAGE_SIGNAL_RECOVERY.value, c.PERCENT.value),
    "K2": ("BSWK2", c.PER_SECOND.value),  # pacsnode private code: no PS3.16 concept for BSW K2
    "rCBV": (c.RELATIVE_CBV.value, c.RATIO_UNIT.value),
    "rCBF": (c.RELATIVE_CBF.value, c.RATIO_UNIT.value),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One meningioma case written as DICOM, with the truth lesion as the study's SEG."""
    case = simulate_dsc(seed=3, case_index=0, label="meningioma", lesions=1, **GEOMETRY)
    folder = tmp_path_factory.mktemp("dsc-e2e")
    write_case(case, folder)
    dynamic = load_series(sorted((folder / "dsc").iterdir()))
    seg = out.build_segmentation(dynamic, [out.Segment(TEMPLATE.segment_classes["lesion"],
                                                       case.truth_maps["lesion_labels"] > 0, tracking_id="drawn")],
                                 out.Algorithm(name="phantom truth", version="1"))
    (folder / "seg").mkdir()
    seg.save_as(folder / "seg" / "seg.dcm")
    files = [*sorted((folder / "dsc").iterdir()), folder / "seg" / "seg.dcm"]
    return {"case": case, "files": files, "study_uid": str(dynamic.headers[0].StudyInstanceUID)}


def _orthanc_outputs(orthanc: OrthancProcess, sop_uids: list[str]) -> list[Dataset]:
    datasets = []
    with httpx.Client(timeout=30) as http:
        for uid in sop_uids:
            found = http.post(orthanc.url + "/tools/find",
                              json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}}).json()
            assert found, f"output {uid} is not in Orthanc"
            datasets.append(dcmread(io.BytesIO(http.get(f"{orthanc.url}/instances/{found[0]}/file").content)))
    return datasets


def _dsc_job(node: DceNode) -> dict[str, Any] | None:
    rows = node.query("SELECT id, state, outputs, findings, error FROM jobs WHERE route = 'dsc'")
    if not rows:
        return None
    assert len(rows) == 1, rows
    return dict(zip(("id", "state", "outputs", "findings", "error"), rows[0], strict=True))


def test_storescu_study_yields_pm_and_sr_in_orthanc(study: dict[str, Any], orthanc: OrthancProcess,
                                                    tmp_path: Path) -> None:
    config = node_config(tmp_path / "node", orthanc, routes=shipped_routes(("seg", "dsc")))
    # The phantom's headers carry no ImagesInAcquisition, so the quiet timer completes the series:
    # 1.5 s can pass between two images of one storescu association on a loaded machine.
    config.write_text(config.read_text().replace("stable_after = 1.5", f"stable_after = {QUIET_S}"))
    node = start(config)
    try:
        started = time.monotonic()
        storescu(node.node.port, study["files"])
        sent = time.monotonic() - started
        node.wait(lambda: (_dsc_job(node) or {}).get("state") in ("done", "failed"), 100, "the dsc job")
        job = _dsc_job(node)
        assert job is not None and job["state"] == "done", job
        node.wait(lambda: node.delivered(job["id"]), 60, "the dsc outputs in Orthanc")
        elapsed = time.monotonic() - started
    finally:
        node.node.stop()
    outputs, findings = json.loads(job["outputs"]), json.loads(job["findings"])
    datasets = _orthanc_outputs(orthanc, outputs)
    assert {str(d.StudyInstanceUID) for d in datasets} == {study["study_uid"]}
    maps = [d for d in datasets if d.SOPClassUID == PARAMETRIC_MAP_STORAGE]
    srs = [d for d in datasets if d.Modality == "SR"]
    assert len(srs) == 1 and len(maps) == 2 * len(EXPECTED_MAPS)  # float maps and their integer companions

    # Parametric Maps re-read with highdicom: quantity code, UCUM unit, values, the notice.
    seen = set()
    for dataset in maps:
        pm = hd.pm.ParametricMap.from_dataset(dataset)
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        label = str(mapping.LUTLabel)
        seen.add(label)
        code, unit = EXPECTED_MAPS[label]
        units = mapping.MeasurementUnitsCodeSequence[0]
        assert (units.CodeValue, units.CodingSchemeDesignator) == (unit, "UCUM"), label
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == code, label
        stored = pm.pixel_array.astype(np.float64)
        real = stored * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
        # NaN (float maps) or a stored value past the mapped range (integer companions) marks
        # voxels without a value: outside the analysed brain, or masked as not positive.
        mapped = stored <= float(mapping.get("RealWorldValueLastValueMapped", np.inf))
        inside = real[np.isfinite(real) & mapped]
        assert inside.size > 1000 and np.ptp(inside) > 0, label
        assert "NOT FOR CLINICAL USE" in str(pm.ContentDescription).upper(), label
        if label == "CBV":
            assert pm.Rows == GEOMETRY["matrix"] and int(pm.NumberOfFrames) == GEOMETRY["slices"]
            assert 0.5 < float(np.median(inside)) < 10.0  # ml/100 g of brain tissue
    assert seen == set(EXPECTED_MAPS)

    # The SR re-read with highdicom: the lesion's probability, its ratios, the disclaimer.
    path = tmp_path / "sr.dcm"
    srs[0].save_as(path, enforce_file_format=True)
    sr = hd.sr.srread(path)
    groups = sr.content.get_volumetric_roi_measurement_groups() or sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    values = {m.name.meaning: m for m in groups[0].get_measurements()}
    probability = values[c.PROBABILITY.meaning]
    assert probability.unit.value == c.PERCENT.value
    lesion = findings["lesions"][0]
    p_metastasis = lesion["probability_dural_metastasis"]
    calibration = ProbabilityCalibration.from_dict(findings["calibration"])
    # Reported: clipped to what the held-out validation supports, 2 significant digits.
    assert p_metastasis == calibration.reported(lesion["probability_model"])
    assert calibration.lower <= p_metastasis <= calibration.upper
    # The SR reports the probability of the class it calls.
    clipped = calibration.clip(lesion["probability_model"])
    expected = 100.0 * significant(clipped if lesion["class"] == "dural_metastasis" else 1.0 - clipped)
    assert float(probability.value) == pytest.approx(expected, abs=1e-6) and float(probability.value) >= 50.0
    texts = sr_texts(sr)
    assert any(t.startswith("Probability of dural metastasis by model pacsnode-dsc-reference") for t in texts)
    assert any(t.startswith("quality: ") for t in texts)
    assert float(values[c.RELATIVE_CBV.meaning].value) == pytest.approx(lesion["rCBV"], rel=1e-3)
    assert float(values[c.RELATIVE_CBF.meaning].value) == pytest.approx(lesion["rCBF"], rel=1e-3)
    assert NOT_FOR_CLINICAL_USE.lower() in " ".join(sr_texts(sr)).lower()
    assert findings["clinical_use"] == NOT_FOR_CLINICAL_USE
    assert findings["lesion_source"] == "SEG of the study"
    shipped = DscClassifier.load(REFERENCE_MODEL_DIR)
    assert findings["model"]["threshold"] == pytest.approx(shipped.threshold)
    assert lesion["class"] == "meningioma", lesion  # the phantom's truth, called by the shipped model
    print(f"\nDSC study ({len(study['files'])} files) by storescu ({sent:.1f} s) -> {len(outputs)} outputs "
          f"in Orthanc: {elapsed:.1f} s, of which {QUIET_S} s quiet-timer wait")
