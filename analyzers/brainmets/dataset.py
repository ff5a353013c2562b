"""nnU-Net v2 datasets, compact plans and results folders for the brain-metastasis models.

* :func:`write_phantom_dataset` writes an nnU-Net raw dataset
  (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``)
  from brain-metastasis phantoms; for the MPRAGE model the labels either come
  from the MPRAGE truth (the study's setting A analogue) or are drawn on SPACE and
  carried onto MPRAGE by rigid registration (setting B of "MRI cross-technique
  transfer learning for brain metastasis detection", Eur Radiol Exp 2025;9:15).
* :func:`compact_plans` is an nnU-Net v2 ``plans.json`` for a small
  ``3d_fullres`` U-Net (nnU-Net's PlainConvUNet, fewer features and stages) that
  trains on CPU; stock nnU-Net reads it like any other plans file.
* :func:`write_results_folder` lays out a results folder (``dataset.json``,
  ``plans.json``, ``fold_N/checkpoint_final.pth``) with nnU-Net's checkpoint keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analyzers.brainmets.registration import register_rigid, sitk_image, transfer_labels

__all__ = [
    "CONFIGURATION",
    "LABEL_NAME",
    "DatasetError",
    "balance_lesion_sampling",
    "compact_plans",
    "dataset_json",
    "phantom_case_arrays",
    "untrained_network",
    "write_dataset_cases",
    "write_phantom_dataset",
    "write_results_folder",
]

CONFIGURATION = "3d_fullres"
LABEL_NAME = "metastasis"


class DatasetError(ValueError):
    """A dataset or plans request that cannot be honoured."""


def dataset_json(n_training: int, channel: str = "T1C") -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json`` of a single-channel, binary metastasis dataset."""
    if n_training < 1:
        raise DatasetError("a dataset needs at least one training case")
    return {
        "channel_names": {"0": channel},
        "labels": {"background": 0, LABEL_NAME: 1},
        "numTraining": int(n_training),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
    }


def compact_plans(
    dataset_name: str,
    spacing_zyx: Sequence[float],
    median_shape_zyx: Sequence[int],
    intensity: Mapping[str, float],
    *,
    patch_size: Sequence[int] = (48, 64, 64),
    base_features: int = 8,
    n_stages: int = 4,
    batch_size: int = 2,
) -> dict[str, Any]:
    """A stock-format nnU-Net v2 plans dict for a small 3D U-Net.

    ``intensity`` holds the foreground statistics nnU-Net records per channel
    (``mean``, ``std``, ``median``, ``min``, ``max``, ``percentile_00_5``,
    ``percentile_99_5``); z-score normalisation does not use them but nnU-Net
    expects them.
    """
    if n_stages < 2:
        raise DatasetError("a U-Net needs at least two stages")
    divisor = 2 ** (n_stages - 1)
    if any(int(p) % divisor for p in patch_size):
        raise DatasetError(f"patch_size {tuple(patch_size)} must be divisible by {divisor}")
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(base_features * 2**i, 320) for i in range(n_stages)],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n_stages,
            "strides": strides,
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = "resample_data_or_seg_to_shape"
    configuration = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [float(s) for s in median_shape_zyx],
        "spacing": [float(s) for s in spacing_zyx],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": resample,
        "resampling_fn_seg": resample,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": resample,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": architecture,
        "batch_dice": True,
    }
    keys = ("max", "mean", "median", "min", "percentile_00_5", "percentile_99_5", "std")
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": [int(s) for s in median_shape_zyx],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "pacsnode compact plans (nnU-Net v2 format)",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {k: float(intensity.get(k, 0.0)) for k in keys}},
    }


def untrained_network(plans: Mapping[str, Any], dataset: Mapping[str, Any]) -> Any:
    """The network nnU-Net builds from ``plans`` (no deep supervision), randomly initialised."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(dict(plans))
    configuration = manager.get_configuration(CONFIGURATION)
    n_out = manager.get_label_manager(dict(dataset)).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(
        manager, configuration, len(dataset["channel_names"]), n_out, enable_deep_supervision=False
    )


def write_results_folder(
    folder: Path,
    plans: Mapping[str, Any],
    dataset: Mapping[str, Any],
    state_dicts: Sequence[Mapping[str, Any]],
    mirroring_axes: Sequence[int] = (0, 1, 2),
) -> Path:
    """Write ``dataset.json``, ``plans.json`` and ``fold_i/checkpoint_final.pth`` per state dict."""
    import torch

    if not state_dicts:
        raise DatasetError("a results folder needs at least one fold")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    for fold, weights in enumerate(state_dicts):
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        checkpoint = {
            "network_weights": dict(weights),
            "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": CONFIGURATION, "fold": fold},
            "inference_allowed_mirroring_axes": tuple(mirroring_axes),
            "current_epoch": 0,
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def phantom_case_arrays(
    case: Any, technique: Literal["space", "mprage"], labels_from: Literal["truth", "space"] = "truth"
) -> tuple[Any, Any]:
    """SimpleITK image and label image of one phantom case for training.

    ``labels_from="space"`` (MPRAGE only) carries the SPACE labels onto MPRAGE by
    rigid registration (setting B); ``"truth"`` uses the phantom's own labels of
    the series.
    """
    if technique not in ("space", "mprage"):
        raise DatasetError(f"unknown technique {technique!r}")
    series = {s.folder: s for s in case.series}

    def ijk(name: str) -> np.ndarray:
        grid_affine = case.truth_maps[f"{name}_affine_lps"]
        aff = np.eye(4)
        aff[:3, :3] = grid_affine[:3, :3][:, ::-1]
        aff[:3, 3] = grid_affine[:3, 3]
        return aff

    image = sitk_image(series[technique].pixels[0].astype(np.float32), ijk(technique))
    if labels_from == "space" and technique == "mprage":
        space = sitk_image(series["space"].pixels[0].astype(np.float32), ijk("space"))
        transform = register_rigid(image, space)
        space_labels = sitk_image((case.truth_maps["space_lesion_labels"] > 0).astype(np.uint8), ijk("space"))
        return image, transfer_labels(space_labels, image, transform)
    labels = (case.truth_maps[f"{technique}_lesion_labels"] > 0).astype(np.uint8)
    return image, sitk_image(labels, ijk(technique))


def write_dataset_cases(raw_folder: Path, cases: Iterable[tuple[Any, Any]], count: int) -> Path:
    """Write ``count`` (SimpleITK image, label image) pairs as an nnU-Net raw dataset."""
    import shutil

    import SimpleITK as sitk

    raw_folder = Path(raw_folder)
    for sub in ("imagesTr", "labelsTr"):
        shutil.rmtree(raw_folder / sub, ignore_errors=True)  # cases of an earlier, larger run
        (raw_folder / sub).mkdir(parents=True)
    written = 0
    for n, (image, labels) in enumerate(cases):
        name = f"bm_{n:04d}"
        sitk.WriteImage(image, str(raw_folder / "imagesTr" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(labels, str(raw_folder / "labelsTr" / f"{name}.nii.gz"))
        written += 1
    if written != count:
        raise DatasetError(f"expected {count} cases, got {written}")
    (raw_folder / "dataset.json").write_text(json.dumps(dataset_json(count), indent=2))
    return raw_folder


def write_phantom_dataset(
    raw_folder: Path,
    cases: Sequence[Any],
    technique: Literal["space", "mprage"],
    labels_from: Literal["truth", "space"] = "truth",
) -> Path:
    """Write an nnU-Net raw dataset of phantom cases into ``raw_folder``."""
    return write_dataset_cases(raw_folder, (phantom_case_arrays(c, technique, labels_from) for c in cases),
                               len(cases))


def balance_lesion_sampling(preprocessed_folder: Path, *, per_lesion: int = 100, seed: int = 0) -> int:
    """Make every lesion equally likely as a training patch centre; return the lesion count.

    nnU-Net centres its foreground-oversampled patches on a voxel drawn uniformly from
    ``properties["class_locations"]`` (a sample of all foreground voxels of the case),
    so a lesion is drawn in proportion to its volume: a one-voxel metastasis next to a
    1,000-voxel one is almost never the centre of a patch, and the network learns to
    ignore single-voxel spots. This rewrites the locations of each preprocessed case as
    ``per_lesion`` voxels drawn (with replacement) from every connected component
    (26-connectivity) of the label, so the draw is uniform over lesions. Only the
    ``.pkl`` properties change; images, labels and the trainer stay stock nnU-Net.
    """
    import pickle

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from analyzers.brainmets.metrics import connected_components

    if per_lesion < 1:
        raise DatasetError("per_lesion must be at least 1")
    folder = Path(preprocessed_folder)
    dataset = infer_dataset_class(str(folder))(str(folder))
    rng = np.random.default_rng(seed)
    lesions = 0
    for identifier in dataset.identifiers:
        _, seg, _, properties = dataset.load_case(identifier)
        label = np.asarray(seg[:])
        if label.ndim != 4:
            raise DatasetError(f"{identifier}: expected a (channel, z, y, x) label, got shape {label.shape}")
        components, count = connected_components(label[0] > 0)
        locations = []
        for lesion in range(1, count + 1):
            voxels = np.argwhere(components == lesion)
            picked = voxels[rng.integers(0, len(voxels), size=per_lesion)]
            locations.append(np.concatenate([np.zeros((per_lesion, 1), dtype=picked.dtype), picked], axis=1))
        key = next((k for k in properties["class_locations"] if k not in (0, (0,))), 1)
        properties["class_locations"][key] = np.concatenate(locations) if locations else []
        with open(folder / f"{identifier}.pkl", "wb") as handle:
            pickle.dump(properties, handle)
        lesions += count
    return lesions
