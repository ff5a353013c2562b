"""Preprocessing, deep features and feature selection of the meningioma analyzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from analyzers.meningioma.deep_features import (
    DTL_FEATURE_COUNT,
    INPUT_SIZE,
    START_WEIGHTS_FILE,
    BackboneConfig,
    DtlNetwork,
    FineTuneConfig,
    deep_features,
    fine_tune,
    load_network,
    max_roi_slice,
    resolve_start_weights,
    slice_tensor,
)
from analyzers.meningioma.errors import ModelError
from analyzers.meningioma.preprocessing import N4Settings, n4_bias_correction, preprocess, resample_to_spacing
from analyzers.meningioma.selection import (
    LassoScore,
    fit_lasso_score,
    icc_2_1,
    perturbed_rois,
    spearman_prune,
)

TINY = BackboneConfig(layers=(1, 1, 1, 1), width_per_group=4)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _ball_case(bias: bool = True) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    z, y, x = np.mgrid[0:20, 0:48, 0:48].astype(np.float64)
    head = ((x - 24) / 22) ** 2 + ((y - 24) / 22) ** 2 + ((z - 10) / 9.5) ** 2 <= 1
    ball = ((x - 30) ** 2 + (y - 24) ** 2 + ((z - 10) * 2) ** 2) <= 36
    truth = np.where(head, 500.0, 0.0)
    truth[ball] = 1000.0
    field = 1.0 + 0.4 * (x - 24) / 24 if bias else np.ones_like(x)
    image = sitk.GetImageFromArray((truth * field).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 4.0))
    mask = sitk.GetImageFromArray(ball.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask, head & ~ball


def test_n4_removes_a_linear_bias_field() -> None:
    image, _, tissue = _ball_case()
    corrected, field = n4_bias_correction(image, N4Settings(shrink_factor=2, iterations=(30, 20)))
    before = sitk.GetArrayFromImage(image)[tissue]
    after = sitk.GetArrayFromImage(corrected)[tissue]
    cv_before = before.std() / before.mean()
    cv_after = after.std() / after.mean()
    assert cv_after < 0.5 * cv_before
    assert sitk.GetArrayFromImage(field).min() > 0


def test_resampling_is_1mm_bspline_image_and_nearest_mask() -> None:
    image, mask, _ = _ball_case(bias=False)
    case = preprocess(image, mask, (1.0, 1.0, 1.0), N4Settings(shrink_factor=2, iterations=(5,)))
    assert case.image.GetSpacing() == (1.0, 1.0, 1.0)
    assert case.image.GetSize() == (96, 96, 80)
    assert case.mask.GetSize() == case.image.GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(case.mask))) == {0, 1}
    # Nearest neighbour keeps the ROI volume (up to the boundary voxels).
    volume_before = sitk.GetArrayFromImage(mask).sum() * 16.0
    volume_after = sitk.GetArrayFromImage(case.mask).sum() * 1.0
    assert volume_after == pytest.approx(volume_before, rel=0.15)
    # B-spline interpolation: smooth, not piecewise constant, inside the head.
    resampled = resample_to_spacing(image, (1.0, 1.0, 1.0))
    assert len(np.unique(sitk.GetArrayFromImage(resampled))) > 10


def test_preprocess_rejects_an_empty_roi() -> None:
    image, mask, _ = _ball_case()
    with pytest.raises(ValueError, match="empty"):
        preprocess(image, mask * 0)


def test_max_roi_slice_and_network_input() -> None:
    image, mask, _ = _ball_case(bias=False)
    roi = sitk.GetArrayFromImage(mask)
    assert max_roi_slice(roi) == 10
    tensor = slice_tensor(image, mask)
    assert tensor.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    assert tensor.dtype == torch.float32


def test_resnet50_gives_2048_pooled_features() -> None:
    network = DtlNetwork()
    assert network.config.is_resnet50
    image, mask, _ = _ball_case(bias=False)
    features = deep_features(network, slice_tensor(image, mask))
    assert features.shape == (1, DTL_FEATURE_COUNT)
    assert np.all(np.isfinite(features))


def test_weights_file_from_the_model_folder_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = DtlNetwork(TINY)
    site = tmp_path / "site-model"
    site.mkdir()
    torch.save(trained.state_dict(), site / START_WEIGHTS_FILE)
    found = resolve_start_weights(site, tmp_path / "reference-absent")
    assert found == site / START_WEIGHTS_FILE
    loaded = load_network(found, TINY)
    batch = torch.randn(2, 3, 64, 64)
    trained.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(trained(batch), loaded(batch))
    # A torchvision-style backbone state dict (e.g. a site's ImageNet file) loads too.
    torch.save(trained.backbone.state_dict(), tmp_path / "backbone.pt")
    backbone_only = load_network(tmp_path / "backbone.pt", TINY)
    with torch.no_grad():
        assert torch.equal(trained.features(batch), backbone_only.eval().features(batch))


def test_no_weights_anywhere_means_random_start_and_bad_files_are_errors(tmp_path: Path) -> None:
    assert resolve_start_weights(None, tmp_path) is None
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_network(tmp_path / "broken.pt", TINY)
    torch.save(DtlNetwork(TINY).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ModelError, match="do not fit"):
        load_network(tmp_path / "tiny.pt", BackboneConfig(layers=(1, 1, 2, 1), width_per_group=4))


def test_fine_tuning_runs_one_epoch_with_the_study_optimiser() -> None:
    config = FineTuneConfig(epochs=1, batch_size=4)
    assert (FineTuneConfig().learning_rate, FineTuneConfig().batch_size, FineTuneConfig().epochs) == (0.01, 32, 30)
    torch.manual_seed(0)
    network = DtlNetwork(TINY)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    inputs = torch.randn(8, 3, 64, 64)
    labels = [0, 1] * 4
    report = fine_tune(network, inputs, labels, config, validation=(inputs[:4], labels[:4]))
    assert len(report.train_loss) == 1 and np.isfinite(report.train_loss[0])
    assert len(report.validation_auc) == 1
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("classifier") for k in changed)
    assert any(k.startswith("backbone.conv1") for k in changed)


def test_icc_2_1_matches_shrout_fleiss_worked_example() -> None:
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(2,1) = 0.29.
    ratings = np.array(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
        dtype=float,
    )
    assert icc_2_1(ratings[:, :, None])[0] == pytest.approx(0.29, abs=0.005)
    identical = np.repeat(ratings[:, :1, None], 2, axis=1)
    assert icc_2_1(identical)[0] == pytest.approx(1.0)


def test_perturbed_rois_grow_and_shrink_by_one_voxel() -> None:
    _, mask, _ = _ball_case()
    dilated, eroded = perturbed_rois(mask, radius_mm=2.0)
    n = sitk.GetArrayFromImage(mask).sum()
    assert sitk.GetArrayFromImage(dilated).sum() > n > sitk.GetArrayFromImage(eroded).sum() > 0


def test_spearman_pruning_keeps_the_better_of_a_correlated_pair() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    strong = y + rng.normal(0, 0.5, 80)
    weaker_copy = strong + rng.normal(0, 0.15, 80)  # |rho| > 0.9 with strong, lower AUC
    independent = rng.normal(0, 1, 80)
    kept = spearman_prune(np.column_stack([weaker_copy, strong, independent]), y, 0.9)
    assert list(kept) == [1, 2]


def test_lasso_score_selects_informative_features_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    informative = y[:, None] * 2.0 + rng.normal(0, 1, (60, 2))
    noise = rng.normal(0, 1, (60, 6))
    constant = np.ones((60, 1))
    x = np.column_stack([informative, noise, constant])
    names = [f"f{i}" for i in range(x.shape[1])]
    icc_pair = (x[:20] + rng.normal(0, 0.01, (20, x.shape[1])), x[:20] + rng.normal(0, 0.01, (20, x.shape[1])))
    score = fit_lasso_score(x, y, names, second_delineation=icc_pair, seed=0)
    assert {"f0", "f1"} <= set(score.names)
    assert score.report.non_constant == 8
    case = dict(zip(names, x[0], strict=True))
    z = (np.array([case[n] for n in score.names]) - score.means) / score.scales
    assert score.score(case) == pytest.approx(score.intercept + z @ np.array(score.coefficients))
    scores = np.array([score.score(dict(zip(names, row, strict=True))) for row in x])
    assert scores[y == 1].mean() > scores[y == 0].mean()
    assert LassoScore.from_json(score.to_json()) == score


def test_icc_filter_drops_unstable_features() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 20)
    x = y[:, None] * 1.5 + rng.normal(0, 1, (40, 3))
    first = x.copy()
    second = x.copy()
    second[:, 2] = rng.normal(0, 1, 40)  # feature 2 disagrees between delineations
    score = fit_lasso_score(x, y, ["a", "b", "c"], second_delineation=(first, second))
    assert score.report.stable == 2
    assert "c" not in score.names
