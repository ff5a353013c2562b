"""Deep transfer-learning (DTL) features: ResNet50 on the slice with the largest ROI.

Li et al. (Sci Rep 2025) cropped the axial slice with the largest ROI area from
the 3D ROI, resized it to 224 x 224, fine-tuned an ImageNet ResNet50 (SGD, learning
rate 0.01, batch 32, 30 epochs, data augmentation and dropout, keeping the model
at its best performance) and took the 2,048 globally pooled activations of the
fine-tuned network as DTL features.

Pretrained ImageNet weights are not downloaded by this project. The start point
of fine-tuning is, in order: a weights file in the site's model folder
(``START_WEIGHTS_FILE``), else the project's reference weights (made by training
on phantom cohorts), else a random initialisation, which the model card states.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck, ResNet

from analyzers.meningioma.errors import FeatureExtractionError, ModelError

__all__ = [
    "DTL_FEATURE_COUNT",
    "FINE_TUNED_WEIGHTS_FILE",
    "INPUT_SIZE",
    "START_WEIGHTS_FILE",
    "BackboneConfig",
    "DtlNetwork",
    "FineTuneConfig",
    "FineTuneReport",
    "deep_features",
    "fine_tune",
    "load_network",
    "max_roi_slice",
    "resolve_start_weights",
    "slice_tensor",
]

INPUT_SIZE = 224
DTL_FEATURE_COUNT = 2048
# File names inside a model folder.
START_WEIGHTS_FILE = "resnet50_start.pt"
FINE_TUNED_WEIGHTS_FILE = "dtl_resnet50.pt"
# ImageNet channel statistics: the input convention of torchvision's ResNet50.
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of the backbone.

    ``layers=(3, 4, 6, 3)`` and ``width_per_group=64`` is torchvision's ResNet50.
    Smaller values keep the 2,048-wide pooled output (bottleneck expansion 4 of
    the last stage's 512 planes) and exist for fast tests.
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width_per_group: int = 64
    dropout: float = 0.5
    classes: int = 2

    def __post_init__(self) -> None:
        if min(self.layers) < 1 or self.width_per_group < 1:
            raise ValueError("layers and width_per_group must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def is_resnet50(self) -> bool:
        """Whether this is the study's architecture."""
        return self.layers == (3, 4, 6, 3) and self.width_per_group == 64


class DtlNetwork(nn.Module):
    """ResNet50 backbone, global average pooling, dropout and a grade classifier."""

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config or BackboneConfig()
        if self.config.is_resnet50:
            backbone: ResNet = resnet50(weights=None)
        else:
            backbone = ResNet(
                Bottleneck, list(self.config.layers), width_per_group=self.config.width_per_group
            )
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = nn.Linear(DTL_FEATURE_COUNT, self.config.classes)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """The 2,048 pooled activations per image."""
        return self.backbone(batch)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.dropout(self.features(batch)))


def max_roi_slice(mask: np.ndarray) -> int:
    """Index (axis 0 of a ``(z, y, x)`` array) of the axial slice with the largest ROI."""
    if mask.ndim != 3:
        raise FeatureExtractionError(f"mask must be (z, y, x), got shape {mask.shape}")
    areas = np.count_nonzero(mask, axis=(1, 2))
    if not areas.any():
        raise FeatureExtractionError("the ROI is empty")
    return int(np.argmax(areas))


def slice_tensor(image: sitk.Image, mask: sitk.Image, margin_voxels: int = 2) -> torch.Tensor:
    """The network input of one case: ``(1, 3, 224, 224)`` float32.

    The axial slice with the largest ROI area is cropped to the ROI's bounding
    box (plus ``margin_voxels``), scaled to [0, 1] by its own 0.5/99.5 percentiles,
    resized to 224 x 224 (bilinear), repeated on 3 channels and normalised with
    the ImageNet statistics ResNet50 expects.
    """
    pixels = sitk.GetArrayViewFromImage(image)
    roi = sitk.GetArrayViewFromImage(mask) != 0
    index = max_roi_slice(roi)
    rows, columns = np.nonzero(roi[index])
    top = max(int(rows.min()) - margin_voxels, 0)
    bottom = min(int(rows.max()) + margin_voxels + 1, roi.shape[1])
    left = max(int(columns.min()) - margin_voxels, 0)
    right = min(int(columns.max()) + margin_voxels + 1, roi.shape[2])
    crop = np.asarray(pixels[index, top:bottom, left:right], dtype=np.float32)
    low, high = np.percentile(crop, [0.5, 99.5])
    scaled = np.clip((crop - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    tensor = torch.from_numpy(scaled.astype(np.float32))[None, None]
    tensor = F.interpolate(tensor, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (tensor.repeat(1, 3, 1, 1) - _MEAN) / _STD


def resolve_start_weights(site_model_dir: Path | None, reference_model_dir: Path | None) -> Path | None:
    """Weights fine-tuning starts from: the site's file, else the reference model's, else None."""
    for folder in (site_model_dir, reference_model_dir):
        if folder is None:
            continue
        for name in (START_WEIGHTS_FILE, FINE_TUNED_WEIGHTS_FILE):
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return None


def load_network(weights_file: Path | None, config: BackboneConfig | None = None) -> DtlNetwork:
    """A :class:`DtlNetwork`, with weights from ``weights_file`` when given.

    The file may hold a full :class:`DtlNetwork` state dict or only a torchvision
    ResNet50 state dict (e.g. ImageNet weights a site supplies); in the second
    case the classifier head stays freshly initialised.

    Raises
    ------
    ModelError
        The file is missing or does not fit the architecture.
    """
    network = DtlNetwork(config)
    if weights_file is None:
        return network
    path = Path(weights_file)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise ModelError(f"{path}: not a readable torch weights file ({error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict")
    try:
        if any(key.startswith("backbone.") for key in state):
            network.load_state_dict(state, strict=True)
        else:
            backbone_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            network.backbone.load_state_dict(backbone_state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"{path}: weights do not fit the network ({error})") from error
    return network


@torch.no_grad()
def deep_features(network: DtlNetwork, inputs: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Pooled 2,048-D features of ``inputs`` ``(n, 3, 224, 224)``, in eval mode."""
    network.eval()
    chunks = [
        network.features(inputs[start : start + batch_size]).cpu().numpy()
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(chunks, axis=0).astype(np.float64)


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tuning hyper-parameters; defaults are the study's."""

    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 30
    seed: int = 0
    max_rotation_deg: float = 15.0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("learning_rate, batch_size and epochs must be positive")


@dataclass(frozen=True)
class FineTuneReport:
    """Outcome of :func:`fine_tune`: the loss per epoch and the chosen epoch."""

    train_loss: tuple[float, ...]
    validation_auc: tuple[float, ...]
    best_epoch: int


def _augment(batch: torch.Tensor, generator: torch.Generator, max_rotation_deg: float) -> torch.Tensor:
    """Random horizontal/vertical flips, rotation and 0.9-1.1 zoom per image."""
    n = batch.shape[0]
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip_h.view(-1, 1, 1, 1), batch.flip(3), batch)
    batch = torch.where(flip_v.view(-1, 1, 1, 1), batch.flip(2), batch)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * float(np.deg2rad(max_rotation_deg))
    zoom = 0.9 + 0.2 * torch.rand(n, generator=generator)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1
    )
    grid = F.affine_grid(theta.to(batch.dtype), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="border", align_corners=False)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def fine_tune(
    network: DtlNetwork,
    inputs: torch.Tensor,
    labels: Sequence[int],
    config: FineTuneConfig | None = None,
    *,
    validation: tuple[torch.Tensor, Sequence[int]] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> FineTuneReport:
    """Fine-tune ``network`` in place on the max-ROI slices, as in the study.

    SGD (momentum 0.9) with the study's learning rate 0.01, batch 32 and 30
    epochs; augmentation by flips, rotation and zoom; dropout before the
    classifier. With ``validation``, the weights of the epoch with the best
    validation AUC are kept ("stopped when the model gained the best
    performance"); without it, those of the last epoch.
    """
    config = config or FineTuneConfig()
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(targets) != len(inputs) or len(inputs) == 0:
        raise ValueError("inputs and labels must be non-empty and of equal length")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    optimiser = torch.optim.SGD(
        network.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    losses: list[float] = []
    aucs: list[float] = []
    best_state = copy.deepcopy(network.state_dict())
    best_auc, best_epoch = -np.inf, config.epochs - 1
    for epoch in range(config.epochs):
        network.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:
                continue  # batch norm needs two samples
            batch = _augment(inputs[index], generator, config.max_rotation_deg)
            optimiser.zero_grad()
            loss = F.cross_entropy(network(batch), targets[index])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        losses.append(total / len(inputs))
        if validation is not None:
            network.eval()
            with torch.no_grad():
                logits = network(validation[0])
            auc = _auc(np.asarray(validation[1]), torch.softmax(logits, 1)[:, 1].numpy())
            aucs.append(auc)
            if np.isfinite(auc) and auc > best_auc:
                best_auc, best_epoch = auc, epoch
                best_state = copy.deepcopy(network.state_dict())
        if progress is not None:
            progress(epoch, losses[-1])
    if validation is not None and np.isfinite(best_auc):
        network.load_state_dict(best_state)
    else:
        best_epoch = config.epochs - 1
    network.eval()
    return FineTuneReport(tuple(losses), tuple(aucs), best_epoch)
