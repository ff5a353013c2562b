"""Spine CNN, ROI crops, class balance, split, combination and the training command (tiny cohort)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyzers.spine.dataset import crop_lesion, downsample_majority, grouped_split
from analyzers.spine.errors import SpineDataError, SpineModelError
from analyzers.spine.model import (
    INPUT_SIZE,
    HyperParameters,
    SequenceModel,
    SpineCNN,
    SpineModelSet,
    combine_probabilities,
)
from analyzers.spine.train import main


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def test_network_follows_the_study_architecture() -> None:
    net = SpineCNN()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 64, 128]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.features) == 3
    linear = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [128, 2]
    dropout = [m for m in net.classifier if isinstance(m, torch.nn.Dropout)]
    assert dropout[0].p == 0.5
    probabilities = net.probabilities(torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE))
    assert probabilities.shape == (2, 2)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2))
    # Small enough to ship several sequence models well under 20 MB.
    assert sum(p.numel() for p in net.parameters()) < 500_000


def test_crop_is_the_lesion_roi_resized_to_256() -> None:
    image = np.full((3, 60, 50), 100.0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[1, 20:30, 15:25] = True
    image[mask] = 400.0
    crop = crop_lesion(image, mask)
    assert crop.shape == (INPUT_SIZE, INPUT_SIZE)
    assert 0.0 <= crop.min() and crop.max() <= 1.0
    # The lesion (bright) sits in the middle, surrounded by the background (dark).
    assert crop[128, 128] > 0.9 and crop[5, 5] < 0.1
    with pytest.raises(SpineDataError):
        crop_lesion(image, np.zeros(image.shape, dtype=bool))


def test_downsampling_balances_and_split_groups_patients() -> None:
    labels = np.array([0] * 10 + [1] * 30)
    keep = downsample_majority(labels, seed=1)
    assert np.bincount(labels[keep]).tolist() == [10, 10]
    groups = np.array([f"p{i // 2}" for i in range(40)])
    train, test = grouped_split(labels, groups, 0.4, seed=3)
    assert not set(groups[train]) & set(groups[test])
    assert len(set(groups[test])) == 8  # 40 % of 5 hemangioma and of 15 metastasis patients
    assert set(labels[test]) == {0, 1} and set(labels[train]) == {0, 1}


def test_combination_weights_t1_t2_by_auc_and_flags_stir() -> None:
    aucs = {"t1": 0.9, "t2": 0.6, "stir": 0.99}
    combined = combine_probabilities({"t1": 0.8, "t2": 0.2, "stir": 0.0}, aucs)
    assert combined.sequences == ("t1", "t2") and combined.reliable
    assert combined.probability == pytest.approx((0.9 * 0.8 + 0.6 * 0.2) / 1.5)
    assert combined.label == "hemangioma"
    only_stir = combine_probabilities({"stir": 0.3}, aucs)
    assert not only_stir.reliable and only_stir.label == "metastasis"
    with pytest.raises(SpineDataError):
        combine_probabilities({}, aucs)
    with pytest.raises(SpineDataError):
        HyperParameters(learning_rate=-1.0)


def test_training_command_on_a_tiny_phantom_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    status = main(["--sequence", "t2", "--phantom", "--cases", "8", "--seed", "2", "--epochs", "1",
                   "--batch-size", "4", "--search-trials", "2", "--bootstrap", "50", "--threads", "1",
                   "--quiet", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| hemangioma vs metastasis (t2) |" in printed
    card = json.loads((out / "model_card_t2.json").read_text())
    names = [m["name"] for m in card["metrics"]]
    assert "hemangioma vs metastasis (t2): ROC-AUC" in names
    assert "NOT FOR CLINICAL USE" in card["clinical_use"]
    assert len(card["extra"]["search"]) == 2
    model = SequenceModel.load(out, "t2")
    assert 0.0 <= model.validation_auc <= 1.0
    assert SpineModelSet.load(out).models.keys() == {"t2"}
    with pytest.raises(SpineModelError):
        SequenceModel.load(out, "t1")
    # The phantom's opt-in post-contrast series trains a T1C model beside the T2 one.
    assert main(["--sequence", "t1c", "--phantom", "--cases", "6", "--seed", "2", "--epochs", "1",
                 "--batch-size", "4", "--search-trials", "1", "--bootstrap", "20", "--threads", "1",
                 "--quiet", "--out", str(out)]) == 0
    assert SpineModelSet.load(out).models.keys() == {"t2", "t1c"}


def test_every_level_the_detector_names_has_a_code() -> None:
    """The detector labels bodies T10-S1; each level gets an SCT code in the SR (S1 once failed
    the whole job with "unknown vertebral level 'S1'")."""
    from analyzers.spine.detect import _LEVELS
    from sr_templates.spine import vertebra

    assert vertebra("S1").value == "65985001"
    assert all(vertebra(level).scheme_designator == "SCT" for level in _LEVELS)
