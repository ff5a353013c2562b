"""brainmets: the shipped reference models (SPACE and MPRAGE) and how the analyzer finds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyzers.brainmets.analyzer import REFERENCE_MODEL_DIR, BrainmetsAnalyzer, BrainmetsSettings, reference_model
from analyzers.brainmets.inference import check_model_folder
from analyzers.brainmets.train import TrainingError, train_phantom_model
from analyzers.contract import UnsuitableInput


@pytest.mark.parametrize("technique", ["space", "mprage"])
def test_reference_model_is_shipped_small_and_carded(technique: str) -> None:
    folder = reference_model(technique)
    assert folder == REFERENCE_MODEL_DIR / technique
    assert check_model_folder(folder) == ["all"]
    weights = sum(p.stat().st_size for p in folder.glob("fold_*/*.pth"))
    assert 0 < weights < 20 * 2**20
    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    assert card["name"] == f"brainmets-{technique}"
    assert "NOT FOR CLINICAL USE" in card["clinical_use"]
    metrics = {m["name"]: m for m in card["metrics"]}
    pooled = metrics["pooled instance F1"]
    assert 0.0 <= pooled["value"] <= 1.0 and pooled["note"].startswith("TP ")
    assert "false-positive instances on vessels (sum over held-out cases)" in metrics
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [24, 32, 32]


def test_mprage_series_get_the_shipped_mprage_model_unless_configured() -> None:
    analyzer = BrainmetsAnalyzer()
    folder, label = analyzer._model_folder("mprage", BrainmetsSettings())
    assert folder == REFERENCE_MODEL_DIR / "mprage" and label == "MPRAGE model"
    folder, _ = analyzer._model_folder("space", BrainmetsSettings())
    assert folder == REFERENCE_MODEL_DIR / "space"
    configured = Path("/models/site-mprage")
    assert analyzer._model_folder("mprage", BrainmetsSettings(mprage_model=configured))[0] == configured
    # Setting B has no shipped model: it must be configured.
    with pytest.raises(UnsuitableInput, match="SPACE-derived labels"):
        analyzer._model_folder("mprage", BrainmetsSettings(cross_technique=True))


def test_init_weights_of_another_network_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzers.brainmets.dataset import compact_plans, dataset_json, untrained_network, write_results_folder

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path))  # training sets them; restored after the test
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")

    # A 4-stage network's checkpoint cannot start the 3-stage training network.
    plans = compact_plans("Dataset998_Other", (3.0, 3.0, 3.0), (48, 64, 53), {"mean": 1.0})
    other = write_results_folder(tmp_path / "other", plans, dataset_json(1),
                                 [untrained_network(plans, dataset_json(1)).state_dict()])
    with pytest.raises(TrainingError, match="does not hold weights of this network"):
        train_phantom_model(tmp_path / "run", cases=2, seed=7, technique="space", labels_from="truth", epochs=1,
                            iterations=1, spacing_mm=3.0, init_weights=other / "fold_0" / "checkpoint_final.pth")


def test_lesion_balanced_sampling_draws_every_lesion_alike(tmp_path: Path) -> None:
    """After balancing, nnU-Net's foreground patch centres (a uniform draw from
    ``class_locations``) fall on a one-voxel lesion as often as on a large one."""
    import pickle

    import numpy as np

    from analyzers.brainmets.dataset import DatasetError, balance_lesion_sampling

    seg = np.zeros((1, 12, 12, 12), dtype=np.int8)
    seg[0, 1:6, 1:6, 1:6] = 1  # 125 voxels
    seg[0, 9, 9, 9] = 1  # one voxel
    cases = {"with_lesions": seg, "empty": np.zeros_like(seg)}
    for name, label in cases.items():
        np.savez(tmp_path / f"{name}.npz", data=np.zeros(label.shape, dtype=np.float32), seg=label)
        locations = np.argwhere(label == 1)  # what nnU-Net's preprocessor stores: every lesion voxel
        with open(tmp_path / f"{name}.pkl", "wb") as handle:
            pickle.dump({"class_locations": {1: locations}, "spacing": [2.0, 2.0, 2.0]}, handle)
    assert balance_lesion_sampling(tmp_path, per_lesion=50) == 2
    with open(tmp_path / "with_lesions.pkl", "rb") as handle:
        properties = pickle.load(handle)
    assert properties["spacing"] == [2.0, 2.0, 2.0]  # the rest of the properties is kept
    drawn = properties["class_locations"][1]
    assert drawn.shape == (100, 4)
    assert (drawn[:, 0] == 0).all() and (seg[tuple(drawn.T)] == 1).all()
    on_single = np.all(drawn[:, 1:] == (9, 9, 9), axis=1)
    assert on_single.sum() == 50  # was 1 of 126 before
    with open(tmp_path / "empty.pkl", "rb") as handle:
        assert len(pickle.load(handle)["class_locations"][1]) == 0
    with pytest.raises(DatasetError, match="per_lesion"):
        balance_lesion_sampling(tmp_path, per_lesion=0)
