"""The per-sequence CNN of the spine study and its combination over sequences.

Architecture, loss and training follow ../shared/papers/spine-hemangioma-vs-metastasis-cnn.txt:
three convolution blocks with 32, 64 and 128 filters, each with batch normalisation
and max pooling, a 128-unit fully connected layer, dropout 0.5 and a softmax over
{hemangioma, metastasis}; the input is the lesion ROI cropped from the sagittal slice,
grayscale, resized to 256×256; Adam with categorical cross-entropy, 40 epochs,
batch 16.

The paper does not state kernel or pooling sizes. Here every convolution is 3×3
(padding 1) followed by ReLU, and every max pooling is 4×4 (stride 4), so the
256×256 input becomes a 4×4×128 map before the fully connected layer. With 2×2
pooling the flattened map would be 32×32×128 and the 128-unit layer alone would
hold 16.8 million weights (67 MB per sequence model), beyond the small-model budget
of the reference models; with 4×4 pooling a model has about 0.36 million weights
(1.4 MB).

The combination of the sequences' probabilities (T1 and T2 weighted by validation
AUC; STIR and T1C reported, flagged less reliable) lives in the torch-free
:mod:`.combine` and is re-exported here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from analyzers._shared.probability import PROBABILITY_CARD_KEY, ProbabilityCalibration, ProbabilityError
from analyzers.spine.combine import (
    CLASSES,
    RELIABLE_SEQUENCES,
    SEQUENCES,
    CombinedProbability,
    combine_probabilities,
)
from analyzers.spine.errors import SpineDataError, SpineModelError

__all__ = [
    "CLASSES",
    "INPUT_SIZE",
    "MODEL_KIND",
    "RELIABLE_SEQUENCES",
    "SEQUENCES",
    "CombinedProbability",
    "HyperParameters",
    "SequenceModel",
    "SpineCNN",
    "SpineModelSet",
    "combine_probabilities",
    "fit_network",
    "log_progress",
]

INPUT_SIZE = 256
"""Side of the square grayscale input (pixels)."""
MODEL_KIND = "pacsnode-spine-cnn"
"""``kind`` of every model metadata file; other files are refused."""
_FILTERS = (32, 64, 128)
_POOL = 4
_HIDDEN = 128


class SpineCNN(nn.Module):
    """Three conv(3×3)-BN-ReLU-maxpool(4×4) blocks (32/64/128), FC 128, dropout, FC 2.

    ``forward`` returns logits; :meth:`probabilities` the softmax.
    """

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise SpineModelError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        channels = 1
        for filters in _FILTERS:
            layers += [
                nn.Conv2d(channels, filters, kernel_size=3, padding=1),
                nn.BatchNorm2d(filters),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(_POOL),
            ]
            channels = filters
        self.features = nn.Sequential(*layers)
        side = INPUT_SIZE // _POOL ** len(_FILTERS)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(_HIDDEN, len(CLASSES)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(n, 2)`` for a batch ``(n, 1, 256, 256)``."""
        return self.classifier(self.features(x))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(n, 2)`` in evaluation mode."""
        self.eval()
        return torch.softmax(self.forward(x), dim=1)


@dataclass(frozen=True)
class HyperParameters:
    """Training settings searched by the trainer (defaults: the study's)."""

    learning_rate: float = 1e-3
    batch_size: int = 16
    epochs: int = 40
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise SpineDataError(f"learning rate must be positive, got {self.learning_rate}")
        if self.batch_size < 1 or self.epochs < 1:
            raise SpineDataError("batch size and epochs must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise SpineDataError(f"dropout must be in [0, 1), got {self.dropout}")


def _as_batch(crops: NDArray[np.floating[Any]] | Sequence[NDArray[np.floating[Any]]]) -> torch.Tensor:
    array = np.asarray(crops, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise SpineDataError(f"crops must be (n, {INPUT_SIZE}, {INPUT_SIZE}), got {array.shape}")
    if not np.isfinite(array).all():
        raise SpineDataError("crops contain non-finite values")
    return torch.from_numpy(array[:, None])


def fit_network(
    crops: NDArray[np.floating[Any]],
    labels: NDArray[np.integer[Any]],
    hyper: HyperParameters,
    *,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    device: str = "cpu",
) -> SpineCNN:
    """Train a :class:`SpineCNN` with Adam and categorical cross-entropy.

    After the last epoch the batch-normalisation statistics are recomputed over the
    training crops (see :func:`_recalibrate_batch_norm`).

    Parameters
    ----------
    crops:
        ``(n, 256, 256)`` grayscale ROIs.
    labels:
        Class index per crop (0 hemangioma, 1 metastasis).
    hyper:
        Learning rate, batch size, epochs, dropout.
    seed:
        Seeds the weights and the batch order (same data + seed → same model).
    progress:
        Called after every epoch with (epoch, mean training loss).
    device:
        Torch device to train on (``"cpu"``, ``"cuda"``); the returned network is on the CPU.
    """
    y = np.asarray(labels, dtype=np.int64)
    x = _as_batch(crops)
    if y.shape != (x.shape[0],) or not np.isin(y, (0, 1)).all():
        raise SpineDataError("labels must be one 0/1 class index per crop")
    if x.shape[0] < 2:
        raise SpineDataError("at least two crops are needed to train")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = SpineCNN(hyper.dropout).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=hyper.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    x = x.to(device)
    targets = torch.from_numpy(y).to(device)
    for epoch in range(1, hyper.epochs + 1):
        network.train()
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        total = 0.0
        for start in range(0, x.shape[0], hyper.batch_size):
            index = order[start:start + hyper.batch_size]
            if index.numel() < 2:  # batch normalisation needs two samples
                continue
            optimiser.zero_grad()
            loss = loss_fn(network(x[index]), targets[index])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * index.numel()
        if progress is not None:
            progress(epoch, total / x.shape[0])
    _recalibrate_batch_norm(network, x, hyper.batch_size)
    network = network.to("cpu")
    network.eval()
    return network


@torch.no_grad()
def _recalibrate_batch_norm(network: SpineCNN, x: torch.Tensor, batch_size: int) -> None:
    """Replace the running BN statistics by their exact average over the training crops.

    After a few hundred optimiser steps the exponential running averages still lag the
    weights, so evaluation-mode outputs are shifted (perfectly ranked but miscalibrated:
    held-out accuracy 0.69 at AUC 1.0 on the phantom). One pass in training mode with a
    cumulative average ("precise BN", Wu & Johnson 2021, Rethinking "Batch" in BatchNorm)
    fixes the statistics without changing any weight.
    """
    layers = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    network.train()
    for start in range(0, x.shape[0], max(batch_size, 2)):
        batch = x[start:start + max(batch_size, 2)]
        if batch.shape[0] >= 2:
            network.features(batch)
    for layer in layers:
        layer.momentum = 0.1
    network.eval()


@dataclass
class SequenceModel:
    """A trained CNN of one sequence with what the analyzer needs to know about it.

    Attributes
    ----------
    sequence:
        ``t1``, ``t2``, ``stir`` or ``t1c``.
    network:
        The trained :class:`SpineCNN`.
    validation_auc:
        AUC on the held-out patients (weights the combination).
    hyper:
        The hyper-parameters it was trained with.
    name, version:
        Model identity written into every report.
    info:
        Further JSON-able facts (training command, cohort, metrics); ``info["probability"]``
        holds the calibration of P(hemangioma) on held-out lesions
        (:class:`~analyzers._shared.probability.ProbabilityCalibration`).
    """

    sequence: str
    network: SpineCNN
    validation_auc: float
    hyper: HyperParameters = field(default_factory=HyperParameters)
    name: str = "pacsnode-spine"
    version: str = "0.0.0"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> ProbabilityCalibration | None:
        """How P(hemangioma) was validated (``info["probability"]``), or None for an unvalidated model."""
        raw = self.info.get(PROBABILITY_CARD_KEY)
        if not isinstance(raw, dict):
            return None
        try:
            return ProbabilityCalibration.from_dict(raw)
        except ProbabilityError as exc:
            raise SpineModelError(f"{self.sequence} model: {exc}") from exc

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCES:
            raise SpineModelError(f"sequence must be one of {SEQUENCES}, got {self.sequence!r}")
        if not 0.0 <= self.validation_auc <= 1.0:
            raise SpineModelError(f"validation AUC must be in [0, 1], got {self.validation_auc}")

    @property
    def identity(self) -> str:
        """``name version (sequence)`` as reports show it."""
        return f"{self.name} {self.version} ({self.sequence})"

    def probability_hemangioma(self, crops: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """P(hemangioma) per crop ``(n, 256, 256)``."""
        return self.network.probabilities(_as_batch(crops))[:, 0].double().numpy()

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write ``spine_<sequence>.pt`` (weights) and ``spine_<sequence>.json`` (metadata)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / f"spine_{self.sequence}.pt"
        meta = folder / f"spine_{self.sequence}.json"
        torch.save(self.network.state_dict(), weights)
        meta.write_text(json.dumps({
            "kind": MODEL_KIND,
            "sequence": self.sequence,
            "name": self.name,
            "version": self.version,
            "validation_auc": self.validation_auc,
            "hyper": asdict(self.hyper),
            "classes": list(CLASSES),
            "input_size": INPUT_SIZE,
            "info": self.info,
        }, indent=2, allow_nan=False) + "\n")
        return weights, meta

    @classmethod
    def load(cls, folder: Path, sequence: str) -> SequenceModel:
        """Read the model of ``sequence`` from ``folder``."""
        meta_path = Path(folder) / f"spine_{sequence}.json"
        weights = Path(folder) / f"spine_{sequence}.pt"
        if not meta_path.is_file() or not weights.is_file():
            raise SpineModelError(f"{folder} holds no {sequence} model (spine_{sequence}.json/.pt)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpineModelError(f"{meta_path}: unreadable ({exc})") from exc
        if meta.get("kind") != MODEL_KIND or meta.get("input_size") != INPUT_SIZE:
            raise SpineModelError(f"{meta_path} is not a {MODEL_KIND} model")
        hyper = HyperParameters(**meta["hyper"])
        network = SpineCNN(hyper.dropout)
        try:
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, KeyError) as exc:
            raise SpineModelError(f"{weights}: weights do not fit the network ({exc})") from exc
        network.eval()
        return cls(sequence, network, float(meta["validation_auc"]), hyper,
                   str(meta["name"]), str(meta["version"]), dict(meta.get("info", {})))


@dataclass
class SpineModelSet:
    """The sequence models found in one folder."""

    folder: Path
    models: dict[str, SequenceModel]

    @classmethod
    def load(cls, folder: Path) -> SpineModelSet:
        """Every ``spine_<sequence>`` model in ``folder``; at least one must be there."""
        folder = Path(folder)
        models = {}
        for sequence in SEQUENCES:
            if (folder / f"spine_{sequence}.json").is_file():
                models[sequence] = SequenceModel.load(folder, sequence)
        if not models:
            raise SpineModelError(f"{folder} holds no spine sequence model")
        return cls(folder, models)

    @property
    def validation_aucs(self) -> dict[str, float]:
        """Validation AUC per sequence."""
        return {s: m.validation_auc for s, m in self.models.items()}


def log_progress(prefix: str) -> Callable[[int, float], None]:
    """A :func:`fit_network` progress callback writing one line per epoch to stderr."""

    def report(epoch: int, loss: float) -> None:
        sys.stderr.write(f"\r{prefix} epoch {epoch:3d} loss {loss:.4f}")
        sys.stderr.flush()

    return report
