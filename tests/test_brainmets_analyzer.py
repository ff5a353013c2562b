"""brainmets: nnU-Net results folder → inference → SEG + SR, on small phantom series.

The model folder is built here in stock nnU-Net v2 format (plans.json,
dataset.json, fold_0/checkpoint_final.pth). Its network has the planned
architecture, but its weights are set by hand (not trained) so that it passes the
z-scored image through the highest-resolution path and thresholds it: bright
voxels become "metastasis". That makes the inference → SEG → SR path produce
several lesions deterministically and fast; detection quality is not tested here.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from analyzers._shared import sanity
from analyzers._shared.brain import BrainExtraction, extract_brain
from analyzers._shared.volume import Volume, load_segmentation, load_series
from analyzers.brainmets.analyzer import BrainmetsAnalyzer, BrainmetsSettings, compare_with_prior
from analyzers.brainmets.dataset import compact_plans, dataset_json, untrained_network, write_results_folder
from analyzers.brainmets.inference import ModelFolderError, NnUNetModel, TechniqueError, detect_technique
from analyzers.contract import NOT_FOR_CLINICAL_USE, AnalysisInput, PriorFinding, SeriesInput, UnsuitableInput
from analyzers.phantoms.brainmets import simulate_brainmets
from analyzers.phantoms.dicomio import write_case


def _threshold_network_folder(folder: Path, threshold: float) -> Path:
    import torch

    torch.set_num_threads(1)
    plans = compact_plans("Dataset990_BrainmetsTest", (3.0, 3.0, 3.0), (48, 64, 53), {"mean": 500.0, "std": 200.0})
    dataset = dataset_json(1)
    net = untrained_network(plans, dataset)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        skip_channel = net.decoder.transpconvs[-1].out_channels
        for stage, first_input in ((net.encoder.stages[0], 0), (net.decoder.stages[-1], skip_channel)):
            for n, block in enumerate(stage.convs if hasattr(stage, "convs") else stage[0].convs):
                block.conv.weight[0, first_input if n == 0 else 0, 1, 1, 1] = 1.0
        seg_layer = net.decoder.seg_layers[-1]
        seg_layer.weight[1, 0, 0, 0, 0] = 1.0
        seg_layer.bias[0] = threshold
    return write_results_folder(folder, plans, dataset, [net.state_dict()])


@pytest.fixture(scope="module", name="fits")
def _fits() -> dict[str, BrainExtraction]:
    return {}


def _brain(fits: dict[str, BrainExtraction], volume: Volume, **options: Any) -> BrainExtraction:
    """:func:`extract_brain` of ``volume``, fitted once per module for the same voxels, geometry and options.

    The MNI152 fit is the slow part of these tests (7 fits of two small series, 10-27 s each on a
    loaded machine) and is deterministic: the same series gives the same mask run after run
    (tests/test_brain_extraction.py) and in another process (tests/test_brainmets_e2e.py compares
    the node's SEG with a mask computed in the test). The returned mask is read-only.
    """
    bound = inspect.signature(extract_brain).bind(volume, **options)
    bound.apply_defaults()
    digest = hashlib.sha256(np.ascontiguousarray(volume.data).tobytes())
    digest.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    digest.update(repr((volume.data.shape, sorted((k, v) for k, v in bound.arguments.items() if k != "volume")))
                  .encode())
    key = digest.hexdigest()
    if key not in fits:
        fits[key] = extract_brain(volume, **options)
        fits[key].mask.flags.writeable = False
    return fits[key]


@pytest.fixture(autouse=True)
def _one_brain_fit_per_series(fits: dict[str, BrainExtraction], monkeypatch: pytest.MonkeyPatch) -> None:
    """The analyzer's brain check (:func:`analyzers._shared.sanity.check_brain`) through :func:`_brain`."""
    monkeypatch.setattr(sanity, "extract_brain", lambda volume, **options: _brain(fits, volume, **options))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("brainmets")
    case = simulate_brainmets(5, 0, metastases=4, spacing_mm=3.0, mprage_tilt_deg=12.0, veins=2)
    write_case(case, root / "case")
    model = _threshold_network_folder(root / "model", threshold=2.0)
    return {"root": root, "case": case, "model": model}


def _series(root: Path, name: str) -> SeriesInput:
    files = tuple(sorted((root / "case" / name).rglob("*.dcm")))
    if not files:
        files = tuple(p for p in sorted((root / "case" / name).rglob("*")) if p.is_file())
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    return SeriesInput(str(head.SeriesInstanceUID), str(head.StudyInstanceUID), files,
                       {"SeriesDescription": str(head.SeriesDescription)})


def _job(root: Path, series: SeriesInput, settings: BrainmetsSettings, priors: tuple[PriorFinding, ...] = ()) \
        -> AnalysisInput:
    return AnalysisInput("job-bm-1", series, {}, priors, settings, root)


def _walk(ds: pydicom.Dataset):  # type: ignore[no-untyped-def]
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_detect_technique() -> None:
    assert detect_technique({"SequenceName": "*spc3d1_164ns"}) == "space"
    assert detect_technique({"SequenceName": "*tfl3d1_16ns"}) == "mprage"
    assert detect_technique({"SeriesDescription": "Ax 3D T1 BRAVO +C"}) == "mprage"
    assert detect_technique({"SeriesDescription": "3D_T1_VISTA_BB +C"}) == "space"
    assert detect_technique({"ScanningSequence": ["GR", "IR"]}) == "mprage"
    with pytest.raises(TechniqueError):
        detect_technique({"SeriesDescription": "localizer"})


def test_compare_with_prior() -> None:
    prior = [
        {"tracking_id": "metastasis 1", "centroid_lps": [0, 0, 0], "volume_ml": 1.0},
        {"tracking_id": "metastasis 2", "centroid_lps": [40, 0, 0], "volume_ml": 1.0},
        {"tracking_id": "metastasis 3", "centroid_lps": [80, 0, 0], "volume_ml": 1.0},
        {"tracking_id": "metastasis 4", "centroid_lps": [0, 80, 0], "volume_ml": 1.0},
    ]
    now = [
        {"centroid_lps": [1, 0, 0], "volume_ml": 1.1},  # stable (+10 %)
        {"centroid_lps": [40, 3, 0], "volume_ml": 1.5},  # growing
        {"centroid_lps": [80, 0, 4], "volume_ml": 0.5},  # shrinking
        {"centroid_lps": [0, -60, 0], "volume_ml": 0.2},  # new
    ]
    status, matched, resolved = compare_with_prior(now, prior, 10.0, 20.0)
    assert status == ["stable", "growing", "shrinking", "new"]
    assert matched == ["metastasis 1", "metastasis 2", "metastasis 3", None]
    assert resolved == ["metastasis 4"]


def test_model_folder_validation(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError):
        NnUNetModel(tmp_path)


def test_space_series_to_seg_and_sr(study: dict[str, object], fits: dict[str, BrainExtraction]) -> None:
    import highdicom as hd

    root = Path(str(study["root"]))
    settings = BrainmetsSettings(space_model=Path(str(study["model"])), mirroring=False, threads=1)
    series = _series(root, "space")
    result = BrainmetsAnalyzer().analyze(_job(root, series, settings))
    seg_ds, sr_ds = result.datasets
    count = result.findings["lesion_count"]
    assert count >= 2 and result.findings["technique"] == "space"
    volume = load_series(series.files)
    # the analyzer's own mask, recomputed the same way: argmax components mostly within 5 mm of the brain
    model = NnUNetModel(Path(str(study["model"])), mirroring=False, threads=1)
    from analyzers.brainmets.operating import OperatingPoint, confident_lesions, grown

    near_brain = grown(_brain(fits, volume).mask, volume.spacing, 5.0)
    probability = model.foreground_probability(volume.to_sitk())  # one inference for both masks below
    own, _ = confident_lesions(probability, volume.affine, OperatingPoint(), near_brain)
    assert len(own.lesions) == count
    everything, _ = confident_lesions(probability, volume.affine, OperatingPoint())
    assert np.array_equal(everything.mask & own.mask, own.mask)
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert str(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue) == "128462008"
    reread = load_segmentation(seg_ds, volume)
    union = np.zeros(volume.shape3d, dtype=bool)
    for mask in reread.values():
        union |= mask
    assert _dice(union, own.mask) == 1.0
    # SR: one group per lesion with volume, diameter, SCOORD3D and a SEG reference
    items = list(_walk(sr_ds))
    assert NOT_FOR_CLINICAL_USE in [str(i.get("TextValue", "")) for i in items]
    tracking_ids = {str(i.TextValue) for i in items if i.get("TextValue", "").startswith("metastasis ")}
    assert tracking_ids == {f"metastasis {n}" for n in range(1, count + 1)}
    assert sum(i.get("ValueType") == "SCOORD3D" for i in items) == count
    referenced = [i for i in items if "ReferencedSOPSequence" in i
                  and i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg_ds.SOPInstanceUID]
    assert len(referenced) == count
    first = result.findings["lesions"][0]
    assert first["volume_ml"] == pytest.approx(own.lesions[0].volume_ml, abs=1e-4)
    # A prior with the same lesions: everything stable, nothing resolved.
    prior = PriorFinding("job-0", series.study_instance_uid, series.series_instance_uid, "20200101",
                         result.findings, "1.0.0")
    again = BrainmetsAnalyzer().analyze(_job(root, series, settings, (prior,)))
    assert again.findings["comparison"]["counts"]["stable"] == count
    assert again.findings["comparison"]["resolved"] == []


def test_oblique_mprage_round_trip(study: dict[str, object], fits: dict[str, BrainExtraction]) -> None:
    root = Path(str(study["root"]))
    series = _series(root, "mprage")
    volume = load_series(series.files)
    image = volume.to_sitk()
    for ijk in ((0, 0, 0), (10, 20, 30), (volume.shape3d[2] - 1, volume.shape3d[1] - 1, volume.shape3d[0] - 1)):
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), volume.index_to_patient(ijk), atol=1e-3)
    assert abs(volume.direction[2, 1]) > 0.1  # the grid is really oblique
    with pytest.raises(UnsuitableInput):  # setting B asked for, but no model trained with SPACE-derived labels
        BrainmetsAnalyzer().analyze(_job(root, series, BrainmetsSettings(space_model=Path(str(study["model"])),
                                                                         cross_technique=True)))
    settings = BrainmetsSettings(mprage_model=Path(str(study["model"])), mirroring=False, threads=1)
    result = BrainmetsAnalyzer().analyze(_job(root, series, settings))
    assert result.findings["technique"] == "mprage"
    seg_ds = result.datasets[0]
    union = np.zeros(volume.shape3d, dtype=bool)
    for mask in load_segmentation(seg_ds, volume).values():
        union |= mask
    model = NnUNetModel(Path(str(study["model"])), mirroring=False, threads=1)
    from analyzers.brainmets.operating import OperatingPoint, confident_lesions, grown

    near_brain = grown(_brain(fits, volume).mask, volume.spacing, 5.0)
    own, _ = confident_lesions(model.foreground_probability(image), volume.affine, OperatingPoint(), near_brain)
    assert _dice(union, own.mask) == 1.0


def test_operating_point_without_lesions_says_no_metastasis_found(
    study: dict[str, object], tmp_path: Path
) -> None:
    """A model folder whose validated threshold no component reaches: no SEG, a coded absent finding."""
    import shutil

    from analyzers.brainmets.operating import OperatingPoint

    folder = tmp_path / "model"
    shutil.copytree(Path(str(study["model"])), folder)
    OperatingPoint(floor=0.5, threshold=0.999999, validation="test phantoms", sensitivity=0.9, fp_per_brain=0.5,
                   fp_per_lesion_free_brain=0.25, n_cases=8, n_lesion_free=4, n_lesions=10).save(folder)
    root = Path(str(study["root"]))
    settings = BrainmetsSettings(space_model=folder, mirroring=False, threads=1)
    result = BrainmetsAnalyzer().analyze(_job(root, _series(root, "space"), settings))
    assert [ds.Modality for ds in result.datasets] == ["SR"]
    assert result.findings["lesion_count"] == 0 and result.findings["lesions"] == []
    sr = result.datasets[0]
    container = sr.ContentSequence[-1].ContentSequence
    coded = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in container if i.ValueType == "CODE"]
    assert coded == [("128462008", "272519000")]  # Secondary malignant neoplasm: Absent
    texts = [str(i.TextValue) for i in container if i.ValueType == "TEXT"]
    assert "No metastasis found." in texts
    assert any("0.9" in t and "false positives per brain" in t and "test phantoms" in t for t in texts)


def test_a_2d_series_is_rejected_with_a_reason(tmp_path: Path) -> None:
    from node.samples import SeriesSpec, write_mr_series  # the demo's sample: a 2D series named like an MPRAGE

    files = tuple(write_mr_series(tmp_path / "demo", SeriesSpec(slices=12, rows=64, columns=64)))
    series = SeriesInput("1.2.3", "1.2.4", files, {"SeriesDescription": "t1_mprage_sag_p2"})
    with pytest.raises(UnsuitableInput, match=r"needs a 3D T1.*2D acquisition with 4\.0 mm"):
        BrainmetsAnalyzer().analyze(_job(tmp_path, series, BrainmetsSettings()))
