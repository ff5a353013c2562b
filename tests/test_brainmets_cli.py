"""brainmets command lines and dataset helpers (fast parts)."""

from __future__ import annotations

import numpy as np
import pytest

from analyzers.brainmets.dataset import DatasetError, compact_plans, dataset_json
from analyzers.brainmets.evaluate import vessel_false_positives


def test_vessel_false_positives() -> None:
    pred = np.zeros((4, 10, 10), dtype=bool)
    gt = np.zeros_like(pred)
    vessels = np.zeros(pred.shape, dtype=np.float32)
    pred[0, 0:2, 0:2] = True  # on a vessel, no lesion: counted
    vessels[0, 1, 1] = 0.8
    pred[2, 5:7, 5:7] = True  # on a lesion and a vessel: a detection, not counted
    gt[2, 5, 5] = True
    vessels[2, 6, 6] = 1.0
    pred[3, 9, 9] = True  # elsewhere: an ordinary false positive, not counted
    assert vessel_false_positives(pred, gt, vessels) == 1


def test_compact_plans_validation() -> None:
    plans = compact_plans("Dataset999_X", (2.0, 2.0, 2.0), (72, 96, 80), {"mean": 1.0})
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [8, 16, 32, 64]
    with pytest.raises(DatasetError):
        compact_plans("D", (2, 2, 2), (10, 10, 10), {}, patch_size=(50, 64, 64))
    with pytest.raises(DatasetError):
        dataset_json(0)


